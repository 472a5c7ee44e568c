"""Orbax checkpoints of the train state plus the data iterator, and SIGTERM/SIGINT handling.

A checkpoint holds two items: `state` (params, optimizer state, step, PRNG key data; any
pytree of arrays) and `data` (the iterator position as JSON). Restoring both makes a
restarted run consume the same batches in the same order as an uninterrupted one.
"""

import contextlib
import os
import signal

from absl import logging as absl_logging
from etils import epath
import jax
import orbax.checkpoint as ocp


def _absolute(path: str) -> epath.Path:
  """Orbax needs absolute paths; remote ones (gs://...) are left as they are."""
  return epath.Path(path if "://" in str(path) else os.path.abspath(path))


def manager(workdir: str, save_every: int, max_to_keep: int, async_save: bool = True):
  path = _absolute(workdir) / "checkpoints"
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=max(save_every, 1),
      enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(path, options=options, item_names=("state", "data"))


def save(mngr, step: int, state, data_state: dict, force: bool = False) -> bool:
  return mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)


def restore(mngr, abstract_state, step: int | None = None):
  """(state, data_state, step) of the latest (or given) checkpoint, or None if none."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  out = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return out["state"], out["data"], step


def abstract_like(state, shardings):
  """ShapeDtypeStructs carrying the target shardings, for a sharded restore."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def restore_params_from(path: str, abstract_params):
  """Params from another run's workdir (its latest checkpoint), into the given shardings."""
  ckpt_dir = _absolute(path)
  if (ckpt_dir / "checkpoints").exists():
    ckpt_dir = ckpt_dir / "checkpoints"
  if not ckpt_dir.exists():
    raise FileNotFoundError(f"init_from={path}: no such checkpoint directory")
  with quiet_logs():  # Read-only managers warn that they will not save.
    mngr = ocp.CheckpointManager(ckpt_dir, item_names=("state", "data"),
                                 options=ocp.CheckpointManagerOptions(read_only=True))
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"init_from={path}: no checkpoint in {ckpt_dir}")
  # Only the params subtree: optimizer state and step belong to the new run.
  target = {"params": abstract_params}
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, partial_restore=True,
      restore_args=jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target))))
  return restored["state"]["params"]


def _reader(ckpt_dir):
  with quiet_logs():  # Read-only managers warn that they will not save.
    return ocp.CheckpointManager(ckpt_dir, item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                          "data": ocp.JsonCheckpointHandler()},
                                 options=ocp.CheckpointManagerOptions(read_only=True))


@contextlib.contextmanager
def quiet_logs():
  """Silences orbax's and tensorstore's absl logging: its read-only notices, and the
  traceback it logs per failed read (callers report a bad checkpoint in one line)."""
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.FATAL)
  try:
    yield
  finally:
    absl_logging.set_verbosity(previous)


def param_keys(path: str) -> set[str]:
  """Top-level names in the params of a run's latest checkpoint (empty for an HF dir)."""
  ckpt_dir = _absolute(path) / "checkpoints"
  if not ckpt_dir.exists():
    return set()
  mngr = _reader(ckpt_dir)
  step = mngr.latest_step()
  return set() if step is None else set(mngr.item_metadata(step)["state"]["params"])


def load_host(workdir: str, step: int | None = None):
  """A run's checkpointed state as host numpy arrays, whatever topology wrote it: for
  tools and tests on one machine reading a checkpoint saved by a mesh."""
  mngr = _reader(_absolute(workdir) / "checkpoints")
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{workdir}: no checkpoint")
  meta = mngr.item_metadata(step)["state"]
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return jax.device_get(out["state"])


class Preemption:
  """Turns SIGTERM (a preemption, a launcher's stop) and SIGINT (Ctrl-C) into a flag the
  training loop polls, so it can save and exit cleanly. A second Ctrl-C stops at once."""

  def __init__(self):
    self.requested, self.signum = False, None
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested, self.signum = True, signum

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name

  @property
  def exit_status(self) -> int:
    return 128 + self.signum  # The shell's convention: 143 for SIGTERM, 130 for SIGINT.

  def restore_handler(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def move_aside(workdir: str, step: int) -> str:
  """Moves checkpoints/<step> to checkpoints_corrupt/<step> (process 0; the others wait), so
  the manager no longer sees it and nothing is deleted."""
  src = _absolute(workdir) / "checkpoints" / str(step)
  dst = _absolute(workdir) / "checkpoints_corrupt" / str(step)
  if jax.process_index() == 0:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():  # An earlier copy of the same step: keep both.
      dst = dst.parent / f"{step}.{len(list(dst.parent.iterdir()))}"
    src.rename(dst)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"move_aside_{step}")
  return str(dst)


def exists(workdir: str) -> bool:
  return (_absolute(workdir) / "checkpoints").is_dir()
