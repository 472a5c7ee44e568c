"""Reward ablations and RL algorithms under one PPO budget, summarised: the R³ paper's
reward-hacking comparison (Kim & Seo 2024, §2.2, §4.3), and PPO against the group
baselines (r3jax/compare.py).

Each run (a reward mode, R³ paper Table 4, and/or an advantage estimator) uses the same PPO config,
seed and SFT warm start in <workdir>/<run>. The table compares the rollouts of the
first and last 10% of iterations: reward, response length, the fraction of responses
that copy the query, the repetition penalty (1 = no repeated trigrams), relevance and KL.
On the embedded world it adds what the reward does not see: the gold judge's precision,
recall and repeats, distinct-2 and the most common sentence's share. It is written to
<workdir>/comparison.md and .csv, with comparison.png and proxy_vs_gold.png, and a cost
table: median seconds per iteration and planned memory per device.
"""

import csv
import os

import numpy as np

from r3jax.core import metrics, plots
from r3jax.core.plots import plt

COLUMNS = {"reward/reward": "reward", "rollout/length": "length (tokens)",
           "reward/copies_query": "copies query", "reward/repetition_penalty": "RP",
           "reward/relevance": "relevance s(x,y)", "kl/seq_kl": "KL",
           # Not the optimised reward: the gold judge (embedded world only) and diversity.
           "gold/precision": "gold precision", "gold/recall": "gold recall",
           "gold/repeats": "gold repeats", "diversity/distinct2": "distinct-2",
           "diversity/distinct_answers": "distinct answers",
           "diversity/top_sentence_share": "top sentence share"}


PHASES = ("time/rollout", "time/reward", "time/reference_value", "time/advantages", "time/update")


def summarize(run_dir: str, config=None) -> dict:
  """{metric: (mean over the first 10% of iterations, over the last 10%)} for the COLUMNS
  the run logged (a run on other prompts has no gold columns), and under "cost": the
  median wall time per iteration (the first, which compiles, left out) and, given the
  run's config, the planned memory per device (trainers/memory.py) on this machine's mesh."""
  rows = [r for r in metrics.read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if "rollout/length" in r]
  if not rows:
    raise FileNotFoundError(f"{run_dir}/metrics.jsonl: no PPO iterations logged")
  k = max(1, len(rows) // 10)
  mean = lambda key, part: float(np.mean([r[key] for r in part]))
  out = {key: (mean(key, rows[:k]), mean(key, rows[-k:])) for key in COLUMNS if key in rows[0]}
  steady = rows[1:] or rows
  out["cost"] = {"s / iteration": float(np.median([sum(r.get(p, 0.0) for p in PHASES) for r in steady]))}
  if config is not None:
    import jax  # pylint: disable=g-import-not-at-top
    from r3jax.core import sharding  # pylint: disable=g-import-not-at-top
    from r3jax.trainers import memory  # pylint: disable=g-import-not-at-top
    sizes = sharding.mesh_shape(config.mesh, jax.device_count())
    out["cost"]["planned MiB / device"] = memory.plan(config, sizes)["total"] / 2**20
  return out


def cost_table(summaries: dict[str, dict]) -> str:
  names = [k for k in next(iter(summaries.values())).get("cost", {})]
  if not names:
    return ""
  lines = ["", "| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  lines += [f"| {run} | " + " | ".join(f"{s['cost'].get(n, float('nan')):.2f}" for n in names) + " |"
            for run, s in summaries.items()]
  return "\n".join(lines) + "\n"


def write_report(workdir: str, summaries: dict[str, dict]) -> None:
  cols = [k for k in COLUMNS if all(k in s for s in summaries.values())]
  lines = ["| run | " + " | ".join(COLUMNS[k] for k in cols) + " |",
           "|---|" + "---|" * len(cols)]
  with open(os.path.join(workdir, "comparison.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["mode"] + [f"{COLUMNS[c]} {when}" for c in cols for when in ("first", "last")])
    for mode, s in summaries.items():
      w.writerow([mode] + [f"{v:.4f}" for key in cols for v in s[key]])
      lines.append(f"| {mode} | " + " | ".join(f"{s[k][0]:.3f} → {s[k][1]:.3f}" for k in cols) + " |")
  text = ("Mean over the first → last 10% of PPO iterations (same config, seed and SFT start).\n\n"
          + "\n".join(lines) + "\n" + cost_table(summaries))
  with open(os.path.join(workdir, "comparison.md"), "w") as f:
    f.write(text)
  print(text)

  keys = [k for k in ("rollout/length", "reward/copies_query", "gold/precision", "gold/recall",
                      "reward/repetition_penalty", "reward/relevance") if k in cols][:4]
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
    ax.set_ylabel(COLUMNS[key])
    ax.grid(alpha=0.3)
  axes[0][0].legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "comparison.png"), dpi=110)
  plt.close(fig)
  gold = plots.proxy_vs_gold_figure({m: plots.read_series(os.path.join(workdir, m, "metrics.jsonl"))
                                     for m in summaries})
  if gold is not None:
    plots.save_png(gold, os.path.join(workdir, "proxy_vs_gold.png"))
