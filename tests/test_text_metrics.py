"""text_metrics against the packages papers use: rouge-score's ROUGE-L and nltk's sentence BLEU
(Texygen's Self-BLEU call), on generated answer pairs. The test fails if they diverge."""

import math
import random

import nltk
import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score import rouge_scorer

from r3jax.data import synthetic
from r3jax.eval import text_metrics as tm

TOL = 1e-9


def _answers(n=120, seed=0):
  return [ex["messages"][-1]["content"] for ex in synthetic.generate(n, seed=seed)]


def _perturb(rng, s, answers):
  """One edit an answer of a small model might make: a dropped, swapped or replaced word,
  a truncation to 1-3 words, shouting, other punctuation, a repeat, or another answer."""
  w = s.split()
  k = rng.randrange(8)
  if k == 0 and len(w) > 1:
    del w[rng.randrange(len(w))]
  elif k == 1 and len(w) > 1:
    i, j = rng.randrange(len(w)), rng.randrange(len(w))
    w[i], w[j] = w[j], w[i]
  elif k == 2:
    w[rng.randrange(len(w))] = rng.choice(["the", "a", "big", "Zorbo", "1999", "café", "it's"])
  elif k == 3:
    w = w[:rng.randint(1, 3)]
  elif k == 4:
    w = [x.upper() if rng.random() < 0.3 else x for x in w]
  elif k == 5:
    return s.replace(".", " !").replace("is", "is,")
  elif k == 6:
    return " ".join(w + w[:rng.randint(1, len(w))])
  else:
    return rng.choice(answers)
  return " ".join(w)


def _pairs():
  """A fixed set of (candidate, reference) pairs: each answer once and twice perturbed,
  plus edge cases (empty, punctuation only, nothing shared, non-ASCII)."""
  answers, rng = _answers(), random.Random(0)
  pairs = [(_perturb(rng, a, answers), a) for a in answers]
  pairs += [(_perturb(rng, _perturb(rng, a, answers), answers), a) for a in answers[:60]]
  pairs += [("", "x"), ("x", ""), ("!!", "a b"), ("Zorbo", "Palmigro is purple."),
            ("Ça va, café?", "ca va cafe"), ("a", "a"), ("a b", "b a"),
            ("alpha beta gamma delta", "one two three four five")]
  return pairs


PAIRS = _pairs()


def test_the_fixed_set_is_large_and_has_short_and_unmatched_hypotheses():
  assert len(PAIRS) >= 50
  toks = [(tm.tokens(c), tm.tokens(r)) for c, r in PAIRS]
  assert sum(0 < len(h) < 4 for h, _ in toks) >= 10  # Where the orders > length matter.
  assert any(h and not set(h) & set(r) for h, r in toks)  # No unigram match.


def test_rouge_l_matches_rouge_score():
  scorer = rouge_scorer.RougeScorer(["rougeL"])  # use_stemmer=False, rouge-score's default.
  diffs = [abs(tm.rouge_l(c, r) - scorer.score(r, c)["rougeL"].fmeasure) for c, r in PAIRS]
  assert max(diffs) <= TOL
  # Not vacuous: the set spans the range.
  scores = [tm.rouge_l(c, r) for c, r in PAIRS]
  assert min(scores) == 0.0 and max(scores) == 1.0 and len(set(scores)) > 30


def _texygen_bleu(hyp, refs, max_n=4):
  weight = tuple(1.0 / max_n for _ in range(max_n))
  return sentence_bleu(refs, hyp, weight, smoothing_function=SmoothingFunction().method1)


@pytest.mark.parametrize("max_n", [4, 2])
def test_bleu_matches_nltk_sentence_bleu_with_smoothing_1(max_n):
  diffs, scores = [], []
  for c, r in PAIRS:
    h, ref = tm.tokens(c), tm.tokens(r)
    if not h:
      assert tm.bleu(h, [ref], max_n) == 0.0
      continue
    scores.append(tm.bleu(h, [ref], max_n))
    diffs.append(abs(scores[-1] - _texygen_bleu(h, [ref], max_n)))
  assert max(diffs) <= TOL
  assert min(scores) == 0.0 and max(scores) == pytest.approx(1.0) and len(set(scores)) > 30


