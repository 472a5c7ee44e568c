"""PNG curves from a run's metrics.jsonl, and the bar charts of the evaluation reports."""

import collections
import io
import json
import math

from etils import epath
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

# Every trainer's groups: each group is one PNG, one panel per metric. They live here so that
# `python -m r3jax.plot` can re-draw any run without importing the trainers (and JAX);
# ppo.PLOTS is GROUPS["ppo"], sft.py passes None, rm/dpo's TASK.plots mirror theirs.
GROUPS = {
    "sft": {
        "train": ["train/loss", "eval/loss", "train/lr", "train/grad_norm"],
        "throughput": ["perf/tokens_per_s", "perf/steps_per_s"],
    },
    "ppo": {
        "reward": ["reward/reward", "reward/relevance", "reward/length_incentive",
                   "reward/repetition_penalty", "reward/copies_query"],
        "gold": ["gold/score", "gold/precision", "gold/recall", "gold/repeats"],
        "diversity": ["diversity/distinct2", "diversity/distinct_answers", "diversity/top_sentence_share",
                      "diversity/rep4"],
        "kl_length": ["kl/seq_kl", "kl/beta", "rollout/length", "policy/entropy"],
        "losses": ["policy/loss", "value/loss", "policy/clipfrac", "value/explained_variance"],
        "time": ["time/rollout", "time/reward", "time/reference_value", "time/advantages", "time/update"],
    },
    "rm": {
        "rm": ["train/loss", "eval/loss", "train/rm/accuracy", "eval/rm/accuracy",
               "train/rm/margin", "train/rm/reward_std"],
    },
    "dpo": {
        "dpo": ["train/loss", "eval/loss", "train/rewards/accuracy", "eval/rewards/accuracy",
                "train/rewards/margin", "train/rewards/chosen", "train/rewards/rejected"],
    },
}

# The x axis of a PPO run counts iterations (rollout + update), not optimizer steps.
XLABELS = {"ppo": "PPO iteration"}

# Y-axis labels; a metric not listed falls back to its last path component's rule in
# _SUFFIX_UNITS, then to its short name.
UNITS = {
    "train/grad_norm": "gradient L2 norm",
    "perf/tokens_per_s": "tokens / s",
    "perf/steps_per_s": "steps / s",
    "eval/perplexity": "perplexity",
    "kl/seq_kl": "nats / sequence",
    "kl/beta": "KL coefficient β",
    "rollout/length": "tokens",
    "policy/entropy": "nats / token",
    "policy/loss": "clipped surrogate",
    "value/loss": "squared error",
    "value/explained_variance": "explained variance",
    "gold/score": "precision × recall",
    "gold/repeats": "repeated claims / answer",
    "diversity/distinct2": "unique / all bigrams",
    "diversity/top_sentence_share": "share of answers",
    "diversity/distinct_answers": "distinct / all answers",
    "diversity/rep4": "repeated 4-gram fraction",
    "train/rm/margin": "reward (chosen − rejected)",
    "train/rm/reward_std": "reward std",
    "train/rewards/margin": "β·log-ratio (chosen − rejected)",
    "train/rewards/chosen": "β·log-ratio vs reference",
    "train/rewards/rejected": "β·log-ratio vs reference",
}
_SUFFIX_UNITS = {"loss": "nats", "lr": "learning rate", "accuracy": "fraction", "clipfrac": "fraction",
                 "precision": "fraction", "recall": "fraction"}
_PREFIX_UNITS = {"time/": "seconds", "reward/": "reward"}

SMOOTH_ABOVE = 20  # Points; fewer (an eval every 500 steps) are each worth seeing as logged.
CHANCE = 0.5  # Pairwise accuracy of a coin flip.


def unit_label(metric: str) -> str:
  if metric in UNITS:
    return UNITS[metric]
  short = metric.rsplit("/", 1)[-1]
  if short in _SUFFIX_UNITS:
    return _SUFFIX_UNITS[short]
  for prefix, unit in _PREFIX_UNITS.items():
    if metric.startswith(prefix):
      return unit
  return short


