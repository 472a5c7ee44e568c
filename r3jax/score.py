r"""Scores {prompt, response, reference?, query_type?, answer?} JSONL rows and writes each
component.

  python -m r3jax.score --reward=r3 --input=rows.jsonl --output=scored.jsonl
  python -m r3jax.score --reward=r3 --encoder=/ckpt/contriever --normalize=False --input=...
  python -m r3jax.score --reward=math --input=rows.jsonl --output=out.jsonl

--reward is any reward of rewards/scorers.REWARDS (r3 and its ablations relevance, li_s,
no_branch, li_only; math and format; length; ...), a reward-model run directory, or a
weighted mix of them ("0.8*math+0.2*format": each term's components, then their weighted
sum, unnormalised). With math, each row also gets `extracted`, the answer read from the
response (rewards/verifiable.py), and a row without its key (`answer`; a GSM8K solution's
#### line) is a file:line error.
"""

import json
import sys

from absl import app, flags

import ml_collections

from r3jax.core import cli
from r3jax.data import readers
from r3jax.rewards import r3, scorers, verifiable

_REWARD = flags.DEFINE_string("reward", "r3", "A reward of rewards/scorers.REWARDS, a reward-model "
                              "run directory, or a weighted mix (0.8*math+0.2*format).")
_INPUT = flags.DEFINE_string("input", None, "Input JSONL.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output JSONL.", required=True)
_ENCODER = flags.DEFINE_string("encoder", "minilm", "HF BERT dir, or 'minilm' (packaged).")
_NORMALIZE = flags.DEFINE_bool("normalize", None, "Cosine relevance (default: True for MiniLM, False otherwise).")
_MAX_LEN = flags.DEFINE_integer("max_len", 512, "Rollout length in tokens (scale of f for CE).")
_FORMAT = flags.DEFINE_enum("answer_format", "any", list(verifiable.FORMS), "The form the format reward asks for.")


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
    # Optional fields; a reference the encoder cannot read (a number) would otherwise fail
    # the scoring with a traceback. An answer key may be a number ("answer": 42).
    for key, kinds in (("reference", (str,)), ("answer", (str, int, float))):
      value = obj.get(key)
      if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
        raise readers.DataError(f"{where}: field '{key}' should be "
                                f"{' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
    try:
      r3.query_type(obj.get("query_type"))
    except ValueError as e:
      raise readers.DataError(f"{where}: {e}") from None
    rows.append({**obj, "where": where})
  if not rows:
    raise readers.DataError(f"{path}: no rows")
  return rows


def check_flags() -> None:
  """A ConfigError naming the first bad flag, before any row is read or scored."""
  cli.check_numbers({"max_len": "[1, inf)"})
  cli.check_output("output")


def main(argv):
  del argv
  with cli.user_errors():
    check_flags()
  section = ml_collections.ConfigDict(dict(
      encoder="" if _ENCODER.value == "minilm" else _ENCODER.value, normalize=_NORMALIZE.value,
      answer_format=_FORMAT.value))
  try:
    rows = read_rows(_INPUT.value)
    scorers.check_rows(_REWARD.value, rows)
    reward = scorers.Mix(_REWARD.value, section, max_len=_MAX_LEN.value)
  except (readers.DataError, FileNotFoundError, ValueError) as e:
    cli.fail(str(e))
  unlabelled = sum(r.get("query_type") is None for r in rows)
  if unlabelled and any(n in r3.MODES for _, n in scorers.terms(_REWARD.value)):
    print(f"{unlabelled} of {len(rows)} rows have no query_type: scored as open-ended (where the reward branches on it)", file=sys.stderr)
  out = reward(rows, [r["response"] for r in rows])
  extracted = ([verifiable.extract(r["response"]) for r in rows]
               if any(n == "math" for _, n in scorers.terms(_REWARD.value)) else None)
  with open(_OUTPUT.value, "w") as f:
    for i, row in enumerate(rows):
      scored = {**{k: v for k, v in row.items() if k != "where"}, **{k: float(v[i]) for k, v in out.items()}}
      if extracted is not None:
        scored["extracted"] = extracted[i]
      f.write(json.dumps(scored) + "\n")
  print(f"scored {len(rows)} rows -> {_OUTPUT.value}; mean {_REWARD.value} {out['reward'].mean():.4f}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
