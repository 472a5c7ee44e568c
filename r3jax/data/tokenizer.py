"""Tokenizers: a checkpoint's own HF tokenizer, or a byte-level BPE trained locally.

Both are `transformers.PreTrainedTokenizerFast`, so the rest of the code sees one
interface (`encode`, `decode`, `eos_token_id`, `pad_token_id`, `save_pretrained`).
"""

import importlib.util
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
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: tokenizer directory not found")
  has_fast = os.path.exists(os.path.join(path, "tokenizer.json"))
  tok = qwen1(path) if os.path.exists(os.path.join(path, QWEN1_VOCAB)) and not has_fast else from_pretrained(path)
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
