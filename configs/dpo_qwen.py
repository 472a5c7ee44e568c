"""Offline preference optimisation (SPEC §6): DPO and its variants on comparison pairs.

Presets (`--config=configs/dpo_qwen.py:<preset>`):
  tiny   (default) DPO from the tiny SFT policy (trained first in <workdir>/sft, or reused)
         on the embedded synthetic comparisons.
  r3     the R³ paper's DPO baseline (App. F): β 0.1, 3 epochs; needs --config.init_from=<SFT>
         and --config.data.train=<comparisons>.
loss.type: sigmoid (DPO), ipo, hinge (SLiC), sigmoid_norm and hinge_norm (RSO; β plays γ).
"""

import os
import runpy

import ml_collections


def get_config(arg=None):
  preset = arg or "tiny"
  here = os.path.dirname(os.path.abspath(__file__))
  c = runpy.run_path(os.path.join(here, "rm_qwen.py"))["get_config"]("pmp")
  c.trainer, c.name = "dpo", f"dpo_{preset}"
  c.model.preset = "tiny"
  c.init_from = ""  # SFT run workdir or HF dir; "": train the tiny SFT in <workdir>/sft.
  c.sft = runpy.run_path(os.path.join(here, "sft_qwen.py"))["get_config"]("tiny")
  c.loss = ml_collections.ConfigDict(dict(type="sigmoid", beta=0.1, label_smoothing=0.0,
                                          precompute_ref=False))
  c.steps, c.epochs = 0, 3
  # Columns [0, prompt_len) of each row hold the prompt (its last prompt_len tokens), the
  # rest the response: the prompt then runs once for both responses (pipeline.ranked_batch,
  # trainers/preference.sequence_logprobs). 0 runs each row in full instead.
  c.prompt_len = c.seq_len // 2
  c.optim.update(lr=5e-7, schedule="cosine", warmup_steps=-1, warmup_ratio=0.1)
  if preset == "tiny":
    c.steps, c.batch_size, c.seq_len, c.prompt_len = 150, 32, 96, 32  # Prompts <= 20 tokens.
    c.data.synthetic_examples = 3000
    c.optim.update(lr=2e-4, warmup_steps=10, schedule="constant", warmup_ratio=0.0)
    c.checkpoint.every, c.eval_every = 50, 50
  elif preset == "r3":
    c.model.preset = "qwen-7b"
  else:
    raise ValueError(f"unknown preset {preset!r}; see the docstring of configs/dpo_qwen.py")
  return c
