"""One loop for the trainers with a fixed dataset and a train step: SFT, reward models and
the DPO family, each a `Task` (trainers/sft.TASK, trainers/rm.TASK, trainers/dpo.TASK).

The loop owns what they share: the run (harness), the train state and its resume, the
data order, the jitted step with gradient accumulation, logging, held-out evaluation,
the finiteness checks and the checkpoints. A task says what is particular to its method:
its rows and batches, the model (a decoder, or a decoder with a scalar head), the loss,
what each batch needs besides its tokens (DPO's reference log-probs), what an evaluation
adds (SFT's perplexity and greedy answers), what the log and the progress bar show, its
plots, and what the run exports.
"""

import dataclasses
import functools
import time
from typing import Callable

import jax
import numpy as np

from r3jax.core import optim, sharding
from r3jax.core.errors import ConfigError
from r3jax.data import pipeline
from r3jax.models import qwen
from r3jax.trainers import harness, state as state_lib, step as step_lib


def _unchanged(ctx):
  del ctx
  return lambda batch, split, idx: batch


@dataclasses.dataclass(frozen=True)
class Task:
  """A method the loop trains: the hooks and settings particular to it."""
  name: str  # Names the run in its first line.
  rows: str  # What a row is, in the log ("conversations", "comparisons").
  load: Callable  # (config, workdir) -> (train_rows, eval_rows, skipped, notes to print).
  batch: Callable  # (config, tokenizer, rows) -> (batch, truncated count).
  make_loss: Callable  # (config, model cfg, deterministic) -> loss_fn(params, batch, rng).
  eval_line: Callable  # (step, eval metrics) -> the line printed after an evaluation.
  truncated: Callable  # config -> what the truncated count counts, for the run's summary.
  export: Callable  # (run, params, cfg, tok, start) -> None: what the run writes for other
  # tools, at the start (start=True, params None) and at the end of the run.
  scalar_head: bool = False  # {backbone, head} params (a reward model) instead of a decoder.
  # Context -> fn(batch, split, idx) adding what the loss needs; called once before the
  # first step, it may also fill ctx.extra for the other hooks.
  prepare: Callable = _unchanged
  eval_metrics: Callable = lambda ctx, out: {}  # Derived held-out metrics.
  samples: Callable = lambda ctx, params, step: None  # Writes what an evaluation generates.
  summary: Callable = lambda ctx: ""  # Ends the run's first line.
  accuracy: str = ""  # The train metric the progress bar shows beside the loss.
  # Logs tokens/s and steps/s (perf/*) and data/batch_checksum, the order fingerprint that
  # resumed runs are compared by, and shows tokens/s on the bar.
  throughput: bool = False
  plots: dict | None = None  # Plot groups; None: every registered group with data.
  # data.packing: (config, tokenizer, rows) -> (packs, truncated count, tokens per row);
  # `batch` then takes rows that hold a pack (pack_rows).
  pack: Callable | None = None


@dataclasses.dataclass
class Context:
  """What a task's hooks may read: the run, its rows and the fresh train state."""
  run: harness.Run
  policy: state_lib.Policy
  state: dict
  shardings: dict
  fresh: bool
  batch_of: Callable  # rows -> (batch, truncated count)
  train_rows: list
  eval_rows: list
  n_eval: int  # The first n_eval held-out rows are evaluated (an even split over shards).
  # What `prepare` computed for the task's other hooks; returned with the run's result.
  extra: dict = dataclasses.field(default_factory=dict)


def export_hf(run, params, cfg, tok, start: bool) -> None:
  """A policy task's export: the final policy as workdir/hf (harness.export_hf)."""
  if not start:
    harness.export_hf(run.workdir, params, cfg, tok)


