"""The library never imports torch (torch is only a test-time reference)."""

import pkgutil
import subprocess
import sys

import r3jax


def test_library_does_not_import_torch():
  mods = [m.name for m in pkgutil.walk_packages(r3jax.__path__, "r3jax.")]
  assert {"r3jax.sampling", "r3jax.models.qwen", "r3jax.models.hf"} <= set(mods)
  code = ("import importlib, sys\n"
          f"for m in {mods!r}: importlib.import_module(m)\n"
          "from r3jax import tokenizer; tokenizer.tiny()\n"
          "assert 'torch' not in sys.modules, 'torch was imported'\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
