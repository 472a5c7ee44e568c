"""RSO (Liu et al. 2024, "Statistical Rejection Sampling Improves Preference Optimization"):
statistical rejection sampling from the SFT policy, pairs labelled by a reward, then
sigmoid-norm / hinge-norm training. Also best-of-N fine-tuning (Touvron et al. 2023, §3.2.3).

Presets (`--config=configs/rso_qwen.py:<preset>`):
  tiny            (default) the tiny SFT policy (trained first, or reused from <workdir>/sft),
                  16 candidates per prompt scored by R³ (MiniLM), k = 4 kept, first-round pairs,
                  sigmoid-norm. β is 0.02 here, not the paper's 0.5: the tilt exp(r/β) must be
                  on the scale of the reward, and tiny R³ rewards differ by ~0.05.
  tiny-sft-rank   the same candidates, k drawn uniformly (RSO's sft-sample-rank).
  tiny-direct     the embedded comparisons as they are (RSO's direct).
  tiny-best-of-n  best-of-16 by R³, then SFT on the kept answers; 2 rounds.
  paper           the RSO paper's sampling and loss settings: N 64 (temperature 0.7, top-k 40),
                  k 8, β 0.5, γ 0.05, on the qwen-7b shape; the DPO-stage schedule (steps,
                  batch, LR) is still the tiny one, so set it. Needs --config.init_from=<SFT>,
                  --config.model.hf_dir and --config.data.prompts=FILE.jsonl.
rso.reward: r3 (or another R³ mode), length, or a reward-model run directory.
"""

from configs import common
from r3jax.trainers import schema


def get_config(arg=None):
  preset = arg or "tiny"
  c = schema.rso(common.dpo_tiny(f"rso_{preset}"))
  c.trainer = "rso"
  if preset.startswith("tiny"):
    c.rso.update(n=16, k=4, beta=0.02, num_prompts=400, prompts_per_batch=16)
    c.rollout.update(max_new_tokens=48, prompt_len=48)
    c.steps, c.batch_size, c.seq_len, c.prompt_len = 100, 32, 96, 32
    c.loss.beta = 0.1
    c.optim.update(lr=2e-4, warmup_steps=10, schedule="constant")
    c.checkpoint.every, c.eval_every = 50, 25
    if preset == "tiny-sft-rank":
      c.rso.construction = "sft"
    elif preset == "tiny-direct":
      c.rso.construction = "direct"
    elif preset == "tiny-best-of-n":
      c.trainer = "best_of_n"
      c.best_of_n.update(rounds=2, sft_steps=60, lr=1e-3)
    elif preset != "tiny":
      raise ValueError(f"unknown preset {preset!r}; see the docstring of configs/rso_qwen.py")
  elif preset == "paper":
    c.model.preset = "qwen-7b"
  else:
    raise ValueError(f"unknown preset {preset!r}; see the docstring of configs/rso_qwen.py")
  return c
