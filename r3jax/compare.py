r"""Reward ablations and RL algorithms under one budget: the R³ paper's reward-hacking
comparison, and PPO against the critic-free group baselines with R³.

  python -m r3jax.compare --config=configs/ppo_qwen.py:tiny-hacking --modes=r3,relevance --workdir=runs/hacking
  python -m r3jax.compare --config=configs/ppo_qwen.py --algorithms=ppo,grpo,rloo,reinforce_pp --workdir=runs/algorithms

Each reward mode (the R³ paper's §3 and its Table 4 ablations: r3, relevance, li_s,
no_branch, li_only; a mode with "+random_types", e.g. r3+random_types, also draws each
response's query type at random, the paper's random-query-type ablation) and each RL method (rl/algorithms.METHODS,
switched by algorithms.use_method: same prompts per iteration × samples, seed and SFT
start) runs the same PPO config in <workdir>/<run>, <run> = the mode, the method, or
both joined by "-" when several of each are given. The table (r3jax/eval/compare.py) goes
to <workdir>/comparison.md and .csv, with comparison.png and, on the embedded world,
proxy_vs_gold.png; it adds wall time per iteration and planned memory per device.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from r3jax.core import cli
from r3jax.core.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "A PPO config file[:preset].")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Directory of the comparison's runs.")
_MODES = flags.DEFINE_list("modes", ["r3", "relevance"], "Reward modes to compare.")
_ALGORITHMS = flags.DEFINE_list("algorithms", ["ppo"], "RL methods (rl/algorithms.METHODS) to compare.")
RANDOM_TYPES = "+random_types"


def runs(config, modes, algorithms) -> dict:
  """{run name: its config}, one per (mode, method)."""
  from r3jax.rl import algorithms as algos  # pylint: disable=g-import-not-at-top
  from r3jax.trainers import stages  # pylint: disable=g-import-not-at-top
  out = {}
  for algo in algorithms:
    for mode in modes:
      c = algos.use_method(stages.with_fields(config), algo)
      with c.unlocked():
        c.reward.mode = mode.removesuffix(RANDOM_TYPES)
        if mode.endswith(RANDOM_TYPES):
          c.reward.query_types = "random"
      several_algos, several_modes = len(algorithms) > 1, len(modes) > 1
      parts = [algo] * several_algos + [mode] * (several_modes or not several_algos)
      out["-".join(parts)] = c
  return out


def check_flags(config) -> None:
  """A ConfigError naming the first bad flag, before the SFT start or any run: a mode
  given twice would otherwise run once, an unusable --workdir fail at its first write."""
  from r3jax.rewards import r3  # pylint: disable=g-import-not-at-top
  from r3jax.rl import algorithms  # pylint: disable=g-import-not-at-top
  if config is None or config.trainer != "ppo":
    raise ConfigError("--config must be a PPO config, e.g. configs/ppo_qwen.py")
  bad = [m for m in _MODES.value if m.removesuffix(RANDOM_TYPES) not in r3.MODES]
  if bad:
    raise ConfigError(f"--modes: unknown reward modes {bad}; expected modes from {r3.MODES}, "
                      f"each optionally with {RANDOM_TYPES}")
  bad = [a for a in _ALGORITHMS.value if a not in algorithms.METHODS]
  if bad:
    raise ConfigError(f"--algorithms: unknown methods {bad}; expected methods from "
                      f"{algorithms.METHODS.names()}")
  cli.check_unique("modes")
  cli.check_unique("algorithms")
  cli.check_output("workdir", is_dir=True)


def main(argv):
  del argv
  config = _CONFIG.value
  with cli.user_errors():
    check_flags(config)
  from r3jax.eval import compare
  from r3jax.trainers import stages, validate
  modes = _MODES.value if _MODES.present or len(_ALGORITHMS.value) == 1 else [config.reward.mode]
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  summaries = {}
  with cli.user_errors():
    planned = runs(config, modes, _ALGORITHMS.value)
    for c in planned.values():
      validate.validate(c)
    init_from = stages.start(config, workdir)  # One SFT start for every run.
    for name, c in planned.items():
      c = stages.with_fields(c, init_from=init_from)
      if not c.tokenizer and os.path.isdir(os.path.join(init_from, "tokenizer")):
        with c.unlocked():
          c.tokenizer = os.path.join(init_from, "tokenizer")  # The SFT start's own.
      print(f"== {c.ppo.advantage} / {c.ppo.policy_loss}, reward {c.reward.mode!r}, in {workdir}/{name}",
            file=sys.stderr)
      stages.run(c, os.path.join(workdir, name))
      summaries[name] = compare.summarize(os.path.join(workdir, name), c)
  compare.write_report(workdir, summaries)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
