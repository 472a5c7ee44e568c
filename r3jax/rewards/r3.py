"""R³, the Regularized Relevance Reward (Kim & Seo 2024, "Preference-free Alignment Learning
with Regularized Relevance Reward", §3), as the authors' code computes it.

  OE:  R³ = RP(y) · LI(y) · s(x, y)
  CE:  R³ = RP(y) · f(s(y*, y)),   f(s) = s · (max_len / 100) / 3.5

LI(y) = |tok(y)| / 100 and RP(y) = unique word trigrams / word trigrams (1 below three
tokens), over word-punctuation tokens. s is the retriever's relevance: a dot product of
mean-pooled embeddings (cosine for a normalising encoder such as MiniLM). x is the raw
user text and y the response with its leading whitespace stripped (as in the authors'
code), then cut at the first role marker or blank-line run (_STOP); all three
terms use that same truncated y (the authors' code scored relevance on the untruncated
response, an inconsistency not reproduced here). A CE query without a reference answer falls back
to the OE formula.

Ablations (paper Table 4) are `mode`s: "r3" (full), "relevance" (s only), "li_s" (LI·s),
"no_branch" (RP·LI·s for every query), "li_only" (LI). Random query types are
`query_types="random"` in the caller.
"""

import dataclasses
import re

import numpy as np

from r3jax.data import chat
from r3jax.eval import text_metrics

# Where a policy starts writing the next turn (truncate_response): ChatML markers, HH/plain
# role prefixes ("\nHuman:", "\nUser:", "\nAssistant:"), or a run of two or more blank lines.
_STOP = re.compile(r"<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>|\n\s*(?:Human|User|Assistant)\s*:"
                   r"|\n[ \t]*\n[ \t]*\n")
MODES = ("r3", "relevance", "li_s", "no_branch", "li_only")
CE_RELEVANCE_MAX = 3.5  # The top of f's input range.


def length_incentive(text: str) -> float:
  return len(text_metrics.wordpunct(text)) / 100.0


def repetition_penalty(text: str) -> float:
  toks = text_metrics.wordpunct(text)
  if len(toks) < 3:
    return 1.0
  trigrams = list(zip(toks, toks[1:], toks[2:]))
  return len(set(trigrams)) / len(trigrams)


def truncate_response(text: str) -> str:
  """The answer R³ scores: the response up to the first stop marker (_STOP), stripped.
  Leading whitespace goes first, as in the authors' code: a response that opens with blank
  lines would otherwise stop at once and score 0."""
  text = text.lstrip()
  m = _STOP.search(text)
  return (text[:m.start()] if m else text).strip()


def raw_query(prompt: str) -> str:
  """The user's words: ChatML or HH user turns joined with spaces; plain text as is."""
  if chat.IM_START in prompt:
    turns = re.findall(r"<\|im_start\|>user\n(.*?)(?:<\|im_end\|>|$)", prompt, flags=re.S)
    return " ".join(t.strip() for t in turns)
  if prompt.startswith("\n\nHuman: "):
    turns = re.findall(r"\n\nHuman: (.*?)(?=\n\nAssistant:|$)", prompt, flags=re.S)
    return " ".join(t.strip() for t in turns)
  return prompt.strip()


def ce_map(s, max_len: int):
  """f: [0, 3.5] -> [0, max_len / 100], linear, so CE rewards share the OE scale."""
  return np.asarray(s, np.float64) * (max_len / 100.0) / CE_RELEVANCE_MAX


_OE, _CE = "open_ended", "closed_ended"
_ALIASES = {"open_ended": _OE, "openended": _OE, "oe": _OE, "open": _OE,
            "closed_ended": _CE, "closedended": _CE, "ce": _CE, "closed": _CE,
            "constrained": _CE}


def query_type(value) -> str | None:
  """Normalises dataset labels (OPENENDED / CONSTRAINED / OE / CE / ...); None if absent."""
  if value is None or value == "":
    return None
  key = str(value).strip().lower().replace("-", "_").replace(" ", "_")
  if key not in _ALIASES and key.replace("_", "") not in _ALIASES:
    raise ValueError(f"unknown query type {value!r}; expected open-ended or closed-ended labels")
  return _ALIASES.get(key, _ALIASES.get(key.replace("_", "")))


@dataclasses.dataclass
class R3:
  """The reward. `encoder` has `encode(texts) -> [N, D]` (models/bert.Encoder)."""
  encoder: object
  max_len: int = 512  # The rollout length, in tokens: f's output scale.
  mode: str = "r3"

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"R3 mode {self.mode!r}; expected one of {MODES}")

  def __call__(self, prompts, responses, references=None, query_types=None) -> dict[str, np.ndarray]:
    """Scores a batch; returns the reward and each component, one value per row."""
    n = len(responses)
    references = list(references) if references is not None else [None] * n
    types = [query_type(t) for t in (query_types if query_types is not None else [None] * n)]
    queries = [raw_query(p) for p in prompts]
    ys = [truncate_response(r) for r in responses]
    li = np.array([length_incentive(y) for y in ys])
    rp = np.array([repetition_penalty(y) for y in ys])
    has_ref = np.array([bool(r) for r in references])
    is_ce = np.array([t == _CE for t in types]) & has_ref
    # PPO scores n samples per prompt: queries and references are encoded once each.
    unique = list(dict.fromkeys(queries + [references[i] for i in np.where(is_ce)[0]]))
    emb = self.encoder.encode(unique + ys)
    row = {t: i for i, t in enumerate(unique)}
    y_emb = emb[len(unique):]
    rel = np.sum(emb[[row[q] for q in queries]] * y_emb, -1).astype(np.float64)
    ref_rel = np.zeros(n)
    if is_ce.any():
      idx = np.where(is_ce)[0]
      ref_rel[idx] = np.sum(emb[[row[references[i]] for i in idx]] * y_emb[idx], -1)
    oe = rp * li * rel
    if self.mode == "r3":
      reward = np.where(is_ce, rp * ce_map(ref_rel, self.max_len), oe)
    elif self.mode == "relevance":
      reward = rel
    elif self.mode == "li_s":
      reward = li * rel
    elif self.mode == "no_branch":
      reward = oe
    else:
      reward = li
    return {"reward": reward, "length_incentive": li, "repetition_penalty": rp,
            "relevance": rel, "reference_relevance": ref_rel, "closed_ended": is_ce.astype(np.float64),
            "copies_query": np.array([text_metrics.copies_query(q, y) for q, y in zip(queries, ys)], np.float64)}
