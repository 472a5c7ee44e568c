r"""Training entry point: one config file per recipe, dispatched on `config.trainer`.

  python -m r3jax.train --config=configs/sft_qwen.py:tiny --workdir=/tmp/sft
  python -m r3jax.train --config=configs/sft_qwen.py --config.optim.lr=1e-5 --workdir=...

Restarting with the same --workdir resumes from its latest checkpoint.
"""

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:preset].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, plots).")

TRAINERS = {"sft": "r3jax.trainers.sft", "ppo": "r3jax.trainers.ppo",
            "rm": "r3jax.trainers.preference", "dpo": "r3jax.trainers.preference",
            "rso": "r3jax.trainers.rso", "best_of_n": "r3jax.trainers.rso:train_best_of_n"}


def maybe_initialize_distributed():
  """jax.distributed on multi-host jobs: an explicit coordinator address, a TPU pod's
  workers (TPU_WORKER_HOSTNAMES), or R3JAX_DISTRIBUTED=1 (launch/tpu_vm.py sets it; JAX
  then finds the workers from the TPU metadata)."""
  import jax
  if (os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("R3JAX_DISTRIBUTED") == "1"
      or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",")):
    # Off TPU/SLURM/MPI nothing tells JAX the process count and id, so they come from the
    # environment (localhost CPU runs; tests/test_multiprocess.py).
    ids = {}
    if os.environ.get("JAX_NUM_PROCESSES"):
      ids = dict(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                 process_id=int(os.environ["JAX_PROCESS_ID"]))
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**ids)


def parse_flags(argv):
  """absl parsing, with config errors as one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}\nPass --helpfull to see the flags.")
  except AttributeError as e:  # An override names a field the config does not have.
    bad = [a for a in argv if a.startswith("--config.")]
    sys.exit(f"error: unknown config field {e} in {' '.join(bad)}")
  except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
    sys.exit(f"error: bad --config: {e}")


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    sys.exit("error: --config=configs/<recipe>.py[:preset] is required")
  workdir = _WORKDIR.value or config.get("workdir") or os.path.join("runs", config.get("name", config.trainer))
  if config.trainer not in TRAINERS:
    sys.exit(f"error: config.trainer={config.trainer!r}; known trainers: {sorted(TRAINERS)}")
  maybe_initialize_distributed()
  logging.set_verbosity(logging.WARNING)
  from r3jax import sharding
  from r3jax.data import readers
  module, _, fn = TRAINERS[config.trainer].partition(":")
  try:
    getattr(importlib.import_module(module), fn or "train")(config, workdir)
  except (sharding.ConfigError, readers.DataError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(f"done: logs, plots and checkpoints are in {workdir}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