def test_smoothing_1_counts_a_tenth_of_a_match():
  assert SmoothingFunction().epsilon == 0.1  # What bleu's docstring says.
  # A 2-token hypothesis, 4-gram BLEU: both missing orders count 0.1 of 1 n-gram.
  h, r = "a b".split(), "a b c".split()
  want = math.exp((math.log(1.0) + math.log(1.0) + math.log(0.1) + math.log(0.1)) / 4)
  assert tm.bleu(h, [r]) == pytest.approx(want * math.exp(1 - 3 / 2), abs=TOL)
  # Nothing shared: 0, not a smoothed small score.
  assert tm.bleu("x y z w".split(), ["a b c d".split()]) == 0.0


def test_self_bleu_matches_texygen_self_bleu_with_nltk():
  answers, rng = _answers(), random.Random(1)
  groups = [[_perturb(rng, answers[i], answers)]
            + [_perturb(rng, answers[(i + k) % len(answers)], answers) for k in range(1, rng.randint(2, 5))]
            + [answers[i]] for i in range(0, len(answers), 2)]
  assert len(groups) >= 50
  diffs = []
  for g in groups:
    t = [tm.tokens(s) for s in g]
    want = 100.0 * sum(_texygen_bleu(x, t[:i] + t[i + 1:]) for i, x in enumerate(t)) / len(t)
    diffs.append(abs(tm.self_bleu(g) - want))
  assert max(diffs) <= 100 * TOL


def test_no_nltk_data_is_needed(monkeypatch):
  def no_data(*args, **kwargs):
    raise AssertionError(f"nltk data requested: {args}")
  monkeypatch.setattr(nltk.data, "find", no_data)
  monkeypatch.setattr(nltk.data, "load", no_data)
  c, r = PAIRS[0]
  assert 0.0 <= tm.bleu(tm.tokens(c), [tm.tokens(r)]) <= 1.0
  assert tm.self_bleu([c, r, c]) > 0.0
  assert rouge_scorer.RougeScorer(["rougeL"]).score(r, c)["rougeL"].fmeasure == tm.rouge_l(c, r)


def test_distinct_n_and_top_sentence_share():
  assert tm.distinct_n(["a b c", "d e f"], 2) == 1.0
  assert tm.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # ab, ba, ab.
  assert tm.distinct_n([""], 2) == 0.0
  # One template filled with each row's own entity counts as one sentence once names go.
  texts = ["Kalo is tiny. It is red.", "Vobel is tiny. It is blue.", "Mira is large."]
  assert tm.top_sentence_share(texts) == pytest.approx(1 / 3)
  assert tm.top_sentence_share(texts, ["Kalo", "Vobel", "Mira"]) == pytest.approx(2 / 3)
  assert tm.top_sentence_share([]) == 0.0
  assert tm.distinct_answers(["Kalo is tiny.", "Vobel is tiny.", "Vobel is red."]) == 1.0
  assert tm.distinct_answers(["Kalo is tiny.", "Vobel is tiny.", "Vobel is red."],
                             ["Kalo", "Vobel", "Vobel"]) == pytest.approx(2 / 3)


def test_mean_ci_and_the_win_rate_interval():
  m, lo, hi = tm.mean_ci([0.0, 1.0] * 50)
  assert m == 0.5 and hi - m == pytest.approx(m - lo) and hi - m == pytest.approx(1.96 * 0.5025 / 10, rel=1e-3)
  assert tm.mean_ci([3.0]) == (3.0, 3.0, 3.0)
  scores = {"a": np.array([1.0, 1.0, 0.0, 0.5]), "b": np.array([0.0, 0.0, 1.0, 0.5])}
  pref = lambda p, x, y: scores[x] - scores[y]
  w = tm.win_rate(pref, ["q"] * 4, "a", "b")
  assert w["win_rate"] == pytest.approx((2 * 2 + 0.5 * 2) / 8)  # Wins 4, ties 2 of 8.
  lo, hi = w["ci95"]
  assert lo < w["win_rate"] < hi
