"""Tokenizers: a checkpoint's own HF tokenizer, or a byte-level BPE trained locally.

Both are `transformers.PreTrainedTokenizerFast`, so the rest of the code sees one
interface (`encode`, `decode`, `eos_token_id`, `pad_token_id`, `save_pretrained`).
"""

import importlib.util
import os
import re
import sys

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
import transformers

from r3jax.core import paths
from r3jax.core.errors import ConfigError
from r3jax.data import chat


# What a checkpoint may name as its tokenizer_class: transformers' tokenizer classes
# (Qwen2Tokenizer, PreTrainedTokenizerFast, BertTokenizer, TokenizersBackend, ...). The name
# is checked before it is looked up, since from_pretrained on the directory builds whatever
# class it names (AutoModelForCausalLM would load a model); AutoTokenizer also strips or adds
# "Fast", so those variants must be tokenizer classes too.
_TOKENIZER_NAME = re.compile(r"[A-Za-z_]\w*(Tokenizer|Backend)(Fast)?")


def tokenizer_class(name, where: str):
  """The transformers tokenizer class `name` names; None for none, or for a name transformers
  does not have (AutoTokenizer then falls back to the tokenizer.json backend). Anything else
  (a model, a pipeline, AutoTokenizer itself) is a ConfigError naming `where` and the class."""
  if name is None or name == "":
    return None
  bad = ConfigError(f"{where}: tokenizer_class={name!r} is not a tokenizer class; expected one of "
                    "transformers' tokenizers (e.g. Qwen2Tokenizer, PreTrainedTokenizerFast)")
  if not isinstance(name, str) or not _TOKENIZER_NAME.fullmatch(name):
    raise bad
  variants = {name, name.removesuffix("Fast"), name if name.endswith("Fast") else name + "Fast"}
  found = [c for c in (getattr(transformers, n, None) for n in variants) if c is not None]
  if any(not (isinstance(c, type) and issubclass(c, transformers.PreTrainedTokenizerBase)) for c in found):
    raise bad
  return getattr(transformers, name, None)


def from_pretrained(path: str):
  """The tokenizer class that AutoTokenizer would pick (the one tokenizer_config.json
  names), loaded without AutoTokenizer: that also reads the model config through modules
  that import torch where it is installed, seconds of every process's start-up. Falls back
  to AutoTokenizer when the file names no class transformers has; a class name in either
  config that is not a tokenizer class is refused first."""
  config = os.path.join(path, "tokenizer_config.json")
  cls = (tokenizer_class(paths.read_json_object(config).get("tokenizer_class"), config)
         if os.path.exists(config) else None)
  model_config = os.path.join(path, "config.json")
  if cls is None and os.path.exists(model_config):  # AutoTokenizer may take the class from here.
    tokenizer_class(paths.read_json_object(model_config).get("tokenizer_class"), model_config)
  return (cls or transformers.AutoTokenizer).from_pretrained(path)


# Qwen (v1)'s tiktoken split pattern and special tokens (ids right after its 151,643 BPE
# ranks: <|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, then 205 extras).
QWEN1_VOCAB = "qwen.tiktoken"
QWEN1_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN1_CONTROL_TOKENS = chat.CONTROL_TOKENS + [f"<|extra_{i}|>" for i in range(205)]


def qwen1(path: str) -> transformers.PreTrainedTokenizerFast:
  """A Qwen (v1) checkpoint's tiktoken tokenizer (`qwen.tiktoken`, which transformers loads
  only through the checkpoint's own remote code) as a fast HF tokenizer."""
  vocab = os.path.join(path, QWEN1_VOCAB)
  if importlib.util.find_spec("tiktoken") is None:
    raise FileNotFoundError(f"{vocab}: a Qwen (v1) tokenizer needs `pip install tiktoken`; or pass "
                            "--config.tokenizer=<an HF tokenizer directory with tokenizer.json>")
  from transformers.convert_slow_tokenizer import TikTokenConverter  # pylint: disable=g-import-not-at-top
  tok = TikTokenConverter(vocab, pattern=QWEN1_PATTERN, extra_special_tokens=QWEN1_CONTROL_TOKENS).converted()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token=chat.IM_END, pad_token=chat.ENDOFTEXT,
      additional_special_tokens=[chat.IM_START], clean_up_tokenization_spaces=False)


