"""Offline preference optimisation (SPEC §6): DPO and its variants on comparison pairs.

Presets (`--config=configs/dpo_qwen.py:<preset>`):
  tiny   (default) DPO from the tiny SFT policy (trained first in <workdir>/sft, or reused)
         on the embedded synthetic comparisons.
  r3     the R³ paper's DPO baseline (App. F): β 0.1, 3 epochs; needs --config.init_from=<SFT>
         and --config.data.train=<comparisons>.
loss.type: sigmoid (DPO), ipo, hinge (SLiC), sigmoid_norm and hinge_norm (RSO; β plays γ).
"""

from r3jax.trainers import schema


def get_config(arg=None):
  preset = arg or "tiny"
  if preset == "tiny":
    return schema.dpo_tiny()
  if preset != "r3":
    raise ValueError(f"unknown preset {preset!r}; see the docstring of configs/dpo_qwen.py")
  c = schema.with_sft_stage(schema.preference("dpo", f"dpo_{preset}"))
  c.model.preset = "qwen-7b"
  c.epochs = 3
  c.optim.update(lr=5e-7, schedule="cosine", warmup_steps=-1, warmup_ratio=0.1)
  return c
