"""Where each trainer's rows come from: the files a config names, or the embedded default.

  conversations  SFT: {messages} rows (data.train / data.eval, or the synthetic Q/A set)
  comparisons    RM and DPO: {prompt, responses} rows (files, or synthetic comparisons)
  prompts        RL and RSO sampling: {prompt, reference, query_type} rows
  ptx_rows       PPO-ptx: pretraining text packed into fixed-length token rows
"""

import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Callable

from etils import epath
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


def store_path(data_config, workdir: str, split: str) -> str:
  """With data.stream, where the `split` rows are stored (readers.RowStore): one file per
  process under <workdir>/data (under the temporary directory for a URI workdir), remade
  at each start; without it, "" (the rows are read into memory)."""
  if not data_config.get("stream"):
    return ""
  # A URI workdir's rows go to one local folder per workdir, reused at the next start.
  local = (workdir if workdir and "://" not in workdir else os.path.join(
      tempfile.gettempdir(), "r3jax_rows_" + hashlib.sha256(workdir.encode()).hexdigest()[:16]))
  folder = os.path.join(local, "data", f"process_{jax.process_index()}")
  os.makedirs(folder, exist_ok=True)
  return os.path.join(folder, f"{split}.rows.jsonl")


def conversations(data_config, workdir: str, seed: int):
  """(train_rows, eval_rows, skipped) from data.train / data.eval, or the embedded default
  (`_splits`). The embedded default generates the synthetic Q/A set (also written to
  workdir/data for inspection)."""

  def load(path, split):
    if data_config.use_tfds and not path.startswith("tfds:"):
      from r3jax.data import tfds_local  # Local: TFDS is slow to import.
      name = os.path.splitext(os.path.basename(path))[0]
      return tfds_local.load_conversations(path, os.path.join(workdir, "tfds", name),
                                           data_config.format, data_config.skip_bad,
                                           data_config.control_text)
    return readers.load_conversations(path, data_config.format, data_config.skip_bad,
                                      data_config.control_text, data_config.tfds_dir,
                                      store_path(data_config, workdir, split))

  def embedded():
    examples = TASKS.get(data_config.synthetic_task, "data.synthetic_task").fn(data_config)
    rows = [dict(where=f"synthetic:{i}", **ex) for i, ex in enumerate(examples)]
    if jax.process_index() == 0:
      readers.write_jsonl(os.path.join(workdir, "data", "synthetic.jsonl"),
                          [{k: v for k, v in r.items() if k != "where"} for r in rows])
    return rows

  return _splits(data_config, load, embedded, seed)


def comparisons(data_config, seed: int, read=readers.load_comparisons, workdir: str = ""):
  """(train, eval, skipped) comparison rows (`_splits`): files (`read`; KTO's
  readers.load_feedback also takes unpaired rows), or the synthetic comparisons."""
  return _splits(
      data_config,
      lambda path, split: read(path, data_config.skip_bad, data_config.control_text,
                               data_config.tfds_dir, store_path(data_config, workdir, split)),
      lambda: [dict(where=f"synthetic:{i}", **c) for i, c in enumerate(
          synthetic.comparisons(data_config.synthetic_examples, seed=data_config.synthetic_seed))],
      seed)


def _splits(data_config, load, embedded, seed: int):
  """(train_rows, eval_rows, skipped): data.train read by load(path, "train") (a
  readers.Loaded), else embedded(); data.eval likewise, else a data.eval_fraction of the
  train rows held out. With data.stream the files' rows stay on disk (store_path)."""
  skipped = []
  if data_config.train:
    loaded = load(data_config.train, "train")
    rows, skipped = loaded.rows, loaded.skipped
  else:
    rows = embedded()
  if data_config.eval:
    loaded = load(data_config.eval, "eval")
    return rows, loaded.rows, skipped + loaded.skipped
  return _hold_out(rows, data_config.eval_fraction, seed) + (skipped,)


def _hold_out(rows, fraction: float, seed: int):
  order = np.random.default_rng(seed).permutation(len(rows))
  n_eval = max(1, int(len(rows) * fraction))
  return readers.select(rows, order[n_eval:]), readers.select(rows, order[:n_eval])


