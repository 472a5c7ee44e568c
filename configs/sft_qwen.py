"""Supervised fine-tuning (SPEC §2).

Presets (`--config=configs/sft_qwen.py:<preset>`):
  tiny          (default) the embedded default: tiny model, local tokenizer, synthetic data.
  qwen-7b       Qwen SFT recipe: AdamW(0.9, 0.95, 1e-8), seq 2048, batch 128, 4000 steps,
                1430 warm-up steps to 2e-6, weight decay 0.1, dropout 0.1, clip 1.0.
  qwen-1.8b, qwen-14b   the same recipe at the other Qwen1 sizes.
  qwen2.5-0.5b  the Qwen recipe on a Qwen2.5 checkpoint.
  r3            the R3 paper's SFT (seed 002 App. C): lr 2e-5 cosine, warm-up ratio 0.03,
                3 epochs, max length 2048.
Full-size presets need --config.model.hf_dir=/path/to/hf/checkpoint and
--config.data.train=/path/to/data.jsonl.
"""

import ml_collections

from r3jax import sharding


def base():
  c = ml_collections.ConfigDict()
  c.trainer = "sft"
  c.name = "sft"
  c.seed = 0
  c.steps = 4000  # 0: derive from epochs.
  c.epochs = 0
  c.batch_size = 128  # Global, in conversations.
  c.micro_batch_per_device = 0  # 0: the whole per-device share at once (no accumulation).
  c.seq_len = 2048
  c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  c.sharding = ml_collections.ConfigDict({"rules": sharding.DEFAULT_RULES})
  c.model = ml_collections.ConfigDict(dict(
      preset="tiny", hf_dir="", param_dtype="float32", dtype="float32", dropout_rate=0.1,
      remat=False, allow_random_init=False))
  c.tokenizer = ""  # HF tokenizer dir; "": the model's, or the locally trained tiny one.
  c.init_from = ""  # An HF dir or another run's workdir (its latest checkpoint).
  c.data = ml_collections.ConfigDict(dict(
      train="", eval="", format="auto", eval_fraction=0.05, skip_bad=False,
      use_tfds=False,  # Read files through a TFDS array_record data source.
      synthetic_examples=4000,
      synthetic_restate=0.0))  # Share of synthetic answers that open by repeating the question.
  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-6, schedule="constant", warmup_steps=1430, warmup_ratio=0.0, min_lr_ratio=0.0,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0))
  c.checkpoint = ml_collections.ConfigDict(dict(every=500, max_to_keep=3, async_save=True))
  c.log_every = 10
  c.eval_every = 500
  c.eval_batches = 4
  c.eval_prompts = 4  # Held-out prompts answered greedily at each eval.
  c.sample_tokens = 48
  return c


def get_config(arg=None):
  c = base()
  preset = arg or "tiny"
  if preset == "tiny":
    c.model.preset = "tiny"
    c.model.dropout_rate = 0.0
    c.steps, c.batch_size, c.seq_len = 300, 32, 96
    c.optim.update(lr=3e-3, warmup_steps=30, schedule="cosine", min_lr_ratio=0.1)
    c.checkpoint.every, c.log_every, c.eval_every = 100, 10, 100
  elif preset in ("qwen-1.8b", "qwen-7b", "qwen-14b"):
    c.model.preset = preset
  elif preset == "qwen2.5-0.5b":
    c.model.preset = "qwen2.5-0.5b"
    c.model.hf_dir = ""  # Required: a local Qwen2.5-0.5B(-Instruct) directory.
  elif preset == "r3":
    c.steps, c.epochs = 0, 3
    c.optim.update(lr=2e-5, schedule="cosine", warmup_steps=-1, warmup_ratio=0.03)
  else:
    raise ValueError(f"unknown preset {preset!r}; see the docstring of configs/sft_qwen.py")
  c.name = f"sft_{preset}"
  return c
