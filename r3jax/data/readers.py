"""Readers of JSONL / JSON / text (gzip too), Parquet and Arrow files that turn rows into
conversations, comparisons and prompts.

Every problem is reported as `file:line: problem` (JSON arrays: `file: item N`). With
`skip_bad`, bad rows are counted and returned with their messages instead of raised, so
a caller can log how many were skipped; nothing is dropped silently.

Formats (`format="auto"` picks by the fields present):
  messages  {"messages": [{"role", "content"}, ...]}
  sharegpt  {"conversations": [{"from", "value"}, ...]} (+ optional "chosen" turn)
  hh        {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ..."} (the chosen side for SFT)
  alpaca    {"instruction", "input"?, "output"}
  text      {"text"} or a .txt file (one document per line), for LM / PPO-ptx data
Comparisons for reward models and DPO (`load_comparisons`): {prompt, chosen, rejected},
{prompt, responses} (ranked, best first), HH {chosen, rejected} transcripts, and
ShareGPT-style {conversations, chosen, rejected}. Unpaired feedback for KTO
(`load_feedback`): {prompt, completion, label}, {messages, label}, {conversations, label},
and comparisons, which KTO takes apart.
"""

import array
import collections.abc
import dataclasses
import gzip
import json
import os
import re
import zlib

from etils import epath
import numpy as np

from r3jax.core import paths
from r3jax.core.errors import DataError
from r3jax.data import chat


@dataclasses.dataclass
class Loaded:
  rows: list[dict]  # Each with "where" (file:line) and the parsed content.
  skipped: list[str]  # Messages for skipped rows (empty unless skip_bad).


class LazyRows(collections.abc.Sequence):
  """Rows made when indexed (`row(i)`), by an int or a slice (a list)."""

  def row(self, i: int) -> dict:
    raise NotImplementedError

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self.row(j) for j in range(*i.indices(len(self)))]
    if not -len(self) <= i < len(self):
      raise IndexError(i)
    return self.row(int(i) % len(self))


_GZIP, _PARQUET = b"\x1f\x8b", b"PAR1"


def _check_strings(obj, where: str) -> None:
  """Every string of a parsed row encodes as UTF-8: a JSON escape can hold a lone surrogate
  ("\\ud800"), which would fail later, inside the tokenizer, without the row's name."""
  stack = [obj]
  while stack:
    x = stack.pop()
    if isinstance(x, str):
      try:
        x.encode("utf-8")
      except UnicodeEncodeError as e:
        raise DataError(f"{where}: a string holds {x[e.start:e.end]!r}, a lone UTF-16 surrogate, "
                        "not a character") from None
    elif isinstance(x, dict):
      stack.extend(x.keys())
      stack.extend(x.values())
    elif isinstance(x, list):
      stack.extend(x)


def _parse(text: str, where: str, whole_file: bool = False):
  """json.loads, with each way a row can fail returned as a DataError naming `where` (and
  the line, for a whole file)."""
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    return DataError(f"{where}:{e.lineno}: malformed JSON ({e.msg})" if whole_file else
                     f"{where}: malformed JSON ({e.msg} at column {e.colno})")
  except RecursionError:
    return DataError(f"{where}: JSON nested too deeply to read")
  if "\\u" in text:  # Only an escape can make a lone surrogate.
    try:
      _check_strings(obj, where)
    except DataError as e:
      return e
  return obj


def _plain(x):
  """A TFDS example as JSON-like Python: bytes to text, arrays to lists, and a sequence of
  records (TFDS stores it as a record of equal-length lists) to a list of records."""
  if isinstance(x, bytes):
    return x.decode("utf-8", errors="replace")
  if isinstance(x, dict):
    out = {k: _plain(v) for k, v in x.items()}
    lists = list(out.values())
    if lists and all(isinstance(v, list) for v in lists) and len({len(v) for v in lists}) == 1:
      return [dict(zip(out, values)) for values in zip(*lists)]
    return out
  if hasattr(x, "tolist"):  # numpy arrays and scalars.
    return _plain(x.tolist()) if getattr(x, "dtype", None) == object else x.tolist()
  if isinstance(x, list):
    return [_plain(v) for v in x]
  return x


