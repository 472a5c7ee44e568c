"""Sampling throughput: r3jax's jitted decode loop vs HF `generate` (PyTorch CPU).

The bench shape of the foundation issue: a Qwen2-shaped model with vocab 32000, hidden
512, 8 layers, 8 heads, 2 KV heads, intermediate 1408 and random weights; batch 8, prompt
64, 128 new tokens, top-p 0.9. Both run on the same weights in this process, and the
ratio is what to read: absolute tokens/s depend on the machine.

  python -m bench.sampler [--repeats=3] [--threads=2] [--dtype=float32]
"""

import os
import statistics
import tempfile
import time

from absl import app, flags

_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per side (median reported).")
_THREADS = flags.DEFINE_integer("threads", 2, "PyTorch intra-op threads.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "r3jax compute dtype.")
_BATCH, _PROMPT, _NEW = 8, 64, 128


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from transformers import Qwen2Config, Qwen2ForCausalLM

  from r3jax.data import padding
  from r3jax.models import hf, sampling

  torch.set_num_threads(_THREADS.value)
  torch.manual_seed(0)
  hf_cfg = Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1408,
                       num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                       max_position_embeddings=2048, tie_word_embeddings=False)
  model = Qwen2ForCausalLM(hf_cfg).eval()
  with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    cfg, params = hf.load(d, param_dtype=_DTYPE.value, dtype=_DTYPE.value)

  rng = np.random.RandomState(0)
  lengths = rng.randint(_PROMPT // 2, _PROMPT + 1, _BATCH)  # Ragged, left-padded prompts.
  prompts = [rng.randint(10, 32000, n).tolist() for n in lengths]
  tokens_BT, mask_BT = padding.left_pad(prompts, pad_id=0, length=_PROMPT)
  scfg = sampling.SampleConfig(max_new_tokens=_NEW, top_p=0.9)

  def run_ours(seed):
    out = sampling.generate(params, jnp.asarray(tokens_BT), jnp.asarray(mask_BT),
                            jax.random.key(seed), model_cfg=cfg, cfg=scfg)
    return jax.block_until_ready(out)

  def run_hf(seed):
    torch.manual_seed(seed)
    with torch.no_grad():
      return model.generate(input_ids=torch.tensor(tokens_BT, dtype=torch.long),
                            attention_mask=torch.tensor(mask_BT, dtype=torch.long),
                            do_sample=True, top_p=0.9, top_k=0, temperature=1.0,
                            max_new_tokens=_NEW, min_new_tokens=_NEW, pad_token_id=0,
                            eos_token_id=None)

  def timed(fn):
    times = []
    for i in range(_REPEATS.value):
      t0 = time.perf_counter()
      fn(i)
      times.append(time.perf_counter() - t0)
    return statistics.median(times)

  t0 = time.perf_counter()
  run_ours(100)
  compile_s = time.perf_counter() - t0
  run_hf(100)  # Warm-up.
  ours_s, hf_s = timed(run_ours), timed(run_hf)
  n_tok = _BATCH * _NEW
  print(f"devices: {jax.devices()}  torch threads: {torch.get_num_threads()}  "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"shape: batch {_BATCH}, prompt {_PROMPT}, new {_NEW}, top-p 0.9, r3jax dtype {_DTYPE.value}")
  print(f"r3jax  : {n_tok / ours_s:9.1f} tok/s  ({ours_s * 1e3:.0f} ms; first call with compile {compile_s:.1f} s)")
  print(f"HF     : {n_tok / hf_s:9.1f} tok/s  ({hf_s * 1e3:.0f} ms)")
  print(f"ratio r3jax / HF: {hf_s / ours_s:.2f}x")


if __name__ == "__main__":
  app.run(main)
