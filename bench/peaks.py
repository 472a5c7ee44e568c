"""This machine's own ceilings, measured in the same run as a benchmark: the fp32 (or bf16)
matmul peak and the read bandwidth. No flags here, so every bench can import it."""

import statistics
import time


def median_time(fn, n):
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def matmul_peak(dtype, n=2048, repeats=5):
  """FLOP/s of a jitted n×n matmul."""
  import jax
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  return 2 * n ** 3 / median_time(lambda: f(a).block_until_ready(), repeats)


def bandwidth(n_bytes=1 << 28, repeats=10):
  """Read bandwidth in bytes/s: a jitted sum over a 256 MiB array (decoding, too, only
  reads the weights)."""
  import jax
  import jax.numpy as jnp
  x = jnp.ones((n_bytes // 4,), jnp.float32)
  f = jax.jit(jnp.sum)
  f(x).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(repeats):
    f(x).block_until_ready()
  return n_bytes * repeats / (time.perf_counter() - t0)
