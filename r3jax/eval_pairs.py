r"""Pairwise accuracy of rewards on comparison files, with 95% Wilson intervals.

  python -m r3jax.eval_pairs --reward=runs/rm_tiny,r3,relevance,length,random \
      --data=../shared/data/hh_harmless_base_sample.jsonl[,more.jsonl] [--out=DIR]

--reward: names from rewards/scorers.make (r3, relevance, li_s, no_branch, li_only, length,
random) or reward-model run directories. --data: comparison files in any supported format
({prompt, chosen, rejected}, {prompt, responses}, HH, ShareGPT-style), "synthetic" for the
embedded comparisons, "synrel" for the SynRel-style relevance set on the embedded knowledge
base, or "synrel:ENTITIES.jsonl" for one on a file of {entity, facts} rows (data/synrel.py).
Prints the Table 1 layout of the R³ paper (Kim & Seo 2024; rows: rewards, columns: sets); with
--out also writes CSV, markdown and a PNG chart (r3jax/eval/pairs.py).
"""

import os
import sys

from absl import app, flags

from r3jax.core import cli
from r3jax.data import readers
from r3jax.eval import generation, pairs
from r3jax.rewards import scorers

_REWARD = flags.DEFINE_list("reward", ["r3"], "Rewards to evaluate.")
_DATA = flags.DEFINE_list("data", ["synthetic"], "Comparison files, 'synthetic', 'synrel' or 'synrel:ENTITIES.jsonl'.")
_OUT = flags.DEFINE_string("out", "", "Directory for pairs_accuracy.csv / .md / .png.")
_MAX_LEN = flags.DEFINE_integer("max_len", 512, "R³'s rollout length (the CE map's scale).")
_SKIP_BAD = flags.DEFINE_bool("skip_bad", False, "Skip (and count) malformed comparisons.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Use the first N comparisons of each set (0: all).")


def reward_name(spec: str) -> str:
  return os.path.basename(spec.rstrip("/")) if os.path.isdir(spec) else spec


def check_flags() -> None:
  """A ConfigError naming the first bad flag, before any set is read or reward loaded:
  rewards and sets are keyed by name, so one named twice would be evaluated once."""
  cli.check_unique("reward", [reward_name(s) for s in _REWARD.value])
  cli.check_unique("data", [pairs.set_name(d) for d in _DATA.value])
  cli.check_numbers({"max_len": "[1, inf)", "limit": "[0, inf)"})
  if _OUT.value:
    cli.check_output("out", is_dir=True)


def main(argv):
  del argv
  with cli.user_errors():
    check_flags()
  try:
    sets = {pairs.set_name(d): pairs.load_set(d, _LIMIT.value, _SKIP_BAD.value) for d in _DATA.value}
    rewards = {reward_name(s): generation.judges(s, [], _MAX_LEN.value)[s] if s.startswith("llm")
               else scorers.make(s, max_len=_MAX_LEN.value) for s in _REWARD.value}
    acc = pairs.table(rewards, sets)
  except (readers.DataError, FileNotFoundError) as e:
    cli.fail(str(e))
  print("Pairwise accuracy, 95% Wilson interval; ties count 1/2.\n\n" + "\n".join(pairs.markdown(acc, sets)))
  if _OUT.value:
    print(f"wrote {pairs.write(acc, _OUT.value)}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