def read_series(path) -> dict[str, tuple[list, list]]:
  """{metric: (steps, values)} sorted by step, the last value kept where a step repeats
  (a resumed run re-logs it). A torn last line, from a run killed mid-write, is skipped:
  a crashed run is when its plots are wanted most."""
  rows = collections.defaultdict(dict)
  for line in epath.Path(path).read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if not isinstance(row, dict) or "step" not in row:
      continue
    for k, v in row.items():
      # bool is an int; a flag is not a curve.
      if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
        rows[k][row["step"]] = float(v)
  return {k: tuple(map(list, zip(*sorted(d.items())))) for k, d in rows.items()}


def ema(values, alpha: float | None = None) -> list[float]:
  """Two-sided exponential smoothing: each point is the (1-alpha)^|i-j|-weighted mean of
  its neighbours on both sides, so the curve does not lag a falling loss as a causal EMA
  does; at the ends it becomes the one-sided EMA. alpha defaults to 20/len clipped to
  [0.02, 0.2], so long runs are smoothed as much, relative to their length, as short
  ones. Non-finite values get no weight: one NaN does not blank a curve."""
  if alpha is None:
    alpha = min(0.2, max(0.02, 20.0 / max(len(values), 1)))
  keep = [math.isfinite(v) for v in values]

  def passes(order):  # Running weighted sums and weights, in that order.
    sums, weights, acc, w = [0.0] * len(values), [0.0] * len(values), 0.0, 0.0
    for i in order:
      acc, w = (1 - alpha) * acc + (values[i] if keep[i] else 0.0), (1 - alpha) * w + keep[i]
      sums[i], weights[i] = acc, w
    return sums, weights

  (fs, fw), (bs, bw) = passes(range(len(values))), passes(reversed(range(len(values))))
  out = []
  for i, v in enumerate(values):  # Point i is in both passes; count it once.
    w = fw[i] + bw[i] - keep[i]
    out.append((fs[i] + bs[i] - (v if keep[i] else 0.0)) / w if w > 0 else math.nan)
  return out


def is_noisy(values) -> bool:
  """Whether a series has step-to-step noise worth smoothing. A schedule (lr, a fixed beta)
  or a clean trend has second differences much smaller than its first differences; noise
  has them larger. Smoothing a schedule would only shift its corners."""
  vals = [v for v in values if math.isfinite(v)]
  if len(vals) <= SMOOTH_ABOVE:
    return False
  d1 = sorted(abs(b - a) for a, b in zip(vals, vals[1:]))
  d2 = sorted(abs(a - 2 * b + c) for a, b, c in zip(vals, vals[1:], vals[2:]))
  return d1[len(d1) // 2] > 0 and d2[len(d2) // 2] > 0.5 * d1[len(d1) // 2]


def kl_target(workdir) -> float | None:
  """The adaptive-KL controller's target from the run's saved config, if any. The harness
  saves run_config.json; config.json is accepted too. A fixed beta has no target to show."""
  for name in ("run_config.json", "config.json"):
    path = epath.Path(workdir) / name
    try:
      kl = json.loads(path.read_text()).get("kl") if path.exists() else None
    except (OSError, ValueError, AttributeError):
      continue
    if isinstance(kl, dict) and isinstance(kl.get("target"), (int, float)) and kl.get("adaptive", True):
      return float(kl["target"])
  return None


def _finite_range(*lists) -> tuple[float, float] | None:
  vals = [v for vals in lists for v in vals if math.isfinite(v)]
  return (min(vals), max(vals)) if vals else None


def data_range(values, smooth=None) -> tuple[float, float] | None:
  """The y-range to show: all of a raw-only series; for a smoothed one, the smoothed curve
  plus the raw values' 0.5-99.5% quantiles, so one grad-norm spike leaves the panel at the
  top instead of flattening the other 2000 points."""
  vals = sorted(v for v in values if math.isfinite(v))
  if not vals or smooth is None:
    return _finite_range(vals)
  k = len(vals) // 200
  return _finite_range([vals[k], vals[-1 - k]], smooth)


def _set_ylim(ax, lo: float, hi: float) -> None:
  pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-3)
  ax.set_ylim(lo - pad, hi + pad)


