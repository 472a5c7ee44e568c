"""Pairwise accuracy of rewards on comparison sets, with 95% Wilson intervals (the R³ paper's
Table 1, Kim & Seo 2024). A K-wise ranking counts its C(K,2) pairs; a tie counts one half."""

import csv
import math
import os
import sys
import time

import numpy as np

from r3jax.core import plots
from r3jax.data import chat, readers, synrel, synthetic
from r3jax.eval import llm_judge


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
  if n == 0:
    return float("nan"), float("nan")
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return centre - half, centre + half


def pair_accuracy(scorer, rows) -> tuple[float, int]:
  """(wins + ties/2, number of pairs) over every ordered pair of each ranking. An LLM judge
  (llm_judge.PairwiseJudge) judges each pair in both orders: a win needs both."""
  if isinstance(scorer, llm_judge.PairwiseJudge):
    out = judge_pairs(scorer, rows)
    print(f"LLM judge: position bias {out['position_bias']:.1%}, {out['unreadable']} unreadable "
          f"verdicts of {2 * out['judgements']}", file=sys.stderr)
    return out["wins"] + 0.5 * out["ties"], out["judgements"]
  per_response = [r for r in rows for _ in r["responses"]]
  responses = [y for r in rows for y in r["responses"]]
  scores = np.asarray(scorer(per_response, responses)["reward"], np.float64)
  wins, n, pos = 0.0, 0, 0
  for r in rows:
    s = scores[pos:pos + len(r["responses"])]
    pos += len(r["responses"])
    for a in range(len(s)):
      for b in range(a + 1, len(s)):
        wins += 1.0 if s[a] > s[b] else 0.5 if s[a] == s[b] else 0.0
        n += 1
  return wins, n


def judge_pairs(judge, rows) -> dict:
  """llm_judge.both_orders of the better response of every ordered pair of each ranking
  against the worse: its wins are the pairs where the judge agrees with the labels."""
  pairs = [(chat.as_text(r["prompt"]), r["responses"][a], r["responses"][b]) for r in rows
           for a in range(len(r["responses"])) for b in range(a + 1, len(r["responses"]))]
  q, better, worse = (list(x) for x in zip(*pairs))
  return llm_judge.both_orders(judge.verdicts(q, better, worse), judge.verdicts(q, worse, better))


def load_set(name: str, limit: int, skip_bad: bool):
  if name == "synthetic":
    rows = synthetic.comparisons(500, seed=123)
  elif name == "synrel":
    rows = synrel.triplets()
  elif name.startswith("synrel:"):
    rows = synrel.triplets(synrel.load_entities(name[len("synrel:"):]))
  else:
    loaded = readers.load_comparisons(name, skip_bad)
    rows = loaded.rows
    if loaded.skipped:
      print(f"{name}: skipped {len(loaded.skipped)} bad rows, e.g. {loaded.skipped[0]}", file=sys.stderr)
  return rows[:limit] if limit else rows


def set_name(spec: str) -> str:
  return os.path.basename(spec.split(":")[-1]) if spec.startswith("synrel:") else os.path.basename(spec)


def table(scorers_by_name: dict, sets: dict) -> dict:
  """{reward: {set: (wins, pairs)}}, with a progress line per reward and set (on stderr)."""
  out = {}
  for name, scorer in scorers_by_name.items():
    out[name] = {}
    for s, rows in sets.items():
      t0 = time.monotonic()
      out[name][s] = pair_accuracy(scorer, rows)
      print(f"{name} on {s}: {out[name][s][1]} pairs scored in {time.monotonic() - t0:.0f} s",
            file=sys.stderr, flush=True)
  return out


def markdown(acc: dict, sets) -> list[str]:
  sets = list(sets)
  cell = lambda w, n: f"{w / n:.1%} [{wilson(w, n)[0]:.1%}, {wilson(w, n)[1]:.1%}] (n={n})"
  lines = ["| reward | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
  return lines + [f"| {r} | " + " | ".join(cell(*acc[r][s]) for s in sets) + " |" for r in acc]


def write(acc: dict, out: str) -> str:
  """pairs_accuracy.md / .csv / .png in `out`; returns the PNG's path."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "pairs_accuracy.md"), "w") as f:
    f.write("\n".join(markdown(acc, next(iter(acc.values()), {}))) + "\n")
  with open(os.path.join(out, "pairs_accuracy.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["reward", "set", "accuracy", "ci_low", "ci_high", "pairs"])
    for r in acc:
      for s, (k, n) in acc[r].items():
        w.writerow([r, s, f"{k / n:.4f}", *(f"{x:.4f}" for x in wilson(k, n)), n])
  bars = {r: {s: (k / n, *wilson(k, n)) for s, (k, n) in acc[r].items()} for r in acc}
  return plots.grouped_bars(os.path.join(out, "pairs_accuracy.png"), bars, "pairwise accuracy",
                            "95% Wilson intervals (dashed: chance)", (0, 1), 0.5)
