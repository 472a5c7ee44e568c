"""Supervised fine-tuning: masked next-token loss on assistant tokens (SPEC §2)."""

import functools
import time

import jax
import numpy as np

from r3jax.core import optim, sharding
from r3jax.data import chat, pipeline, sources
from r3jax.losses import lm
from r3jax.models import qwen, sampling
from r3jax.trainers import harness, state as state_lib, step as step_lib


def loss_fn(params, batch, rng, *, model_cfg, deterministic=False):
  """(sum NLL over trained target tokens, their count, {}) for one microbatch."""
  tokens, attn = batch["tokens"], batch["attn_mask"]
  # The model's logits go unused (XLA drops them): the lean head keeps no [B, T, V] residual.
  _, hidden_BTD, _ = qwen.Qwen(model_cfg).apply(
      {"params": params}, tokens[:, :-1], kv_mask_BS=attn[:, :-1],
      deterministic=deterministic, rngs={"dropout": rng})
  nll, count = lm.masked_nll_sum(hidden_BTD, qwen.head_kernel(params, model_cfg),
                                        tokens[:, 1:], batch["loss_mask"][:, 1:])
  return nll, (count, {})


def unigram_loss(tokenizer, rows, limit: int = 2000) -> float:
  """Cross-entropy (nats) of the best context-free model of the trained tokens: the
  baseline an eval loss must beat."""
  counts: dict[int, int] = {}
  for r in rows[:limit]:
    ids, mask = chat.tokenize(tokenizer, r["messages"])
    for i in ids[mask.astype(bool)]:
      counts[int(i)] = counts.get(int(i), 0) + 1
  p = np.array(list(counts.values()), np.float64)
  p /= p.sum()
  return float(-(p * np.log(p)).sum())


def evaluate(run, policy, params, eval_fn, eval_rows, eval_prompts, unigram, step) -> dict:
  """Held-out loss over eval_batches batches, and greedy answers to a few held-out prompts."""
  config = run.config
  n = step_lib.even_rows(min(len(eval_rows), config.eval_batches * config.batch_size), run.mesh)
  nll = count = 0.0
  for i in range(0, n, config.batch_size):
    rows = pipeline.process_slice(np.arange(i, min(i + config.batch_size, n)))
    batch, _ = pipeline.sft_batch(policy.tokenizer, [eval_rows[j]["messages"] for j in rows], config.seq_len)
    s, (c, _) = eval_fn(params, sharding.put_batch(batch, run.mesh), jax.random.key(0))
    nll, count = nll + float(s), count + float(c)
  loss = nll / max(count, 1.0)
  out = {"eval/loss": loss, "eval/perplexity": float(np.exp(min(loss, 50.0))), "eval/unigram_loss": unigram}
  run.writer.scalars(step, out)
  if eval_prompts:
    tok = policy.tokenizer
    scfg = sampling.sample_config(tok, max_new_tokens=config.sample_tokens, greedy=True)
    answers, _ = sampling.generate_text(params, policy.cfg.replace(dropout_rate=0.0), tok,
                                        sampling.chat_ids(tok, eval_prompts), jax.random.key(0), scfg,
                                        put=lambda x: sharding.replicate(x, run.mesh))
    run.writer.texts(step, "eval_samples", [{"prompt": p[-1]["content"], "answer": a}
                                            for p, a in zip(eval_prompts, answers)])
  return out


