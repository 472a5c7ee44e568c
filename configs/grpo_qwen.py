"""Critic-free RL with R³ on PPO's phases, with no value model: every method of
rl/algorithms.METHODS (GRPO, Dr. GRPO, RLOO, REINFORCE++, GSPO, ...) but PPO itself.

Presets (`--config=configs/grpo_qwen.py:<preset>`):
  tiny               (default) GRPO on the embedded default: the main job's SFT warm start,
                     reward, KL control and 64 samples per iteration, as 16 prompts x 4,
                     advantages normalised within each prompt's group, k3 KL in the loss,
                     per-sequence loss mean.
  tiny-<method>      any other method of rl/algorithms.METHODS under the same budget, with
                     the settings its entry prescribes (algorithms.use_method), e.g.
                     tiny-dr_grpo (no std, token-sum aggregation), tiny-rloo (leave-one-out
                     baseline, KL in the reward), tiny-reinforce_pp (32 prompts x 2,
                     batch-whitened returns), tiny-gspo (sequence-level clipped ratio).
  tiny-math          GRPO with the exact checker as the reward (reward.mode=math) on the
                     embedded arithmetic word problems (data/arithmetic.py), from an SFT
                     stage on them; tiny-math-<method> for another group method.
  real-0.5b          (with model.hf_dir=<Qwen2.5-Coder-0.5B-Instruct>, python -m
                     r3jax.convert_gguf) GRPO with LoRA on GSM8K's train sample, the math
                     reward on the boxed answer, sized for a 2-core, 24 GiB host.
  qwen               (with model.hf_dir) the full-size GRPO recipe: 8 samples per prompt,
                     16 prompts x 8 per iteration, k3 KL β 0.04 in the loss, policy LR
                     1e-6, ε 0.2, 512 new tokens.
  qwen-1.8b, qwen-7b, qwen-14b   that recipe at that size (bf16), e.g. for python -m r3jax.plan.
Compare them with PPO under one budget: python -m r3jax.compare
--config=configs/ppo_qwen.py --algorithms=ppo,grpo,rloo,reinforce_pp (see docs/results.md).
"""

from configs import common
from r3jax.rl import algorithms
from r3jax.trainers import schema


def get_config(arg=None):
  preset = arg or "tiny"
  if preset.startswith("tiny-math"):
    c = common.math_tiny(preset.removeprefix("tiny-math").removeprefix("-") or "grpo")
  elif preset.startswith("tiny"):
    name = preset.removeprefix("tiny").removeprefix("-") or "grpo"
    if name not in algorithms.METHODS or name == "ppo":
      raise ValueError(f"unknown preset {preset!r}; expected tiny-<method> with a method of "
                       f"{', '.join(m for m in algorithms.METHODS if m != 'ppo')}")
    c = algorithms.use_method(common.ppo_tiny(), name)
  elif preset == "real-0.5b":
    c = real_05b_gsm8k()
  elif preset in ("qwen", "qwen-1.8b", "qwen-7b", "qwen-14b"):
    c = common.with_sft_stage(schema.ppo())
    if preset != "qwen":  # Sizes for planning (python -m r3jax.plan) or with model.hf_dir.
      c.model.update(preset=preset, dtype="bfloat16")
    c.prompts_per_step = 64
    c = algorithms.use_method(c, "grpo", group_n=8)  # 64 x 2 samples -> 16 prompts x 8.
    c.kl.update(beta=0.04, adaptive=False)
    c.rollout.update(top_p=1.0, max_new_tokens=512)
  else:
    raise ValueError(f"unknown preset {preset!r}; see the docstring of configs/grpo_qwen.py")
  c.name = f"grpo_{preset}"
  return c


GSM8K_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def real_05b_gsm8k():
  """GRPO with LoRA on ../shared/data/gsm8k_train_sample.jsonl: the exact checker of the
  boxed answer as the reward (Qwen2.5-Math's prompt), 4 prompts x 4 samples of up to 256
  tokens, about 2.5 minutes an iteration on 2 cores (docs/results.md)."""
  c = schema.ppo()
  c.model.update(preset="qwen2.5-0.5b", hf_dir="")  # hf_dir required: the checkpoint.
  c.data.update(prompts="../shared/data/gsm8k_train_sample.jsonl", instruction=GSM8K_INSTRUCTION)
  c.reward.mode = "math"
  c.steps, c.prompts_per_step = 12, 8
  c.rollout.update(top_p=1.0, temperature=1.0, max_new_tokens=256, prompt_len=192)
  c.lora.update(rank=16, alpha=32.0)
  c.optim.lr = 2e-5
  c.ppo.update(epochs=1, minibatch=4)
  c.log_samples_every, c.eval_prompts = 4, 4
  common.real_checkpoints(c, every=4)
  c = algorithms.use_method(c, "grpo", group_n=4)  # 8 x 2 samples -> 4 prompts x 4.
  c.kl.update(beta=0.01, adaptive=False)
  return c
