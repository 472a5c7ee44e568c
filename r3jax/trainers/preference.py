"""Training on comparisons: one loop for every task that learns from ranked responses.

Batches are [B, K, T] (K responses per comparison, best first). A `Task` says what is
particular to the method: the model (a decoder, or a decoder with a scalar head), the
loss, what each batch needs besides its tokens (DPO's reference log-probs), its metrics
and what the run exports. The tasks are trainers/rm.py (Bradley–Terry reward models,
SPEC §3) and trainers/dpo.py (the DPO family, SPEC §6).
"""

import dataclasses
import functools
from typing import Callable

import jax
import numpy as np

from r3jax.core import optim, sharding
from r3jax.data import pipeline, sources
from r3jax.models import qwen
from r3jax.trainers import harness, state as state_lib, step as step_lib


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  scalar_head: bool  # {backbone, head} params (a reward model) instead of a decoder.
  prompt_len: Callable  # config -> the prompt-split width (0: whole rows).
  check: Callable  # (train_rows, eval_rows) -> None; raises DataError.
  make_loss: Callable  # (config, model cfg) -> loss_fn(params, batch, rng).
  prepare: Callable  # Context -> fn(batch, split, idx) adding what the loss needs.
  export: Callable  # (run, params, cfg, tok, start) -> None: what the run writes for other
  # tools, at the start (start=True, params None) and at the end of the run.
  accuracy: str  # The metric the progress bar and the eval line show.
  plots: dict


@dataclasses.dataclass
class Context:
  """What a task's `prepare` may read: the run, its rows and the fresh train state."""
  run: harness.Run
  policy: state_lib.Policy
  state: dict
  shardings: dict
  fresh: bool
  batch_of: Callable
  train_rows: list
  eval_rows: list
  n_eval: int  # The first n_eval held-out rows are evaluated (an even split over shards).


def evaluate(run, eval_loss, params, with_ref, batch_of, eval_rows, n_eval, step) -> dict:
  """Held-out loss and metrics: sums over the first n_eval comparisons, divided once."""
  if n_eval == 0:
    return {}
  bs = run.config.batch_size
  sums, total = {}, 0.0
  for i in range(0, n_eval, bs):
    idx = pipeline.process_slice(np.arange(i, min(i + bs, n_eval)))
    batch, _ = batch_of([eval_rows[j] for j in idx])
    loss, (w, aux) = eval_loss(params, sharding.put_batch(with_ref(batch, "eval", idx), run.mesh))
    total += float(w)
    for k, v in {"loss": loss, **aux}.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  out = {f"eval/{k}": v / max(total, 1.0) for k, v in sums.items()}
  run.writer.scalars(step, out)
  return out


def drop_ties(dcfg, *splits):
  """(splits without the comparisons that repeat a response, how many were dropped); with
  data.keep_ties nothing is dropped."""
  if dcfg.keep_ties:
    return splits, 0
  kept = [[r for r in rows if len(set(r["responses"])) == len(r["responses"])] for rows in splits]
  return kept, sum(len(a) - len(b) for a, b in zip(splits, kept))


