"""What the tasks that learn from comparisons share (trainers/rm.py, trainers/dpo.py):
comparison rows, with the ties dropped, as [B, K, T] batches of K ranked responses per
comparison (best first), and the supervised.Task fields that follow from them."""

from typing import Callable

from r3jax.data import pipeline, readers, sources
from r3jax.trainers import supervised


def drop_ties(data_config, *splits):
  """(splits without the comparisons that repeat a response, up to whitespace, and how many
  were dropped); with
  data.keep_ties nothing is dropped."""
  if data_config.keep_ties:
    return splits, 0
  # Equal after whitespace normalisation counts as a tie: a pair that differs only in
  # spacing carries no preference, and a model learns the spacing to 100% accuracy.
  distinct = lambda r: len({" ".join(x.split()) for x in r["responses"]}) == len(r["responses"])
  kept = [readers.select(rows, [i for i, r in enumerate(rows) if distinct(r)]) for rows in splits]
  return kept, sum(len(a) - len(b) for a, b in zip(splits, kept))


def loader(check: Callable) -> Callable:
  """Task.load for comparisons: the rows without ties, checked by check(train_rows,
  eval_rows) (raises DataError)."""
  def load(config, workdir: str):
    train_rows, eval_rows, skipped = sources.comparisons(config.data, config.seed, workdir=workdir)
    (train_rows, eval_rows), ties = drop_ties(config.data, train_rows, eval_rows)
    check(train_rows, eval_rows)
    notes = [f"dropped {ties} comparisons whose responses are identical (up to whitespace): they carry no "
             "preference and train at the loss of a coin flip (data.keep_ties=True keeps them)"]
    return train_rows, eval_rows, skipped, notes if ties else []
  return load


def batch(config, tok, rows, prompt_len: int):
  """(batch, truncated count) of comparison rows, or of packed rows (data.packing)."""
  if "pack" in rows[0]:
    return pipeline.packed_comparisons(tok, [r["pack"] for r in rows], config.seq_len, rows[0]["slots"])
  return pipeline.ranked_batch(tok, rows, config.seq_len, prompt_len)


def task(*, prompt_len: Callable, check: Callable, accuracy: str, **fields) -> supervised.Task:
  """A supervised.Task on comparisons. prompt_len: config -> the prompt-split width of the
  batches (0: whole rows, pipeline.ranked_batch); check: as for `loader`; accuracy: the
  pairwise accuracy metric that the bar and the eval line show."""
  def truncated(config) -> str:
    return f"responses (prompt_len={prompt_len(config)})" if prompt_len(config) else "responses"

  def pack(config, tok, rows):
    packs, n_cut = pipeline.pack_comparisons(tok, rows, config.seq_len)
    return packs, n_cut, len(rows[0]["responses"]) * config.seq_len

  return supervised.Task(
      rows="comparisons", load=loader(check), pack=pack,
      batch=lambda config, tok, rows: batch(config, tok, rows, prompt_len(config)),
      eval_line=lambda step, out: (f"step {step}: eval loss {out['eval/loss']:.4f}, pairwise "
                                   f"accuracy {out['eval/' + accuracy]:.3f}"),
      truncated=truncated, accuracy=accuracy, **fields)
