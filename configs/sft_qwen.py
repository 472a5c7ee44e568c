"""Supervised fine-tuning (Qwen Technical Report, Bai et al. 2023, §3.1).

Presets (`--config=configs/sft_qwen.py:<preset>`):
  tiny          (default) the embedded default: tiny model, local tokenizer, synthetic data.
  qwen-7b       Qwen SFT recipe: AdamW(0.9, 0.95, 1e-8), seq 2048, batch 128, 4000 steps,
                1430 warm-up steps to 2e-6, weight decay 0.1, dropout 0.1, clip 1.0.
  qwen-1.8b, qwen-14b   the same recipe at the other Qwen1 sizes.
  qwen2.5-0.5b  the Qwen recipe on a Qwen2.5 checkpoint.
  real-0.5b     a short run that fits a 2-core, 24 GiB host: full fine-tuning of a Qwen2.5-0.5B
                (e.g. the Coder-Instruct from python -m r3jax.convert_gguf) on
                ../shared/data/alpaca_en_demo.json, bf16 compute, 24 steps of 4 x 256 tokens,
                held-out loss at steps 0, 12 and 24 (docs/results.md, "Every recipe on a real model").
  r3            the R3 paper's SFT (Kim & Seo 2024, App. C.2): lr 2e-5 cosine, warm-up ratio 0.03,
                3 epochs, max length 2048.
Full-size presets need --config.model.hf_dir=/path/to/hf/checkpoint and
--config.data.train=/path/to/data.jsonl. Every field and its default: r3jax/trainers/schema.py.
"""

from configs import common
from r3jax.trainers import schema


def get_config(arg=None):
  preset = arg or "tiny"
  if preset == "tiny":
    return common.sft_tiny()
  c = schema.sft()
  if preset in ("qwen-1.8b", "qwen-7b", "qwen-14b"):
    c.model.preset = preset
  elif preset == "qwen2.5-0.5b":
    c.model.preset = "qwen2.5-0.5b"
    c.model.hf_dir = ""  # Required: a local Qwen2.5-0.5B(-Instruct) directory.
  elif preset == "real-0.5b":
    c.model.update(preset="qwen2.5-0.5b", hf_dir="", dtype="bfloat16", dropout_rate=0.0)
    c.data.update(train="../shared/data/alpaca_en_demo.json", eval_fraction=0.05)
    # 24 steps of 4: 96 of the 950 training conversations; lr 1e-5 is the low end of full
    # fine-tuning rates for a 0.5B model, enough to adapt an instruct model's style.
    c.steps, c.batch_size, c.seq_len = 24, 4, 256
    c.optim.update(lr=1e-5, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    c.log_every, c.eval_every, c.eval_batches, c.eval_prompts = 2, 12, 12, 0
    common.real_checkpoints(c, every=12)
  elif preset == "r3":
    c.steps, c.epochs = 0, 3
    c.optim.update(lr=2e-5, schedule="cosine", warmup_steps=-1, warmup_ratio=0.03)
  else:
    raise ValueError(f"unknown preset {preset!r}; see the docstring of configs/sft_qwen.py")
  c.name = f"sft_{preset}"
  return c