def _tfds_rows(spec: str, data_dir: str):
  """The rows of a prepared TFDS dataset, `tfds:<name>[/<config>][:<version>][@<split>]`
  (split train by default), from `data_dir` (data.tfds_dir). Nothing is downloaded: a
  dataset that is not there is one line."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow to import)
  name, _, split = spec[len("tfds:"):].partition("@")
  if not data_dir:
    raise DataError(f"{spec}: set data.tfds_dir to the directory that holds the prepared "
                    "dataset (r3jax downloads nothing)")
  try:
    source = tfds.builder(name, data_dir=data_dir).as_data_source(split=split or "train")
  except Exception as e:  # pylint: disable=broad-except  (TFDS raises many kinds)
    why = (str(e).strip().splitlines() or [""])[0]
    raise DataError(f"{spec}: not a prepared array_record dataset in data.tfds_dir={data_dir} "
                    f"({type(e).__name__}: {why})") from None
  for i in range(len(source)):
    yield f"{spec}: row {i}", _plain(source[i])


def iter_records(path: str, tfds_dir: str = ""):
  """Yields (where, obj) for each JSONL line / JSON array item / text line / Parquet or
  Arrow row; obj is a DataError for a row that cannot be read. `path` may be a gs:// URI;
  JSON, JSONL and text files may be gzip-compressed (.jsonl.gz, .json.gz, .txt.gz), and
  a directory is one written by `datasets.Dataset.save_to_disk` (Arrow), and
  `tfds:<name>...` a prepared TFDS dataset in `tfds_dir` (_tfds_rows)."""
  if path.startswith("tfds:"):
    yield from _tfds_rows(path, tfds_dir)
    return
  p = epath.Path(path)
  if not p.exists():
    raise DataError(f"{path}: file not found")
  if p.is_dir():
    yield from _arrow_dir(path)
    return
  with p.open("rb") as f:
    magic = f.read(4)
  if magic == _PARQUET:
    yield from _parquet(path)
    return
  name = path[:-3] if path.endswith(".gz") else path
  try:
    with p.open("rb") as raw:
      f = gzip.GzipFile(fileobj=raw) if magic[:2] == _GZIP else raw
      if name.endswith(".json"):
        yield from _json_items(path, f.read())
      else:
        yield from _lines(path, f, name.endswith(".txt"))
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DataError(f"{path}: truncated or damaged gzip file ({e})") from None


def _table_rows(path: str, batches):
  """(where, row) of Arrow record batches; a damaged file is one line."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top  (only for these formats)
  i = 0
  try:
    for batch in batches:
      for row in batch.to_pylist():
        yield f"{path}: row {i}", row
        i += 1
  except (pa.ArrowException, OSError) as e:
    raise DataError(f"{path}: unreadable after row {i} ({type(e).__name__}: {e})") from None


def _parquet(path: str):
  """Parquet rows (the HF hub's dataset files), a record batch at a time."""
  import pyarrow as pa, pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    f = pq.ParquetFile(epath.Path(path).open("rb"))
  except (pa.ArrowException, OSError) as e:
    raise DataError(f"{path}: not a readable Parquet file ({e})") from None
  yield from _table_rows(path, f.iter_batches(batch_size=1024))


def _arrow_dir(path: str):
  """The rows of a directory written by `datasets.Dataset.save_to_disk`: Arrow stream files
  listed in its state.json, in order."""
  import pyarrow as pa, pyarrow.ipc as ipc  # pylint: disable=g-import-not-at-top
  d = epath.Path(path)
  if (d / "dataset_dict.json").exists():
    splits = json.loads((d / "dataset_dict.json").read_text()).get("splits", [])
    raise DataError(f"{path}: a DatasetDict with the splits {', '.join(splits)}; name one "
                    f"directory, e.g. {d / (splits[0] if splits else 'train')}")
  if not (d / "state.json").exists():
    raise DataError(f"{path}: a directory without a state.json; expected a data file, or a "
                    "directory written by datasets' save_to_disk")
  try:
    files = [d / f["filename"] for f in json.loads((d / "state.json").read_text())["_data_files"]]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise DataError(f"{d / 'state.json'}: not a datasets state file ({e})") from None

  def batches():
    for f in files:
      try:
        # Memory-mapped, so a large shard is not read into memory at once.
        src = pa.BufferReader(f.read_bytes()) if paths.is_uri(f) else pa.memory_map(str(f))
        reader = ipc.open_stream(src)
      except (pa.ArrowException, OSError) as e:
        raise DataError(f"{f}: not a readable Arrow stream ({e})") from None
      yield from reader
  yield from _table_rows(path, batches())


