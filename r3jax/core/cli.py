"""What the command-line mains share: flag parsing whose errors are one line, multi-host
start-up, and user mistakes reported as `error: ...` with exit status 2."""

import contextlib
import math
import os
import sys

from absl import flags, logging

# Quiet by default: transformers' advisory messages ("PyTorch was not found") are not
# actionable here (the library never needs torch); a user may still set their own level.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from r3jax.core.errors import ConfigError, DataError, TrainingError


def fail(msg: str) -> None:
  """A user mistake: one line on stderr, exit status 2."""
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl parsing, with config errors as one line instead of a traceback; --help exits 0."""
  if any(a in ("--help", "-h", "--helpshort", "--helpfull", "-?") for a in argv[1:]):
    flags.FLAGS.mark_as_parsed()  # Not FLAGS(argv): required flags would fail validation.
    print(flags.FLAGS.main_module_help() if "--helpfull" not in argv else flags.FLAGS)
    sys.exit(0)
  for arg in argv:
    if arg.startswith("--config=") and not os.path.exists(arg[len("--config="):].split(":")[0]):
      fail(f"{arg}: no such config file")
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    # A failing get_config arrives as a traceback in the message; its last line says why.
    lines = [l for l in str(e).splitlines() if l.strip()]
    why = lines[-1].split(": ", 1)[-1] if len(lines) > 1 else str(e)
    flag = lines[0].removeprefix("flag ").split(": Error")[0] if len(lines) > 1 else ""
    fail(f"{flag + ': ' if flag else ''}{why}\nPass --helpfull to see the flags.")
  except (AttributeError, KeyError) as e:  # An override names a field the config does not have.
    bad = [a for a in argv if a.startswith("--config.")]
    name = str(e.args[0] if e.args else e).strip("'\"\\")
    fail(f"unknown config field '{name}' in {' '.join(bad)}")
  except (ValueError, TypeError, FileNotFoundError) as e:
    fail(f"bad --config: {e}")
  if not any(a.split("=")[0] in ("--verbosity", "-v", "--v") for a in argv[1:]):
    # WARNING unless asked: absl's INFO lines (the TPU-backend probe on a CPU machine,
    # orbax's per-checkpoint notes) are not actionable; warnings still show.
    logging.set_verbosity(logging.WARNING)
  return rest


def in_interval(value, interval: str) -> bool:
  """A finite number (not a bool) in `interval`, written "(0, 1]": "(" open, "[" closed."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return False
  lo, hi = (float(x) for x in interval[1:-1].split(","))
  return ((lo <= value if interval[0] == "[" else lo < value) and
          (value <= hi if interval[-1] == "]" else value < hi))


def check_numbers(ranges: dict, hints: dict | None = None) -> None:
  """Each flag of `ranges` ({name: "(0, 1]"}: "(" open, "[" closed, as trainers/validate's
  RANGES) finite and in its interval, else a ConfigError naming the first one outside (with
  its `hints` entry). absl takes nan and inf as floats, and a value out of range would
  otherwise run as another setting (--top_p=1.5: off) or fail after the work began."""
  for name, interval in ranges.items():
    value = flags.FLAGS[name].value
    if not in_interval(value, interval):
      kind = "an integer" if isinstance(value, int) else "a finite number"
      raise ConfigError(f"--{name}={value}: expected {kind} in {interval}{(hints or {}).get(name, '')}")


def check_unique(name: str, keys=None) -> None:
  """A list flag with at least one entry and none twice (`keys`, default the entries: what
  the command names its runs or rows by): --modes=r3,r3 would otherwise run one mode."""
  values = flags.FLAGS[name].value
  keys = list(values if keys is None else keys)
  if not values:
    raise ConfigError(f"--{name}: give at least one")
  i = next((i for i, k in enumerate(keys) if k in keys[:i]), None)
  if i is not None:
    first = values[keys.index(keys[i])]
    said = f"{first!r} given twice" if first == values[i] else f"two entries named {keys[i]!r}"
    raise ConfigError(f"--{name}={','.join(values)}: {said}")


def check_output(name: str, is_dir: bool = False) -> None:
  """The path of flag `name` can be written: a file whose directory exists, or a directory
  (made with its missing parents). Checked before the work whose results it holds: an
  existing file for a directory or a missing parent would otherwise fail at the very end."""
  path, want = flags.FLAGS[name].value, "directory" if is_dir else "file"
  if not path:
    raise ConfigError(f"--{name} is empty: give a {want}")
  if os.path.exists(path):
    if os.path.isdir(path) != is_dir:
      raise ConfigError(f"--{name}={path}: exists and is not a {want}")
    where = path
  else:
    where = os.path.dirname(os.path.abspath(path))
    while is_dir and not os.path.exists(where):  # os.makedirs makes these.
      where = os.path.dirname(where)
    if not os.path.isdir(where):
      state = "is not a directory" if os.path.exists(where) else "does not exist"
      raise ConfigError(f"--{name}={path}: {where} {state}")
  if not os.access(where, os.W_OK | (os.X_OK if os.path.isdir(where) else 0)):
    raise ConfigError(f"--{name}={path}: {where} is not writable")


@contextlib.contextmanager
def user_errors():
  """A ConfigError, DataError or missing file ends the command with its one-line message
  and status 2; a TrainingError (the run diverged) with status 1; Ctrl-C with 130."""
  try:
    yield
  except (ConfigError, DataError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except TrainingError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves, harness.save).
    print("interrupted (Ctrl-C); a training run saves only once its loop has started",
          file=sys.stderr)
    sys.exit(130)


def compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache in `path` ("off": none). Programs that took over a
  second to compile are stored; a resumed or repeated run loads them instead (on TPU the
  first PPO iteration's compile is minutes for large models)."""
  if path == "off":
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # The user's, else 1 s.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


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
