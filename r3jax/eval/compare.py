"""Reward ablations under one PPO budget, summarised: seed 002's reward-hacking comparison.

Each mode (SPEC §5: r3, relevance, li_s, no_branch, li_only) runs the same PPO config,
seed and SFT warm start in <workdir>/<mode>. The table compares the rollouts of the
first and last 10% of iterations: reward, response length, the fraction of responses
that copy the query, the repetition penalty (1 = no repeated trigrams), relevance and KL.
It is written to <workdir>/comparison.md and .csv, with comparison.png.
"""

import csv
import os

import numpy as np

from r3jax.core import metrics
from r3jax.core.plots import plt

COLUMNS = {"reward/reward": "reward", "rollout/length": "length (tokens)",
           "reward/copies_query": "copies query", "reward/repetition_penalty": "RP",
           "reward/relevance": "relevance s(x,y)", "kl/seq_kl": "KL"}


def summarize(run_dir: str) -> dict[str, tuple[float, float]]:
  """{metric: (mean over the first 10% of iterations, over the last 10%)}."""
  rows = [r for r in metrics.read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if "rollout/length" in r]
  if not rows:
    raise FileNotFoundError(f"{run_dir}/metrics.jsonl: no PPO iterations logged")
  k = max(1, len(rows) // 10)
  mean = lambda key, part: float(np.mean([r[key] for r in part]))
  return {key: (mean(key, rows[:k]), mean(key, rows[-k:])) for key in COLUMNS}


def write_report(workdir: str, summaries: dict[str, dict]) -> None:
  lines = ["| reward mode | " + " | ".join(COLUMNS.values()) + " |",
           "|---|" + "---|" * len(COLUMNS)]
  with open(os.path.join(workdir, "comparison.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["mode"] + [f"{c} {when}" for c in COLUMNS for when in ("first", "last")])
    for mode, s in summaries.items():
      w.writerow([mode] + [f"{v:.4f}" for key in COLUMNS for v in s[key]])
      lines.append(f"| {mode} | " + " | ".join(f"{s[k][0]:.3f} → {s[k][1]:.3f}" for k in COLUMNS) + " |")
  text = ("Mean over the first → last 10% of PPO iterations (same config, seed and SFT start).\n\n"
          + "\n".join(lines) + "\n")
  with open(os.path.join(workdir, "comparison.md"), "w") as f:
    f.write(text)
  print(text)

  keys = ["rollout/length", "reward/copies_query", "reward/repetition_penalty", "reward/relevance"]
  fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
  for ax, key in zip(axes[0], keys):
    for mode in summaries:
      rows = [r for r in metrics.read_jsonl(os.path.join(workdir, mode, "metrics.jsonl")) if key in r]
      steps = np.array([r["step"] for r in rows])
      vals = np.array([r[key] for r in rows])
      win = max(1, len(vals) // 15)  # A moving average: single rollout batches are noisy.
      smooth = np.convolve(vals, np.ones(win) / win, mode="valid")
      ax.plot(steps[win - 1:], smooth, label=mode)
    ax.set_title(COLUMNS[key])
    ax.set_xlabel("PPO iteration")
    ax.grid(alpha=0.3)
  axes[0][0].legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "comparison.png"), dpi=110)
  plt.close(fig)
