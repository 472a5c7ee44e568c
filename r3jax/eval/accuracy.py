"""Exact accuracy of answers to keyed prompts (a math problem and its answer): pass@1 of the
greedy answer, pass@k and maj@k over k samples, and pass@1 estimated from the samples, each
over prompts with a 95% interval. Answers are read and compared by rewards/verifiable.py."""

import collections
import math

import numpy as np

from r3jax.eval import pairs, text_metrics as tm
from r3jax.rewards import verifiable


def pass_at_k(n: int, c: int, k: int) -> float:
  """The unbiased pass@k of n samples of which c are correct (Chen et al. 2021, "Evaluating
  Large Language Models Trained on Code", eq. 1): 1 - C(n - c, k) / C(n, k)."""
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority(answers: list[str | None]) -> str | None:
  """The most common normalised answer (ties: the first to appear); None when none parsed."""
  normal = [verifiable.normalize(a) for a in answers if a is not None]
  if not normal:
    return None
  counts = collections.Counter(normal)
  best = max(counts.values())
  return next(a for a in normal if counts[a] == best)


def applicable(rows) -> bool:
  return bool(rows) and all(verifiable.key_of(r) is not None for r in rows)


def stats(rows, greedy: list[str], samples: list[list[str]]) -> dict[str, np.ndarray]:
  """Per-prompt arrays: greedy correctness, pass@k and maj@k over the k samples, the samples'
  mean correctness, and whether the greedy answer states an answer at all."""
  keys = [verifiable.normalize(verifiable.key_of(r)) for r in rows]
  out = collections.defaultdict(list)
  for key, g, ys in zip(keys, greedy, samples):
    out["greedy"].append(float(verifiable.is_correct(g, key)))
    out["parsed"].append(float(verifiable.extract(g) is not None))
    if ys:  # None drawn: greedy figures only.
      found = [verifiable.extract(y) for y in ys]
      right = [a is not None and verifiable.normalize(a) == key for a in found]
      out["pass_k"].append(pass_at_k(len(ys), sum(right), len(ys)))
      out["maj_k"].append(float(majority(found) == key))
      out["sampled"].append(float(np.mean(right)))
  return {k: np.asarray(v) for k, v in out.items()}


def lines(stats_by_model: dict, k: int, top_p: float) -> list[str]:
  """The report's accuracy table: Wilson intervals for the 0/1 figures, normal ones for the
  samples' mean correctness (eval/text_metrics.mean_ci)."""
  names = [n for n in stats_by_model if "accuracy" in stats_by_model[n]]
  if not names:
    return []
  acc = {n: stats_by_model[n]["accuracy"] for n in names}

  def wilson(v):
    low, high = pairs.wilson(float(np.sum(v)), len(v))
    return f"{np.mean(v):.3f} [{low:.3f}, {high:.3f}]"

  def normal(v):
    return "{:.3f} [{:.3f}, {:.3f}]".format(*tm.mean_ci(v))

  rows = (("pass@1, greedy", "greedy", wilson), (f"pass@{k} ({k} samples, top-p {top_p})", "pass_k", wilson),
          (f"maj@{k} (majority of the {k} samples' answers)", "maj_k", wilson),
          (f"pass@1 estimated from the {k} samples", "sampled", normal),
          ("greedy answers that state an answer", "parsed", wilson))
  out = ["", "## Exact accuracy (the answer key; rewards/verifiable.py)", "",
         "| metric (95% interval over prompts) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for label, key, cell in rows:
    if key not in acc[names[0]]:
      continue
    out.append(f"| {label} | " + " | ".join(cell(acc[n][key]) for n in names) + " |")
  return out
