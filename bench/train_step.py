"""SFT training throughput and model-FLOPs utilisation (MFU) on this machine.

The bench shape of the foundation issue (vocab 32000, hidden 512, 8 layers, 8 heads, 2 KV
heads, intermediate 1408) at sequence length 512. MFU = (6·N·tokens + attention FLOPs)
/ step time / peak, where N counts the parameters used in matmuls (the LM head included,
the embedding gather not), attention FLOPs are PaLM's 12·L·H·E·T per token, and the peak is
what a jitted fp32 matmul reaches in this same run.

  python -m bench.train_step [--batch=8] [--seq=512] [--steps=5] [--dtype=float32] [--remat]
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
