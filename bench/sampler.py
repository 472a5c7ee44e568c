"""Sampling throughput: r3jax's jitted decode loop vs HF `generate` (PyTorch CPU), with HF
in fp32 and in bf16 in the same run.

Without --model, the bench shape of the foundation issue: a Qwen2-shaped model with vocab
32000, hidden 512, 8 layers, 8 heads, 2 KV heads, intermediate 1408 and random weights.
With --model=<HF dir>, that checkpoint (e.g. the real Qwen2.5-Coder-0.5B-Instruct that
python -m r3jax.convert_gguf builds). Batch 8, ragged left-padded prompts of up to 64
random regular-vocabulary ids, 128 new tokens, top-p 0.9; both sides generate every token
(no stop ids), so the token counts are equal. Both run on the same weights in this process,
and the ratios are what to read: absolute tokens/s depend on the machine.

With --top_k=K (default 40, the RSO and best-of-N presets' value), r3jax is also timed
sampling with top-k K alone, and the ratio to its top-p time is printed.

  python -m bench.sampler [--model=DIR] [--dtype=bfloat16] [--repeats=3] [--threads=2] [--top_k=40]
"""

import itertools
import os
import statistics
import tempfile
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "", "HF checkpoint dir; empty: the random bench model.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per side (median reported).")
_THREADS = flags.DEFINE_integer("threads", 2, "PyTorch intra-op threads.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "r3jax weights and compute dtype.")
_HF_DTYPES = flags.DEFINE_list("hf_dtypes", ["float32", "bfloat16"], "HF generate's dtypes to time.")
_BATCH = flags.DEFINE_integer("batch", 8, "Prompts per generate call.")
_NEW = flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row.")
_TOP_K = flags.DEFINE_integer("top_k", 40, "Also time r3jax with top-k sampling (no top-p) in "
                              "the same run, against its top-p time; 0: skip.")
_PROMPT = 64


def _models(path: str, dtype: str):
  """(the torch model, r3jax's config and params) of one checkpoint; the random bench model
  goes through a temporary HF dir, so that both sides read the same weights."""
  import torch
  from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM
  from r3jax.models import hf
  if path:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return (model, *hf.load(path, param_dtype=dtype, dtype=dtype))
  torch.manual_seed(0)
  cfg = Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1408,
                    num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                    max_position_embeddings=2048, tie_word_embeddings=False)
  model = Qwen2ForCausalLM(cfg).eval()
  with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    return (model, *hf.load(d, param_dtype=dtype, dtype=dtype))


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from r3jax.data import padding
  from r3jax.models import sampling
  from bench.peaks import median_time

  torch.set_num_threads(_THREADS.value)
  model, cfg, params = _models(_MODEL.value, _DTYPE.value)
  batch, new = _BATCH.value, _NEW.value
  # Regular (non-special) ids: Qwen2's special tokens start at 151643.
  top_id = min(cfg.vocab_size, 151643)
  rng = np.random.RandomState(0)
  lengths = rng.randint(_PROMPT // 2, _PROMPT + 1, batch)
  prompts = [rng.randint(10, top_id, n).tolist() for n in lengths]
  tokens_BT, mask_BT = padding.left_pad(prompts, pad_id=0, length=_PROMPT)

  def run_ours(seed, sample_cfg):
    out = sampling.generate(params, jnp.asarray(tokens_BT), jnp.asarray(mask_BT),
                            jax.random.key(seed), model_cfg=cfg, cfg=sample_cfg)
    return jax.block_until_ready(out)

  def run_hf(m):
    def run(seed):
      torch.manual_seed(seed)
      with torch.no_grad():
        return m.generate(input_ids=torch.tensor(tokens_BT, dtype=torch.long),
                          attention_mask=torch.tensor(mask_BT, dtype=torch.long),
                          do_sample=True, top_p=0.9, top_k=0, temperature=1.0,
                          max_new_tokens=new, min_new_tokens=new, pad_token_id=0, eos_token_id=None)
    return run

  variants = {"top-p": sampling.SampleConfig(max_new_tokens=new, top_p=0.9)}
  t0 = time.perf_counter()
  run_ours(100, variants["top-p"])
  compile_s = time.perf_counter() - t0
  seeds = itertools.count()  # A fresh key (torch seed) for every timed call.
  if _TOP_K.value:
    variants["top-k"] = sampling.SampleConfig(max_new_tokens=new, top_k=_TOP_K.value)
    run_ours(100, variants["top-k"])  # Compiles the top-k variant.
  # The variants' calls alternate, so that a slow moment of this shared host falls on both
  # rather than on whichever ran second (run one after the other, noise alone moved their
  # ratio by ±15%).
  times = {k: [] for k in variants}
  for _ in range(_REPEATS.value):
    for k, sample_cfg in variants.items():
      times[k].append(median_time(lambda: run_ours(next(seeds), sample_cfg), 1))
  ours_s = statistics.median(times["top-p"])
  hf_s = {}
  for dt in _HF_DTYPES.value:
    m = model if dt == "float32" else model.to(getattr(torch, dt))
    run_hf(m)(100)  # Warm-up.
    hf_s[dt] = median_time(lambda: run_hf(m)(next(seeds)), _REPEATS.value)
  n_tok = batch * new
  print(f"devices: {jax.devices()}  torch threads: {torch.get_num_threads()}  "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"model: {_MODEL.value or 'random bench model'} ({cfg.num_layers} layers, hidden "
        f"{cfg.hidden_size}, vocab {cfg.vocab_size})")
  print(f"shape: batch {batch}, prompt <= {_PROMPT}, new {new}, top-p 0.9, r3jax dtype {_DTYPE.value}")
  print(f"r3jax {_DTYPE.value:9s}: {n_tok / ours_s:9.1f} tok/s  ({ours_s * 1e3:.0f} ms; first call "
        f"with compile {compile_s:.1f} s)")
  if _TOP_K.value:
    topk_s = statistics.median(times["top-k"])
    print(f"r3jax top-k {_TOP_K.value:<3d}: {n_tok / topk_s:7.1f} tok/s  ({topk_s * 1e3:.0f} ms)   "
          f"top-k time / top-p time: {topk_s / ours_s:.2f}")
  for dt, s in hf_s.items():
    print(f"HF    {dt:9s}: {n_tok / s:9.1f} tok/s  ({s * 1e3:.0f} ms)   r3jax / HF {dt}: {s / ours_s:.2f}x")


if __name__ == "__main__":
  app.run(main)
