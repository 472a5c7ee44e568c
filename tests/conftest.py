"""Test-wide settings (the shared helpers are in tests/helpers.py)."""

import os

# One persistent compilation cache for the whole suite, both workers and every command a
# test starts (they inherit the environment): the many runs of one tiny program (a killed
# run and its resume, the same SFT warm start in several tests) compile it once. The
# programs are the same ones, so what a test checks does not change; a fresh clone starts
# with an empty cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax_compile_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # Tiny programs too.

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# Parity tests compare against PyTorch's fp32 matmuls; XLA's CPU default is fp32 too,
# "highest" only makes that explicit for backends that would use bf16 passes.
jax.config.update("jax_default_matmul_precision", "highest")


# The files with the longest tests run first, so that neither worker is left with a long
# file at the end while the other idles (xdist hands out whole files in collection order).
LONGEST_FIRST = ("test_multiprocess.py", "test_preference_trainers.py", "test_harness.py",
                 "test_ppo_trainer.py", "test_rl_pipeline.py", "test_plan.py")


def pytest_collection_modifyitems(items):
  rank = lambda item: (LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
                       else len(LONGEST_FIRST))
  items.sort(key=rank)  # Stable: the order within a file is kept.
