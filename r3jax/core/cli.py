"""What the command-line mains share: flag parsing whose errors are one line, multi-host
start-up, and user mistakes reported as `error: ...` with exit status 2."""

import contextlib
import os
import sys

from absl import flags

from r3jax.core.errors import ConfigError, DataError


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


@contextlib.contextmanager
def user_errors():
  """A ConfigError, DataError or missing file ends the command with its one-line message."""
  try:
    yield
  except (ConfigError, DataError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


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