def with_instruction(rows, instruction: str):
  """Each row's prompt with `instruction` after a blank line (a conversation's: its last
  user turn's)."""
  if not instruction:
    return rows
  add = lambda text: f"{text}\n\n{instruction}"
  return [{**r, "prompt": add(r["prompt"]) if isinstance(r["prompt"], str) else
           r["prompt"][:-1] + [{**r["prompt"][-1], "content": add(r["prompt"][-1]["content"])}]}
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
  for r in readers.load_prompts(data_config.prompts, control_text=data_config.control_text,
                                tfds_dir=data_config.tfds_dir).rows:
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
    return [dict(r, prompt=chat.as_messages(r["prompt"])) for r in prompts(data_config)][:n]
  return synthetic.comparisons(n, seed=data_config.synthetic_seed + 10, world_only=True)


def ptx_rows(ptx_config, tok, workdir: str = "") -> np.ndarray | None:
  """PPO-ptx text packed into [rows, ptx.seq_len] token ids: ptx.data (JSONL, .txt, gzip,
  Parquet, ...), else documents about the embedded synthetic entities.

  A file is read a thousand documents at a time and its tokens appended to a uint32 file in
  <workdir>/ptx (made once; rebuilt if the data file or the tokenizer changes), which is
  then memory-mapped: host memory stays flat however large the corpus, and PPO still draws
  rows at random (resumably) from all of it."""
  if ptx_config.coef <= 0:
    return None
  if not ptx_config.data:
    texts = [" ".join(synthetic.facts(e)) for e in synthetic.entities(ptx_config.synthetic_docs, seed=7)]
    ids = np.concatenate([np.asarray(tok(t)["input_ids"] + [tok.eos_token_id], np.int32) for t in texts])
  else:
    ids = _token_file(ptx_config.data, tok, workdir)
  n = len(ids) // ptx_config.seq_len
  if n < 1:
    raise DataError(f"ptx.data={ptx_config.data}: fewer than ptx.seq_len={ptx_config.seq_len} tokens")
  return ids[:n * ptx_config.seq_len].reshape(n, ptx_config.seq_len)


def _token_file(path: str, tok, workdir: str) -> np.ndarray:
  """The documents of `path`, each followed by the end-of-text id, as a memory-mapped uint32
  array cached under <workdir>/ptx (a temporary directory for a URI workdir)."""
  stat = epath.Path(path).stat()
  key = {"data": os.path.abspath(path) if "://" not in path else path, "size": stat.length,
         "mtime": int(stat.mtime), "vocab": len(tok), "eos": int(tok.eos_token_id)}
  # One cache per process: hosts of a pod may share the workdir's filesystem.
  cache_dir = (os.path.join(workdir, "ptx", f"process_{jax.process_index()}")
               if workdir and "://" not in workdir else tempfile.mkdtemp(prefix="r3jax_ptx_"))
  tokens, meta = os.path.join(cache_dir, "tokens.u32"), os.path.join(cache_dir, "tokens.json")
  if not (os.path.exists(tokens) and os.path.exists(meta) and open(meta).read() == json.dumps(key)):
    os.makedirs(cache_dir, exist_ok=True)
    with open(tokens + ".tmp", "wb") as f:
      batch = []
      for text in readers.iter_texts(path):
        batch.append(text)
        if len(batch) == 1000:
          _write_tokens(f, tok, batch)
          batch = []
      _write_tokens(f, tok, batch)
    os.replace(tokens + ".tmp", tokens)
    with open(meta, "w") as f:
      f.write(json.dumps(key))
  if os.path.getsize(tokens) == 0:
    raise DataError(f"ptx.data={path}: no documents")
  return np.memmap(tokens, np.uint32, mode="r")


def _write_tokens(f, tok, texts) -> None:
  if texts:
    eos = tok.eos_token_id
    f.write(np.concatenate([np.asarray(ids + [eos], np.uint32) for ids in tok(texts)["input_ids"]]).tobytes())
