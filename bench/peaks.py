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


def best_time(fn, n):
  """The fastest of n runs: a ceiling is what the machine reaches, and slower runs only
  add the noise of other work on a shared 2-core host."""
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def matmul_peak(dtype, sizes=(1024, 2048, 3072), repeats=5):
  """FLOP/s of a jitted n×n matmul: the best over several sizes and runs, since one size
  can land on a bad tiling or a run on a busy moment (one run measured half the peak)."""
  import jax
  best = 0.0
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = max(best, 2 * n ** 3 / best_time(lambda: f(a).block_until_ready(), repeats))
  return best


def bandwidth(sizes=(1 << 28, 1 << 30, 1 << 31), repeats=5):
  """Read bandwidth in bytes/s (decoding, too, only reads the weights): the best jitted sum
  over arrays of 256 MiB to 2 GiB; the 256 MiB probe alone read 30–40 GB/s where larger
  arrays read up to 73."""
  import jax
  import jax.numpy as jnp
  best = 0.0
  for n_bytes in sizes:
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    best = max(best, n_bytes / best_time(lambda: f(x).block_until_ready(), repeats))
    x = None  # Freed before the next, larger array.
  return best

