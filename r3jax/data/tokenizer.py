"""Tokenizers: a checkpoint's own HF tokenizer, or a byte-level BPE trained locally.

Both are `transformers.PreTrainedTokenizerFast`, so the rest of the code sees one
interface (`encode`, `decode`, `eos_token_id`, `pad_token_id`, `save_pretrained`).
"""

import json
import os

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
import transformers

from r3jax.core import paths
from r3jax.data import chat


def from_pretrained(path: str):
  """The tokenizer class that AutoTokenizer would pick (the one tokenizer_config.json
  names), loaded without AutoTokenizer: that also reads the model config through modules
  that import torch where it is installed, seconds of every process's start-up. Falls back
  to AutoTokenizer when the file names no class transformers has."""
  config = os.path.join(path, "tokenizer_config.json")
  name = ""
  if os.path.exists(config):
    with open(config) as f:
      name = json.load(f).get("tokenizer_class") or ""
  cls = getattr(transformers, name, None) if name.isidentifier() else None
  return (cls or transformers.AutoTokenizer).from_pretrained(path)


def load(path: str) -> transformers.PreTrainedTokenizerFast:
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: tokenizer directory not found")
  tok = from_pretrained(path)
  if tok.pad_token_id is None:
    tok.pad_token = chat.ENDOFTEXT if chat.ENDOFTEXT in tok.get_vocab() else tok.eos_token
  return tok


def train_bpe(texts, vocab_size: int = 2048) -> transformers.PreTrainedTokenizerFast:
  """Byte-level BPE with the ChatML special tokens (ids 0, 1, 2), trained on `texts`."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=chat.SPECIAL_TOKENS, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token=chat.IM_END, pad_token=chat.ENDOFTEXT,
      additional_special_tokens=[chat.IM_START], clean_up_tokenization_spaces=False)


def tiny(vocab_size: int = 2048, cache_dir: str | None = None):
  """The embedded default's tokenizer, trained on the synthetic corpus (deterministic).

  With `cache_dir`, it is saved there on first use and loaded afterwards.
  """
  if cache_dir and paths.is_uri(cache_dir):  # HF tokenizers read and write local files only.
    with paths.local_dir(cache_dir) as local:
      return tiny(vocab_size, local)
  if cache_dir and os.path.exists(os.path.join(cache_dir, "tokenizer.json")):
    return load(cache_dir)
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
