r"""Training entry point: one config file per recipe, run by trainers/stages.py.

  python -m r3jax.train --config=configs/sft_qwen.py:tiny --workdir=/tmp/sft
  python -m r3jax.train --config=configs/sft_qwen.py --config.optim.lr=1e-5 --workdir=...

The config is validated (trainers/validate.py) before any work. Restarting with the same
--workdir resumes from its latest checkpoint.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from r3jax.core import cli, host_memory, paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:preset].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, plots).")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", "", "Persistent XLA compilation cache: a directory, '' for "
    "$JAX_COMPILATION_CACHE_DIR if set, else <workdir>/compile_cache (a restart or rerun "
    "then skips recompiling), or 'off'.")


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    sys.exit("error: --config=configs/<recipe>.py[:preset] is required")
  workdir = _WORKDIR.value or os.path.join("runs", config.name)
  host_memory.configure()
  cli.maybe_initialize_distributed()
  cli.compilation_cache(_COMPILE_CACHE.value or os.environ.get("JAX_COMPILATION_CACHE_DIR")
                        or os.path.join(workdir, "compile_cache"))
  from r3jax.trainers import stages, validate  # After jax.distributed is up.
  with cli.user_errors():
    validate.validate(config)
    paths.check_writable(workdir, "--workdir")  # Before anything is written there.
    stages.run(config, workdir)
  print(f"done: logs, plots and checkpoints are in {workdir}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