def _json_items(path: str, data: bytes):
  try:
    text = data.decode("utf-8-sig")  # A byte-order mark (Windows editors) is not the data.
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: invalid UTF-8 at byte {e.start}") from None
  items = _parse(text, path, whole_file=True)
  if isinstance(items, DataError):
    raise items
  if not isinstance(items, list):
    raise DataError(f"{path}: expected a JSON array of rows")
  for i, obj in enumerate(items):
    yield f"{path}: item {i}", obj


def _lines(path: str, f, text_file: bool):
  for lineno, raw in enumerate(f, 1):
    where = f"{path}:{lineno}"
    try:
      line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # Without a byte-order mark.
    except UnicodeDecodeError as e:
      yield where, DataError(f"{where}: invalid UTF-8 at byte {e.start} of the line")
      continue
    if not line.strip():
      continue
    yield where, ({"text": line.rstrip("\r\n")} if text_file else _parse(line, where))


FORMATS = ("auto", "messages", "sharegpt", "hh", "alpaca")  # data.format, for conversations.


def detect_format(obj: dict) -> str:
  for fmt, key in (("messages", "messages"), ("sharegpt", "conversations"),
                   ("alpaca", "instruction"), ("hh", "chosen"), ("text", "text")):
    if key in obj:
      return fmt
  return "unknown"


def field(obj, key, where, kind=str):
  if key not in obj:
    raise DataError(f"{where}: missing field '{key}'")
  if not isinstance(obj[key], kind):
    raise DataError(f"{where}: field '{key}' should be {kind.__name__}, got {type(obj[key]).__name__}")
  return obj[key]


def messages(obj, key, where) -> list[dict]:
  """A list field of chat turns, each an object (checked fully by chat.render)."""
  turns = field(obj, key, where, list)
  for i, m in enumerate(turns):
    if not isinstance(m, dict):
      raise DataError(f"{where}: field '{key}' item {i} should be an object with 'role' and "
                      f"'content', got {type(m).__name__}")
    if m.get("tool_calls") is not None and not isinstance(m["tool_calls"], list):
      raise DataError(f"{where}: field '{key}' item {i}: 'tool_calls' should be a list")
  # An assistant turn that only calls tools may have no content (OpenAI's form).
  return [dict(m, content="") if m.get("tool_calls") and m.get("content") is None else
          dict(m, content=_text_parts(m["content"], f"{where}: field '{key}' item {i}"))
          if isinstance(m.get("content"), list) else dict(m) for i, m in enumerate(turns)]


def _text_parts(parts: list, where: str) -> str:
  """OpenAI's multi-part content, [{"type": "text", "text": ...}, ...], as one text; a part
  of another kind (an image) is an error, since the model reads text only."""
  texts = []
  for part in parts:
    if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
      kind = part.get("type") if isinstance(part, dict) else type(part).__name__
      raise DataError(f"{where}: a content part of type {kind!r}; only text parts are read")
    texts.append(part["text"])
  return "".join(texts)


def to_conversation(obj, fmt: str, where: str) -> list[dict]:
  """A conversation that ends with a non-empty assistant turn."""
  if not isinstance(obj, dict):
    raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  fmt = detect_format(obj) if fmt == "auto" else fmt
  try:
    if fmt == "messages":
      conv = messages(obj, "messages", where)
    elif fmt == "sharegpt":
      conv = chat.parse_sharegpt(field(obj, "conversations", where, list), where)
      if "chosen" in obj:
        conv += chat.parse_sharegpt([obj["chosen"]], where)
    elif fmt == "hh":
      conv = chat.parse_hh(field(obj, "chosen", where), where)
    elif fmt == "alpaca":
      inst, inp = field(obj, "instruction", where), obj.get("input") or ""
      out = field(obj, "output", where)
      conv = [{"role": "user", "content": f"{inst}\n\n{inp}" if inp else inst},
              {"role": "assistant", "content": out}]
    else:
      raise DataError(f"{where}: cannot tell the row's format from its fields "
                      f"{sorted(obj)[:6]}; set data.format")
    chat.render(conv)  # Validates roles and contents.
  except ValueError as e:
    raise DataError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
  if not conv or conv[-1]["role"] != "assistant":
    raise DataError(f"{where}: the conversation does not end with an assistant turn")
  if not conv[-1]["content"].strip():
    raise DataError(f"{where}: empty response (the last assistant turn has no text)")
  return conv


