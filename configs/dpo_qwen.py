"""Offline preference optimisation: DPO (Rafailov et al. 2023) and its variants on pairs.

Presets (`--config=configs/dpo_qwen.py:<preset>`):
  tiny   (default) DPO from the tiny SFT policy (trained first in <workdir>/sft, or reused)
         on the embedded synthetic comparisons.
  tiny-simpo  the same with SimPO (Meng et al. 2024): reference-free, so no reference
         model is built or run; β 2, target margin γ (loss.simpo_gamma) 1, the paper's γ/β
         of a half.
  r3     the R³ paper's DPO baseline (App. F): β 0.1, 3 epochs; needs --config.init_from=<SFT>
         and --config.data.train=<comparisons>.
  real-0.5b  DPO on ../shared/data/dpo_en_demo.json from a Qwen2.5-0.5B checkpoint's weights
         (--config.model.hf_dir=DIR), full fine-tuning in bf16 compute, 16 steps of 4 pairs
         (128 prompt + 192 response tokens each), held-out accuracy on 24 pairs at steps 0,
         8 and 16 (docs/results.md, "Every recipe on a real model").
loss.type: an entry of r3jax/losses/preference.LOSSES: sigmoid (DPO), ipo, hinge (SLiC),
sigmoid_norm and hinge_norm (RSO; β plays γ), simpo (SimPO, reference-free; any preset with
--config.loss.type=simpo --config.loss.beta=B --config.loss.simpo_gamma=G).
"""

from configs import common
from r3jax.trainers import schema


def get_config(arg=None):
  preset = arg or "tiny"
  if preset == "tiny":
    return common.dpo_tiny()
  if preset == "tiny-simpo":
    c = common.dpo_tiny("dpo_tiny-simpo")
    c.loss.update(type="simpo", beta=2.0, simpo_gamma=1.0)
    return c
  if preset == "real-0.5b":
    return real_05b()
  if preset != "r3":
    raise ValueError(f"unknown preset {preset!r}; see the docstring of configs/dpo_qwen.py")
  c = common.with_sft_stage(schema.preference("dpo", f"dpo_{preset}"))
  c.model.preset = "qwen-7b"
  c.epochs = 3
  c.optim.update(lr=5e-7, schedule="cosine", warmup_steps=-1, warmup_ratio=0.1)
  return c


def real_05b():
  c = schema.preference("dpo", "dpo_real-0.5b")
  c.model.update(preset="qwen2.5-0.5b", hf_dir="", dtype="bfloat16")
  c.data.update(train="../shared/data/dpo_en_demo.json", eval_fraction=0.08)  # 24 of 300.
  # Prompts (median ~190 tokens) keep their last 128, responses (median ~350) their first
  # 192: a step of 4 pairs with its reference forward then takes ~40 s here, and the
  # preference shows early in a reply.
  c.steps, c.epochs, c.batch_size, c.seq_len, c.prompt_len = 16, 0, 4, 320, 128
  c.optim.update(lr=5e-6, warmup_steps=2, schedule="constant")
  c.log_every, c.eval_every, c.eval_batches = 2, 8, 6
  common.real_checkpoints(c, every=8)
  return c