def setup(config, workdir, task: Task):
  """(run, optimizer, skipped rows, context) before the first step."""
  policy = state_lib.build_policy(config.model, workdir, config.tokenizer)
  prompt_len = task.prompt_len(config)
  batch_of = lambda rows: pipeline.ranked_batch(policy.tokenizer, rows, config.seq_len, prompt_len)
  train_rows, eval_rows, skipped = sources.comparisons(config.data, config.seed)
  (train_rows, eval_rows), ties = drop_ties(config.data, train_rows, eval_rows)
  task.check(train_rows, eval_rows)
  steps = config.steps or config.epochs * (len(train_rows) // config.batch_size)
  run = harness.open_run(config, workdir, steps)
  tx = optim.make(config.optim, steps)
  harness.log_skipped(run, skipped)
  if ties:
    run.writer.print(f"dropped {ties} comparisons whose responses are identical: they carry no "
                     "preference and train at the loss of a coin flip (data.keep_ties=True keeps them)")
  fresh = harness.fresh(run)
  state, shardings = state_lib.init_state(policy, tx, run.mesh, run.rules, config.seed,
                                          config.init_from if fresh else "", scalar_head=task.scalar_head)
  task.export(run, None, policy.cfg, policy.tokenizer, start=True)
  n_eval = step_lib.even_rows(min(len(eval_rows), config.eval_batches * config.batch_size), run.mesh)
  if n_eval == 0:
    run.writer.print(f"no evaluation: {len(eval_rows)} held-out comparisons, fewer than the data "
                     "shards (raise data.eval_fraction or the dataset size)")
  ctx = Context(run, policy, state, shardings, fresh, batch_of, train_rows, eval_rows, n_eval)
  return run, tx, skipped, ctx


def train(config, workdir: str, *, task: Task) -> dict:
  run, tx, skipped, ctx = setup(config, workdir, task)
  policy, steps, n_eval = ctx.policy, run.steps, ctx.n_eval
  loss_fn = task.make_loss(config, policy.cfg)
  with_ref = task.prepare(ctx)
  state, order = harness.resume(run, ctx.state, len(ctx.train_rows), config.batch_size)
  ctx.state = None  # The step donates the state: only the resumed one is live.
  step_fn = step_lib.make_train_step(loss_fn, tx, ctx.shardings, run.mesh,
                                     skip_nonfinite=harness.skipping(run))
  eval_loss = jax.jit(functools.partial(loss_fn, rng=None))
  evaluate_at = lambda step: evaluate(run, eval_loss, state["params"], with_ref, ctx.batch_of,
                                      ctx.eval_rows, n_eval, step)
  run.writer.print(f"{task.name}: {qwen.param_count(state['params']):,} params; mesh {dict(run.mesh.shape)}; "
                   f"{len(ctx.train_rows)} train / {len(ctx.eval_rows)} eval comparisons; {steps} steps of "
                   f"{config.batch_size}")
  accum = step_lib.accumulation(config, run.mesh)
  truncated, last_eval = 0, {}
  with harness.training(run), harness.mesh_rules(run.mesh, run.rules):
    if int(state["step"]) == 0:
      last_eval = evaluate_at(0)
    for step in range(int(state["step"]), steps):
      idx = pipeline.process_slice(order.next())
      batch, n_trunc = ctx.batch_of([ctx.train_rows[i] for i in idx])
      truncated += n_trunc
      batch = with_ref(batch, "train", idx)
      state, m = step_fn(state, sharding.put_batch(pipeline.microbatches(batch, accum), run.mesh, 1))
      run.writer.advance()
      done = step + 1
      if done % config.log_every == 0 or done == steps:
        m = jax.device_get(m)
        run.writer.scalars(done, {**{f"train/{k}": v for k, v in m.items()},
                                  "train/lr": optim.schedule(config.optim, steps)(step),
                                  "data/truncated": truncated, "data/epoch": order.epoch},
                           bar={"loss": m["loss"], "acc": m[task.accuracy]})
      if n_eval and (done % config.eval_every == 0 or done == steps):
        last_eval = evaluate_at(done)
        run.writer.print(f"step {done}: eval loss {last_eval['eval/loss']:.4f}, pairwise accuracy "
                         f"{last_eval['eval/' + task.accuracy]:.3f}")
      if harness.skipping(run) or done % config.log_every == 0 or done == steps or run.mngr.should_save(done):
        # At logged and saved steps only (each check waits for the step): a diverged run's
        # params stay non-finite, so it is caught before any checkpoint of them.
        harness.check_finite(run, done, {"train/loss": m["loss"], "train/grad_norm": m["grad_norm"]},
                             m.get("skipped"))
      harness.save(run, done, state, order)
  task.export(run, state["params"], policy.cfg, policy.tokenizer, start=False)
  prompt_len = task.prompt_len(config)
  harness.finish(run, task.plots, skipped, truncated,
                 f"responses (prompt_len={prompt_len})" if prompt_len else "responses",
                 f"seq_len={config.seq_len}")
  return {"params": state["params"], "eval": last_eval, "cfg": policy.cfg, "tokenizer": policy.tokenizer}
