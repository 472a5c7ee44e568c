"""PNG curves from a run's metrics.jsonl, and the bar charts of the evaluation reports."""

import collections
import io

from etils import epath
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from r3jax.core import metrics

# Plotted when present; each group is one PNG with one panel per metric.
GROUPS = {
    "train": ["train/loss", "eval/loss", "train/lr", "train/grad_norm"],
    "throughput": ["perf/tokens_per_s", "perf/steps_per_s"],
}


def plot_workdir(workdir: str, groups=None) -> list[str]:
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    raise FileNotFoundError(f"{path}: no metrics to plot")
  series = collections.defaultdict(list)
  for row in metrics.read_jsonl(path):
    for k, v in row.items():
      if k not in ("step", "time"):
        series[k].append((row["step"], v))
  out_dir = epath.Path(workdir) / "plots"
  out_dir.mkdir(parents=True, exist_ok=True)
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
    out = out_dir / f"{name}.png"
    save_png(fig, out)
    written.append(str(out))
  return written


def grouped_bars(out: str, table: dict, ylabel: str, title: str = "", ylim=None,
                 hline: float | None = None) -> str:
  """One bar group per column of table {row: {column: (value, low, high)}}, one colour
  per row, with the [low, high] interval as an error bar."""
  rows = list(table)
  cols = list(dict.fromkeys(c for r in rows for c in table[r]))
  width = 0.8 / max(len(rows), 1)
  fig, ax = plt.subplots(figsize=(max(4.5, 1.2 + 0.5 * len(rows) * len(cols)), 3.4))
  for i, r in enumerate(rows):
    xs = [j + (i - (len(rows) - 1) / 2) * width for j, c in enumerate(cols) if c in table[r]]
    v, lo, hi = zip(*[table[r][c] for c in cols if c in table[r]])
    ax.bar(xs, v, width, label=r, yerr=[[a - b for a, b in zip(v, lo)], [b - a for a, b in zip(v, hi)]],
           capsize=2)
  ax.set_xticks(range(len(cols)), cols)
  ax.set_ylabel(ylabel)
  if ylim:
    ax.set_ylim(*ylim)
  if hline is not None:
    ax.axhline(hline, color="gray", ls="--", lw=1)
  ax.set_title(title)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
  fig.tight_layout()
  save_png(fig, out)
  return str(out)


def save_png(fig, path, dpi: int = 100) -> None:
  """Saves and closes a figure; `path` may be a gs:// URI (through epath)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  plt.close(fig)
  epath.Path(path).write_bytes(buf.getvalue())
