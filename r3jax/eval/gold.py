"""The gold judge of the embedded world: what an answer says, checked against the facts.

The embedded data (data/synthetic.py) is generated from a knowledge base, so every answer
about it can be read back into claims and checked exactly; no learnt model is involved,
which is why this judge can confirm or refute what the optimised reward says.

An answer is split into sentences; each sentence is read with the grammar of the world's
own templates (_PATTERNS, including the paraphrases the SFT data uses for closed-ended
answers) into claims (subject, attribute, value). "It"/"Its" refer to the last entity
named, the asked one before any name. Then, for the asked entity e:

  names      e's name appears as a whole word
  claims     the number of claims, plus one per sentence the grammar cannot read (a
             question copied back, a sentence cut off mid-way, a non-template sentence):
             every sentence is a statement, and one that cannot be checked is not true of e
  precision  the share of those that are true of e (a true fact of another entity, or of a
             near-miss name such as "Renor" for "Renori", is not); 0 for an empty answer
  recall     open-ended: the share of e's six facts stated truly; closed-ended: 1 if the
             asked fact is stated truly, else 0 (`correct`)
  repeats    claims that restate an earlier claim, and sentences repeated word for word
  score      precision × recall: stating more true facts helps, any false or unreadable
             statement costs

`judge(...)` takes the row's entity and what it asks ("all" for open-ended questions, else
the attribute), as the synthetic rows carry them.
"""

import collections
import dataclasses
import re

import numpy as np

from r3jax.data import synthetic

ATTRIBUTES = ("kind", "size", "place", "known", "color", "year")
_KINDS = "|".join(synthetic.KINDS)
_COLORS = "|".join(synthetic.COLORS)
_WHERE = r"(?:lies in|lives in|is played at|grows in)"
_S = r"(?P<s>[A-Z][a-z]+)"  # A name: the world's names are one capitalised word.

# (sentence pattern, full match, with the trailing period removed): the templates of
# synthetic.facts and synthetic._CLOSED.
_PATTERNS = [re.compile(p) for p in (
    rf"{_S} is an? (?P<size>[a-z-]+) (?P<kind>{_KINDS})(?: that {_WHERE} (?P<place>[a-z ]+))?",
    rf"{_S} is (?:best )?known for (?P<known>[a-z ]+)",
    rf"(?:Its|{_S}'s) main colou?r is (?P<color>{_COLORS})",
    rf"{_S} is (?P<color>{_COLORS})",
    rf"{_S} was first recorded in (?:the year )?(?P<year>\d+)",
    rf"You would find {_S} in (?P<place>[a-z ]+)",
    rf"{_S} {_WHERE} (?P<place>[a-z ]+)",
)]


@dataclasses.dataclass(frozen=True)
class Verdict:
  names: bool
  claims: int
  true: int
  precision: float
  recall: float
  correct: bool  # Closed-ended: the asked fact stated truly; open-ended: recall == 1.
  repeats: int
  unreadable: int

  @property
  def score(self) -> float:
    return self.precision * self.recall


def sentences(answer: str) -> list[str]:
  return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", answer.strip()) if s.strip()]


def read_claims(sentence: str, subject: str) -> tuple[str, list[tuple[str, str, str]]] | None:
  """(the sentence's subject, its claims [(subject, attribute, value)]), or None if the
  grammar cannot read it. `subject` is what "It"/"Its" refers to."""
  text = sentence.rstrip(".!? ")
  for pat in _PATTERNS:
    m = pat.fullmatch(text)
    if m:
      groups = m.groupdict()
      # No name ("Its main color ...") or "It" (no entity is called It): the current subject.
      s = subject if groups.get("s") in (None, "It") else groups["s"]
      return s, [(s, a, " ".join(groups[a].split())) for a in ATTRIBUTES if groups.get(a)]
  return None


def _true(e: dict, attribute: str, value: str) -> bool:
  return str(e[attribute]) == value


def judge(answer: str, entity: str, asks: str, kb: dict[str, dict] | None = None) -> Verdict:
  """The verdict on one answer about `entity`; asks is "all" (open-ended) or an attribute."""
  kb = kb if kb is not None else synthetic.world()
  if entity not in kb:
    raise KeyError(f"gold judge: {entity!r} is not an entity of the embedded world")
  if asks != "all" and asks not in ATTRIBUTES:
    raise ValueError(f"gold judge: asks={asks!r}; expected 'all' or one of {ATTRIBUTES}")
  e, subject = kb[entity], entity
  claims, unreadable, seen_sentences, repeats = [], 0, set(), 0
  for sent in sentences(answer):
    key = " ".join(sent.lower().split())
    repeated_sentence = key in seen_sentences
    seen_sentences.add(key)
    read = read_claims(sent, subject)
    if read is None:
      unreadable += 1
      repeats += repeated_sentence
      continue
    subject, cs = read
    claims += cs
  counts = collections.Counter(claims)
  repeats += sum(c - 1 for c in counts.values())
  true_claims = [(a, v) for s, a, v in claims if s == entity and _true(e, a, v)]
  n = len(claims) + unreadable
  precision = len(true_claims) / n if n else 0.0
  stated = {a for a, _ in true_claims}
  if asks == "all":
    recall = len(stated) / len(ATTRIBUTES)
    correct = recall == 1.0
  else:
    correct = asks in stated
    recall = float(correct)
  names = re.search(rf"\b{re.escape(entity)}\b", answer) is not None
  return Verdict(names, n, len(true_claims), precision, recall, correct, repeats, unreadable)


def applicable(rows) -> bool:
  """The rows are questions about the embedded world (they carry entity and asks)."""
  kb = synthetic.world()
  return bool(rows) and all(r.get("entity") in kb and r.get("asks") for r in rows)


def judge_batch(answers, rows) -> dict[str, np.ndarray]:
  """Per-answer gold figures of answers to rows (one row per answer)."""
  kb = synthetic.world()
  vs = [judge(a, r["entity"], r["asks"], kb) for a, r in zip(answers, rows)]
  f = lambda get: np.array([get(v) for v in vs], np.float64)
  return {"score": f(lambda v: v.score), "precision": f(lambda v: v.precision),
          "recall": f(lambda v: v.recall), "names_entity": f(lambda v: v.names),
          "correct": f(lambda v: v.correct), "repeats": f(lambda v: v.repeats),
          "unreadable": f(lambda v: v.unreadable)}

