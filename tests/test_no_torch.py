"""The library never imports torch (torch is only a test-time reference)."""

import pkgutil
import subprocess
import sys

import r3jax
from helpers import why


def test_library_does_not_import_torch():
  mods = [m.name for m in pkgutil.walk_packages(r3jax.__path__, "r3jax.")]
  assert {"r3jax.models.sampling", "r3jax.models.qwen", "r3jax.models.hf"} <= set(mods)
  # Command modules define absl flags at import, some with the same names (--out, --reward);
  # each one's flags are dropped after its import, as if it ran in its own process.
  code = ("import importlib, sys\nfrom absl import flags\n"
          f"for m in {mods!r}:\n"
          "  before = set(flags.FLAGS)\n"
          "  importlib.import_module(m)\n"
          "  for name in set(flags.FLAGS) - before: delattr(flags.FLAGS, name)\n"
          "from r3jax.data import tokenizer; tokenizer.tiny()\n"
          "assert 'torch' not in sys.modules, 'torch was imported'\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, why(out)
