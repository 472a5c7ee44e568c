"""Where each trainer's rows come from: the files a config names, or the embedded default.

  conversations  SFT: {messages} rows (data.train / data.eval, or the synthetic Q/A set)
  comparisons    RM and DPO: {prompt, responses} rows (files, or synthetic comparisons)
  prompts        RL and RSO sampling: {prompt, reference, query_type} rows
  ptx_rows       PPO-ptx: pretraining text packed into fixed-length token rows
"""

import os

import jax
import numpy as np

from r3jax.core.errors import DataError
from r3jax.data import chat, readers, synthetic
from r3jax.rewards import r3


def conversations(dcfg, workdir: str, seed: int):
  """(train_rows, eval_rows, skipped) from data.train / data.eval, or the embedded default.

  The embedded default generates the synthetic Q/A set (also written to workdir/data for
  inspection). Without data.eval, a data.eval_fraction of the train rows is held out.
  """
  skipped = []

  def load(path):
    if dcfg.use_tfds:
      from r3jax.data import tfds_local  # Local: TFDS is slow to import.
      name = os.path.splitext(os.path.basename(path))[0]
      return tfds_local.load_conversations(path, os.path.join(workdir, "tfds", name),
                                           dcfg.format, dcfg.skip_bad)
    return readers.load_conversations(path, dcfg.format, dcfg.skip_bad)

  if dcfg.train:
    loaded = load(dcfg.train)
    rows, skipped = loaded.rows, loaded.skipped
  else:
    examples = synthetic.generate(dcfg.synthetic_examples, seed=0, restate=dcfg.synthetic_restate)
    rows = [dict(where=f"synthetic:{i}", **ex) for i, ex in enumerate(examples)]
    if jax.process_index() == 0:
      readers.write_jsonl(os.path.join(workdir, "data", "synthetic.jsonl"),
                          [{k: v for k, v in r.items() if k != "where"} for r in rows])
  if dcfg.eval:
    loaded = load(dcfg.eval)
    return rows, loaded.rows, skipped + loaded.skipped
  return _hold_out(rows, dcfg.eval_fraction, seed) + (skipped,)


def comparisons(dcfg, seed: int):
  """(train, eval, skipped) comparison rows: files, or the synthetic comparisons."""
  skipped = []
  if dcfg.train:
    loaded = readers.load_comparisons(dcfg.train, dcfg.skip_bad)
    rows, skipped = loaded.rows, loaded.skipped
  else:
    rows = [dict(where=f"synthetic:{i}", **c) for i, c in
            enumerate(synthetic.comparisons(dcfg.synthetic_examples, seed=dcfg.synthetic_seed))]
  if dcfg.eval:
    loaded = readers.load_comparisons(dcfg.eval, dcfg.skip_bad)
    return rows, loaded.rows, skipped + loaded.skipped
  return _hold_out(rows, dcfg.eval_fraction, seed) + (skipped,)


def _hold_out(rows, fraction: float, seed: int):
  order = np.random.default_rng(seed).permutation(len(rows))
  n_eval = max(1, int(len(rows) * fraction))
  return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def prompts(dcfg):
  """Prompts with references and query types: the synthetic questions, or data.prompts in
  any of readers.to_prompt's forms ({prompt, reference?, query_type?}, Vicuna, Alpaca,
  SuperNI)."""
  if not dcfg.prompts:
    return synthetic.questions(dcfg.synthetic_examples, seed=dcfg.prompt_seed)
  rows = []
  for r in readers.load_prompts(dcfg.prompts).rows:
    try:
      qtype = r3.query_type(r.get("query_type"))
    except ValueError as e:
      raise DataError(f"{r['where']}: field 'query_type': {e}") from None
    rows.append({**r, "reference": r.get("reference"), "query_type": qtype})  # The row's own fields too.
  return rows


def sampling_prompts(dcfg, n: int):
  """{prompt (messages), reference, query_type, responses?} rows for RSO and best-of-N:
  data.prompts as for RL, else synthetic comparisons about the world's entities (whose
  responses `direct` uses; their entity and asks fields let the gold judge read samples)."""
  if dcfg.prompts:
    return [dict(r, prompt=chat.prompt_messages(r["prompt"])) for r in prompts(dcfg)][:n]
  return synthetic.comparisons(n, seed=dcfg.synthetic_seed + 10, world_only=True)


def ptx_rows(pcfg, tok) -> np.ndarray | None:
  """PPO-ptx text packed into [rows, ptx.seq_len] token ids: ptx.data ({"text"} JSONL or
  .txt), else documents about the embedded synthetic entities."""
  if pcfg.coef <= 0:
    return None
  if pcfg.data:
    texts = [r["text"] for r in readers.load_texts(pcfg.data).rows]
  else:
    texts = [" ".join(synthetic.facts(e)) for e in synthetic.entities(pcfg.synthetic_docs, seed=7)]
  ids = np.concatenate([np.asarray(tok(t)["input_ids"] + [tok.eos_token_id], np.int32) for t in texts])
  n = len(ids) // pcfg.seq_len
  if n < 1:
    raise DataError(f"ptx.data={pcfg.data}: fewer than ptx.seq_len={pcfg.seq_len} tokens")
  return ids[:n * pcfg.seq_len].reshape(n, pcfg.seq_len)
