"""The run harness every trainer shares, so that a trainer file holds only its algorithm.

  run = harness.open_run(config, workdir, steps)     mesh, rules, writer, checkpoints
  state, order = harness.resume(run, state, rows, batch)   latest checkpoint + data order
  with harness.training(run):                          SIGTERM -> checkpoint, exit 143
    for step in range(start, steps): ... harness.save(run, done, state, order)
  harness.finish(run, ...)                             summary, logs, PNGs (and hf/ export)
"""

import collections
import contextlib
import dataclasses
import math
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax

from r3jax.core import checkpoint, metrics, paths, plots, sharding, workdir_lock
from r3jax.core.errors import TrainingError
from r3jax.data import pipeline
from r3jax.models import hf


@dataclasses.dataclass
class Run:
  """What a trainer's loop needs from the harness; built by open_run."""
  config: Any
  workdir: str
  steps: int
  mesh: jax.sharding.Mesh
  rules: tuple
  writer: metrics.Writer
  mngr: Any  # orbax CheckpointManager
  lock: str | None = None  # The workdir's lock file, held by process 0.
  preempt: checkpoint.Preemption | None = None


def open_run(config, workdir: str, steps: int) -> Run:
  """Locks the workdir (one run each), then opens its logs and checkpoints."""
  lock = workdir_lock.acquire(workdir) if jax.process_index() == 0 else None
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  writer = metrics.Writer(workdir, steps)
  mngr = checkpoint.manager(workdir, config.checkpoint.every, config.checkpoint.max_to_keep,
                            config.checkpoint.async_save)
  return Run(config, workdir, steps, mesh, rules, writer, mngr, lock)


def fresh(run: Run) -> bool:
  """No checkpoint yet: the run starts from its initial weights, not from a resume."""
  return run.mngr.latest_step() is None


def resume(run: Run, state, n_rows: int, batch_size: int):
  """(state, data order): from the latest checkpoint if there is one, else as given.

  The restore target takes each leaf's current sharding, so state comes back laid out
  as the fresh one was.
  """
  seed = run.config.seed
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = checkpoint.restore(run.mngr, abstract)
  if restored is None:
    return state, pipeline.Order(n_rows, batch_size, seed)
  state, data_state, step = restored
  run.writer.drop_after(step)  # Rows logged after the checkpoint are logged again.
  order = pipeline.Order(n_rows, batch_size, seed, data_state["order"])
  run.writer.print(f"resumed from step {int(state['step'])} (data epoch {order.epoch}, batch {order.index})")
  return state, order


@contextlib.contextmanager
def training(run: Run):
  """The loop's context: SIGTERM sets run.preempt (save polls it), and pending
  asynchronous checkpoints are written before the loop's results are used."""
  run.preempt = checkpoint.Preemption()
  try:
    yield
  finally:
    run.mngr.wait_until_finished()  # Also when the loop failed: earlier saves complete.
    run.preempt.restore_handler()


def check_finite(run: Run, step: int, values: dict) -> None:
  """Stops the run at a non-finite loss or gradient norm, before that step is saved: a
  diverged run never rotates its good checkpoints out."""
  values = {k: float(v) for k, v in jax.device_get(values).items()}
  bad = sorted(k for k, v in values.items() if not math.isfinite(v))
  if bad:
    raise TrainingError(f"non-finite {', '.join(bad)} at step {step}; stopped without saving it "
                        f"(the newest checkpoint is step {run.mngr.latest_step()})")


def save(run: Run, step: int, state, order) -> None:
  """Checkpoints on the manager's interval, on the last step, and on SIGTERM; after a
  SIGTERM it waits for the save and exits with status 143."""
  preempt = run.preempt.requested
  if checkpoint.save(run.mngr, step, state, {"order": order.state()},
                     force=preempt or step == run.steps):
    run.writer.flush()  # The logs reach the workdir (a URI may lag) at least as far as a checkpoint.
  if preempt:
    run.mngr.wait_until_finished()
    run.writer.print(f"SIGTERM: saved a checkpoint at step {step}; exiting")
    run.writer.close()
    sys.exit(143)


def export_hf(workdir: str, params, cfg, tok) -> str:
  """The final policy as an HF Qwen2 directory, workdir/hf: what eval_gen, sample and
  transformers load. Parameters are gathered to host, so this is for the end of a run."""
  path = os.path.join(workdir, "hf")
  params = jax.tree.map(sharding.fetch, params)  # Collective: every process takes part.
  if jax.process_index() == 0:
    with paths.local_dir(path) as local:
      hf.export(params, cfg, local, tokenizer=tok)
  return path


def log_skipped(run: Run, skipped) -> None:
  for msg in skipped[:20]:
    run.writer.print(f"skipped: {msg}")
  if skipped:
    run.writer.print(f"skipped {len(skipped)} bad rows (data.skip_bad=True)")


def finish(run: Run, plot_groups=None, skipped=(), truncated: int = 0, what: str = "rows",
           limit: str = "") -> None:
  """End of a run: the data summary, closed logs and the PNG curves (written once)."""
  if skipped or truncated:
    run.writer.print(f"data: {len(skipped)} bad rows skipped, {truncated} {what} truncated "
                     f"to {limit}")
  run.writer.close()
  if jax.process_index() == 0:
    plots.plot_workdir(run.workdir, plot_groups)
  workdir_lock.release(run.lock)


@contextlib.contextmanager
def mesh_rules(mesh, rules):
  """Context for tracing model code: the mesh plus the logical-axis rules."""
  with mesh, nn.logical_axis_rules(rules):
    yield


class Timer:
  """Wall time per named phase; `read` returns the totals and resets them."""

  def __init__(self):
    self.totals = collections.defaultdict(float)

  @contextlib.contextmanager
  def __call__(self, name: str):
    t0 = time.perf_counter()
    yield
    self.totals[name] += time.perf_counter() - t0

  def read(self) -> dict[str, float]:
    out, self.totals = dict(self.totals), collections.defaultdict(float)
    return out