def refuse_control(row: dict, where: str) -> None:
  """A ChatML control token written in a row's text (<|im_end|>, <|im_start|>,
  <|endoftext|>) is refused: it is a data bug or a forged turn. With data.control_text=plain the row is kept and the
  tokenizer encodes the token's characters as text (chat.CONTROL_RE)."""
  prompt = row.get("prompt")
  turns = list(row.get("messages") or []) + (list(prompt) if isinstance(prompt, list) else [])
  texts = [prompt] if isinstance(prompt, str) else []
  turns += [{"content": t} for t in texts + list(row.get("responses") or [])]
  if found := chat.control_token(turns):
    raise DataError(f"{where}: the text holds the control token {found}, which would forge a "
                    "turn or an end of text (data.control_text=plain reads it as plain text)")


def iter_rows(path: str, parse, skip_bad: bool, control_text: str, tfds_dir: str, skipped: list):
  """Rows {where, **parse(obj, where)} of a file (or a TFDS dataset, iter_records), one at a
  time; a bad row raises, or with skip_bad its message goes to `skipped`. control_text
  "refuse" or "plain": see refuse_control."""
  for where, obj in iter_records(path, tfds_dir):
    try:
      if isinstance(obj, DataError):
        raise obj
      row = parse(obj, where)
      if control_text != "plain":
        refuse_control(row, where)
      yield {"where": where, **row}
    except DataError as e:
      if not skip_bad:
        raise
      skipped.append(str(e))


def load_rows(path: str, parse, skip_bad: bool, what: str, control_text: str = "refuse",
              tfds_dir: str = "", store: str = "") -> Loaded:
  """The rows of iter_rows as a list, or with `store` (a file path; data.stream) as a
  RowStore written there."""
  skipped = []
  rows = iter_rows(path, parse, skip_bad, control_text, tfds_dir, skipped)
  rows = RowStore.write(store, rows) if store else list(rows)
  if not len(rows):
    raise DataError(f"{path}: no usable {what}" + (f" ({len(skipped)} skipped)" if skipped else ""))
  return Loaded(rows, skipped)


class RowStore(LazyRows):
  """Rows on disk, one JSON line each, parsed when indexed (data.stream): host memory holds
  their byte offsets only, 8 bytes a row, however large the file. `take` is a view of
  some of them, in the order given.

  The file is opened at once and the handle shared by every view, so a view keeps reading
  the rows it was made from even if the path is written again (another launch into the
  same workdir, before the workdir lock refuses it). A copy made by pickling, or used
  after a fork, opens its own handle."""

  def __init__(self, path: str, offsets: np.ndarray, handle=None):
    self.path, self.offsets = path, offsets
    self._handle = handle or {"file": open(path, "rb"), "pid": os.getpid()}  # pylint: disable=consider-using-with

  @classmethod
  def write(cls, path: str, rows) -> "RowStore":
    """Writes `rows` (any iterable, read once) to `path`; returns them as a RowStore."""
    offsets = array.array("q")  # 8 bytes a row while writing too, unlike a list of ints.
    with open(path + ".tmp", "wb") as f:
      for row in rows:
        offsets.append(f.tell())
        try:
          f.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        except (TypeError, ValueError) as e:
          raise DataError(f"{row.get('where', 'a row')}: a value JSON cannot hold ({e}); data.stream "
                          "stores rows as JSON lines (data.stream=False reads them into memory)") from None
    os.replace(path + ".tmp", path)
    return cls(path, np.frombuffer(offsets, np.int64))

  def __len__(self) -> int:
    return len(self.offsets)

  def __getstate__(self):
    return {"path": self.path, "offsets": self.offsets}

  def __setstate__(self, state):
    self.__init__(state["path"], state["offsets"])

  def row(self, i: int) -> dict:
    if self._handle["pid"] != os.getpid():  # After a fork: not the parent's file position.
      self._handle.update(file=open(self.path, "rb"), pid=os.getpid())  # pylint: disable=consider-using-with
    f = self._handle["file"]
    f.seek(int(self.offsets[i]))
    return json.loads(f.readline())

  def take(self, indices) -> "RowStore":
    return RowStore(self.path, self.offsets[np.asarray(indices, np.int64)], self._handle)


