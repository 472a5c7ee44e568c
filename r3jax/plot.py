r"""PNG curves from a run's metrics.jsonl.

  python -m r3jax.plot --workdir=DIR   # writes DIR/plots/<group>.png
"""

import collections
import os

from absl import app, flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from r3jax import metrics

# Plotted when present; each group is one PNG with one panel per metric.
GROUPS = {
    "train": ["train/loss", "eval/loss", "train/lr", "train/grad_norm"],
    "throughput": ["perf/tokens_per_s", "perf/steps_per_s"],
}


def plot_workdir(workdir: str, groups=None) -> list[str]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no metrics to plot")
  series = collections.defaultdict(list)
  for row in metrics.read_jsonl(path):
    for k, v in row.items():
      if k not in ("step", "time"):
        series[k].append((row["step"], v))
  out_dir = os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name, keys in (groups or GROUPS).items():
    keys = [k for k in keys if series.get(k)]
    if not keys:
      continue
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
      steps, values = zip(*sorted(dict(series[k]).items()))
      ax.plot(steps, values, marker="." if len(steps) < 30 else None)
      if k == "eval/loss" and series.get("eval/unigram_loss"):
        ax.axhline(series["eval/unigram_loss"][-1][1], color="gray", ls="--", label="unigram")
        ax.legend()
      ax.set_title(k)
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
    fig.tight_layout()
    out = os.path.join(out_dir, f"{name}.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    written.append(out)
  return written


def main(argv):
  del argv
  for p in plot_workdir(flags.FLAGS.workdir):
    print(p)


if __name__ == "__main__":
  # Defined here, not at import: trainers import this module and define --workdir too.
  flags.DEFINE_string("workdir", None, "Run directory holding metrics.jsonl.", required=True)
  app.run(main)
