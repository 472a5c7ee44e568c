"""ChatML rendering with assistant-only loss masks, and parsers for HH and ShareGPT turns.

A conversation is a list of {"role": "system" | "user" | "assistant", "content": str}.
ChatML, as in the Qwen Technical Report (Bai et al. 2023, §3.1.1):
`<|im_start|>{role}\\n{content}<|im_end|>\\n`; only assistant content and its
`<|im_end|>` are trained.
"""

import re

import numpy as np

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
CONTROL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
# Qwen's special tokens are all <|name|>. Message content is text: one of these inside it is
# encoded character by character, never as the token, so a row cannot forge a turn or an
# end of text. The readers refuse a row whose text holds one of CONTROL_TOKENS, the ChatML
# structure, unless data.control_text=plain; other <|name|> strings (a dataset's own
# "<|user|>" markers) are ordinary text.
CONTROL_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")
ROLES = ("system", "user", "assistant", "tool")  # "tool": a function result (Qwen2.5 template).


def _check(messages, where: str = "conversation"):
  if not messages:
    raise ValueError(f"{where}: empty conversation")
  for i, m in enumerate(messages):
    if not isinstance(m, dict):
      raise ValueError(f"{where}: turn {i} should be an object with 'role' and 'content', "
                       f"got {type(m).__name__}")
    if m.get("role") not in ROLES:
      raise ValueError(f"{where}: turn {i} has role {m.get('role')!r}; expected one of {ROLES}")
    if not isinstance(m.get("content"), str):
      raise ValueError(f"{where}: turn {i} has no string 'content'")


def render(messages, add_generation_prompt: bool = False) -> str:
  _check(messages)
  text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
  return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def tokenize(tokenizer, messages, add_generation_prompt: bool = False):
  """Token ids and loss mask of a rendered conversation: (ids, loss_mask), int32 numpy.

  A tokenizer with its own `chat_template` (a real checkpoint's) renders the whole
  conversation with it, as `apply_chat_template` does (Qwen2.5's default system prompt
  included), and the ids are those of the whole text (see `_tokenize_template`). Without
  one (the locally trained tiny tokenizer), ChatML pieces are tokenized separately so the
  mask boundaries are exact: the role header and the trailing newline are never trained,
  the assistant content and its `<|im_end|>` are.
  """
  _check(messages)
  if getattr(tokenizer, "chat_template", None):
    return _tokenize_template(tokenizer, messages, add_generation_prompt)
  if calls := [i for i, m in enumerate(messages) if m.get("tool_calls")]:
    raise ValueError(f"turn {calls[0]} has tool_calls: they are rendered by a checkpoint's chat "
                     "template, and this tokenizer has none")
  ids, mask = [], []

  def add(text, trained, literal=False):
    piece = tokenizer.encode(text, add_special_tokens=False, split_special_tokens=literal)
    ids.extend(piece)
    mask.extend([int(trained)] * len(piece))

  for m in messages:
    is_assistant = m["role"] == "assistant"
    add(f"{IM_START}{m['role']}\n", False)
    add(m["content"], is_assistant, literal=True)
    add(IM_END, is_assistant)
    add("\n", False)
  if add_generation_prompt:
    add(f"{IM_START}assistant\n", False)
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def _tokenize_template(tokenizer, messages, add_generation_prompt: bool):
  """The template's text encoded whole, so the ids equal apply_chat_template's (encoding
  pieces apart gives "\n" + "\n..." as [198, 198] where the whole text has [271]). The
  mask covers each assistant turn from its content to its end-of-turn marker (tool calls
  included), found by rendering the turns before it with the generation prompt (a prefix
  of the whole text); a token straddling a content boundary (that "\n\n") is trained."""
  render = lambda msgs, gen: tokenizer.apply_chat_template(
      msgs, tokenize=False, add_generation_prompt=gen)
  text = render(messages, add_generation_prompt)
  spans = []
  for i, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    start = len(render(messages[:i], True)) if i else 0
    end = start + len(m["content"])
    if text[start:end] != m["content"]:
      raise ValueError("the tokenizer's chat template does not write assistant turns "
                       f"verbatim after the generation prompt (turn {i}); cannot mask the loss")
    # The turn runs to its end marker: what the template writes after the content (Qwen2.5's
    # <tool_call> blocks) is the assistant's too, and is trained with it.
    close = text.find(IM_END, end)
    spans.append((start, close + len(IM_END) if close >= 0 else end))
  ids, offsets = _encode_contents_literally(tokenizer, text, messages)
  mask = [int(any(a < e and s < b for s, e in spans)) for a, b in offsets]
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def _encode_contents_literally(tokenizer, text: str, messages):
  """(ids, character offsets) of the rendered `text`, with any control token that lies
  inside a message's content encoded as plain text (CONTROL_RE). Such text is cut out and
  encoded apart, so the tokens at its two edges may differ from a whole-text encoding."""
  cuts, cursor = [], 0
  for m in messages:
    start = text.find(m["content"], cursor) if m["content"] else -1
    if start < 0:
      continue
    cursor = start + len(m["content"])
    cuts += [(start + c.start(), start + c.end()) for c in CONTROL_RE.finditer(m["content"])]
  ids, offsets, at = [], [], 0
  for a, b in cuts + [(len(text), len(text))]:
    for lo, hi, literal in ((at, a, False), (a, b, True)):
      if lo == hi:
        continue
      enc = tokenizer(text[lo:hi], add_special_tokens=False, return_offsets_mapping=True,
                      split_special_tokens=literal)
      ids += enc["input_ids"]
      offsets += [(x + lo, y + lo) for x, y in enc["offset_mapping"]]
    at = b
  return ids, offsets


