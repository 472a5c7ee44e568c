"""ChatML rendering, loss masks, the local tokenizer and the HH / ShareGPT parsers."""

import json

import pytest

from r3jax.data import chat, tokenizer
from helpers import shared_file


@pytest.fixture(scope="module")
def tok():
  return tokenizer.tiny()


def test_special_tokens_are_single_ids(tok):
  for t in chat.CONTROL_TOKENS:
    assert len(tok.encode(t, add_special_tokens=False)) == 1
  assert tok.eos_token == chat.IM_END and tok.pad_token == chat.ENDOFTEXT
  text = "Héllo wörld, 1234!"
  assert tok.decode(tok.encode(text, add_special_tokens=False)) == text  # Byte-level.


def test_loss_mask_covers_exactly_the_assistant_spans(tok):
  msgs = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "What color is Nivo?"},
          {"role": "assistant", "content": "Nivo is purple."},
          {"role": "user", "content": "And Palmigro?"},
          {"role": "assistant", "content": "Palmigro is gray."}]
  ids, mask = chat.tokenize(tok, msgs)
  assert tok.decode(ids) == chat.render(msgs)
  assert list(ids) == tok.encode(chat.render(msgs), add_special_tokens=False)
  # Decode each maximal run of mask == 1: exactly the assistant contents with <|im_end|>.
  runs, cur = [], []
  for i, m in zip(ids, mask):
    if m:
      cur.append(i)
    elif cur:
      runs.append(tok.decode(cur))
      cur = []
  assert runs == ["Nivo is purple.<|im_end|>", "Palmigro is gray.<|im_end|>"]
  ids_p, mask_p = chat.tokenize(tok, msgs[:2], add_generation_prompt=True)
  assert tok.decode(ids_p).endswith("<|im_start|>assistant\n") and not mask_p.any()


def test_render_rejects_bad_roles():
  with pytest.raises(ValueError, match="turn 0 has role 'bot'"):
    chat.render([{"role": "bot", "content": "x"}])


def test_parse_hh_inline_and_shared():
  conv = chat.parse_hh("\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: See you.")
  assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant"]
  assert conv[1]["content"] == "Hello!"
  with pytest.raises(ValueError, match="not in HH format"):
    chat.parse_hh("Human: no leading newlines")
  with open(shared_file("hh_harmless_base_sample.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  for r in rows:
    for key in ("chosen", "rejected"):
      conv = chat.parse_hh(r[key])
      assert conv[0]["role"] == "user" and conv[-1]["role"] == "assistant"


def test_parse_sharegpt_shared():
  with open(shared_file("dpo_en_demo.json")) as f:
    rows = json.load(f)
  for r in rows[:50]:
    conv = chat.parse_sharegpt(r["conversations"] + [r["chosen"]])
    assert conv[-1]["role"] == "assistant"
    chat.render(conv)
  with pytest.raises(ValueError, match="unknown speaker"):
    chat.parse_sharegpt([{"from": "robot", "value": "x"}])


def test_qwen1_tiktoken_tokenizer_matches_tiktoken(tmp_path):
  """A Qwen (v1) `qwen.tiktoken` directory loads as a fast tokenizer whose ids equal
  tiktoken's own encoding (same ranks, split pattern and special tokens)."""
  import base64
  tiktoken = pytest.importorskip("tiktoken")
  ranks = {bytes([b]): b for b in range(256)}
  for word in (b"he", b"ll", b"hel", b"hell", b"hello", b" w", b" wo", b"or", b" wor", b" world", b"12"):
    ranks[word] = len(ranks)
  with open(tmp_path / "qwen.tiktoken", "w") as f:
    f.writelines(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items())
  tok = tokenizer.load(str(tmp_path))
  special = {t: len(ranks) + i for i, t in enumerate(tokenizer.QWEN1_CONTROL_TOKENS)}
  ref = tiktoken.Encoding("qwen1", pat_str=tokenizer.QWEN1_PATTERN, mergeable_ranks=ranks,
                          special_tokens=special)
  for text in ("hello world", "Hello, world!! 1234\n\n  hello\tworld's", "<|im_start|>user\nhello<|im_end|>\n"):
    assert tok.encode(text, add_special_tokens=False) == ref.encode(text, allowed_special="all"), text
  assert (tok.convert_tokens_to_ids(chat.IM_END), tok.eos_token, tok.pad_token) == (len(ranks) + 2, chat.IM_END, chat.ENDOFTEXT)


# A template that renders tool turns as Qwen2.5's does: a function result as a user turn
# wrapped in <tool_response>, an assistant's calls as <tool_call> blocks after its content.
TOOL_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n"
    "{{ m.content }}\n</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n{{ c.function.name }}\n</tool_call>{% endfor %}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {}}}]},
    {"role": "tool", "content": "21 degrees"},
    {"role": "assistant", "content": "It is 21 degrees."}]


def test_tool_turns_train_as_the_template_renders_them(tmp_path):
  """A function-calling conversation reads (its tool-only assistant turn may have no
  content), tokenizes to the template's own ids, and trains the assistant's calls and
  answer, not the tool's result; a prompt may end with a tool result."""
  import json
  from r3jax.data import readers, tokenizer as tokenizer_lib
  path = tmp_path / "tools.jsonl"
  path.write_text(json.dumps({"messages": TOOL_CONVERSATION}) + "\n")
  conv = readers.load_conversations(str(path)).rows[0]["messages"]
  assert conv[1]["content"] == "" and conv[2]["role"] == "tool"
  tok = tokenizer_lib.tiny()
  with pytest.raises(ValueError, match="turn 1 has tool_calls: they are rendered by a checkpoint's chat template"):
    chat.tokenize(tok, conv)
  tok.chat_template = TOOL_TEMPLATE
  ids, mask = chat.tokenize(tok, conv)
  assert list(ids) == list(tok.apply_chat_template(conv, tokenize=True)["input_ids"])
  assert tok.decode(ids[mask == 1]) == ("<tool_call>\nget_weather\n</tool_call><|im_end|>"
                                        "It is 21 degrees.<|im_end|>")
  prompt = tmp_path / "prompt.jsonl"
  prompt.write_text(json.dumps({"messages": TOOL_CONVERSATION[:3]}) + "\n")
  assert readers.load_prompts(str(prompt)).rows[0]["prompt"][-1]["role"] == "tool"
