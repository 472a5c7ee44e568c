"""Supervised fine-tuning: masked next-token loss on assistant tokens (SPEC §2)."""

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from r3jax import chat, checkpoint, metrics, optim, sampling, sharding
from r3jax.data import pipeline
from r3jax.losses import lm
from r3jax.models import qwen
from r3jax.trainers import common


def loss_fn(params, batch, rng, *, model_cfg, deterministic=False):
  """(sum NLL over trained target tokens, their count, {}) for one microbatch."""
  tokens, attn = batch["tokens"], batch["attn_mask"]
  logits_BTV, _, _ = qwen.Qwen(model_cfg).apply(
      {"params": params}, tokens[:, :-1], kv_mask_BS=attn[:, :-1],
      deterministic=deterministic, rngs={"dropout": rng})
  nll, count = lm.masked_nll_sum(logits_BTV, tokens[:, 1:], batch["loss_mask"][:, 1:])
  return nll, (count, {})


def generate_samples(policy, params, prompts, max_new_tokens: int, mesh=None):
  """Greedy answers to chat prompts (lists of messages); with `mesh`, the prompts are
  replicated on it (needed when params span several processes)."""
  tok = policy.tokenizer
  ids = [chat.tokenize(tok, p, add_generation_prompt=True)[0] for p in prompts]
  tokens_BT, mask_BT = sampling.left_pad(ids, tok.pad_token_id)
  scfg = sampling.SampleConfig(max_new_tokens=max_new_tokens, greedy=True,
                               stop_ids=(tok.convert_tokens_to_ids(chat.IM_END),),
                               pad_id=tok.pad_token_id)
  put = (lambda x: sharding.replicate(x, mesh)) if mesh is not None else jnp.asarray
  out = sampling.generate(params, put(tokens_BT), put(mask_BT),
                          jax.random.key(0), model_cfg=policy.cfg.replace(dropout_rate=0.0), cfg=scfg)
  return sampling.decode(tok, out)


