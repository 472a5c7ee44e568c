"""SFT training throughput and model-FLOPs utilisation (MFU) on this machine.

The bench shape of the foundation issue (vocab 32000, hidden 512, 8 layers, 8 heads, 2 KV
heads, intermediate 1408) at sequence length 512. MFU = (6·N·tokens + attention FLOPs)
/ step time / peak, where N counts the parameters used in matmuls (the LM head included,
the embedding gather not), attention FLOPs are PaLM's 12·L·H·E·T per token, and the peak is
what a jitted fp32 matmul reaches in this same run.

  python -m bench.train_step [--batch=8] [--seq=512] [--steps=5] [--dtype=float32] [--remat]

With --data (a conversation file) and --tokenizer (an HF directory, e.g. the real Qwen
tokenizer), it times the same steps on that data padded (one conversation per row, as
data.packing=False) and packed (pipeline.pack, data.packing=True), in one run, and prints
real (non-padding) tokens per second and the padding fraction of each. Token ids are
folded into the bench model's vocabulary: the step's cost does not depend on their values.

  python -m bench.train_step --data=../shared/data/alpaca_en_demo.json \
      --tokenizer=/path/to/Qwen2.5-0.5B-Instruct --seq=1024 --batch=4 --steps=6
"""

import functools
import time

from absl import app, flags

from bench.peaks import matmul_peak, median_time

