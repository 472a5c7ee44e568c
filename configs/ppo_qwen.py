"""PPO for RLHF (Qwen report, Bai et al. 2023 §3.2.2) with the R³ reward (Kim & Seo 2024,
"Preference-free Alignment Learning with Regularized Relevance Reward", §3) — the main job.

Presets (`--config=configs/ppo_qwen.py:<preset>`):
  tiny            (default) the embedded default: a tiny SFT policy trained first (or reused
                  from <workdir>/sft), then PPO against R³ with the packaged MiniLM encoder.
  tiny-relevance  the same with the relevance-only reward (the reward-hacking ablation).
  tiny-hacking    tiny, with 30% of the SFT answers opening by repeating the question, so
                  the policy can copy it (for python -m r3jax.compare; see docs/results.md).
  tiny-rm         the Qwen report's pipeline (§3) at tiny size: SFT (<workdir>/sft) -> reward model
                  PMP stage on one comparison set (<workdir>/rm_pmp) -> its fine-tuning on
                  another (<workdir>/rm) -> PPO against that reward model, each stage reused
                  once finished. R³ is logged beside it at weight 0 (not optimised). Add
                  --config.value.init_from_reward=True to start the value model from the RM.
  qwen            (with model.hf_dir: its 256 + 512 tokens exceed the tiny model's 512
                  positions) the Qwen recipe: fixed β 0.04, value clip 0.15, policy LR 1e-6, value LR
                  5e-6, 50 value warm-up steps, 2 samples per prompt, top-p 0.9.
  qwen-1.8b, qwen-7b, qwen-14b   the Qwen recipe at that size (bf16 compute), e.g. for
                  python -m r3jax.plan; training needs the paths below.
  r3              (with model.hf_dir, as qwen) the R³ recipe: adaptive KL from 0.2, ε 0.2, γ 1, λ 0.95, 4 PPO epochs,
                  constant LR 1e-5, 512 new tokens, score normalisation with clip 10.
  real-0.5b       (with model.hf_dir) PPO with R³ on a Qwen2.5-0.5B(-Instruct) within 20 minutes
                  of a 2-core host: LoRA rank 16 on the policy and value, 20 iterations of 4
                  Alpaca prompts (../shared/data/alpaca_en_demo.json, their outputs as R³'s
                  references) x 2 samples of up to 80 tokens (docs/results.md, "Every recipe on a real
                  model"; held-out answers via python -m r3jax.eval_gen).
Full-size presets need --config.model.hf_dir=<HF dir> (architecture and tokenizer),
--config.init_from=<SFT run or HF dir> (the starting weights; without it PPO starts from the
hf_dir weights; the tiny SFT warm start runs only when neither is set) and --config.data.prompts=FILE.jsonl with {prompt, reference?, query_type?} rows.
"""

from configs import common
from r3jax.trainers import schema


def get_config(arg=None):
  preset = arg or "tiny"
  c = common.with_sft_stage(schema.ppo())
  if preset in ("tiny", "tiny-relevance", "tiny-hacking", "tiny-rm"):
    c = common.ppo_tiny()
    if preset == "tiny-relevance":
      c.reward.mode = "relevance"
    if preset == "tiny-hacking":
      c.sft.data.synthetic_restate = 0.3
    if preset == "tiny-rm":
      rm_stages(c)
  elif preset in ("qwen", "qwen-1.8b", "qwen-7b", "qwen-14b"):
    if preset != "qwen":  # Sizes for planning (python -m r3jax.plan) or with model.hf_dir.
      c.model.update(preset=preset, dtype="bfloat16")
    c.kl.update(beta=0.04, adaptive=False)
    c.rollout.update(n=2, top_p=0.9)
  elif preset == "r3":
    c.kl.update(beta=0.2, adaptive=True)
    c.ppo.update(epochs=4, gamma=1.0, lam=0.95, value_clip=0.2, value_warmup_steps=0)
    c.optim.lr = c.value_lr = 1e-5
    c.rollout.update(top_p=1.0, max_new_tokens=512)
    c.lora.update(rank=16, alpha=32.0)
    c.prompts_per_step, c.ppo.minibatch = 16, 2
  elif preset == "real-0.5b":
    real_05b(c)
  else:
    raise ValueError(f"unknown preset {preset!r}; see the docstring of configs/ppo_qwen.py")
  c.name = f"ppo_{preset}"
  return c


def rm_stages(c):
  """SFT -> RM PMP -> RM fine-tuning stages, and the reward "@rm" (the fine-tuned RM)."""
  c.stages = ("sft", "rm_pmp", "rm")
  c.rm_pmp, c.rm = common.rm_tiny(), common.rm_tiny(finetune=True)
  for stage, start in ((c.rm_pmp, "@sft"), (c.rm, "@rm_pmp")):
    stage.stages, stage.init_from = (), start
    del stage["sft"]  # Its start is this run's SFT stage, not an SFT stage of its own.
  # The RM drives PPO; R³ at weight 0 is scored and logged beside it, never optimised.
  c.reward.mode = "1*@rm+0*r3"


def real_05b(c):
  """R³ PPO sized so that 20 iterations (~55 s each here) fit a 20-minute budget."""
  c.model.update(preset="qwen2.5-0.5b", hf_dir="")  # hf_dir required: the checkpoint.
  c.data.prompts = "../shared/data/alpaca_en_demo.json"
  c.steps, c.prompts_per_step = 20, 4
  c.rollout.update(n=2, top_p=1.0, max_new_tokens=80, prompt_len=128)
  # LoRA on the frozen instruct weights (also the KL reference): an adapter rate of 1e-4
  # moves a 0.5B model within 40 updates, where full-weight PPO's 1e-6 would not.
  c.lora.update(rank=16, alpha=32.0)
  c.optim.lr, c.value_lr = 1e-4, 1e-4
  c.ppo.update(epochs=1, minibatch=4, value_warmup_steps=0)
  c.kl.update(beta=0.1, adaptive=True)
  c.log_samples_every, c.eval_prompts = 5, 8  # PPO logs every iteration.
  c.checkpoint.every = 10
