"""Local JSONL / JSON / text readers that turn rows into conversations.

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
ShareGPT-style {conversations, chosen, rejected}.
"""

import dataclasses
import json
import re

from etils import epath

from r3jax.core import paths
from r3jax.core.errors import DataError
from r3jax.data import chat


@dataclasses.dataclass
class Loaded:
  rows: list[dict]  # Each with "where" (file:line) and the parsed content.
  skipped: list[str]  # Messages for skipped rows (empty unless skip_bad).


def iter_records(path: str):
  """Yields (where, obj) for each JSONL line / JSON array item / text line; `path` may be
  a gs:// URI."""
  if not epath.Path(path).exists():
    raise DataError(f"{path}: file not found")
  if path.endswith(".json"):
    try:
      with epath.Path(path).open("rb") as f:
        items = json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as e:
      raise DataError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(items, list):
      raise DataError(f"{path}: expected a JSON array of rows")
    for i, obj in enumerate(items):
      yield f"{path}: item {i}", obj
    return
  with epath.Path(path).open("rb") as f:
    for lineno, raw in enumerate(f, 1):
      where = f"{path}:{lineno}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield where, DataError(f"{where}: invalid UTF-8 at byte {e.start} of the line")
        continue
      if not line.strip():
        continue
      if path.endswith(".txt"):
        yield where, {"text": line.rstrip("\n")}
        continue
      try:
        yield where, json.loads(line)
      except json.JSONDecodeError as e:
        yield where, DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})")


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
  return [dict(m) for m in turns]


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


def load_rows(path: str, parse, skip_bad: bool, what: str) -> Loaded:
  """Rows `parse(obj, where)` of a file; bad rows raise, or are counted with skip_bad."""
  rows, skipped = [], []
  for where, obj in iter_records(path):
    try:
      if isinstance(obj, DataError):
        raise obj
      rows.append({"where": where, **parse(obj, where)})
    except DataError as e:
      if not skip_bad:
        raise
      skipped.append(str(e))
  if not rows:
    raise DataError(f"{path}: no usable {what}" + (f" ({len(skipped)} skipped)" if skipped else ""))
  return Loaded(rows, skipped)


def load_conversations(path: str, fmt: str = "auto", skip_bad: bool = False) -> Loaded:
  return load_rows(path, lambda obj, where: {"messages": to_conversation(obj, fmt, where)}, skip_bad, "rows")


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


def load_comparisons(path: str, skip_bad: bool = False) -> Loaded:
  """Comparison rows (see `to_comparison`); each keeps its "where" (file:line)."""
  return load_rows(path, to_comparison, skip_bad, "comparisons")


# The fields to_prompt reads a prompt and its reference from; any other field of a row
# (an answer key, a task id) passes through to the rewards, which see the whole row.
PROMPT_FORMAT_FIELDS = ("prompt", "turns", "instruction", "input", "output", "instances", "reference",
                        "question")


def to_prompt(obj, where: str) -> dict:
  """{"prompt": user text, "reference"?, "query_type"?, "category"?, and every other field
  of the row} from
    {prompt, reference?}                       a plain prompt file (as PPO reads);
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
  if "prompt" in obj:
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
  if not prompt.strip():
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


def load_prompts(path: str, skip_bad: bool = False) -> Loaded:
  """Prompt rows (see `to_prompt`) for evaluation; each keeps its "where" (file:line)."""
  return load_rows(path, to_prompt, skip_bad, "prompts")


def _text(obj, where) -> dict:
  text = field(obj, "text", where) if isinstance(obj, dict) else None
  if text is None or not text.strip():
    raise DataError(f"{where}: empty or missing 'text'")
  return {"text": text}


def load_texts(path: str, skip_bad: bool = False) -> Loaded:
  """Plain documents ({"text"} rows or .txt lines) for LM losses such as PPO-ptx."""
  return load_rows(path, _text, skip_bad, "rows")


def write_jsonl(path: str, rows) -> None:
  """Rows as JSON lines, written whole (never seen half-written); `path` may be a gs:// URI."""
  paths.write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