_BATCH = flags.DEFINE_integer("batch", 8, "Sequences per step.")
_SEQ = flags.DEFINE_integer("seq", 512, "Sequence length.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (median reported).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (params fp32).")
_REMAT = flags.DEFINE_bool("remat", False, "Per-layer rematerialisation.")
_DATA = flags.DEFINE_string("data", "", "Conversations: time padded against packed rows of them.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "HF tokenizer directory for --data.")


def data_batches(cfg, seq: int, batch: int, steps: int):
  """{padded, packed}: `steps` batches of --data's conversations each, in file order."""
  import numpy as np
  from r3jax.data import pipeline, readers, tokenizer as tokenizer_lib
  tok = tokenizer_lib.load(_TOKENIZER.value)
  convs = [r["messages"] for r in readers.load_conversations(_DATA.value, skip_bad=True).rows]
  fold = lambda b: {**b, "tokens": (b["tokens"] % cfg.vocab_size).astype(np.int32)}
  padded = [fold(pipeline.sft_batch(tok, convs[i * batch:(i + 1) * batch], seq)[0]) for i in range(steps)]
  packs, _ = pipeline.pack(tok, convs, seq)
  packed = [fold(pipeline.packed_batch(packs[i * batch:(i + 1) * batch], seq, tok.pad_token_id))
            for i in range(steps)]
  if len(packs) < steps * batch or len(convs) < steps * batch:
    raise SystemExit(f"--data has too few conversations for {steps} steps of {batch}")
  return {"padded": padded, "packed": packed}


def real_tokens_per_s(step_fn, state, batches, mesh):
  """(real tokens/s over the batches after a compile, padding fraction, state)."""
  import time as time_lib
  import jax
  from r3jax.core import sharding
  put = lambda b: sharding.put_batch({k: v[None] for k, v in b.items()}, mesh, 1)
  state, m = step_fn(state, put(batches[0]))
  jax.block_until_ready(m)
  real = total = 0
  t0 = time_lib.perf_counter()
  for b in batches:
    state, m = step_fn(state, put(b))
    real, total = real + int(b["attn_mask"].sum()), total + b["attn_mask"].size
  jax.block_until_ready(m)
  return real / (time_lib.perf_counter() - t0), 1 - real / total, state


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np

  from r3jax.core import optim, sharding
  from r3jax.models import qwen
  from r3jax.trainers import harness, sft, state as state_lib, step as step_lib

  cfg = qwen.preset("bench", dtype=_DTYPE.value, remat=_REMAT.value)
  ocfg = ml_collections.ConfigDict(dict(lr=1e-4, schedule="constant", warmup_steps=0,
                                        warmup_ratio=0.0, min_lr_ratio=0.0, b1=0.9, b2=0.95,
                                        eps=1e-8, weight_decay=0.1, grad_clip=1.0))
  tx = optim.make(ocfg, 100)
  mesh = sharding.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
  rules = sharding.DEFAULT_RULES
  policy = state_lib.Policy(cfg, tokenizer=None, hf_dir=None)
  state, shardings = state_lib.init_state(policy, tx, mesh, rules, seed=0)
  step_fn = step_lib.make_train_step(functools.partial(sft.loss_fn, model_cfg=cfg), tx, shardings, mesh)
  b, t = _BATCH.value, _SEQ.value
  rng = np.random.RandomState(0)
  batch = {"tokens": rng.randint(0, cfg.vocab_size, (1, b, t + 1)).astype(np.int32),
           "loss_mask": np.ones((1, b, t + 1), np.int32), "attn_mask": np.ones((1, b, t + 1), np.int32)}
  batch = sharding.put_batch(batch, mesh, 1)
  if _DATA.value:
    with harness.mesh_rules(mesh, rules):
      out = {}
      for mode, batches in data_batches(cfg, t, b, _STEPS.value).items():
        step = step_lib.make_train_step(functools.partial(sft.loss_fn, model_cfg=cfg), tx, shardings, mesh)
        out[mode] = real_tokens_per_s(step, state, batches, mesh)[:2]
        state, shardings = state_lib.init_state(policy, tx, mesh, rules, seed=0)  # Donated.
    for mode, (rate, pad) in out.items():
      print(f"{mode}: {rate:,.0f} real tokens/s, padding {pad:.1%} of the batch")
    print(f"packed / padded real tokens/s: {out['packed'][0] / out['padded'][0]:.2f}x "
          f"(batch {b} x seq {t}, {_STEPS.value} steps each, {_DTYPE.value})")
    return

  holder = {"state": state}

  def one_step():
    holder["state"], m = step_fn(holder["state"], batch)
    jax.block_until_ready(m)

  with harness.mesh_rules(mesh, rules):
    t0 = time.perf_counter()
    one_step()
    compile_s = time.perf_counter() - t0
    step_s = median_time(one_step, _STEPS.value)

    # Where the time goes: forward only, and forward + backward without the update.
    loss = functools.partial(sft.loss_fn, model_cfg=cfg, deterministic=True)
    mb = jax.tree.map(lambda x: x[0], batch)
    fwd = jax.jit(lambda p: loss(p, mb, jax.random.key(0))[0])
    grad = jax.jit(jax.grad(lambda p: loss(p, mb, jax.random.key(0))[0]))
    fwd(holder["state"]["params"]).block_until_ready()
    jax.block_until_ready(grad(holder["state"]["params"]))
    fwd_s = median_time(lambda: fwd(holder["state"]["params"]).block_until_ready(), _STEPS.value)
    grad_s = median_time(lambda: jax.block_until_ready(grad(holder["state"]["params"])), _STEPS.value)

  n_matmul = qwen.param_count(holder["state"]["params"]) - cfg.vocab_size * cfg.hidden_size
  tokens = b * t
  attn = 12 * cfg.num_layers * cfg.num_heads * cfg.head_size * t
  flops = (6 * n_matmul + attn) * tokens
  peak = matmul_peak(jnp.dtype(_DTYPE.value))
  print(f"devices: {jax.devices()}")
  print(f"shape: batch {b} x seq {t}, {n_matmul / 1e6:.1f}M matmul params, dtype {_DTYPE.value}, remat {_REMAT.value}")
  print(f"step: {step_s * 1e3:.0f} ms (compile {compile_s:.1f} s) -> {tokens / step_s:,.0f} tokens/s")
  print(f"split: forward {fwd_s * 1e3:.0f} ms, forward+backward {grad_s * 1e3:.0f} ms, "
        f"optimizer and rest {max(step_s - grad_s, 0) * 1e3:.0f} ms")
  print(f"model FLOPs/step {flops / 1e9:.1f} G; achieved {flops / step_s / 1e9:.1f} GFLOP/s; "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s")
  print(f"MFU: {flops / step_s / peak:.1%}")


if __name__ == "__main__":
  app.run(main)
