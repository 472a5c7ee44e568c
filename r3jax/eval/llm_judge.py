"""A pairwise LLM judge run by r3jax's own model and sampler (the LLM-as-a-judge setup of
MT-Bench, Zheng et al. 2023 §3; the R³ paper's win rates, §5).

Every pair is judged in both orders. A win counts only when both orders prefer the same
answer; a verdict that flips with the order, or a tie in either, is a tie; the adjusted
win rate is (W + T/2) / N over prompts. A verdict is read from the judge's text (the last
"[[A]]", "[[B]]" or "[[C]]", C a tie), or, with `mode="prob"`, from its next-token
log-probabilities over the letters A, B and C right after the assistant header (no
generation). A verdict that cannot be read is counted, reported, and scored as a tie: no
pair is dropped.

The prompts are this project's own wording; `load_template` reads a FastChat-format
prompt file (a JSONL of {name, system_prompt, prompt_template}) for theirs.
"""

import dataclasses
import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np

from r3jax.data import chat, padding, tokenizer as tokenizer_lib
from r3jax.eval import text_metrics as tm
from r3jax.models import hf, qwen, engines, sampling

SYSTEM = ("You judge answers to a user's question. Compare two assistants' answers for "
          "helpfulness, relevance, accuracy and detail; ignore their order and their length "
          "as such. Say which is better, or that they tie.")
PAIR = ("[Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n"
        "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
        "[The End of Assistant B's Answer]\n\n")
ASK = {"generate": "Explain briefly, then end with your verdict: [[A]], [[B]] or [[C]] for a tie.",
       "prob": "Reply with one letter only: A if A is better, B if B is better, C for a tie."}
VERDICTS = {"A": 1, "B": -1, "C": 0}  # Preference for the first answer shown.
_VERDICT = re.compile(r"\[\[([ABC])\]\]")
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_LOOSE = re.compile(r"\[(\d+\.?\d*)\]")


@functools.partial(jax.jit, static_argnames="cfg")
def _next_logprobs(params, tok_BT, mask_BT, cfg):
  logits_B1V, _, _ = qwen.Qwen(cfg).apply({"params": params}, tok_BT, kv_mask_BS=mask_BT,
                                          last_only=True)
  return jax.nn.log_softmax(logits_B1V[:, 0].astype(jnp.float32), axis=-1)


def parse(text: str) -> int | None:
  """The last [[A]] / [[B]] / [[C]] of a judgement as +1 / -1 / 0; None when there is none."""
  found = _VERDICT.findall(text)
  return VERDICTS[found[-1]] if found else None


def parse_rating(text: str) -> float | None:
  """The last [[r]] of a single-answer grading, r in [1, 10] (FastChat's form; a single
  bracket as their fallback); None when there is none."""
  found = _RATING.findall(text) or _RATING_LOOSE.findall(text)
  rating = float(found[-1]) if found else None
  return rating if rating is not None and 1 <= rating <= 10 else None


def load_template(path: str, name: str = "pair-v2") -> tuple[str, str]:
  """(system, user template with {question}, {answer_a}, {answer_b}) of entry `name` of a
  FastChat-format judge prompt file."""
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if row.get("name") == name:
        return row["system_prompt"], row["prompt_template"]
  raise ValueError(f"{path}: no judge prompt named {name!r}")


