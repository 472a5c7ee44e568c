r"""Reward ablations under one PPO budget: seed 002's reward-hacking comparison.

  python -m r3jax.compare --config=configs/ppo_qwen.py:tiny-hacking --modes=r3,relevance --workdir=runs/hacking

Each mode (SPEC §5: r3, relevance, li_s, no_branch, li_only; a mode with "+random_types",
e.g. r3+random_types, also draws each response's query type at random, the paper's
random-query-type ablation) runs the same PPO config, seed and SFT warm start in
<workdir>/<mode>; the table (r3jax/eval/compare.py) goes to <workdir>/comparison.md and
.csv, with comparison.png and, on the embedded world, proxy_vs_gold.png.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from r3jax.core import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "A PPO config file[:preset].")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Directory of the comparison's runs.")
_MODES = flags.DEFINE_list("modes", ["r3", "relevance"], "Reward modes to compare.")
RANDOM_TYPES = "+random_types"


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None or config.trainer != "ppo":
    sys.exit("error: --config must be a PPO config, e.g. configs/ppo_qwen.py")
  from r3jax.eval import compare
  from r3jax.rewards import r3
  from r3jax.trainers import pipeline, validate
  bad = [m for m in _MODES.value if m.removesuffix(RANDOM_TYPES) not in r3.MODES]
  if bad:
    sys.exit(f"error: unknown reward modes {bad}; expected some of {r3.MODES}, each "
             f"optionally with {RANDOM_TYPES}")
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  logging.set_verbosity(logging.WARNING)  # As train: no orbax INFO lines per checkpoint.
  summaries = {}
  with cli.user_errors():
    validate.validate(config)
    init_from = pipeline.start(config, workdir)  # One SFT start for every mode.
    for mode in _MODES.value:
      c = pipeline.with_fields(config, init_from=init_from)
      with c.unlocked():
        c.reward.mode = mode.removesuffix(RANDOM_TYPES)
        if mode.endswith(RANDOM_TYPES):
          c.reward.query_types = "random"
        if not c.tokenizer and os.path.isdir(os.path.join(init_from, "tokenizer")):
          c.tokenizer = os.path.join(init_from, "tokenizer")  # The SFT start's own.
      print(f"== PPO with reward mode {mode!r} in {workdir}/{mode}", file=sys.stderr)
      pipeline.run(c, os.path.join(workdir, mode))
      summaries[mode] = compare.summarize(os.path.join(workdir, mode))
  compare.write_report(workdir, summaries)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