def draw_baseline(ax, rng: tuple[float, float], value: float, label: str) -> None:
  """A dashed reference line, drawn only where it fits within twice the data's span `rng`;
  else the y-range stays on the data and the legend names the value, so a far-off baseline
  (a unigram loss of 7 under a curve at 2.1-2.3) does not flatten the curve."""
  lo, hi = rng
  if not math.isfinite(value):
    return
  if max(hi, value) - min(lo, value) <= 2 * max(hi - lo, 1e-12):
    ax.axhline(value, color="gray", ls="--", lw=1, label=f"{label} {value:.3g}")
    _set_ylim(ax, min(lo, value), max(hi, value))
  else:
    ax.plot([], [], color="gray", ls="--", lw=1, label=f"{label} {value:.3g} (off scale)")
  ax.legend(fontsize=7)


def _note_clipped(ax, values) -> None:
  """Names the extremes that data_range left outside the axis, so a clipped spike is
  still read off the panel."""
  lo, hi = ax.get_ylim()
  vals = [v for v in values if math.isfinite(v)]
  notes = [f"max {max(vals):.3g}"] if vals and max(vals) > hi else []
  notes += [f"min {min(vals):.3g}"] if vals and min(vals) < lo else []
  if notes:
    ax.text(0.99, 0.98, ", ".join(notes) + " (off scale)", transform=ax.transAxes, ha="right", va="top",
            fontsize=7, color="dimgray", bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})


def draw_panel(ax, metric: str, steps, values, xlabel: str = "step",
               hline: float | None = None, hline_label: str = "reference") -> None:
  """One metric: the raw series, with a smoothed curve over it when it is long and noisy
  enough to need one; a dashed reference line (chance on accuracies, or `hline`)."""
  smooth = ema(values) if is_noisy(values) else None
  if smooth is not None:
    line, = ax.plot(steps, values, lw=0.7, alpha=0.3)
    ax.plot(steps, smooth, lw=1.6, color=line.get_color())
  else:
    ax.plot(steps, values, lw=1.2, marker="." if len(values) <= SMOOTH_ABOVE else None, ms=5)
  ax.set_title(metric, fontsize=10)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(unit_label(metric))
  # A power of ten over the axis for lr-sized or throughput-sized values; no offset, so a
  # flat 9000 tokens/s does not read as "+9e3" plus noise.
  ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 5), useOffset=False, useMathText=False)
  ax.grid(alpha=0.3)
  rng = data_range(values, smooth)
  if rng is None:
    return
  _set_ylim(ax, *rng)
  _note_clipped(ax, values)
  if hline is not None:
    draw_baseline(ax, rng, hline, hline_label)
  elif metric.endswith("accuracy"):
    # Accuracies are fractions; keep 0.5 in view so the distance from chance reads at a glance.
    ax.axhline(CHANCE, color="gray", ls="--", lw=1, label="chance")
    lo, hi = _finite_range(rng, [CHANCE])
    _set_ylim(ax, max(0.0, lo), min(1.0, hi))
    ax.legend(fontsize=7)


_HLINE_LABELS = {"kl/seq_kl": "KL target"}


def _grid(n: int) -> tuple[int, int]:
  cols = 2 if n == 4 else min(n, 3)  # 2x2 rather than 3 + 1.
  return -(-n // cols), cols


def group_figure(name: str, keys, series: dict, xlabel: str = "step",
                 hlines: dict | None = None, title: str = ""):
  """The figure of one group (panels for the keys with data, in a grid of <= 3 columns),
  returned unsaved so tests and notebooks can inspect it; None when no key has data."""
  keys = [k for k in keys if series.get(k) and series[k][0]]
  if not keys:
    return None
  hlines, labels = dict(hlines or {}), dict(_HLINE_LABELS)
  if "eval/unigram_loss" in series and "eval/loss" not in hlines:
    hlines["eval/loss"], labels["eval/loss"] = series["eval/unigram_loss"][1][-1], "unigram"
  rows, cols = _grid(len(keys))
  fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.3 * rows + 0.4), squeeze=False)
  flat = axes.ravel()
  for ax, k in zip(flat, keys):
    draw_panel(ax, k, *series[k], xlabel=xlabel, hline=hlines.get(k), hline_label=labels.get(k, "reference"))
  for ax in flat[len(keys):]:
    ax.set_visible(False)
  smoothed = any(is_noisy(series[k][1]) for k in keys)
  note = "  (faint: raw, solid: smoothed)" if smoothed else ""
  fig.suptitle(f"{title + ': ' if title else ''}{name}{note}", fontsize=11)
  fig.tight_layout()
  return fig


