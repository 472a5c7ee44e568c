r"""Re-draws a run's PNG curves from its metrics.jsonl.

  python -m r3jax.plot --workdir=DIR   # writes DIR/plots/<group>.png
"""

from absl import app, flags

from r3jax.core import cli, plots

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding metrics.jsonl.", required=True)


def main(argv):
  del argv
  for p in plots.plot_workdir(_WORKDIR.value):
    print(p)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