@dataclasses.dataclass
class PairwiseJudge:
  """A Qwen checkpoint as a pairwise judge; `mode` "generate" (parse its verdict) or "prob"."""
  cfg: qwen.QwenConfig
  params: dict
  tok: object
  mode: str = "generate"
  max_new_tokens: int = 256
  batch: int = 8
  system: str = SYSTEM
  template: str = PAIR + "{ask}"

  @classmethod
  def load(cls, path: str, **kw) -> "PairwiseJudge":
    path = hf.model_dir(path)
    cfg, params = hf.load(path, dropout_rate=0.0)
    return cls(cfg, params, tokenizer_lib.load(path), **kw)

  def prompts(self, questions, first, second) -> list[np.ndarray]:
    user = [self.template.format(question=q, answer_a=a, answer_b=b, ask=ASK[self.mode])
            for q, a, b in zip(questions, first, second)]
    return self.chat_ids(user, self.system)

  def chat_ids(self, user_texts, system: str) -> list[np.ndarray]:
    return sampling.chat_ids(self.tok, [chat.prompt_messages(u, system) for u in user_texts])

  def option_logprobs(self, ids, words=("A", "B", "C")) -> np.ndarray:
    """[N, len(words)] log-probabilities of the next token after each prompt being each
    word's first token (the words' first tokens must differ)."""
    first_ids = [self.tok.encode(x, add_special_tokens=False)[0] for x in words]
    if len(set(first_ids)) < len(first_ids):
      raise ValueError(f"the judge's tokenizer starts {words} with the same token")
    out = []
    for i in range(0, len(ids), self.batch):
      chunk = list(ids[i:i + self.batch])
      n = len(chunk)
      chunk += [chunk[-1]] * (self.batch - n)  # One batch shape,
      width = padding.bucket(max(map(len, chunk)), 64)  # and few widths: few compiles.
      tok_BT, mask_BT = padding.left_pad(chunk, self.tok.pad_token_id, width)
      logp_BV = _next_logprobs(self.params, jnp.asarray(tok_BT), jnp.asarray(mask_BT), self.cfg)
      out.append(np.asarray(logp_BV[:n][:, first_ids]))
    return np.concatenate(out)

  def verdicts(self, questions, first, second) -> list[int | None]:
    """+1 / -1 / 0 (first better / second better / tie) per pair, None where unreadable."""
    return self.verdicts_of(self.prompts(questions, first, second))

  def verdicts_of(self, ids) -> list[int | None]:
    """The verdict of each judge prompt (token ids, as `chat_ids` makes them)."""
    if self.mode == "prob":
      return [(1, -1, 0)[int(k)] for k in np.argmax(self.option_logprobs(ids), axis=-1)]
    return [parse(t) for t in self.judgements(ids)]

  def judgements(self, ids) -> list[str]:
    """The judge's greedy text after each prompt."""
    cfg = sampling.sample_config(self.tok, max_new_tokens=self.max_new_tokens, greedy=True)
    texts = []
    for i in range(0, len(ids), self.batch):
      out, _ = engines.generate_text(self.params, self.cfg, self.tok, ids[i:i + self.batch],
                                      jax.random.key(0), cfg)
      texts += out
    return texts

  def win_rate(self, questions, a, b) -> dict:
    return both_orders(self.verdicts(questions, a, b), self.verdicts(questions, b, a))


def both_orders(ab, ba) -> dict:
  """The adjusted win rate of a over b from the verdicts with a shown first (ab) and second
  (ba): per prompt a win when both orders prefer a, a loss when both prefer b, else a tie.
  Also the position bias (the share of prompts, both verdicts read, whose preference flips
  with the order) and the unreadable verdicts."""
  outcome, flips, read, unreadable = [], 0, 0, 0
  for x, y in zip(ab, ba):
    unreadable += (x is None) + (y is None)
    both = x is not None and y is not None
    x, y = x or 0, -(y or 0)  # y: the second order's verdict as a preference for a.
    outcome.append(1.0 if x > 0 and y > 0 else 0.0 if x < 0 and y < 0 else 0.5)
    read += both
    flips += int(both and x * y < 0)  # The same position preferred in both orders.
  outcome = np.asarray(outcome)
  mean, lo, hi = tm.mean_ci(outcome)
  return {"win_rate": mean, "ci95": (lo, hi), "wins": int(np.sum(outcome == 1.0)),
          "ties": int(np.sum(outcome == 0.5)), "losses": int(np.sum(outcome == 0.0)),
          "judgements": len(outcome), "unit": "prompts (both orders agreeing)",
          "outcomes": outcome.tolist(),  # Per prompt: 1 a wins, 0.5 tie, 0 b wins.
          "position_bias": flips / read if read else float("nan"), "unreadable": unreadable}