def load(path: str) -> transformers.PreTrainedTokenizerFast:
  """The tokenizer of an HF directory; a damaged one is a ConfigError naming it."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: tokenizer directory not found")
  has_fast = os.path.exists(os.path.join(path, "tokenizer.json"))
  try:
    v1 = os.path.exists(os.path.join(path, QWEN1_VOCAB)) and not has_fast
    tok = qwen1(path) if v1 else from_pretrained(path)
  except (ConfigError, FileNotFoundError):
    raise
  except Exception as e:  # pylint: disable=broad-except
    # A truncated tokenizer.json, a missing vocabulary file, ...: the tokenizers library
    # raises plain Exceptions, and transformers several kinds; each is one line here.
    why = (str(e).strip().splitlines() or [""])[0]
    raise ConfigError(f"{path}: the tokenizer does not load ({type(e).__name__}: {why})") from None
  if tok.pad_token_id is None:
    tok.pad_token = chat.ENDOFTEXT if chat.ENDOFTEXT in tok.get_vocab() else tok.eos_token
  return tok


def train_bpe(texts, vocab_size: int = 2048) -> transformers.PreTrainedTokenizerFast:
  """Byte-level BPE with the ChatML special tokens (ids 0, 1, 2), trained on `texts`."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=chat.CONTROL_TOKENS, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token=chat.IM_END, pad_token=chat.ENDOFTEXT,
      additional_special_tokens=[chat.IM_START], clean_up_tokenization_spaces=False)


def check_fits(tok, tok_dir: str, vocab_size: int, model_dir: str) -> None:
  """A ConfigError when the tokenizer has ids past the model's embedding (another model's
  tokenizer): JAX clamps out-of-range gathers, so it would train on wrong rows, not fail."""
  if len(tok) > vocab_size:
    raise ConfigError(f"{tok_dir}: a tokenizer of {len(tok):,} tokens, more than the {vocab_size:,} "
                      f"embedding rows of {model_dir} (its config.json vocab_size): another "
                      "model's tokenizer")


def _cached(cache_dir: str, vocab_size: int):
  """The tiny tokenizer from its cache, or None to train it again. A damaged cache (r3jax
  renames it into place whole, so an outside hand tore it) is trained again with a note:
  training is deterministic, so that is the tokenizer the run had. A cache of another
  vocabulary is a ConfigError: the run's checkpoint may have been made with either one."""
  try:
    tok = load(cache_dir)
  except ConfigError as e:
    print(f"note: {e}; training the tiny tokenizer again", file=sys.stderr)
    return None
  control = list(range(len(chat.CONTROL_TOKENS)))
  if len(tok) != vocab_size or tok.convert_tokens_to_ids(chat.CONTROL_TOKENS) != control:
    raise ConfigError(
        f"{os.path.join(cache_dir, 'tokenizer.json')}: a cached tokenizer of another vocabulary "
        f"({len(tok):,} tokens, not the tiny tokenizer's {vocab_size:,} with "
        f"{', '.join(chat.CONTROL_TOKENS)} first); a run's checkpoint would not match it: delete "
        f"{cache_dir} to train the tiny one again, or pass --config.tokenizer=<dir> to use that tokenizer")
  return tok


def tiny(vocab_size: int = 2048, cache_dir: str | None = None):
  """The embedded default's tokenizer, trained on the synthetic corpus (deterministic).

  With `cache_dir`, it is saved there on first use and loaded afterwards.
  """
  if cache_dir and paths.is_uri(cache_dir):  # HF tokenizers read and write local files only.
    with paths.local_dir(cache_dir) as local:
      return tiny(vocab_size, local)
  if cache_dir and os.path.exists(os.path.join(cache_dir, "tokenizer.json")):
    tok = _cached(cache_dir, vocab_size)
    if tok is not None:
      return tok
  from r3jax.data import synthetic  # Local import: the generator is only needed here.
  # Questions about many more entities than the world's 60, so that the 2048-piece
  # vocabulary is filled with syllables rather than whole names of a few entities.
  texts = [chat.render(ex["messages"]) for ex in synthetic.generate(2000, seed=0, num_entities=333)]
  tok = train_bpe(texts, vocab_size)
  if cache_dir:
    # Written aside and renamed, so that processes sharing a workdir (multi-host runs all
    # train this same tokenizer) never read a half-written file.
    tmp = f"{cache_dir}.tmp{os.getpid()}"
    tok.save_pretrained(tmp)
    os.makedirs(cache_dir, exist_ok=True)
    for name in sorted(os.listdir(tmp), key=lambda n: n == "tokenizer.json"):  # The marker last.
      os.replace(os.path.join(tmp, name), os.path.join(cache_dir, name))
    os.rmdir(tmp)
  return tok
