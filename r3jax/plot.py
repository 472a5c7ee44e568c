r"""Re-draws a run's PNG curves from its metrics.jsonl, for any trainer (SFT, PPO, RM, DPO):
each registered group with data in the file becomes one PNG.

  python -m r3jax.plot --workdir=DIR   # writes DIR/plots/<group>.png
  python -m r3jax.plot --workdir=DIR --hline=kl/seq_kl=6   # a dashed reference line
"""

from absl import app, flags

from r3jax.core import cli
from r3jax.core import plots

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding metrics.jsonl.", required=True)
_HLINE = flags.DEFINE_multi_string(
    "hline", [], "METRIC=VALUE: a dashed reference line on that metric's panel (repeatable); "
    "the KL target is read from the run's saved config without it.")


def parse_hlines(specs) -> dict[str, float]:
  out = {}
  for spec in specs:
    metric, sep, value = spec.rpartition("=")
    try:
      out[metric] = float(value)
    except ValueError:
      sep = ""
    if not sep or not metric:
      raise app.UsageError(f"--hline={spec}: expected METRIC=VALUE, e.g. kl/seq_kl=6")
  return out


def main(argv):
  del argv
  written = plots.plot_workdir(_WORKDIR.value, hlines=parse_hlines(_HLINE.value))
  if not written:
    # An empty or foreign metrics.jsonl would otherwise look like success.
    raise app.UsageError(f"{_WORKDIR.value}/metrics.jsonl has no metric of a known plot group")
  for p in written:
    print(p)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
