"""Reward model (SPEC §3): a Qwen backbone with a scalar head read at the last real token,
trained with Bradley–Terry over the C(K,2) pairs of each K-wise ranking.

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
{chosen, rejected}, or ShareGPT-style {conversations, chosen, rejected}.
"""

import os
import runpy

import ml_collections


def get_config(arg=None):
  preset = arg or "tiny"
  c = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_qwen.py"))["base"]()
  c.trainer, c.name = "rm", f"rm_{preset}"
  c.model.dropout_rate = 0.0
  c.steps, c.epochs, c.batch_size, c.seq_len = 0, 1, 64, 2048
  c.data = ml_collections.ConfigDict(dict(
      train="", eval="", eval_fraction=0.05, skip_bad=False, synthetic_examples=6000,
      synthetic_seed=0))
  c.loss = ml_collections.ConfigDict(dict(margin=0.0))
  c.optim.update(lr=3e-6, schedule="constant", warmup_steps=0, weight_decay=0.0)
  c.checkpoint.every = 500
  c.log_every, c.eval_every, c.eval_batches = 10, 200, 8
  if preset in ("tiny", "tiny-finetune"):
    c.model.preset = "tiny"
    # The backbone starts from the tiny SFT policy (trained first in <workdir>/sft, or
    # reused): from random weights the tiny RM stays at chance on these comparisons.
    c.sft = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_qwen.py"))["get_config"]("tiny")
    c.steps, c.batch_size, c.seq_len = 300, 32, 96
    c.optim.update(lr=3e-4, warmup_steps=20, schedule="cosine", min_lr_ratio=0.1)
    c.checkpoint.every, c.eval_every = 100, 100
    if preset == "tiny-finetune":
      c.init_from = "runs/rm_tiny"
      c.steps, c.data.synthetic_seed = 100, 1  # Fresh comparisons; a lower, constant LR.
      c.optim.update(lr=2e-4, warmup_steps=0, schedule="constant")
  elif preset == "pmp":
    c.model.preset = "qwen-7b"
  elif preset == "finetune":
    c.model.preset = "qwen-7b"
    c.init_from = ""  # Required: the PMP run's workdir.
  else:
    raise ValueError(f"unknown preset {preset!r}; see the docstring of configs/rm_qwen.py")
  return c
