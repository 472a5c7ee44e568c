r"""Scores {prompt, response, reference?, query_type?} JSONL rows and writes each component.

  python -m r3jax.score --reward=r3 --input=rows.jsonl --output=scored.jsonl
  python -m r3jax.score --reward=r3 --encoder=/ckpt/contriever --normalize=False --input=...

--reward is r3 or one of its ablations (relevance, li_s, no_branch, li_only).
"""

import json
import sys

from absl import app, flags

from r3jax.core import cli
from r3jax.data import readers
from r3jax.models import bert
from r3jax.rewards import r3

_REWARD = flags.DEFINE_enum("reward", "r3", list(r3.MODES), "Reward (R3 or an ablation).")
_INPUT = flags.DEFINE_string("input", None, "Input JSONL.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output JSONL.", required=True)
_ENCODER = flags.DEFINE_string("encoder", "minilm", "HF BERT dir, or 'minilm' (packaged).")
_NORMALIZE = flags.DEFINE_bool("normalize", None, "Cosine relevance (default: True for MiniLM, False otherwise).")
_MAX_LEN = flags.DEFINE_integer("max_len", 512, "Rollout length in tokens (scale of f for CE).")


def read_rows(path: str) -> list[dict]:
  rows = []
  for where, obj in readers.iter_records(path):
    if isinstance(obj, readers.DataError):
      raise obj
    if not isinstance(obj, dict):
      raise readers.DataError(f"{where}: expected a JSON object")
    for key in ("prompt", "response"):
      if not isinstance(obj.get(key), str):
        raise readers.DataError(f"{where}: missing or non-string field '{key}'")
    try:
      r3.query_type(obj.get("query_type"))
    except ValueError as e:
      raise readers.DataError(f"{where}: {e}") from None
    rows.append(obj)
  if not rows:
    raise readers.DataError(f"{path}: no rows")
  return rows


def main(argv):
  del argv
  try:
    rows = read_rows(_INPUT.value)
    path = bert.minilm_dir() if _ENCODER.value == "minilm" else _ENCODER.value
    normalize = _NORMALIZE.value if _NORMALIZE.value is not None else _ENCODER.value == "minilm"
    reward = r3.R3(bert.Encoder.from_dir(path, normalize=normalize), _MAX_LEN.value, _REWARD.value)
  except (readers.DataError, FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  unlabelled = sum(r.get("query_type") is None for r in rows)
  if unlabelled:
    print(f"{unlabelled} of {len(rows)} rows have no query_type: scored as open-ended (where the reward branches on it)", file=sys.stderr)
  out = reward([r["prompt"] for r in rows], [r["response"] for r in rows],
               [r.get("reference") for r in rows], [r.get("query_type") for r in rows])
  with open(_OUTPUT.value, "w") as f:
    for i, row in enumerate(rows):
      f.write(json.dumps({**row, **{k: float(v[i]) for k, v in out.items()}}) + "\n")
  print(f"scored {len(rows)} rows -> {_OUTPUT.value}; mean {_REWARD.value} {out['reward'].mean():.4f}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
