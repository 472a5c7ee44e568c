"""Reward model (Qwen Technical Report, Bai et al. 2023, §3.2.1): a Qwen backbone with a
scalar head read at the last real token, trained with Bradley–Terry over the C(K,2) pairs of
each K-wise ranking (Ouyang et al. 2022, InstructGPT, §3.5, eq. 1).

Presets (`--config=configs/rm_qwen.py:<preset>`):
  tiny           (default) PMP-style stage on the embedded synthetic comparisons (the
                 reference answer beats a fluent answer with another entity's facts), from
                 the tiny SFT policy.
  tiny-finetune  stage 2 at tiny size: starts from the `tiny` run (init_from=runs/rm_tiny).
  pmp            Qwen's preference-model pretraining: constant LR 3e-6, batch 64, seq 2048,
                 1 epoch, on a large mixed comparison file (--config.data.train=...).
  finetune       fine-tuning from the PMP run (--config.init_from=<pmp workdir>) on
                 high-quality comparisons; same defaults.
Comparison files: {prompt, chosen, rejected}, {prompt, responses} (ranked, best first), HH
{chosen, rejected}, or ShareGPT-style {conversations, chosen, rejected}. The whole Qwen
pipeline, SFT -> RM (PMP, fine-tuning) -> PPO on that RM, is configs/ppo_qwen.py:tiny-rm.
"""

from configs import common
from r3jax.trainers import schema


def get_config(arg=None):
  preset = arg or "tiny"
  if preset in ("tiny", "tiny-finetune"):
    # The backbone starts from the tiny SFT policy (trained first in <workdir>/sft, or
    # reused): from random weights the tiny RM stays at chance on these comparisons.
    return common.rm_tiny(finetune=preset == "tiny-finetune")
  c = schema.preference("rm", f"rm_{preset}")
  c.checkpoint.every = 500
  if preset == "pmp":
    c.model.preset = "qwen-7b"
  elif preset == "finetune":
    c.model.preset = "qwen-7b"
    c.init_from = ""  # Required: the PMP run's workdir.
  else:
    raise ValueError(f"unknown preset {preset!r}; see the docstring of configs/rm_qwen.py")
  return c
