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

With --workload=ragged, the rollout engines against each other (issue #34): --batch prompts,
--n samples each, at --slots sequences decoding at once for both (the same KV-cache rows;
`static` runs slots // n prompts per batch). Each sequence's length is drawn as in RL
rollouts: a share (--clipped) runs to --new_tokens, the rest are log-uniform between
new_tokens / 32 and new_tokens, and each sequence stops there (engines' max_new_N), so both
engines make exactly the same tokens. Printed: useful (non-padding) tokens/s of each, their
ratio, and the prefill of the n samples shared (one per prompt) against one per sample.

  python -m bench.sampler --workload=ragged [--model=DIR] [--batch=8 --n=8 --slots=16]
      [--new_tokens=128 --prompt_len=64] [--repeats=3]
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
_WORKLOAD = flags.DEFINE_enum("workload", "hf", ["hf", "ragged"], "hf: r3jax against HF generate. "
                               "ragged: the engines against each other (engines.py).")
_N = flags.DEFINE_integer("n", 8, "ragged: samples per prompt.")
_SLOTS = flags.DEFINE_integer("slots", 16, "ragged: sequences decoding at once, the same KV-cache "
                              "rows for both engines.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "ragged: prompt length (left-padded).")
_CLIPPED = flags.DEFINE_float("clipped", 0.1, "ragged: share of sequences that run to --new_tokens.")
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
  if _WORKLOAD.value == "ragged":
    return ragged()
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from r3jax.data import padding
  from r3jax.models import engines, sampling
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
    out = engines.generate(params, jnp.asarray(tokens_BT), jnp.asarray(mask_BT),
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


def ragged():
  import jax
  import jax.numpy as jnp
  import numpy as np

  from r3jax.data import padding
  from r3jax.models import engines, sampling
  from bench.peaks import median_time

  _, cfg, params = _models(_MODEL.value, _DTYPE.value)
  p, n, m, t = _BATCH.value, _N.value, _NEW.value, _PROMPT_LEN.value
  rng = np.random.RandomState(0)
  prompts = [rng.randint(10, min(cfg.vocab_size, 151643), k).tolist() for k in rng.randint(t // 2, t + 1, p)]
  tokens_BT, mask_BT = (jnp.asarray(x) for x in padding.left_pad(prompts, pad_id=0, length=t))
  lengths = np.exp(rng.uniform(np.log(m / 32), np.log(m), p * n)).astype(np.int32) + 1
  lengths = np.where(rng.rand(p * n) < _CLIPPED.value, m, np.minimum(lengths, m))
  useful = int(lengths.sum())

  def run(engine, seed):
    scfg = sampling.SampleConfig(max_new_tokens=m, top_p=0.9, n=n, engine=engine, slots=_SLOTS.value)
    out = jax.block_until_ready(engines.generate(params, tokens_BT, mask_BT, jax.random.key(seed),
                                                 model_cfg=cfg, cfg=scfg, max_new_N=lengths))
    assert int(np.asarray(out.mask_BN).sum()) == useful
    return out

  names = ("static", "continuous")
  for e in names:
    run(e, 100)  # Compiles.
  times = {e: [] for e in names}
  for i in range(_REPEATS.value):  # Alternating, so a slow moment falls on both.
    for e in names:
      times[e].append(median_time(lambda: run(e, i), 1))
  sec = {e: statistics.median(v) for e, v in times.items()}
  pre = jax.jit(engines.prefill, static_argnames=("model_cfg", "cache_len"))
  shared = lambda: jax.block_until_ready(pre(params, cfg, tokens_BT, mask_BT, cache_len=t))
  rep = lambda x: jnp.repeat(x, n, 0)
  each = lambda: jax.block_until_ready(pre(params, cfg, rep(tokens_BT), rep(mask_BT), cache_len=t))
  shared(), each()
  pre_s = {"shared": median_time(shared, _REPEATS.value), "per sample": median_time(each, _REPEATS.value)}
  print(f"devices: {jax.devices()}  model: {_MODEL.value or 'random bench model'} "
        f"({cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}), {_DTYPE.value}")
  print(f"workload: {p} prompts x n={n}, prompt {t}, new <= {m}, slots {_SLOTS.value}, "
        f"{_CLIPPED.value:.0%} run to the limit; mean length {lengths.mean():.1f}, {useful} useful tokens")
  for e in names:
    print(f"{e:10s}: {useful / sec[e]:8.1f} useful tok/s  ({sec[e]:.2f} s; runs {', '.join(f'{x:.2f}' for x in times[e])})")
  print(f"continuous / static useful tok/s: {sec['static'] / sec['continuous']:.2f}x")
  print(f"prefill of {p} prompts x {n} samples: shared {pre_s['shared'] * 1e3:.0f} ms, one per sample "
        f"{pre_s['per sample'] * 1e3:.0f} ms: cut {pre_s['per sample'] / pre_s['shared']:.2f}x")


if __name__ == "__main__":
  app.run(main)
