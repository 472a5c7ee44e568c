"""Where each trainer's rows come from: the files a config names, or the embedded default.

  conversations  SFT: {messages} rows (data.train / data.eval, or the synthetic Q/A set)
  comparisons    RM and DPO: {prompt, responses} rows (files, or synthetic comparisons)
  prompts        RL and RSO sampling: {prompt, reference, query_type} rows
  ptx_rows       PPO-ptx: pretraining text packed into fixed-length token rows
"""

import dataclasses
import os
from typing import Callable

import jax
import numpy as np

from r3jax.core import registry
from r3jax.core.errors import DataError
from r3jax.data import arithmetic, chat, readers, synthetic
from r3jax.rewards import r3


@dataclasses.dataclass(frozen=True)
class Embedded:
  """An embedded task (data.synthetic_task): generated from seeds, no files."""
  fn: Callable  # SFT data config -> conversation rows {messages, ...}.
  prompts: Callable  # RL data config -> prompt rows {prompt, ...} (another seed than SFT's).
  held_out: Callable  # () -> eval_gen's held-out prompt rows (--prompts=synthetic[:<task>]).


TASKS = registry.Registry("embedded task", Embedded)

TASKS.register(
    "world",  # Q/A about made-up entities; the fact checker (eval/gold.py) is its judge.
    prompts=lambda d: synthetic.questions(d.synthetic_examples, seed=d.prompt_seed),
    held_out=lambda: synthetic.questions(200, seed=99))(
        lambda d: synthetic.generate(d.synthetic_examples, seed=0, restate=d.synthetic_restate))
TASKS.register(
    "arithmetic",  # Word problems with exact keys; the math reward is its judge.
    prompts=lambda d: arithmetic.problems(d.synthetic_examples, seed=d.prompt_seed, split="rl"),
    held_out=lambda: arithmetic.problems(200, seed=99, split="test"))(
        lambda d: arithmetic.conversations(d.synthetic_examples, seed=0))


def conversations(data_config, workdir: str, seed: int):
  """(train_rows, eval_rows, skipped) from data.train / data.eval, or the embedded default.

  The embedded default generates the synthetic Q/A set (also written to workdir/data for
  inspection). Without data.eval, a data.eval_fraction of the train rows is held out.
  """
  skipped = []

  def load(path):
    if data_config.use_tfds:
      from r3jax.data import tfds_local  # Local: TFDS is slow to import.
      name = os.path.splitext(os.path.basename(path))[0]
      return tfds_local.load_conversations(path, os.path.join(workdir, "tfds", name),
                                           data_config.format, data_config.skip_bad)
    return readers.load_conversations(path, data_config.format, data_config.skip_bad)

  if data_config.train:
    loaded = load(data_config.train)
    rows, skipped = loaded.rows, loaded.skipped
  else:
    examples = TASKS.get(data_config.synthetic_task, "data.synthetic_task").fn(data_config)
    rows = [dict(where=f"synthetic:{i}", **ex) for i, ex in enumerate(examples)]
    if jax.process_index() == 0:
      readers.write_jsonl(os.path.join(workdir, "data", "synthetic.jsonl"),
                          [{k: v for k, v in r.items() if k != "where"} for r in rows])
  if data_config.eval:
    loaded = load(data_config.eval)
    return rows, loaded.rows, skipped + loaded.skipped
  return _hold_out(rows, data_config.eval_fraction, seed) + (skipped,)


def comparisons(data_config, seed: int):
  """(train, eval, skipped) comparison rows: files, or the synthetic comparisons."""
  skipped = []
  if data_config.train:
    loaded = readers.load_comparisons(data_config.train, data_config.skip_bad)
    rows, skipped = loaded.rows, loaded.skipped
  else:
    rows = [dict(where=f"synthetic:{i}", **c) for i, c in
            enumerate(synthetic.comparisons(data_config.synthetic_examples, seed=data_config.synthetic_seed))]
  if data_config.eval:
    loaded = readers.load_comparisons(data_config.eval, data_config.skip_bad)
    return rows, loaded.rows, skipped + loaded.skipped
  return _hold_out(rows, data_config.eval_fraction, seed) + (skipped,)


def _hold_out(rows, fraction: float, seed: int):
  order = np.random.default_rng(seed).permutation(len(rows))
  n_eval = max(1, int(len(rows) * fraction))
  return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def with_instruction(rows, instruction: str):
  """Each row's (string) prompt with `instruction` after a blank line."""
  if not instruction:
    return rows
  return [{**r, "prompt": f"{r['prompt']}\n\n{instruction}"} if isinstance(r["prompt"], str) else r
          for r in rows]


def prompts(data_config):
  """Prompts with references and query types: an embedded task's, or data.prompts in any of
  readers.to_prompt's forms ({prompt, reference?, query_type?}, Vicuna, Alpaca, SuperNI,
  GSM8K); data.instruction appended to each."""
  return with_instruction(_prompts(data_config), data_config.get("instruction", ""))


def _prompts(data_config):
  if not data_config.prompts:
    return TASKS.get(data_config.synthetic_task, "data.synthetic_task").prompts(data_config)
  rows = []
  for r in readers.load_prompts(data_config.prompts).rows:
    try:
      qtype = r3.query_type(r.get("query_type"))
    except ValueError as e:
      raise DataError(f"{r['where']}: field 'query_type': {e}") from None
    rows.append({**r, "reference": r.get("reference"), "query_type": qtype})  # The row's own fields too.
  return rows


def sampling_prompts(data_config, n: int):
  """{prompt (messages), reference, query_type, responses?} rows for RSO and best-of-N:
  data.prompts as for RL, else synthetic comparisons about the world's entities (whose
  responses `direct` uses; their entity and asks fields let the gold judge read samples)."""
  if data_config.prompts:
    return [dict(r, prompt=chat.prompt_messages(r["prompt"])) for r in prompts(data_config)][:n]
  return synthetic.comparisons(n, seed=data_config.synthetic_seed + 10, world_only=True)


def ptx_rows(ptx_config, tok) -> np.ndarray | None:
  """PPO-ptx text packed into [rows, ptx.seq_len] token ids: ptx.data ({"text"} JSONL or
  .txt), else documents about the embedded synthetic entities."""
  if ptx_config.coef <= 0:
    return None
  if ptx_config.data:
    texts = [r["text"] for r in readers.load_texts(ptx_config.data).rows]
  else:
    texts = [" ".join(synthetic.facts(e)) for e in synthetic.entities(ptx_config.synthetic_docs, seed=7)]
  ids = np.concatenate([np.asarray(tok(t)["input_ids"] + [tok.eos_token_id], np.int32) for t in texts])
  n = len(ids) // ptx_config.seq_len
  if n < 1:
    raise DataError(f"ptx.data={ptx_config.data}: fewer than ptx.seq_len={ptx_config.seq_len} tokens")
  return ids[:n * ptx_config.seq_len].reshape(n, ptx_config.seq_len)
