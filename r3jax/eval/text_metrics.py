"""Text statistics of generated answers: repetition, Self-BLEU, ROUGE-L, win rate (as the R³
paper, Kim & Seo 2024, §4 and App. D, reports them).

Pure Python on strings: these run once per evaluation, on host, over a few thousand texts.
Tokens are R³'s word-punctuation tokens (`wordpunct`, as R³ counts them), lower-cased, so "Paris." and
"paris ." count alike; ROUGE-L alone uses rouge-score's alphanumeric words.

Which package each metric matches, so the numbers compare with papers
(tests/test_text_metrics.py checks it on ~100 generated pairs, tolerance 1e-9):
- `bleu` / `self_bleu`: nltk's `sentence_bleu` with uniform weights and
  `SmoothingFunction().method1` (epsilon 0.1), the call Texygen's Self-BLEU makes. They call
  nltk itself (nltk==3.10.4, no downloaded data needed). The earlier hand-written version
  differed from nltk for hypotheses shorter than max_n tokens (it dropped the missing orders
  instead of smoothing them to 0.1 counts) and for no unigram match (nltk gives 0): on 403
  synthetic answer pairs 67 BLEU scores differed, by up to 0.31, and Self-BLEU by up to 28
  points on 100 groups.
- `rouge_l`: rouge-score's `RougeScorer(['rougeL']).score(reference, candidate)['rougeL']
  .fmeasure` (use_stemmer=False): identical (max |difference| 0.0 on 404 pairs), so the
  hand-written LCS stays; it runs in the reward (copies_query) and needs no package.
"""

import collections
import re

import numpy as np

_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")


def wordpunct(text: str) -> list[str]:
  """NLTK's wordpunct_tokenize: runs of word characters, and runs of punctuation (R³'s LI, RP)."""
  return _WORDPUNCT.findall(text)


def tokens(text: str) -> list[str]:
  return [t.lower() for t in wordpunct(text)]


def ngrams(toks, n: int) -> list[tuple]:
  return list(zip(*(toks[i:] for i in range(n))))


def ngram_repetition(text: str, n: int = 4) -> float:
  """Fraction of the n-grams that repeat an earlier one (0 without any n-gram)."""
  grams = ngrams(tokens(text), n)
  return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def bleu(hypothesis: list[str], references: list[list[str]], max_n: int = 4) -> float:
  """Sentence BLEU in [0, 1]: nltk's sentence_bleu with weights 1/max_n and Chen & Cherry's
  smoothing 1 (SmoothingFunction().method1: a precision with no match counts 0.1 matches,
  orders longer than the hypothesis included), as Texygen's Self-BLEU. Clipped n-gram
  precisions against all references, their geometric mean, and the brevity penalty for the
  closest reference length; 0 without any matched unigram."""
  if not hypothesis:
    return 0.0
  from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # nltk imports slowly.
  weights = tuple(1.0 / max_n for _ in range(max_n))
  return float(sentence_bleu(references, hypothesis, weights,
                             smoothing_function=SmoothingFunction().method1))


def self_bleu(samples: list[str], max_n: int = 4) -> float:
  """Mean BLEU of each sample against the others, ×100: 100 for identical samples,
  near 0 for unrelated ones. High means consistent answers, low means diverse ones."""
  toks = [tokens(s) for s in samples]
  if len(toks) < 2:
    raise ValueError("Self-BLEU needs at least 2 samples")
  return 100.0 * float(np.mean([bleu(t, toks[:i] + toks[i + 1:], max_n) for i, t in enumerate(toks)]))


def _lcs(a, b) -> int:
  prev = [0] * (len(b) + 1)
  for x in a:
    cur = [0]
    for j, y in enumerate(b):
      cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
    prev = cur
  return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
  """ROUGE-L F1 in [0, 1] over lower-cased alphanumeric words (rouge-score's tokens)."""
  c = re.findall(r"[a-z0-9]+", candidate.lower())
  r = re.findall(r"[a-z0-9]+", reference.lower())
  if not c or not r:
    return 0.0
  lcs = _lcs(c, r)
  if lcs == 0:
    return 0.0
  p, rec = lcs / len(c), lcs / len(r)
  return 2 * p * rec / (p + rec)