def select(rows, indices):
  """rows[i] for i in indices: a view of a RowStore, else a list."""
  return rows.take(indices) if isinstance(rows, RowStore) else [rows[i] for i in indices]


def load_conversations(path: str, fmt: str = "auto", skip_bad: bool = False,
                       control_text: str = "refuse", tfds_dir: str = "", store: str = "") -> Loaded:
  return load_rows(path, lambda obj, where: {"messages": to_conversation(obj, fmt, where)},
                   skip_bad, "rows", control_text, tfds_dir, store)


def to_comparison(obj, where: str) -> dict:
  """{"prompt": messages ending with a user turn, "responses": [best, ..., worst]} from
    {prompt, chosen, rejected}    prompt: a string or a list of messages;
    {prompt, responses}           a K-wise ranking, best first;
    HH                            {chosen, rejected}: two transcripts sharing all but the last turn;
    ShareGPT-style                {conversations, chosen, rejected}, the last two as {from, value}.
  """
  if not isinstance(obj, dict):
    raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  try:
    if "conversations" in obj:
      prompt = chat.parse_sharegpt(field(obj, "conversations", where, list), where)
      responses = [chat.parse_sharegpt([field(obj, k, where, dict)], where)[0]["content"]
                   for k in ("chosen", "rejected")]
    elif "prompt" in obj:
      p = obj["prompt"]
      prompt = chat.prompt_messages(p) if isinstance(p, str) else messages(obj, "prompt", where)
      responses = (field(obj, "responses", where, list) if "responses" in obj else
                   [field(obj, "chosen", where), field(obj, "rejected", where)])
    elif "chosen" in obj:
      chosen = chat.parse_hh(field(obj, "chosen", where), where + " (chosen)")
      rejected = chat.parse_hh(field(obj, "rejected", where), where + " (rejected)")
      if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{where}: 'chosen' and 'rejected' differ before their last turn")
      prompt, responses = chosen[:-1], [chosen[-1]["content"], rejected[-1]["content"]]
      if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise DataError(f"{where}: 'chosen' and 'rejected' must end with an Assistant turn")
    else:
      raise DataError(f"{where}: not a comparison; expected fields prompt+chosen+rejected, "
                      f"prompt+responses, HH chosen+rejected, or conversations+chosen+rejected")
    chat.render(prompt)
  except ValueError as e:
    raise DataError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
  if not prompt or prompt[-1]["role"] != "user":
    raise DataError(f"{where}: the prompt does not end with a user turn")
  if len(responses) < 2:
    raise DataError(f"{where}: a comparison needs at least 2 responses, got {len(responses)}")
  for i, r in enumerate(responses):
    if not isinstance(r, str) or not r.strip():
      name = ("chosen", "rejected")[i] if len(responses) == 2 and "responses" not in obj else f"responses[{i}]"
      raise DataError(f"{where}: empty or non-string response in '{name}'")
  extra = {k: obj[k] for k in ("reference", "query_type") if obj.get(k)}  # For R³.
  return {"prompt": prompt, "responses": responses, **extra}


def load_comparisons(path: str, skip_bad: bool = False, control_text: str = "refuse",
                     tfds_dir: str = "", store: str = "") -> Loaded:
  """Comparison rows (see `to_comparison`); each keeps its "where" (file:line)."""
  return load_rows(path, to_comparison, skip_bad, "comparisons", control_text, tfds_dir, store)


def _completion(obj, where) -> str:
  """The text of a row's 'completion': a string, or TRL's conversational form, a list
  holding one assistant turn."""
  c = obj["completion"]
  if isinstance(c, list):
    turns = messages(obj, "completion", where)
    if len(turns) != 1 or turns[0].get("role") != "assistant":
      raise DataError(f"{where}: field 'completion' should be one assistant turn, got "
                      f"{[t.get('role') for t in turns]}")
    c = turns[0].get("content")
  if not isinstance(c, str) or not c.strip():
    raise DataError(f"{where}: empty or non-string 'completion'")
  return c


