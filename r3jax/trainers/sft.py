"""Supervised fine-tuning (the Qwen report, Bai et al. 2023 §3.1.2) as a task of the
supervised loop (trainers/supervised.py): masked next-token loss on assistant tokens;
held-out loss against the unigram baseline, perplexity and greedy answers to a few
held-out prompts."""

import functools
import itertools

import jax
import numpy as np

from r3jax.core import sharding
from r3jax.data import chat, pipeline, sources
from r3jax.losses import lm
from r3jax.models import qwen, engines, sampling
from r3jax.trainers import supervised


def loss_fn(params, batch, rng, *, model_cfg, deterministic=False):
  """(sum NLL over trained target tokens, their count, {}) for one microbatch."""
  tokens, attn = batch["tokens"], batch["attn_mask"]
  segments = batch["segment_ids"][:, :-1] if "segment_ids" in batch else None  # Packed rows.
  # The model's logits go unused (XLA drops them): the lean head keeps no [B, T, V] residual.
  _, hidden_BTD, _ = qwen.Qwen(model_cfg).apply(
      {"params": params}, tokens[:, :-1], kv_mask_BS=attn[:, :-1], segment_ids_BT=segments,
      deterministic=deterministic, rngs={"dropout": rng})
  nll, count = lm.masked_nll_sum(hidden_BTD, qwen.head_kernel(params, model_cfg),
                                        tokens[:, 1:], batch["loss_mask"][:, 1:])
  return nll, (count, {})


def unigram_loss(tokenizer, rows, limit: int = 2000) -> float:
  """Cross-entropy (nats) of the best context-free model of the trained tokens of the first
  `limit` conversations (in packed rows' order with data.packing): the baseline an eval
  loss must beat."""
  convs = (c["messages"] for r in rows for c in (r["pack"] if "pack" in r else [r]))
  counts: dict[int, int] = {}
  for conv in itertools.islice(convs, limit):
    ids, mask = chat.tokenize(tokenizer, conv)
    for i in ids[mask.astype(bool)]:
      counts[int(i)] = counts.get(int(i), 0) + 1
  p = np.array(list(counts.values()), np.float64)
  p /= p.sum()
  return float(-(p * np.log(p)).sum())


def prepare(ctx: supervised.Context):
  """The batches as they are; the unigram baseline of the training rows goes to ctx.extra,
  for the first line, every evaluation and the run's result."""
  ctx.extra["unigram"] = unigram_loss(ctx.policy.tokenizer, ctx.train_rows)
  return lambda batch, split, idx: batch


def eval_metrics(ctx: supervised.Context, out: dict) -> dict:
  return {"eval/perplexity": float(np.exp(min(out["eval/loss"], 50.0))),
          "eval/unigram_loss": ctx.extra["unigram"]}


def greedy_answers(ctx: supervised.Context, params, step: int) -> None:
  """Greedy answers to the first eval_prompts held-out prompts, in samples.jsonl."""
  config, tok = ctx.run.config, ctx.policy.tokenizer
  prompts = [r["messages"][:-1] for r in ctx.eval_rows[:config.eval_prompts]]
  if not prompts:
    return
  sample_cfg = sampling.sample_config(tok, max_new_tokens=config.sample_tokens, greedy=True)
  answers, _ = engines.generate_text(params, ctx.policy.cfg.replace(dropout_rate=0.0), tok,
                                      sampling.chat_ids(tok, prompts), jax.random.key(0), sample_cfg,
                                      put=lambda x: sharding.replicate(x, ctx.run.mesh))
  ctx.run.writer.texts(step, "eval_samples", [{"prompt": p[-1]["content"], "answer": a}
                                              for p, a in zip(prompts, answers)])


def load(config, workdir: str):
  train_rows, eval_rows, skipped = sources.conversations(config.data, workdir, config.seed)
  return train_rows, eval_rows, skipped, []


def batch(config, tok, rows):
  """Conversations as sft_batch rows; packs (data.packing, training only) as packed rows."""
  if rows and "pack" in rows[0]:
    return pipeline.packed_batch(tok, [[c["messages"] for c in r["pack"]] for r in rows], config.seq_len)
  return pipeline.sft_batch(tok, [r["messages"] for r in rows], config.seq_len)


TASK = supervised.Task(
    name="sft", rows="conversations", load=load, batch=batch,
    # Dropout (model.dropout_rate) trains only: evaluation is deterministic.
    make_loss=lambda config, cfg, deterministic: functools.partial(
        loss_fn, model_cfg=cfg, deterministic=deterministic),
    prepare=prepare,
    eval_metrics=eval_metrics,
    samples=greedy_answers,
    eval_line=lambda step, out: (f"step {step}: eval loss {out['eval/loss']:.3f} (unigram "
                                 f"{out['eval/unigram_loss']:.3f}), perplexity "
                                 f"{out['eval/perplexity']:.2f}"),
    summary=lambda ctx: f"; unigram baseline loss {ctx.extra['unigram']:.3f}",
    throughput=True,
    truncated=lambda config: "conversations",
    pack=lambda config, tok, rows: (*pipeline.pack(tok, (r["messages"] for r in rows), config.seq_len),
                                    config.seq_len + 1),
    export=supervised.export_hf)