def copies_query(query: str, response: str) -> bool:
  """The response is a copy of the query, the reward hacking of relevance alone (R³ paper
  §2.2): ROUGE-L F1 against the query >= 0.5, i.e. mostly the query's words in its order.
  That also counts the near-copies a small model makes when it cannot reproduce a name
  ("Describe Banzar." for "Describe Dorzarlo."); an answer that restates the question and
  then answers it is far below (a 20-word answer after a 3-word question scores ~0.2)."""
  return rouge_l(response, query) >= 0.5


_LIST_MARKER = re.compile(r"(\d{1,3}|[a-zA-Z]|[ivxIVX]{1,4})[.)]|[-*+•]")


def sentences(text: str) -> list[str]:
  """Sentences and lines; a bare list marker ("1.", "b)", "-") opens the sentence after it
  rather than standing as a sentence of its own."""
  out, marker = [], ""
  for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()):
    if not s.strip():
      continue
    if _LIST_MARKER.fullmatch(s.strip()):
      marker += s.strip() + " "
      continue
    out.append(marker + s)
    marker = ""
  return out + ([marker.strip()] if marker else [])


def mean_ci(values) -> tuple[float, float, float]:
  """(mean, low, high): the mean and its normal-approximation 95% interval, mean ± 1.96
  standard errors; the interval is the mean itself for fewer than two values."""
  v = np.asarray(values, np.float64)
  if v.size == 0:
    return (float("nan"),) * 3
  half = 1.96 * v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0
  return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def distinct_n(texts: list[str], n: int = 2) -> float:
  """Distinct-n over a set of texts: unique n-grams / all n-grams (Li et al., 2016); 0
  without any n-gram. 1 when no n-gram repeats anywhere in the set."""
  grams = [g for t in texts for g in ngrams(tokens(t), n)]
  return len(set(grams)) / len(grams) if grams else 0.0


def _without_names(texts: list[str], names: list[str] | None) -> list[str]:
  """texts[i] with names[i] replaced by <name>, lower-cased, whitespace collapsed."""
  out = []
  for i, t in enumerate(texts):
    if names is not None and names[i]:
      t = re.sub(rf"\b{re.escape(names[i])}\b", "<name>", t)
    out.append(" ".join(t.lower().split()))
  return out


def top_sentence_share(texts: list[str], names: list[str] | None = None) -> float:
  """The share of texts that contain the set's most common sentence: near 1 when answers
  collapse onto one template. names[i], if given, is replaced in texts[i] first, so one
  template filled with different entities' names counts as one sentence."""
  counts = collections.Counter()
  for t in _without_names(texts, names):
    counts.update(set(sentences(t)))
  return counts.most_common(1)[0][1] / len(texts) if counts else 0.0


def distinct_answers(texts: list[str], names: list[str] | None = None) -> float:
  """Distinct texts / texts, with each text's own name replaced first (see
  top_sentence_share): one answer template repeated for every entity scores 1/len. Unlike
  distinct-n it does not fall when answers grow longer in a fixed phrasing."""
  return len(set(_without_names(texts, names))) / len(texts) if texts else 0.0


def win_rate(judge, prompts, a, b) -> dict:
  """Adjusted win rate of answers a over b, (wins + ties/2) / all, judged in both orders.

  judge(prompts, first, second) -> [N] preference for the first answer (> 0 first wins,
  < 0 second wins, 0 tie). A pointwise reward r gives judge = r(first) - r(second); a
  position-biased judge is what the second order cancels out. By construction
  win_rate(a, b) + win_rate(b, a) = 1."""
  ab, ba = np.asarray(judge(prompts, a, b)), np.asarray(judge(prompts, b, a))
  wins = int(np.sum(ab > 0) + np.sum(ba < 0))
  ties = int(np.sum(ab == 0) + np.sum(ba == 0))
  n = 2 * len(prompts)
  # Per prompt, its two judgements' mean outcome (1 win, 0.5 tie, 0 loss): the interval is
  # over prompts, the unit that was sampled.
  per_prompt = 0.5 * ((ab > 0) + 0.5 * (ab == 0) + (ba < 0) + 0.5 * (ba == 0))
  _, lo, hi = mean_ci(per_prompt)
  return {"win_rate": (wins + 0.5 * ties) / n if n else float("nan"), "wins": wins,
          "ties": ties, "losses": n - wins - ties, "judgements": n, "ci95": (lo, hi)}
