r"""Pairwise accuracy of rewards on comparison files, with 95% Wilson intervals.

  python -m r3jax.eval_pairs --reward=runs/rm_tiny,r3,relevance,length,random \
      --data=../shared/data/hh_harmless_base_sample.jsonl[,more.jsonl] [--out=DIR]

--reward: names from rewards/scorers.make (r3, relevance, li_s, no_branch, li_only, length,
random) or reward-model run directories. --data: comparison files in any supported format
({prompt, chosen, rejected}, {prompt, responses}, HH, ShareGPT-style), "synthetic" for the
embedded comparisons, "synrel" for the SynRel-style relevance set on the embedded knowledge
base, or "synrel:ENTITIES.jsonl" for one on a file of {entity, facts} rows (data/synrel.py).
A K-wise ranking counts its C(K,2) pairs; a tie counts one half. Prints seed 002's Table 1
layout (rows: rewards, columns: sets); with --out also writes CSV, markdown and a PNG chart.
"""

import csv
import math
import os
import sys

from absl import app, flags
import numpy as np

_REWARD = flags.DEFINE_list("reward", ["r3"], "Rewards to evaluate.")
_DATA = flags.DEFINE_list("data", ["synthetic"], "Comparison files, 'synthetic', 'synrel' or 'synrel:ENTITIES.jsonl'.")
_OUT = flags.DEFINE_string("out", "", "Directory for pairs_accuracy.csv / .md / .png.")
_MAX_LEN = flags.DEFINE_integer("max_len", 512, "R³'s rollout length (the CE map's scale).")
_SKIP_BAD = flags.DEFINE_bool("skip_bad", False, "Skip (and count) malformed comparisons.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Use the first N comparisons of each set (0: all).")


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
  if n == 0:
    return float("nan"), float("nan")
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return centre - half, centre + half


def pair_accuracy(scorer, rows) -> tuple[float, int]:
  """(wins + ties/2, number of pairs) over every ordered pair of each ranking."""
  prompts, responses, refs, types = [], [], [], []
  for r in rows:
    for y in r["responses"]:
      prompts.append(r["prompt"])
      responses.append(y)
      refs.append(r.get("reference"))
      types.append(r.get("query_type"))
  scores = np.asarray(scorer(prompts, responses, refs, types), np.float64)
  wins, n, pos = 0.0, 0, 0
  for r in rows:
    s = scores[pos:pos + len(r["responses"])]
    pos += len(r["responses"])
    for a in range(len(s)):
      for b in range(a + 1, len(s)):
        wins += 1.0 if s[a] > s[b] else 0.5 if s[a] == s[b] else 0.0
        n += 1
  return wins, n


def load_set(name: str, limit: int, skip_bad: bool):
  from r3jax.data import readers, synrel, synthetic
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


def main(argv):
  del argv
  from r3jax.data import readers
  from r3jax.rewards import scorers
  try:
    sets = {os.path.basename(d.split(":")[-1]) if d.startswith("synrel:") else os.path.basename(d):
            load_set(d, _LIMIT.value, _SKIP_BAD.value) for d in _DATA.value}
    table = {}
    for spec in _REWARD.value:
      scorer = scorers.make(spec, max_len=_MAX_LEN.value)
      name = os.path.basename(spec.rstrip("/")) if os.path.isdir(spec) else spec
      table[name] = {s: pair_accuracy(scorer, rows) for s, rows in sets.items()}
  except (readers.DataError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  cell = lambda w, n: f"{w / n:.1%} [{wilson(w, n)[0]:.1%}, {wilson(w, n)[1]:.1%}] (n={n})"
  lines = ["| reward | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
  lines += [f"| {r} | " + " | ".join(cell(*table[r][s]) for s in sets) + " |" for r in table]
  print("Pairwise accuracy, 95% Wilson interval; ties count 1/2.\n\n" + "\n".join(lines))
  if _OUT.value:
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, "pairs_accuracy.md"), "w") as f:
      f.write("\n".join(lines) + "\n")
    with open(os.path.join(_OUT.value, "pairs_accuracy.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["reward", "set", "accuracy", "ci_low", "ci_high", "pairs"])
      for r in table:
        for s, (k, n) in table[r].items():
          w.writerow([r, s, f"{k / n:.4f}", *(f"{x:.4f}" for x in wilson(k, n)), n])
    from r3jax import plot
    png = plot.grouped_bars(os.path.join(_OUT.value, "pairs_accuracy.png"),
                            {r: {s: (k / n, *wilson(k, n)) for s, (k, n) in table[r].items()}
                             for r in table}, "pairwise accuracy", "95% Wilson intervals (dashed: chance)", (0, 1), 0.5)
    print(f"wrote {png}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
