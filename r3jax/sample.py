r"""Prints completions from a model.

  python -m r3jax.sample --model=tiny --prompt="Please tell me about Nivo."
  python -m r3jax.sample --model=/path/to/Qwen2.5-0.5B-Instruct --prompt=Hi --top_p=0.9 --n=2

--model is an HF Qwen2 checkpoint directory or a model preset name (random weights and
the locally trained tiny tokenizer; useful to check that everything runs).
"""

import os

from absl import app, flags

from r3jax.core import cli
from r3jax.core.errors import ConfigError
import jax

from r3jax.data import chat, tokenizer as tokenizer_lib
from r3jax.models import engines, hf, qwen, sampling

_MODEL = flags.DEFINE_string("model", "tiny", "HF checkpoint dir or model preset name.")
_PROMPT = flags.DEFINE_multi_string("prompt", ["Please tell me about Nivo."], "User message(s).")
_SYSTEM = flags.DEFINE_string("system", None, "Optional system message.")
_RAW = flags.DEFINE_bool("raw", False, "Feed prompts as raw text instead of ChatML.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass (1.0: off).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k (0: off).")
_GREEDY = flags.DEFINE_bool("greedy", False, "Greedy decoding.")
_N = flags.DEFINE_integer("n", 1, "Samples per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_ENGINE = flags.DEFINE_string("engine", "continuous", "Generation engine (models/engines.py): static or continuous.")
_SLOTS = flags.DEFINE_integer("slots", 0, "Sequences decoding at once (0: all).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Param/compute dtype.")
# Outside these a run would crash mid-generation (--max_new_tokens=-5), print nothing
# (--n=0) or empty text (--temperature=0), or sample from another distribution than asked;
# a seed past 2**63 ends in an OverflowError from jax.random.key.
RANGES = {"max_new_tokens": "[1, inf)", "n": "[1, inf)", "temperature": "(0, inf)",
          "top_p": "(0, 1]", "top_k": "[0, inf)", "seed": "[-1e18, 1e18]"}


def check_flags() -> None:
  """A ConfigError naming the first sampling flag out of range, before the model loads."""
  ranges = {**RANGES, "temperature": "[0, inf)"} if _GREEDY.value else RANGES  # Unused then.
  hint = "; for greedy decoding pass --greedy" if _TEMPERATURE.value == 0 else ""
  cli.check_numbers(ranges, {"temperature": hint})
  engines.check(_ENGINE.value, _SLOTS.value, _N.value, ("--engine", "--slots"))
  if not all(p.strip() for p in _PROMPT.value):
    raise ConfigError("--prompt: an empty message; give the text to continue")


def load_model(name: str, dtype: str = "float32"):
  """(cfg, params, tokenizer) from an HF dir or a run directory (its hf/ export), or a
  preset with random weights."""
  if os.path.isdir(name):
    path = hf.model_dir(name)
    cfg, params = hf.load(path, param_dtype=dtype, dtype=dtype)
    return cfg, params, tokenizer_lib.load(path)
  if name not in qwen.PRESETS:
    raise ValueError(f"--model={name}: neither a directory nor a preset ({sorted(qwen.PRESETS)})")
  tok = tokenizer_lib.tiny()
  cfg = qwen.preset(name, vocab_size=max(len(tok), qwen.PRESETS[name]["vocab_size"]),
                    param_dtype=dtype, dtype=dtype)
  return cfg, qwen.init_params(cfg, jax.random.key(0)), tok


def main(argv):
  del argv
  with cli.user_errors():
    check_flags()
  try:
    cfg, params, tok = load_model(_MODEL.value, _DTYPE.value)
  except (ValueError, FileNotFoundError, KeyError) as e:
    cli.fail(str(e))
  if _RAW.value:
    prompts = [tok.encode(p, add_special_tokens=False) for p in _PROMPT.value]
  else:
    prompts = [chat.tokenize(tok, chat.prompt_messages(p, _SYSTEM.value), True)[0]
               for p in _PROMPT.value]
  sample_cfg = sampling.sample_config(
      tok, max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
      top_p=_TOP_P.value, greedy=_GREEDY.value, n=_N.value, engine=_ENGINE.value, slots=_SLOTS.value)
  texts, _ = engines.generate_text(params, cfg, tok, prompts, jax.random.key(_SEED.value), sample_cfg)
  for i, text in enumerate(texts):
    prompt = _PROMPT.value[i // _N.value]
    print(f"### prompt {i // _N.value} sample {i % _N.value}: {prompt}\n{text}\n")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