def train(config, workdir: str) -> dict:
  common.check_paths(config)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  accum = common.accumulation(config, mesh)
  policy = common.build_policy(config.model, workdir, config.tokenizer)
  train_rows, eval_rows, skipped = common.conversations(config.data, workdir, config.seed)
  steps = config.steps or config.epochs * (len(train_rows) // config.batch_size)
  tx = optim.make(config.optim, steps)
  writer = metrics.Writer(workdir, steps)
  common.log_skipped(writer, skipped)

  mngr = checkpoint.manager(workdir, config.checkpoint.every, config.checkpoint.max_to_keep,
                            config.checkpoint.async_save)
  state, shardings = common.init_state(policy, tx, mesh, rules, config.seed,
                                       "" if mngr.latest_step() is not None else config.init_from)
  state, order = common.resume(mngr, state, len(train_rows), config.batch_size, config.seed, writer)
  start = int(state["step"])

  step_fn = common.make_train_step(
      functools.partial(loss_fn, model_cfg=policy.cfg), tx, shardings, mesh)
  eval_fn = jax.jit(functools.partial(loss_fn, model_cfg=policy.cfg, deterministic=True))
  unigram = common.unigram_loss(policy.tokenizer, train_rows)
  eval_prompts = [r["messages"][:-1] for r in eval_rows[:config.eval_prompts]]
  writer.print(f"model: {qwen.param_count(state['params']):,} params; mesh {dict(mesh.shape)}; "
               f"{len(train_rows)} train / {len(eval_rows)} eval conversations; "
               f"{steps} steps of {config.batch_size} ({accum} microbatches); "
               f"unigram baseline loss {unigram:.3f}")

  def evaluate(step):
    n = common.even_rows(min(len(eval_rows), config.eval_batches * config.batch_size), mesh)
    nll = count = 0.0
    for i in range(0, n, config.batch_size):
      rows = pipeline.process_slice(np.arange(i, min(i + config.batch_size, n)))
      batch, _ = pipeline.sft_batch(policy.tokenizer, [eval_rows[j]["messages"] for j in rows], config.seq_len)
      s, (c, _) = eval_fn(state["params"], sharding.put_batch(batch, mesh), jax.random.key(0))
      nll, count = nll + float(s), count + float(c)
    loss = nll / max(count, 1.0)
    out = {"eval/loss": loss, "eval/perplexity": float(np.exp(min(loss, 50.0))),
           "eval/unigram_loss": unigram}
    writer.scalars(step, out)
    if eval_prompts:
      answers = generate_samples(policy, state["params"], eval_prompts, config.sample_tokens, mesh)
      writer.texts(step, "eval_samples", [{"prompt": p[-1]["content"], "answer": a}
                                          for p, a in zip(eval_prompts, answers)])
    return out

  preempt = checkpoint.Preemption()
  truncated, last_eval, t_last = 0, {}, time.perf_counter()
  tokens_since = 0
  try:
    with common.mesh_rules(mesh, rules):
      for step in range(start, steps):
        idx = pipeline.process_slice(order.next())
        batch, n_trunc = pipeline.sft_batch(
            policy.tokenizer, [train_rows[i]["messages"] for i in idx], config.seq_len)
        truncated += n_trunc
        # Order-sensitive fingerprint of the batch, so resumed runs can prove same data.
        checksum = float(np.sum((idx + 1) * np.arange(1, len(idx) + 1)) % (1 << 24))
        tokens_since += int(batch["attn_mask"].sum()) * jax.process_count()
        state, m = step_fn(state, sharding.put_batch(pipeline.microbatches(batch, accum), mesh, 1))
        writer.advance()
        done = step + 1
        if done % config.log_every == 0 or done == steps:
          m = jax.device_get(m)
          dt = time.perf_counter() - t_last
          lr = optim.schedule(config.optim, steps)(step)
          writer.scalars(done, {**{f"train/{k}": v for k, v in m.items()}, "train/lr": lr,
                                "perf/tokens_per_s": tokens_since / dt,
                                "perf/steps_per_s": config.log_every / dt,
                                "data/truncated": truncated, "data/epoch": order.epoch,
                                "data/batch_checksum": checksum},
                         bar={"loss": m["loss"], "tok/s": tokens_since / dt})
          t_last, tokens_since = time.perf_counter(), 0
        if done % config.eval_every == 0 or done == steps:
          last_eval = evaluate(done)
          writer.print(f"step {done}: eval loss {last_eval['eval/loss']:.3f} "
                       f"(unigram {unigram:.3f}), perplexity {last_eval['eval/perplexity']:.2f}")
        common.save_step(mngr, done, state, {"order": order.state()}, preempt, writer,
                         last=done == steps)
    mngr.wait_until_finished()
  finally:
    preempt.restore_handler()
  common.export_hf(workdir, state["params"], policy.cfg, policy.tokenizer)
  common.finish(writer, workdir, None, skipped, truncated, "conversations", config.seq_len)
  return {"params": state["params"], "eval": last_eval, "unigram": unigram, "policy": policy}


def warm_start(config, workdir: str, log) -> str:
  """A directory with SFT params: config.init_from, or an SFT run in workdir/sft.
  init_from="random" starts from random weights (benchmarks; needs allow_random_init)."""
  if config.init_from == "random":
    if not config.model.allow_random_init:
      raise sharding.ConfigError("init_from=random needs --config.model.allow_random_init=True")
    return ""
  if config.init_from:
    return config.init_from
  sft_dir = os.path.join(workdir, "sft")
  sft_cfg = config.sft
  if not (checkpoint.exists(sft_dir) and
          checkpoint.manager(sft_dir, 1, 1, False).latest_step() == sft_cfg.steps):
    log(f"SFT warm start: training the tiny SFT policy in {sft_dir}")
    train(sft_cfg, sft_dir)
  else:
    log(f"SFT warm start: reusing {sft_dir}")
  return sft_dir
