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

--task=dpo does the same for a comparison file and DPO's step (sigmoid loss, the reference
log-probs precomputed): each response a row of --seq tokens, whole (prompt_len=0) and with
the prompt split (prompt_len=seq/2, DPO's default), against packed rows of 2·seq tokens
(pipeline.pack_comparisons), and prints comparisons per second besides real tokens.

  python -m bench.train_step --task=dpo --data=../shared/data/dpo_en_demo.json \
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
_TASK = flags.DEFINE_enum("task", "sft", ["sft", "dpo"], "--data's rows: conversations (SFT) "
                          "or comparisons (DPO).")


def data_batches(cfg, seq: int, batch: int, steps: int):
  """{layout: `steps` batches of --data's rows each, in file order} for --task."""
  import numpy as np
  from r3jax.data import pipeline, readers, tokenizer as tokenizer_lib
  tok = tokenizer_lib.load(_TOKENIZER.value)
  fold = lambda b: {**b, "tokens": (b["tokens"] % cfg.vocab_size).astype(np.int32)}
  take = lambda rows, i: rows[i * batch:(i + 1) * batch]
  if _TASK.value == "dpo":
    rows = readers.load_comparisons(_DATA.value, skip_bad=True).rows
    packs = pipeline.PackedRows(rows, pipeline.pack_comparisons(tok, rows, seq)[0])
    out = {f"padded{' (prompt split)' * bool(p)}": [fold(pipeline.ranked_batch(tok, take(rows, i), seq, p)[0])
                                                     for i in range(steps)] for p in (0, seq // 2)}
    out["packed"] = [fold(pipeline.packed_comparisons(tok, [r["pack"] for r in take(packs, i)], seq,
                                                      packs.slots)[0]) for i in range(steps)]
    for b in (b for batches in out.values() for b in batches):  # As loss.precompute_ref leaves it.
      b["ref_logp"] = np.full(b["valid"].shape + (2,) if "valid" in b else (len(b["tokens"]), 2),
                              -300.0, np.float32)
  else:
    rows = [r["messages"] for r in readers.load_conversations(_DATA.value, skip_bad=True).rows]
    packs = pipeline.PackedRows(rows, pipeline.pack(tok, rows, seq)[0])
    out = {"padded": [fold(pipeline.sft_batch(tok, take(rows, i), seq)[0]) for i in range(steps)],
           "packed": [fold(pipeline.packed_batch(tok, [r["pack"] for r in take(packs, i)], seq)[0])
                      for i in range(steps)]}
  if len(packs) < steps * batch or len(rows) < steps * batch:
    raise SystemExit(f"--data has too few rows for {steps} steps of {batch}")
  return out


def real_tokens_per_s(step_fn, state, batches, mesh):
  """(real tokens/s, rows (conversations or comparisons)/s over the batches after a
  compile, padding fraction, state)."""
  import time as time_lib
  import jax
  from r3jax.core import sharding
  put = lambda b: sharding.put_batch({k: v[None] for k, v in b.items()}, mesh, 1)
  count = lambda b: (int(b["valid"].sum()) if "valid" in b else int((b["segment_ids"].max(-1)).sum())
                     if "segment_ids" in b else len(b["tokens"]))
  state, m = step_fn(state, put(batches[0]))
  jax.block_until_ready(m)
  real = total = rows = 0
  t0 = time_lib.perf_counter()
  for b in batches:
    state, m = step_fn(state, put(b))
    real, total, rows = real + int(b["attn_mask"].sum()), total + b["attn_mask"].size, rows + count(b)
  jax.block_until_ready(m)
  dt = time_lib.perf_counter() - t0
  return real / dt, rows / dt, 1 - real / total, state


def compare_layouts(cfg, tx, policy, mesh, rules):
  """--data: the same rows padded and packed (and, for DPO, prompt-split), one after the
  other from the same initial state; prints real tokens/s and rows/s of each."""
  import ml_collections
  from r3jax.trainers import harness, sft, state as state_lib, step as step_lib
  b, t = _BATCH.value, _SEQ.value
  task_loss = functools.partial(sft.loss_fn, model_cfg=cfg)
  if _TASK.value == "dpo":
    from r3jax.trainers import dpo
    task_loss = functools.partial(dpo.dpo_loss, model_cfg=cfg, loss_config=ml_collections.ConfigDict(
        dict(type="sigmoid", beta=0.1, label_smoothing=0.0)))
  out = {}
  with harness.mesh_rules(mesh, rules):
    for mode, batches in data_batches(cfg, t, b, _STEPS.value).items():
      state, shardings = state_lib.init_state(policy, tx, mesh, rules, seed=0)  # Donated by each.
      loss = functools.partial(task_loss, prompt_len=t // 2) if "split" in mode else task_loss
      out[mode] = real_tokens_per_s(step_lib.make_train_step(loss, tx, shardings, mesh), state,
                                    batches, mesh)[:3]
  rows = "comparisons" if _TASK.value == "dpo" else "conversations"
  for mode, (rate, rows_rate, pad) in out.items():
    print(f"{mode}: {rate:,.0f} real tokens/s, {rows_rate:.2f} {rows}/s, padding {pad:.1%} of the batch")
  for mode in (m for m in out if m != "packed"):
    print(f"packed / {mode}: real tokens/s {out['packed'][0] / out[mode][0]:.2f}x, {rows}/s "
          f"{out['packed'][1] / out[mode][1]:.2f}x (batch {b} x seq {t}, {_STEPS.value} steps each, "
          f"{_DTYPE.value})")


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
  if _DATA.value:
    return compare_layouts(cfg, tx, policy, mesh, rules)
  state, shardings = state_lib.init_state(policy, tx, mesh, rules, seed=0)
  step_fn = step_lib.make_train_step(functools.partial(sft.loss_fn, model_cfg=cfg), tx, shardings, mesh)
  b, t = _BATCH.value, _SEQ.value
  rng = np.random.RandomState(0)
  batch = {"tokens": rng.randint(0, cfg.vocab_size, (1, b, t + 1)).astype(np.int32),
           "loss_mask": np.ones((1, b, t + 1), np.int32), "attn_mask": np.ones((1, b, t + 1), np.int32)}
  batch = sharding.put_batch(batch, mesh, 1)

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