def to_feedback(obj, where: str) -> dict:
  """Unpaired feedback (KTO, Ethayarajh et al. 2024): {"prompt": messages ending with a user
  turn, "responses": [the completion], "label": bool, True for desirable} from
    {prompt, completion, label}   TRL's unpaired rows; prompt: a string or messages,
                                  completion: a string or a list of one assistant turn;
    {messages, label}             the last turn (the assistant's) is the completion;
    {conversations, label}        ShareGPT turns, the same way.
  A row without 'label' is a comparison (`to_comparison`), returned as it is: trainers/kto
  takes it apart after the held-out split. 'label' must be a JSON boolean (not "true", 1).
  """
  if not isinstance(obj, dict):
    raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  if "label" not in obj:
    return to_comparison(obj, where)
  label = field(obj, "label", where, bool)
  try:
    if "completion" in obj:
      p = obj.get("prompt")
      prompt = chat.prompt_messages(p) if isinstance(p, str) else messages(obj, "prompt", where)
      completion = _completion(obj, where)
    elif "messages" in obj or "conversations" in obj:
      turns = (messages(obj, "messages", where) if "messages" in obj else
               chat.parse_sharegpt(field(obj, "conversations", where, list), where))
      if not turns or turns[-1].get("role") != "assistant":
        raise DataError(f"{where}: the conversation does not end with an assistant turn")
      prompt, completion = turns[:-1], turns[-1].get("content")
    else:
      raise DataError(f"{where}: not unpaired feedback; expected fields prompt+completion+label, "
                      f"messages+label or conversations+label (got {sorted(obj)[:6]})")
    chat.render(prompt + [{"role": "assistant", "content": completion}])
  except ValueError as e:
    raise DataError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
  if not prompt or prompt[-1]["role"] != "user":
    raise DataError(f"{where}: the prompt does not end with a user turn")
  if not completion.strip():
    raise DataError(f"{where}: empty completion (the last assistant turn has no text)")
  return {"prompt": prompt, "responses": [completion], "label": label}


def load_feedback(path: str, skip_bad: bool = False, control_text: str = "refuse",
                  tfds_dir: str = "", store: str = "") -> Loaded:
  """Unpaired feedback rows and comparisons (see `to_feedback`); each keeps its "where"."""
  return load_rows(path, to_feedback, skip_bad, "feedback rows", control_text, tfds_dir, store)


# The fields to_prompt reads a prompt and its reference from; any other field of a row
# (an answer key, a task id) passes through to the rewards, which see the whole row.
PROMPT_FORMAT_FIELDS = ("prompt", "turns", "instruction", "input", "output", "instances", "reference",
                        "question", "messages", "conversations", "chosen", "rejected")


def to_prompt(obj, where: str) -> dict:
  """{"prompt": user text or a conversation prefix, "reference"?, "query_type"?,
  "category"?, and every other field of the row} from
    {prompt, reference?}                       a plain prompt file (as PPO reads);
    {messages} / {prompt: [turns]}             a conversation prefix ending with a user
    {conversations} / HH {chosen}              turn (conversation_prompt), system turn too;
    {turns: [...]}                             Vicuna-Bench / MT-Bench questions (first turn);
    {instruction, input?, output?}             Alpaca; output is the reference;
    {instruction, instances: [{input, output}]} SuperNI / self-instruct seed tasks (first instance);
    {question, answer}                         GSM8K: the key after '####' is `answer`, the
                                               worked solution the reference.
  A row's `answer` (a verifiable reward's key) is a string or a number.
  """
  if not isinstance(obj, dict):
    raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  reference = obj.get("reference")
  if isinstance(obj.get("prompt"), list) or any(k in obj for k in ("messages", "conversations", "chosen")):
    prompt = conversation_prompt(obj, where)
  elif "prompt" in obj:
    prompt = field(obj, "prompt", where)
  elif "turns" in obj:
    turns = field(obj, "turns", where, list)
    if not turns or not isinstance(turns[0], str):
      raise DataError(f"{where}: field 'turns' should be a non-empty list of strings")
    prompt = turns[0]
  elif "question" in obj:
    prompt = field(obj, "question", where)
    obj = gsm8k_answer(obj, where)
    reference = obj.pop("solution", None) or reference
  elif "instruction" in obj:
    inst = field(obj, "instruction", where)
    inp, reference = obj.get("input") or "", obj.get("output", reference)
    if "instances" in obj:
      inst_list = field(obj, "instances", where, list)
      if not inst_list or not isinstance(inst_list[0], dict):
        raise DataError(f"{where}: field 'instances' should be a non-empty list of objects")
      inp, reference = inst_list[0].get("input") or "", inst_list[0].get("output")
    prompt = f"{inst}\n\n{inp}" if inp else inst
  else:
    raise DataError(f"{where}: not a prompt; expected a field 'prompt', 'turns', 'instruction' or 'question' "
                    f"(got {sorted(obj)[:6]})")
  if not chat.as_text(prompt).strip():
    raise DataError(f"{where}: empty prompt")
  if "answer" in obj and (isinstance(obj["answer"], bool) or not isinstance(obj["answer"], (str, int, float))):
    raise DataError(f"{where}: the answer key should be a string or a number, got {type(obj['answer']).__name__}")
  if isinstance(reference, list) and reference and isinstance(reference[0], str):
    reference = reference[0]  # MT-Bench: one reference per turn.
  if reference is not None and not isinstance(reference, str):
    raise DataError(f"{where}: the reference answer should be a string, got {type(reference).__name__}")
  out = {k: v for k, v in obj.items() if k not in PROMPT_FORMAT_FIELDS}
  out.update(prompt=prompt, reference=reference or None)
  return {k: v for k, v in out.items() if v is not None}


