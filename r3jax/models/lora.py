"""LoRA as a pure function on parameter trees: W' = W + (alpha/r) · A @ B.

Adapters live in their own tree, keyed like the params but holding only the target
kernels, so the optimizer, the checkpoint and the gradient see nothing else. The frozen
base is the reference policy of PPO: "adapters off" is the base tree itself, so no second
copy of the model is kept. Merging costs one rank-r matmul per target kernel per step.
"""

import math

from flax import traverse_util
import jax
import jax.numpy as jnp


def init(key, params, targets=("q_kernel", "v_kernel"), rank: int = 8) -> dict:
  """Adapters for every kernel whose name is in `targets`: A random, B zero, so the
  merged model starts equal to the base."""
  flat = traverse_util.flatten_dict(params)
  out = {}
  paths = [p for p in flat if p[-1] in targets]
  if not paths:
    raise ValueError(f"LoRA targets {targets} match no parameter; names end in e.g. 'q_kernel'")
  for i, path in enumerate(sorted(paths)):
    w = flat[path]
    d_in, d_out = w.shape[0], math.prod(w.shape[1:])
    # Kaiming-uniform-like scale for A, as in the LoRA paper's reference code.
    a = jax.random.uniform(jax.random.fold_in(key, i), (d_in, rank), jnp.float32,
                           -1.0, 1.0) / math.sqrt(d_in)
    out[path] = {"a": a, "b": jnp.zeros((rank, d_out), jnp.float32)}
  return traverse_util.unflatten_dict(out)


def merge(params, adapters, alpha: float) -> dict:
  """The base params with each adapted kernel replaced by W + (alpha/r)·A@B."""
  flat = traverse_util.flatten_dict(params)
  ad = traverse_util.flatten_dict(adapters, is_leaf=lambda _, x: isinstance(x, dict) and "a" in x)
  for path, ab in ad.items():
    w = flat[path]
    scale = alpha / ab["a"].shape[1]
    delta = (ab["a"] @ ab["b"]).reshape(w.shape) * scale
    flat[path] = (w.astype(jnp.float32) + delta).astype(w.dtype)
  return traverse_util.unflatten_dict(flat)
