r"""Proxy reward against √KL(π‖π_ref), the over-optimisation view of Gao et al. 2023
("Scaling Laws for Reward Model Overoptimization").

A PPO run (metrics.jsonl with kl/seq_kl) gives one point per logged iteration: the mean
raw reward of its rollouts against √ of their mean summed log-ratio, drawn as a moving
average over --window iterations. A best-of-N run (round_*/candidates.npz) gives, for
n = 1, 2, 4, ... up to N, the expected best-of-n reward, estimated without bias from the N scored candidates
of each prompt (n up to the fewest distinct candidates any prompt has), against the
closed-form KL of best-of-n sampling, log n - (n-1)/n.
Writes <out>/frontier.png and frontier.csv; PPO runs on the embedded world also get
<out>/proxy_vs_gold.png, the proxy reward and the gold judge's score against √KL side by
side (core/plots.proxy_vs_gold_figure), which tells improvement from reward hacking.
"""

import csv
import glob
import math
import os

import numpy as np

from r3jax.core import metrics, plots


def best_of_n_kl(n: int) -> float:
  """KL(best-of-n ‖ base) for distinct candidates (Stiennon et al. 2020; Gao et al. 2023)."""
  return math.log(n) - (n - 1) / n


def expected_best_of(rewards: np.ndarray, n: int) -> float:
  """E[max of n drawn without replacement] from one prompt's N candidates: the i-th smallest
  (1-based) is the maximum of C(i-1, n-1) of the C(N, n) subsets."""
  r = np.sort(np.asarray(rewards, np.float64))
  big_n = len(r)
  if not 1 <= n <= big_n:
    raise ValueError(f"n={n} outside 1..{big_n}")
  total = math.comb(big_n, n)
  return float(sum(math.comb(i - 1, n - 1) / total * x for i, x in enumerate(r, 1) if i >= n))


def ppo_curve(run: str, window: int):
  rows = [r for r in metrics.read_jsonl(os.path.join(run, "metrics.jsonl"))
          if "kl/seq_kl" in r and "reward/reward" in r]
  if not rows:
    raise FileNotFoundError(f"{run}/metrics.jsonl: no PPO iterations (kl/seq_kl, reward/reward)")
  kl = np.array([r["kl/seq_kl"] for r in rows])
  reward = np.array([r["reward/reward"] for r in rows])
  w = max(1, min(window, len(rows)))
  smooth = lambda x: np.convolve(x, np.ones(w) / w, mode="valid")
  # Sampled KL estimates can dip below 0 early on; √ of a negative is read as 0.
  return np.sqrt(np.maximum(smooth(kl), 0.0)), smooth(reward), [r["step"] for r in rows][w - 1:]


def best_of_n_curve(path: str):
  data = np.load(path)
  rewards, valid = data["rewards"], data["valid"]
  per_prompt = [r[v] for r, v in zip(rewards, valid) if v.any()]
  big_n = min(len(r) for r in per_prompt)
  ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= big_n]
  means = [float(np.mean([expected_best_of(r, n) for r in per_prompt])) for n in ns]
  return np.sqrt([best_of_n_kl(n) for n in ns]), np.array(means), ns


def collect(runs, window: int) -> list:
  """[(label, sqrt_kl, reward, x-labels)]: one curve per PPO run, one per best-of-N round."""
  curves = []
  for run in runs:
    name = os.path.basename(os.path.normpath(run))
    rounds = sorted(glob.glob(os.path.join(run, "round_*", "candidates.npz")))
    if rounds:
      for path in rounds:
        label = f"{name} best-of-n ({os.path.basename(os.path.dirname(path))})"
        curves.append((label, *best_of_n_curve(path)))
    elif os.path.exists(os.path.join(run, "metrics.jsonl")):
      curves.append((f"{name} (PPO)", *ppo_curve(run, window)))
    else:
      raise FileNotFoundError(f"{run}: neither metrics.jsonl nor round_*/candidates.npz")
  return curves


def write(curves, out_dir: str) -> str:
  """frontier.csv and frontier.png in out_dir; returns the PNG's path."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "frontier.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["curve", "x", "sqrt_kl", "reward"])
    for label, x, y, tags in curves:
      for a, b, t in zip(x, y, tags):
        w.writerow([label, t, f"{a:.5f}", f"{b:.5f}"])
  fig, ax = plots.plt.subplots(figsize=(5.5, 3.6))
  for label, x, y, tags in curves:
    ax.plot(x, y, marker="o" if "best-of" in label else None, ms=4, label=label)
    if "best-of" in label:
      for a, b, t in zip(x, y, tags):
        ax.annotate(f"n={t}", (a, b), fontsize=6, xytext=(2, -8), textcoords="offset points")
  ax.set_xlabel("√KL(π ‖ π_ref)  (nats)")
  ax.set_ylabel("proxy reward")
  ax.set_title("Reward against KL")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  out = os.path.join(out_dir, "frontier.png")
  fig.savefig(out, dpi=100)
  plots.plt.close(fig)
  return out


def write_gold(runs, out_dir: str) -> str | None:
  """proxy_vs_gold.png for the PPO runs that logged gold figures; None if none did."""
  series = {os.path.basename(os.path.normpath(r)): plots.read_series(os.path.join(r, "metrics.jsonl"))
            for r in runs if os.path.exists(os.path.join(r, "metrics.jsonl"))}
  fig = plots.proxy_vs_gold_figure(series)
  if fig is None:
    return None
  os.makedirs(out_dir, exist_ok=True)
  out = os.path.join(out_dir, "proxy_vs_gold.png")
  plots.save_png(fig, out)
  return out
