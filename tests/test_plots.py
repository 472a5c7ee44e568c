"""plot_workdir on synthetic SFT, PPO and DPO runs: which PNGs, their layout, labels and
reference lines."""

import json
import math
import random

from matplotlib import image as mpimg
import pytest

from r3jax.core import plots

STEPS = 60


def write_run(path, rows, config=None):
  path.mkdir(parents=True, exist_ok=True)
  with open(path / "metrics.jsonl", "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  if config is not None:
    (path / "run_config.json").write_text(json.dumps(config))
  return path


def noisy(rng, start, end, i, n=STEPS, noise=0.05):
  return start + (end - start) * i / n + rng.gauss(0, noise)


def sft_rows():
  rng, rows = random.Random(0), []
  for s in range(1, STEPS + 1):
    # Train and eval land in separate rows of the same step, as the trainer logs them.
    rows.append({"step": s, "time": s * 1.0, "train/loss": noisy(rng, 6.0, 2.5, s), "train/lr": 3e-4,
                 "train/grad_norm": noisy(rng, 2.0, 0.5, s),
                 "perf/tokens_per_s": noisy(rng, 9e3, 9e3, s, noise=300),
                 "perf/steps_per_s": noisy(rng, 2.0, 2.0, s)})
    if s % 10 == 0:
      rows.append({"step": s, "time": s * 1.0, "eval/loss": 6.0 - 3.5 * s / STEPS, "eval/unigram_loss": 10.0,
                   "eval/perplexity": math.exp(6.0 - 3.5 * s / STEPS)})
  return rows


def ppo_rows():
  rng, rows = random.Random(1), []
  for s in range(1, STEPS + 1):
    row = {"step": s, "time": s * 10.0, "kl/seq_kl": abs(noisy(rng, 0.0, 8.0, s, noise=1.0)), "kl/beta": 0.05,
           "rollout/length": noisy(rng, 80, 140, s, noise=10), "policy/entropy": noisy(rng, 2.0, 1.5, s),
           "policy/loss": rng.gauss(0, 0.01), "value/loss": noisy(rng, 1.0, 0.1, s),
           "policy/clipfrac": abs(rng.gauss(0.1, 0.02)), "value/explained_variance": noisy(rng, 0.0, 0.6, s)}
    row.update({f"reward/{k}": noisy(rng, 0.2, 0.6, s) for k in ("reward", "relevance", "length_incentive",
                                                                  "repetition_penalty", "copies_query")})
    row.update({f"time/{k}": abs(rng.gauss(1.0, 0.1)) for k in ("rollout", "reward", "reference_value",
                                                                 "advantages", "update")})
    rows.append(row)
  return rows


def dpo_rows():
  rng, rows = random.Random(2), []
  for s in range(1, STEPS + 1):
    rows.append({"step": s, "time": float(s), "train/loss": noisy(rng, 0.69, 0.45, s), "train/lr": 1e-6,
                 "train/grad_norm": noisy(rng, 5.0, 3.0, s),
                 "train/rewards/accuracy": noisy(rng, 0.5, 0.75, s),
                 "train/rewards/margin": noisy(rng, 0.0, 1.0, s),
                 "train/rewards/chosen": noisy(rng, 0.0, 0.3, s),
                 "train/rewards/rejected": noisy(rng, 0.0, -0.7, s)})
    if s % 15 == 0:
      rows.append({"step": s, "time": float(s), "eval/loss": 0.69 - 0.2 * s / STEPS,
                   "eval/rewards/accuracy": 0.5 + 0.2 * s / STEPS})
  return rows


def png_names(paths):
  return sorted(p.rsplit("/", 1)[-1] for p in paths)


def test_registry_holds_every_trainer_group():
  assert {n for gs in plots.GROUPS.values() for n in gs} == {
      "train", "throughput", "reward", "gold", "diversity", "kl_length", "losses", "time", "rm", "dpo"}
  assert len(plots.GROUPS["dpo"]["dpo"]) == 7


@pytest.mark.parametrize("rows,expected", [
    (sft_rows, ["throughput.png", "train.png"]),
    (ppo_rows, ["kl_length.png", "losses.png", "reward.png", "time.png"]),
    # DPO also logs train/lr and grad_norm, so its train.png shows the schedule; no rm.png.
    (dpo_rows, ["dpo.png", "train.png"]),
])
def test_plot_workdir_draws_the_run_groups(tmp_path, rows, expected):
  run = write_run(tmp_path / "run", rows())
  assert png_names(plots.plot_workdir(str(run))) == expected
  assert sorted(p.name for p in (run / "plots").iterdir()) == expected


def test_gold_runs_get_the_proxy_vs_gold_plot(tmp_path):
  rows = ppo_rows()
  rng = random.Random(3)
  for r in rows:
    r.update({"gold/score": noisy(rng, 0.5, 0.3, r["step"]), "gold/precision": 0.9,
              "gold/recall": 0.6, "gold/repeats": 0.1, "diversity/distinct2": 0.4})
  run = write_run(tmp_path / "run", rows)
  assert png_names(plots.plot_workdir(str(run))) == [
      "diversity.png", "gold.png", "kl_length.png", "losses.png", "proxy_vs_gold.png", "reward.png", "time.png"]
  fig = plots.proxy_vs_gold_figure({"run": plots.read_series(run / "metrics.jsonl")})
  proxy_ax, gold_ax = fig.axes
  assert "√KL" in gold_ax.get_xlabel() and gold_ax.get_ylabel() == "precision × recall"
  assert len(proxy_ax.lines) == len(gold_ax.lines) == 1
  xs = gold_ax.lines[0].get_xdata()
  assert min(xs) >= 0 and max(xs) <= 8.0 ** 0.5 * 1.5  # √ of a KL that ends near 8.
  assert plots.proxy_vs_gold_figure({"run": plots.read_series(write_run(tmp_path / "b", ppo_rows()) / "metrics.jsonl")}) is None


def test_explicit_groups_only(tmp_path):
  run = write_run(tmp_path / "run", ppo_rows())
  assert png_names(plots.plot_workdir(str(run), {"time": plots.GROUPS["ppo"]["time"]})) == ["time.png"]


def test_dpo_figure_is_a_grid(tmp_path):
  run = write_run(tmp_path / "run", dpo_rows())
  out = [p for p in plots.plot_workdir(str(run)) if p.endswith("dpo.png")][0]
  height, width = mpimg.imread(out).shape[:2]
  assert height > width / 3
  fig = plots.group_figure("dpo", plots.GROUPS["dpo"]["dpo"], plots.read_series(run / "metrics.jsonl"))
  assert max(ax.get_subplotspec().colspan.stop for ax in fig.axes if ax.get_visible()) <= 3
  plots.plt.close(fig)


def hline_ys(ax):
  """The y of each horizontal line (axhline) on an axis."""
  return [line.get_ydata()[0] for line in ax.get_lines()
          if len(set(line.get_ydata())) == 1 and len(line.get_ydata()) == 2]


def test_panels_have_labels_smoothing_and_chance_lines(tmp_path):
  series = plots.read_series(write_run(tmp_path / "run", dpo_rows()) / "metrics.jsonl")
  fig = plots.group_figure("dpo", plots.GROUPS["dpo"]["dpo"], series)
  axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
  assert set(axes) == set(plots.GROUPS["dpo"]["dpo"])
  for name, ax in axes.items():
    assert ax.get_ylabel() != "" and ax.get_xlabel() == "step"
    assert (0.5 in hline_ys(ax)) == name.endswith("accuracy")
  assert axes["train/loss"].get_ylabel() == "nats"
  assert axes["train/rewards/accuracy"].get_ylabel() == "fraction"
  assert len(axes["train/loss"].get_lines()) == 2  # Raw and EMA: 60 points.
  assert len(axes["eval/loss"].get_lines()) == 1  # Raw only: 4 points.
  plots.plt.close(fig)


def test_ppo_axes_kl_target_from_config(tmp_path):
  config = {"kl": {"adaptive": True, "target": 6.0, "beta": 0.05}}
  run = write_run(tmp_path / "run", ppo_rows(), config=config)
  assert plots.kl_target(run) == 6.0
  series = plots.read_series(run / "metrics.jsonl")
  fig = plots.group_figure("kl_length", plots.GROUPS["ppo"]["kl_length"], series, xlabel="PPO iteration",
                           hlines={"kl/seq_kl": plots.kl_target(run)})
  kl = [ax for ax in fig.axes if ax.get_title() == "kl/seq_kl"][0]
  assert 6.0 in hline_ys(kl) and kl.get_xlabel() == "PPO iteration"
  assert [ax.get_ylabel() for ax in fig.axes if ax.get_title() == "rollout/length"] == ["tokens"]
  plots.plt.close(fig)
  assert plots.kl_target(tmp_path / "missing") is None  # No config: no line, no error.
  write_run(tmp_path / "fixed", [], config={"kl": {"adaptive": False, "target": 6.0}})
  assert plots.kl_target(tmp_path / "fixed") is None  # A fixed beta has no target.


def test_far_unigram_baseline_keeps_the_curve_readable(tmp_path):
  series = plots.read_series(write_run(tmp_path / "run", sft_rows()) / "metrics.jsonl")
  fig = plots.group_figure("train", ["eval/loss"], series)
  ax = fig.axes[0]
  lo, hi = ax.get_ylim()
  # Data spans 2.5..5.4 and the baseline 10 would stretch the span past 2x: legend only.
  assert hi < 6.0 and 10.0 not in hline_ys(ax)
  assert any("unigram" in t.get_text() for t in ax.get_legend().get_texts())
  plots.plt.close(fig)
  fig = plots.group_figure("train", ["eval/loss"], series, hlines={"eval/loss": 5.8})
  assert 5.8 in hline_ys(fig.axes[0])  # Near the data: drawn.
  plots.plt.close(fig)


def test_torn_last_line_and_missing_file(tmp_path):
  run = write_run(tmp_path / "run", sft_rows())
  with open(run / "metrics.jsonl", "a") as f:
    f.write('{"step": 61, "train/lo')
  assert png_names(plots.plot_workdir(str(run))) == ["throughput.png", "train.png"]
  with pytest.raises(FileNotFoundError):
    plots.plot_workdir(str(tmp_path / "empty"))


def test_smoothing_follows_a_trend_skips_nan_and_schedules():
  assert plots.ema([1.0, 1.0, 1.0]) == [1.0, 1.0, 1.0]
  assert plots.ema([math.nan, 2.0, math.nan, 2.0], alpha=0.5) == [2.0] * 4
  line = [float(i) for i in range(100)]
  # A causal EMA would lag it by (1 - alpha) / alpha = 4 points everywhere.
  assert all(abs(a - b) < 0.1 for a, b in list(zip(plots.ema(line), line))[25:75])
  rng = random.Random(3)
  assert plots.is_noisy([rng.gauss(0, 1) for _ in range(50)])
  cosine = [3e-4 * 0.5 * (1 + math.cos(math.pi * i / 50)) for i in range(50)]
  assert not plots.is_noisy(cosine) and not plots.is_noisy([3e-4] * 50)
  assert not plots.is_noisy([rng.gauss(0, 1) for _ in range(plots.SMOOTH_ABOVE)])  # Too short.


def test_a_spike_does_not_set_the_y_range():
  rng = random.Random(4)
  values = [1.0 + rng.gauss(0, 0.1) for _ in range(1000)]
  values[500] = 20.0
  fig, ax = plots.plt.subplots()
  plots.draw_panel(ax, "train/grad_norm", list(range(1000)), values)
  assert ax.get_ylim()[1] < 3.0 and ax.get_ylabel() == "gradient L2 norm"
  assert any("max 20" in t.get_text() for t in ax.texts)  # The clipped spike is named.
  plots.plt.close(fig)


def test_shared_metrics_only_are_drawn_once(tmp_path):
  run = write_run(tmp_path / "run", [{"step": s, "time": 0.0, "train/loss": 1.0 / s} for s in range(1, 5)])
  assert png_names(plots.plot_workdir(str(run))) == ["train.png"]