def conversation_prompt(obj: dict, where: str) -> list[dict]:
  """A conversation prefix that ends with a user turn, from {messages} or {prompt: [...]}
  (chat turns), ShareGPT {conversations} (a preference row's chosen/rejected ignored), or
  an HH {chosen} transcript without its last answer; a system turn is kept."""
  try:
    if "conversations" in obj:
      turns = chat.parse_sharegpt(field(obj, "conversations", where, list), where)
    elif "messages" in obj or "prompt" in obj:
      turns = messages(obj, "messages" if "messages" in obj else "prompt", where)
    else:
      turns = chat.parse_hh(field(obj, "chosen", where), where)
      if turns and turns[-1]["role"] == "assistant":
        turns = turns[:-1]  # The answer the policy is to give.
    chat.render(turns)
  except ValueError as e:
    raise DataError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
  if turns[-1]["role"] not in ("user", "tool"):
    raise DataError(f"{where}: the prompt ends with its {turns[-1]['role']} turn; a prompt ends "
                    "with the user turn (or tool result) the policy answers")
  return turns


def gsm8k_answer(obj: dict, where: str) -> dict:
  """A GSM8K row's answer "<worked solution>\n#### 18" split into the key ("18", as
  `answer`) and the solution without its <<48/2=24>> calculator notes (as `solution`)."""
  answer = obj.get("answer")
  if not isinstance(answer, str) or "####" not in answer:
    return dict(obj)  # A copy: to_prompt pops its `solution`, and the caller's row stays whole.
  solution, key = answer.rsplit("####", 1)
  if not key.strip():
    raise DataError(f"{where}: field 'answer' has an empty '####' key")
  return {**obj, "answer": key.strip(), "solution": re.sub(r"<<[^>]*>>", "", solution).strip()}


def load_prompts(path: str, skip_bad: bool = False, control_text: str = "refuse",
                 tfds_dir: str = "") -> Loaded:
  """Prompt rows (see `to_prompt`) for evaluation; each keeps its "where" (file:line)."""
  return load_rows(path, to_prompt, skip_bad, "prompts", control_text, tfds_dir)


def _text(obj, where) -> dict:
  text = field(obj, "text", where) if isinstance(obj, dict) else None
  if text is None or not text.strip():
    raise DataError(f"{where}: empty or missing 'text'")
  return {"text": text}


def iter_texts(path: str):
  """The documents of a text file one at a time, none held after it is yielded (PPO-ptx
  corpora larger than memory); a bad row raises as in load_texts."""
  n = 0
  for where, obj in iter_records(path):
    if isinstance(obj, DataError):
      raise obj
    yield _text(obj, where)["text"]
    n += 1
  if not n:
    raise DataError(f"{path}: no usable rows")


def load_texts(path: str, skip_bad: bool = False) -> Loaded:
  """Plain documents ({"text"} rows or .txt lines) for LM losses such as PPO-ptx."""
  return load_rows(path, _text, skip_bad, "rows")


def write_jsonl(path: str, rows) -> None:
  """Rows as JSON lines, written whole (never seen half-written); `path` may be a gs:// URI."""
  paths.write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
