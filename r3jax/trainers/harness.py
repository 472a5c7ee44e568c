"""The run harness every trainer shares, so that a trainer file holds only its algorithm.

  run = harness.open_run(config, workdir, steps)     mesh, rules, writer, checkpoints
  state, order = harness.resume(run, state, rows, batch)   latest checkpoint + data order
  with harness.training(run):              SIGTERM / Ctrl-C -> checkpoint, exit 143 / 130
    for step in range(start, steps): ... harness.save(run, done, state, order)
  harness.finish(run, ...)                             summary, logs, PNGs (and hf/ export)
"""

import collections
import contextlib
import dataclasses
import errno
import json
import math
import os
import sys
import time
from typing import Any

from etils import epath
import flax.linen as nn
import jax

from r3jax.core import checkpoint, metrics, optim, paths, plots, sharding, workdir_lock
from r3jax.core.errors import ConfigError, TrainingError
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
  skipped_in_a_row: int = 0  # Non-finite updates skipped since the last good one.


def open_run(config, workdir: str, steps: int) -> Run:
  """Locks the workdir (one run each), then opens its logs and checkpoints."""
  paths.check_writable(workdir, "--workdir")
  lock = workdir_lock.acquire(workdir) if jax.process_index() == 0 else None
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  writer = metrics.Writer(workdir, steps)
  mngr = checkpoint.manager(workdir, config.checkpoint.every, config.checkpoint.max_to_keep,
                            config.checkpoint.async_save)
  run = Run(config, workdir, steps, mesh, rules, writer, mngr, lock)
  check_config(run)
  return run


# Fields a resumed run may change: how long it runs and what it logs, not what it computes.
SAFE_CHANGES = ("name", "steps", "epochs", "log_every", "eval_every", "eval_batches", "eval_prompts",
                "sample_tokens", "log_samples_every", "checkpoint.")


def flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def check_config(run: Run) -> None:
  """Saves the run's config as <workdir>/run_config.json; on a resume, refuses a change that
  would make the restored state mean something else (one line with the diff), and notes
  the safe ones."""
  path = epath.Path(run.workdir) / "run_config.json"  # Not config.json: that names an HF dir.
  current = json.loads(json.dumps(run.config.to_dict(), default=str))  # Tuples as lists.
  if not fresh(run) and path.exists():
    old, new = flat(paths.read_json_object(path, "; restore it, or delete it to resume with the current config unchecked")), flat(current)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    unsafe = [k for k in changed if not k.startswith(SAFE_CHANGES)]
    diff = lambda keys: "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4])
    if unsafe:
      raise ConfigError(f"{run.workdir} holds a run with another config ({diff(unsafe)}"
                        f"{', ...' if len(unsafe) > 4 else ''}); resume with its values or use a new workdir")
    if changed:
      run.writer.print(f"resuming with changed settings: {diff(changed)}")
      note_schedule(run, old.get("steps"))
  if jax.process_index() == 0:
    paths.write_atomic(path, json.dumps(current, indent=1) + "\n")


def note_schedule(run: Run, old_steps) -> None:
  """A resume with another total of steps moves a schedule that is a function of the total
  (cosine decay, a warm-up ratio): said, with the learning rate it jumps between."""
  o, step = run.config.optim, run.mngr.latest_step()
  if (o.schedule == "constant" and o.warmup_steps >= 0) or not old_steps or step is None:
    return
  if old_steps != run.steps:
    lr = lambda total: float(optim.schedule(o, total)(step))
    run.writer.print(f"steps {old_steps} -> {run.steps}: optim.schedule={o.schedule} spans the new "
                     f"total, so the learning rate at the resumed step {step} moves from "
                     f"{lr(old_steps):.3g} to {lr(run.steps):.3g}")


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
  restored = restore_newest(run, abstract)
  if restored is None:
    return state, pipeline.Order(n_rows, batch_size, seed)
  state, data_state, step = restored
  run.writer.drop_after(step)  # Rows logged after the checkpoint are logged again.
  run.writer.at_step(step)
  order = pipeline.Order(n_rows, batch_size, seed, data_state["order"])
  run.writer.print(f"resumed from step {int(state['step'])} (data epoch {order.epoch}, batch {order.index})")
  return state, order