def tokenize_responses(tokenizer, prompt, responses) -> list[tuple[np.ndarray, np.ndarray]]:
  """(ids, loss_mask) of prompt + each assistant response, the mask on that response only
  (its content and `<|im_end|>`): earlier assistant turns are context, not the answer
  that preference losses score. The prompt is tokenized once, with the generation prompt
  (through the chat template when the tokenizer has one), and each response's own ids
  appended: the ids a policy sampling that response would have produced, and a prompt
  identical in every row."""
  p_ids, _ = tokenize(tokenizer, prompt, add_generation_prompt=True)
  end = tokenizer.encode(IM_END, add_special_tokens=False)
  newline = tokenizer.encode("\n", add_special_tokens=False)
  out = []
  for response in responses:
    r_ids = tokenizer.encode(response, add_special_tokens=False, split_special_tokens=True) + end
    ids = np.concatenate([p_ids, np.asarray(r_ids + newline, np.int32)]).astype(np.int32)
    mask = np.zeros(len(ids), np.int32)
    mask[len(p_ids):len(p_ids) + len(r_ids)] = 1
    out.append((ids, mask))
  return out


def tokenize_response(tokenizer, prompt, response: str):
  return tokenize_responses(tokenizer, prompt, [response])[0]


def control_token(messages) -> str | None:
  """The first of CONTROL_TOKENS written inside a message's content, if any."""
  for m in messages:
    content = m.get("content")
    if isinstance(content, str) and (found := [t for t in CONTROL_TOKENS if t in content]):
      return min(found, key=content.index)
  return None


def prompt_messages(question: str, system: str | None = None):
  msgs = [{"role": "system", "content": system}] if system else []
  return msgs + [{"role": "user", "content": question}]


def as_messages(prompt) -> list[dict]:
  """A prompt row's prompt as chat turns: a string is one user turn; a conversation prefix
  (ending with a user turn, readers.to_prompt) is kept as it is."""
  return prompt_messages(prompt) if isinstance(prompt, str) else list(prompt)


def as_text(prompt) -> str:
  """The query a text reward reads: the user turns joined with spaces, as the R³ authors'
  code scores a multi-turn ShareGPT/UltraChat prompt (Appendix B's setup); a string as it is."""
  if isinstance(prompt, str):
    return prompt
  return " ".join(m["content"] for m in prompt if m["role"] == "user")


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh(text: str, where: str = "HH text"):
  """Anthropic HH `\\n\\nHuman: ...\\n\\nAssistant: ...` into a conversation."""
  parts = _HH_TURN.split(text)
  if len(parts) < 3 or parts[0].strip():
    raise ValueError(f"{where}: not in HH format (expected it to start with '\\n\\nHuman: ')")
  role = {"Human": "user", "Assistant": "assistant"}
  return [{"role": role[speaker], "content": content.strip()}
          for speaker, content in zip(parts[1::2], parts[2::2])]


_SHAREGPT_ROLE = {"human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "system": "system", "chatgpt": "assistant",
                  "bing": "assistant", "bard": "assistant",
                  "observation": "tool", "tool": "tool"}  # LLaMA-Factory's function results.


def parse_sharegpt(turns, where: str = "ShareGPT turns"):
  """ShareGPT `[{from, value}]` (or OpenAI `[{role, content}]`) turns into a conversation."""
  out = []
  for i, t in enumerate(turns):
    if not isinstance(t, dict):
      raise ValueError(f"{where}: turn {i} should be an object with 'from' and 'value', "
                       f"got {type(t).__name__}")
    speaker = t.get("from", t.get("role"))
    text = t.get("value", t.get("content"))
    if not isinstance(speaker, str) or speaker not in _SHAREGPT_ROLE:
      raise ValueError(f"{where}: turn {i} has unknown speaker {speaker!r}")
    if not isinstance(text, str):
      raise ValueError(f"{where}: turn {i} has no text ('value' or 'content')")
    out.append({"role": _SHAREGPT_ROLE[speaker], "content": text})
  return out
