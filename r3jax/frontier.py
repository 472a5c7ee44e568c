r"""Proxy reward against √KL for PPO and best-of-N runs (see r3jax/eval/frontier.py).

  python -m r3jax.frontier --run=runs/ppo_tiny --run=runs/bon_tiny --out=runs/frontier

Writes <out>/frontier.png and frontier.csv, and proxy_vs_gold.png for PPO runs on the
embedded world.
"""

import os

from absl import app, flags

from r3jax.core import cli
from r3jax.eval import frontier

_RUN = flags.DEFINE_multi_string("run", [], "PPO or best-of-N run directories.")
_OUT = flags.DEFINE_string("out", "frontier", "Output directory.")
_WINDOW = flags.DEFINE_integer("window", 10, "PPO moving-average window (iterations).")


def check_flags() -> None:
  """A ConfigError naming the first bad flag, before any run is read. Curves are labelled
  by the run directory's name: two runs of one name would share a label."""
  cli.check_unique("run", [os.path.basename(os.path.normpath(r)) for r in _RUN.value])
  cli.check_numbers({"window": "[1, inf)"})
  cli.check_output("out", is_dir=True)


def main(argv):
  del argv
  with cli.user_errors():
    check_flags()
  try:
    curves = frontier.collect(_RUN.value, _WINDOW.value)
  except (FileNotFoundError, KeyError, ValueError) as e:
    cli.fail(str(e))
  out = frontier.write(curves, _OUT.value)
  for label, x, y, _ in curves:
    print(f"{label}: √KL {x[0]:.3f} -> {x[-1]:.3f}, reward {y[0]:.4f} -> {y[-1]:.4f}")
  print(f"wrote {out}")
  gold = frontier.write_gold(_RUN.value, _OUT.value)
  print(f"wrote {gold}" if gold else "no run logged gold figures: no proxy_vs_gold.png")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