def restore_newest(run: Run, abstract):
  """(state, data_state, step) of the newest checkpoint that restores, or None without any.

  A newer one that does not (a truncated file, a lost manifest) is moved to
  <workdir>/checkpoints_corrupt/<step>, kept for inspection, and named in one line. When no
  checkpoint restores (e.g. the code changed the state's layout) nothing is moved: the
  run stops with the newest one's error.
  """
  steps, errors = sorted(run.mngr.all_steps(), reverse=True), []
  for step in steps:
    try:
      with checkpoint.quiet_logs():
        restored = checkpoint.restore(run.mngr, abstract, step)
    except Exception as e:  # pylint: disable=broad-except  (every way a checkpoint can be bad)
      errors.append((step, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"))
      continue
    if errors:
      for bad, why in errors:
        run.writer.print(f"checkpoint {bad} does not restore ({why}); moved it to "
                         f"{checkpoint.move_aside(run.workdir, bad)}")
      run.writer.print(f"resuming from checkpoint {step} instead")
      run.mngr.reload()
    return restored
  if errors:
    raise TrainingError(f"no checkpoint in {run.workdir}/checkpoints restores; the newest, "
                        f"{errors[0][0]}: {errors[0][1]}")
  return None


@contextlib.contextmanager
def training(run: Run):
  """The loop's context: SIGTERM or SIGINT sets run.preempt (save polls it), and pending
  asynchronous checkpoints are written before the loop's results are used."""
  run.preempt = checkpoint.Preemption()
  try:
    yield
  finally:
    with disk_errors(f"{run.workdir}/checkpoints"):
      run.mngr.wait_until_finished()  # Also when the loop failed: earlier saves complete.
    run.preempt.restore_handler()


@contextlib.contextmanager
def disk_errors(what: str):
  """A full disk is one line, not a traceback per writer thread; the checkpoints written
  before it stay intact (orbax commits a step only once it is complete)."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (orbax wraps the OSError)
    chain, cause = [], e
    while cause is not None and len(chain) < 10:
      chain.append(cause)
      cause = cause.__cause__ or cause.__context__
    if any(getattr(c, "errno", None) == errno.ENOSPC or "No space left on device" in str(c) for c in chain):
      raise TrainingError(f"no space left on device while writing {what}") from None
    raise


def skipping(run: Run) -> bool:
  """nonfinite.action=skip: the step function keeps the old state on a non-finite update,
  and every step's `skipped` flag is read (one device sync per step)."""
  return run.config.nonfinite.action == "skip"


def check_finite(run: Run, step: int, values: dict, skipped=None) -> None:
  """Stops the run at a non-finite loss or gradient norm, before that step is saved: a
  diverged run never rotates its good checkpoints out. When skipping, a skipped update is
  one line instead, and more than nonfinite.max_in_a_row of them in a row stop the run."""
  if skipped is not None and skipping(run):
    count = float(jax.device_get(skipped))
    run.skipped_in_a_row = run.skipped_in_a_row + 1 if count else 0
    limit = run.config.nonfinite.max_in_a_row
    if run.skipped_in_a_row > limit:
      raise TrainingError(f"{run.skipped_in_a_row} non-finite updates in a row at step {step} (nonfinite."
                          f"max_in_a_row={limit}); stopped (the newest checkpoint is step {run.mngr.latest_step()})")
    if count:
      run.writer.print(f"step {step}: non-finite update skipped ({count:g} of the step's updates; "
                       f"{run.skipped_in_a_row} in a row)")
    return
  values = {k: float(v) for k, v in jax.device_get(values).items()}
  bad = sorted(k for k, v in values.items() if not math.isfinite(v))
  if bad:
    raise TrainingError(f"non-finite {', '.join(bad)} at step {step}; stopped without saving it "
                        f"(the newest checkpoint is step {run.mngr.latest_step()})")


def save(run: Run, step: int, state, order) -> None:
  """Checkpoints on the manager's interval, on the last step, and on SIGTERM or SIGINT;
  after one it waits for the save and exits with status 143 or 130."""
  preempt = run.preempt.requested
  with disk_errors(f"{run.workdir}/checkpoints/{step}"):
    if checkpoint.save(run.mngr, step, state, {"order": order.state()},
                       force=preempt or step == run.steps):
      run.writer.flush()  # The logs reach the workdir (a URI may lag) at least as far as a checkpoint.
  if preempt:
    run.mngr.wait_until_finished()
    run.writer.close()
    print(f"{run.preempt.name}: saved a checkpoint at step {step} in {run.workdir}; rerun the "
          "same command to resume", file=sys.stderr, flush=True)
    sys.exit(run.preempt.exit_status)


def export_hf(workdir: str, params, cfg, tok) -> str:
  """The final policy as an HF Qwen2 directory, workdir/hf: what eval_gen, sample and
  transformers load. Parameters are gathered to host, so this is for the end of a run."""
  path = os.path.join(workdir, "hf")
  params = jax.tree.map(sharding.fetch, params)  # Collective: every process takes part.
  if jax.process_index() == 0:
    with paths.local_dir(path) as local:
      hf.export(params, cfg, local, tokenizer=tok)
      for name in os.listdir(local):  # safetensors writes 600; others read the export too.
        os.chmod(os.path.join(local, name), 0o644)
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
  summary = run.writer.summary()
  run.writer.close()
  if jax.process_index() == 0:
    plots.plot_workdir(run.workdir, plot_groups)
    print(f"{run.config.name}: {summary}; logs, plots and checkpoints in {run.workdir}",
          file=sys.stderr, flush=True)
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