def _trainer_of(group: str) -> str | None:
  return next((t for t, groups in GROUPS.items() if group in groups), None)


def detected_groups(series: dict) -> dict:
  """The registered groups a run's metrics belong to. A group counts when it has data for a
  metric that no other trainer's groups list: train/loss alone is in the SFT, RM and DPO
  groups, and should not give an SFT run an rm.png."""
  out = {}
  for trainer, groups in GROUPS.items():
    others = {k for t, gs in GROUPS.items() if t != trainer for ks in gs.values() for k in ks}
    for name, keys in groups.items():
      own = [k for k in keys if k not in others] or keys
      if any(series.get(k) for k in own):
        out[name] = keys
  if not out:
    # Only shared metrics (a run that logged train/loss alone): the first group holding
    # each, so it is drawn once rather than in train.png, rm.png and dpo.png alike.
    seen = set()
    for name, keys in ((n, ks) for gs in GROUPS.values() for n, ks in gs.items()):
      if any(series.get(k) and k not in seen for k in keys):
        out[name] = keys
        seen.update(keys)
  return out


def plot_workdir(workdir: str, groups: dict | None = None,
                 hlines: dict[str, float] | None = None) -> list[str]:
  """Draws <workdir>/plots/<group>.png from <workdir>/metrics.jsonl and returns the paths.
  groups: {name: [metric, ...]}, or None for every registered group the run has data for;
  a run with gold figures also gets proxy_vs_gold.png.
  hlines: {metric: value} dashed reference lines, over the KL target from the run's config."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    raise FileNotFoundError(f"{path}: no metrics to plot")
  series = read_series(path)
  target = kl_target(workdir)
  lines = {**({"kl/seq_kl": target} if target is not None else {}), **(hlines or {})}
  out_dir = epath.Path(workdir) / "plots"
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  run = epath.Path(workdir).name
  figs = {name: group_figure(name, keys, series, xlabel=XLABELS.get(_trainer_of(name), "step"),
                             hlines=lines, title=run)
          for name, keys in (detected_groups(series) if groups is None else groups).items()}
  figs["proxy_vs_gold"] = proxy_vs_gold_figure({run: series})  # None without gold figures.
  for name, fig in figs.items():
    if fig is not None:
      save_png(fig, out_dir / f"{name}.png")
      written.append(str(out_dir / f"{name}.png"))
  return written


def proxy_vs_gold_figure(runs: dict[str, dict], proxy: str = "reward/reward",
                         gold: str = "gold/score"):
  """Gao et al.'s over-optimisation picture: the optimised (proxy) reward and the gold
  score against √KL from the reference policy, one line per run, iterations in order
  (smoothed when noisy). Gold rising with the proxy is improvement; the proxy rising while
  gold falls is reward hacking. None when no run logged both."""
  have = {r: s for r, s in runs.items() if s.get(proxy) and s.get(gold) and s.get("kl/seq_kl")}
  if not have:
    return None
  fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.7))
  for run, s in have.items():
    steps = sorted(set(s[proxy][0]) & set(s[gold][0]) & set(s["kl/seq_kl"][0]))
    pick = lambda k: [dict(zip(*s[k]))[t] for t in steps]
    kl = [math.sqrt(max(v, 0.0)) for v in pick("kl/seq_kl")]
    for ax, key in zip(axes, (proxy, gold)):
      ys = pick(key)
      smooth = ema(ys) if is_noisy(ys) else ys
      ax.plot(ema(kl) if is_noisy(kl) else kl, smooth, lw=1.5, label=run)
  for ax, key, what in zip(axes, (proxy, gold), ("proxy (optimised)", "gold judge")):
    ax.set_xlabel("√KL(policy ‖ reference)  (√nats)")
    ax.set_ylabel(unit_label(key))
    ax.set_title(f"{what}: {key}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("Proxy reward and gold score against distance from the SFT policy", fontsize=11)
  fig.tight_layout()
  return fig


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