def setup(config, workdir: str, task: Task):
  """(run, optimizer, skipped rows, context) before the first step."""
  policy = state_lib.build_policy(config.model, workdir, config.tokenizer)
  train_rows, eval_rows, skipped, notes = task.load(config, workdir)
  batch_of = functools.partial(task.batch, config, policy.tokenizer)
  check_fits(config, task, batch_of, train_rows)
  if config.data.get("packing"):  # Before the steps are counted: an epoch is of packed rows.
    train_rows, note = pack_rows(config, task, policy.tokenizer, train_rows)
    notes = [*notes, note]
  steps = config.steps or config.epochs * (len(train_rows) // config.batch_size)
  run = harness.open_run(config, workdir, steps)
  tx = optim.make(config.optim, steps)
  harness.log_skipped(run, skipped)
  for note in notes:
    run.writer.print(note)
  fresh = harness.fresh(run)
  state, shardings = state_lib.init_state(policy, tx, run.mesh, run.rules, config.seed,
                                          config.init_from if fresh else "",
                                          scalar_head=task.scalar_head)
  task.export(run, None, policy.cfg, policy.tokenizer, start=True)
  n_eval = step_lib.even_rows(min(len(eval_rows), config.eval_batches * config.batch_size),
                              run.mesh)
  if n_eval == 0:
    run.writer.print(f"no evaluation: {len(eval_rows)} held-out {task.rows}, fewer than the "
                     "data shards (raise data.eval_fraction or the dataset size)")
  ctx = Context(run, policy, state, shardings, fresh, batch_of, train_rows, eval_rows, n_eval)
  return run, tx, skipped, ctx


def check_fits(config, task: Task, batch_of, rows) -> None:
  """Before any work: enough rows for one batch, and a seq_len that leaves room for the
  trained tokens (else every row trains on nothing and the loss reads 0)."""
  if len(rows) < config.batch_size:
    raise ConfigError(f"config.batch_size={config.batch_size} is larger than the {len(rows)} "
                      f"training {task.rows} (after the held-out share, data.eval_fraction="
                      f"{config.data.eval_fraction}, and any dropped rows)")
  probe = rows[:min(len(rows), 64)]
  if not np.any(batch_of(probe)[0]["loss_mask"]):
    raise ConfigError(f"config.seq_len={config.seq_len}: not one trained token of the first "
                      f"{len(probe)} {task.rows} fits; their prompts alone fill it")


def pack_rows(config, task: Task, tok, rows) -> tuple[pipeline.PackedRows, str]:
  """data.packing: the training rows as packs (task.pack; pipeline.PackedRows) and the line
  that says so. Evaluation stays unpacked, one item a row, so its figures compare across
  runs."""
  packs, truncated, width = task.pack(config, tok, rows)
  if len(packs) < config.batch_size:
    raise ConfigError(f"config.batch_size={config.batch_size} is larger than the {len(packs)} "
                      "packed training rows (data.packing=True); lower it")
  packed = pipeline.PackedRows(rows, packs)
  note = (f"data.packing: {len(rows)} {task.rows} in {len(packs)} rows of {width} tokens "
          f"({len(rows) / len(packs):.2f} per row, at most {packed.slots}; {truncated} "
          f"{task.truncated(config)} cut to fit)")
  return packed, note


def evaluate(ctx: Context, task: Task, eval_loss, params, prepare, step: int) -> dict:
  """Held-out loss and metrics: sums over the first n_eval rows, divided once by the summed
  weight (tokens or comparisons); then the task's derived metrics and samples."""
  if ctx.n_eval == 0:
    return {}
  run, bs = ctx.run, ctx.run.config.batch_size
  sums, total = {}, 0.0
  for i in range(0, ctx.n_eval, bs):
    idx = pipeline.process_slice(np.arange(i, min(i + bs, ctx.n_eval)))
    batch, _ = ctx.batch_of([ctx.eval_rows[j] for j in idx])
    batch = sharding.put_batch(prepare(batch, "eval", idx), run.mesh)
    loss, (w, aux) = eval_loss(params, batch, jax.random.key(0))
    total += float(w)
    for k, v in {"loss": loss, **aux}.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  out = {f"eval/{k}": v / max(total, 1.0) for k, v in sums.items()}
  out.update(task.eval_metrics(ctx, out))
  run.writer.scalars(step, out)
  task.samples(ctx, params, step)
  run.writer.print(task.eval_line(step, out))
  return out


def log_train(run, task: Task, done: int, m: dict, idx, truncated: int, order, meter) -> None:
  """The train row of a logged step (its metrics are the step's, fetched)."""
  values = {**{f"train/{k}": v for k, v in m.items()},
            "train/lr": optim.schedule(run.config.optim, run.steps)(done - 1)}
  bar = {"loss": m["loss"]}
  if task.accuracy:
    bar["acc"] = m[task.accuracy]
  if task.throughput:
    tokens_per_s, steps_per_s = meter.read(run.config.log_every)
    values.update({"perf/tokens_per_s": tokens_per_s, "perf/steps_per_s": steps_per_s})
    bar["tok/s"] = tokens_per_s
  values.update({"data/truncated": truncated, "data/epoch": order.epoch})
  if task.throughput:
    # Order-sensitive fingerprint of the batch, so resumed runs can prove same data.
    checksum = np.sum((idx + 1) * np.arange(1, len(idx) + 1)) % (1 << 24)
    values["data/batch_checksum"] = float(checksum)
  run.writer.scalars(done, values, bar=bar)


class Meter:
  """Tokens and wall time since the last logged step."""

  def __init__(self):
    self.tokens, self.t_last = 0, time.perf_counter()

  def add(self, batch) -> None:
    self.tokens += int(batch["attn_mask"].sum()) * jax.process_count()

  def read(self, steps: int) -> tuple[float, float]:
    """(tokens/s, steps/s) since the last read, which `steps` steps took; then resets."""
    dt = time.perf_counter() - self.t_last
    out = (self.tokens / dt, steps / dt)
    self.tokens, self.t_last = 0, time.perf_counter()
    return out


def train(config, workdir: str, *, task: Task) -> dict:
  """Trains `task` on config; returns the final params, the last evaluation, the model
  config, tokenizer and policy, and what the task computed at the start (Context.extra)."""
  run, tx, skipped, ctx = setup(config, workdir, task)
  policy = ctx.policy
  prepare = task.prepare(ctx)
  state, order = harness.resume(run, ctx.state, len(ctx.train_rows), config.batch_size)
  ctx.state = None  # The step donates the state: only the resumed one is live.
  step_fn = step_lib.make_train_step(task.make_loss(config, policy.cfg, False), tx, ctx.shardings,
                                     run.mesh, skip_nonfinite=harness.skipping(run))
  eval_loss = jax.jit(task.make_loss(config, policy.cfg, True))
  accum = step_lib.accumulation(config, run.mesh)
  packed = " (train: packed rows)" if isinstance(ctx.train_rows, pipeline.PackedRows) else ""
  run.writer.print(f"{task.name}: {qwen.param_count(state['params']):,} params; mesh "
                   f"{dict(run.mesh.shape)}; {len(ctx.train_rows)} train / {len(ctx.eval_rows)} "
                   f"eval {task.rows}{packed}; {run.steps} steps of {config.batch_size} ({accum} "
                   f"microbatches){task.summary(ctx)}")
  evaluate_at = lambda params, step: evaluate(ctx, task, eval_loss, params, prepare, step)
  state, truncated, last_eval = loop(ctx, task, state, order, step_fn, prepare, evaluate_at, accum)
  task.export(run, state["params"], policy.cfg, policy.tokenizer, start=False)
  harness.finish(run, task.plots, skipped, truncated, task.truncated(config),
                 f"seq_len={config.seq_len}")
  return {"params": state["params"], "eval": last_eval, "cfg": policy.cfg,
          "tokenizer": policy.tokenizer, "policy": policy, **ctx.extra}


def loop(ctx: Context, task: Task, state, order, step_fn, prepare, evaluate_at, accum):
  """The steps from the resumed one to the last: (state, truncated rows, last evaluation)."""
  run, config = ctx.run, ctx.run.config
  steps, truncated, last_eval, meter = run.steps, 0, {}, Meter()
  with harness.training(run), harness.mesh_rules(run.mesh, run.rules):
    if int(state["step"]) == 0:  # The starting point a held-out curve is read against.
      last_eval = evaluate_at(state["params"], 0)
    for step in range(int(state["step"]), steps):
      idx = pipeline.process_slice(order.next())
      batch, n_trunc = ctx.batch_of([ctx.train_rows[i] for i in idx])
      truncated += n_trunc
      meter.add(batch)
      batch = prepare(batch, "train", idx)
      batch = sharding.put_batch(pipeline.microbatches(batch, accum), run.mesh, 1)
      state, m = step_fn(state, batch)
      run.writer.advance()
      done = step + 1
      if done % config.log_every == 0 or done == steps:
        m = jax.device_get(m)  # Waits for the step: the meter's time is its, not its dispatch's.
        log_train(run, task, done, m, idx, truncated, order, meter)
      if ctx.n_eval and (done % config.eval_every == 0 or done == steps):
        last_eval = evaluate_at(state["params"], done)
      if (harness.skipping(run) or done % config.log_every == 0 or done == steps
          or run.mngr.should_save(done)):
        # At logged and saved steps only (each check waits for the step): a diverged run's
        # params stay non-finite, so it is caught before any checkpoint of them.
        harness.check_finite(run, done, {"train/loss": m["loss"],
                                         "train/grad_norm": m["grad_norm"]}, m.get("skipped"))
      harness.save(run, done, state, order)
  return state, truncated, last_eval