def train(config, workdir: str) -> dict:
  policy = state_lib.build_policy(config.model, workdir, config.tokenizer)
  train_rows, eval_rows, skipped = sources.conversations(config.data, workdir, config.seed)
  steps = config.steps or config.epochs * (len(train_rows) // config.batch_size)
  run = harness.open_run(config, workdir, steps)
  accum = step_lib.accumulation(config, run.mesh)
  tx = optim.make(config.optim, steps)
  harness.log_skipped(run, skipped)
  state, shardings = state_lib.init_state(policy, tx, run.mesh, run.rules, config.seed,
                                          config.init_from if harness.fresh(run) else "")
  state, order = harness.resume(run, state, len(train_rows), config.batch_size)
  step_fn = step_lib.make_train_step(functools.partial(loss_fn, model_cfg=policy.cfg), tx, shardings, run.mesh,
                                       skip_nonfinite=harness.skipping(run))
  eval_fn = jax.jit(functools.partial(loss_fn, model_cfg=policy.cfg, deterministic=True))
  unigram = unigram_loss(policy.tokenizer, train_rows)
  eval_prompts = [r["messages"][:-1] for r in eval_rows[:config.eval_prompts]]
  run.writer.print(f"model: {qwen.param_count(state['params']):,} params; mesh {dict(run.mesh.shape)}; "
                   f"{len(train_rows)} train / {len(eval_rows)} eval conversations; "
                   f"{steps} steps of {config.batch_size} ({accum} microbatches); "
                   f"unigram baseline loss {unigram:.3f}")
  truncated, last_eval, t_last, tokens_since = 0, {}, time.perf_counter(), 0
  with harness.training(run), harness.mesh_rules(run.mesh, run.rules):
    if int(state["step"]) == 0:  # The starting point a falling held-out loss is read against.
      last_eval = evaluate(run, policy, state["params"], eval_fn, eval_rows, eval_prompts, unigram, 0)
      run.writer.print(f"step 0: eval loss {last_eval['eval/loss']:.3f} (unigram {unigram:.3f})")
    for step in range(int(state["step"]), steps):
      idx = pipeline.process_slice(order.next())
      batch, n_trunc = pipeline.sft_batch(policy.tokenizer, [train_rows[i]["messages"] for i in idx],
                                          config.seq_len)
      truncated += n_trunc
      tokens_since += int(batch["attn_mask"].sum()) * jax.process_count()
      state, m = step_fn(state, sharding.put_batch(pipeline.microbatches(batch, accum), run.mesh, 1))
      run.writer.advance()
      done = step + 1
      if done % config.log_every == 0 or done == steps:
        m = jax.device_get(m)  # Waits for the step: dt is its time, not its dispatch's.
        dt = time.perf_counter() - t_last
        log_train(run, done, step, m, idx, tokens_since / dt, dt, truncated, order)
        t_last, tokens_since = time.perf_counter(), 0
      if done % config.eval_every == 0 or done == steps:
        last_eval = evaluate(run, policy, state["params"], eval_fn, eval_rows, eval_prompts, unigram, done)
        run.writer.print(f"step {done}: eval loss {last_eval['eval/loss']:.3f} "
                         f"(unigram {unigram:.3f}), perplexity {last_eval['eval/perplexity']:.2f}")
      if harness.skipping(run) or done % config.log_every == 0 or done == steps or run.mngr.should_save(done):
        # At logged and saved steps only (each check waits for the step): a diverged run's
        # params stay non-finite, so it is caught before any checkpoint of them.
        harness.check_finite(run, done, {"train/loss": m["loss"], "train/grad_norm": m["grad_norm"]},
                             m.get("skipped"))
      harness.save(run, done, state, order)
  harness.export_hf(workdir, state["params"], policy.cfg, policy.tokenizer)
  harness.finish(run, None, skipped, truncated, "conversations", f"seq_len={config.seq_len}")
  return {"params": state["params"], "eval": last_eval, "unigram": unigram, "policy": policy}


def log_train(run, done, step, m, idx, tokens_per_s, dt, truncated, order) -> None:
  config = run.config
  # Order-sensitive fingerprint of the batch, so resumed runs can prove same data.
  checksum = float(np.sum((idx + 1) * np.arange(1, len(idx) + 1)) % (1 << 24))
  lr = optim.schedule(config.optim, run.steps)(step)
  run.writer.scalars(done, {**{f"train/{k}": v for k, v in m.items()}, "train/lr": lr,
                            "perf/tokens_per_s": tokens_per_s, "perf/steps_per_s": config.log_every / dt,
                            "data/truncated": truncated, "data/epoch": order.epoch,
                            "data/batch_checksum": checksum},
                     bar={"loss": m["loss"], "tok/s": tokens_per_s})
