"""Broken HF checkpoints, tokenizers and tokenizer caches (issue #32): each ends in one
ConfigError line naming the file or field, before any tensor is reshaped or allocated."""

import json
import os
import resource
import shutil
import time

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict
from safetensors.numpy import load_file, save_file

from r3jax.core import cli
from r3jax.core.errors import ConfigError
from r3jax.data import tokenizer as tokenizer_lib
from r3jax.models import hf, qwen
from r3jax.trainers import state


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
  """The tiny preset exported as an HF dir with its tokenizer (vocab 2048, hidden 64, 4
  heads, 2 KV heads, untied), written through hf.export: its tensor shapes come from the
  export's own layout, not from the check under test."""
  path = str(tmp_path_factory.mktemp("hf") / "tiny")
  tok = tokenizer_lib.tiny()
  cfg = qwen.preset("tiny", vocab_size=len(tok))
  hf.export(qwen.init_params(cfg, jax.random.key(0)), cfg, path, tokenizer=tok)
  return path


@pytest.fixture
def ckpt(tiny_hf, tmp_path):
  """A copy of the tiny checkpoint to damage."""
  return shutil.copytree(tiny_hf, str(tmp_path / "ckpt"))


def model_config(hf_dir):
  return ConfigDict(dict(preset="tiny", hf_dir=hf_dir, param_dtype="float32", dtype="float32",
                         dropout_rate=0.0, remat=False, allow_random_init=False))


def edit_config(path, **changes):
  cfg_path = os.path.join(path, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg.update(changes)
  with open(cfg_path, "w") as f:
    json.dump({k: v for k, v in cfg.items() if v is not None}, f)


def edit_tensors(path, fn):
  fname = os.path.join(path, "model.safetensors")
  tensors = load_file(fname)
  fn(tensors)
  save_file(tensors, fname, metadata={"format": "pt"})


def refused(path, match):
  """The ConfigError that model.hf_dir=path ends in: one line containing `match`."""
  with pytest.raises(ConfigError) as e:
    state.build_policy(model_config(path), workdir="")
  assert "\n" not in str(e.value) and match in str(e.value), str(e.value)
  return str(e.value)


def test_the_exported_and_the_real_checkpoint_pass(tiny_hf):
  assert state.build_policy(model_config(tiny_hf), workdir="").cfg.vocab_size == 2048
  real = os.environ.get("R3JAX_QWEN25_DIR", "")  # As tests/test_real_model.py: opt-in.
  if os.path.exists(os.path.join(real, "model.safetensors")):
    assert len(hf.check(real, hf.load_config(real))) == 291  # Headers only: milliseconds.


def test_a_huge_hidden_size_fails_on_the_headers_before_any_allocation(ckpt):
  edit_config(ckpt, hidden_size=10**7)
  before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
  refused(ckpt, f"{ckpt}/model.safetensors: tensor 'model.embed_tokens.weight' has shape [2048, 64], "
                "config.json's sizes give [2048, 10000000]")
  # Its 2048 x 10^7 fp32 embedding alone would be 82 GB: nothing of that size was touched.
  assert time.perf_counter() - start < 5
  assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB.


@pytest.mark.parametrize("field,value", [
    ("hidden_size", -64), ("num_hidden_layers", -2), ("num_attention_heads", 0),
    ("intermediate_size", 0), ("vocab_size", "2048"), ("num_key_value_heads", -1)])
def test_a_size_that_is_not_a_positive_integer_is_named(ckpt, field, value):
  edit_config(ckpt, **{field: value})
  refused(ckpt, f"{ckpt}/config.json: {field}={value!r}: expected a positive integer")


def test_more_layers_than_the_weights_hold_fails_before_the_layout_is_built(ckpt):
  edit_config(ckpt, num_hidden_layers=10**9)
  start = time.perf_counter()
  refused(ckpt, f"{ckpt}/config.json: num_hidden_layers=1000000000, but its safetensors hold 2 layers")
  assert time.perf_counter() - start < 5


def test_a_damaged_shard_index_is_named(tiny_hf, tmp_path):
  cfg, params = hf.load(tiny_hf)
  sharded = str(tmp_path / "sharded")
  hf.export(params, cfg, sharded, max_shard_bytes=200_000)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(tiny_hf, name), sharded)
  index = os.path.join(sharded, "model.safetensors.index.json")
  with open(index) as f:
    weight_map = json.load(f)["weight_map"]
  other = next(v for v in weight_map.values() if v != weight_map["model.norm.weight"])
  for bad, match in (({**weight_map, "model.norm.weight": "../../etc/passwd"}, "'weight_map' should map"),
                     ({**weight_map, "model.norm.weight": other},
                      f"maps 'model.norm.weight' to {other}, whose header has no such tensor")):
    with open(index, "w") as f:
      json.dump({"weight_map": bad}, f)
    refused(sharded, f"{index}: {match}")
  with open(index, "w") as f:
    f.write('{"weight_map": {"model.')
  refused(sharded, f"{index}: not readable JSON")
  with open(index, "w") as f:
    json.dump({"weight_map": weight_map}, f)
  os.remove(os.path.join(sharded, other))  # A shard missing: FileNotFoundError, also one line.
  with pytest.raises(FileNotFoundError, match=f"^{os.path.join(sharded, other)}: no such safetensors file$"):
    state.build_policy(model_config(sharded), workdir="")


def test_heads_that_do_not_divide_are_named(ckpt):
  edit_config(ckpt, num_attention_heads=3, head_dim=None)
  refused(ckpt, "config.json: hidden_size=64 is not a multiple of num_attention_heads=3")
  edit_config(ckpt, num_attention_heads=4, num_key_value_heads=3)
  refused(ckpt, "config.json: num_attention_heads=4 is not a multiple of num_key_value_heads=3")


@pytest.mark.parametrize("name,shape", [("model.layers.1.self_attn.q_proj.weight", (48, 64)),
                                        ("model.embed_tokens.weight", (2049, 64))])
def test_a_tensor_of_the_wrong_shape_is_named(ckpt, name, shape):
  edit_tensors(ckpt, lambda t: t.update({name: np.zeros(shape, np.float32)}))
  want = [64, 64] if "q_proj" in name else [2048, 64]
  refused(ckpt, f"{ckpt}/model.safetensors: tensor {name!r} has shape {list(shape)}, "
                f"config.json's sizes give {want}")


def test_a_truncated_safetensors_file_is_named(ckpt):
  fname = os.path.join(ckpt, "model.safetensors")
  size = os.path.getsize(fname)
  with open(fname, "r+b") as f:
    f.truncate(size // 2)
  refused(ckpt, f"{fname}: truncated: tensor ")
  with open(fname, "r+b") as f:
    f.truncate(5)
  refused(ckpt, f"{fname}: not a safetensors file, or truncated")


def test_a_header_length_of_2_to_the_62_is_refused_before_reading(ckpt):
  fname = os.path.join(ckpt, "model.safetensors")
  with open(fname, "r+b") as f:
    f.write((2**62).to_bytes(8, "little"))
  start = time.perf_counter()
  refused(ckpt, f"{fname}: not a safetensors file, or truncated: its header length field says "
                f"{2**62:,} bytes, the file has {os.path.getsize(fname):,}")
  assert time.perf_counter() - start < 5


@pytest.mark.parametrize("text", ['{"model_type": "qwen2", "hidden', "[1, 2]", "\xff\xfe"])
def test_a_damaged_config_json_is_named(ckpt, text):
  with open(os.path.join(ckpt, "config.json"), "w", encoding="latin-1") as f:
    f.write(text)
  refused(ckpt, f"{ckpt}/config.json: ")


def test_a_classifier_without_lm_head_is_refused_unless_tied(ckpt):
  def to_classifier(tensors):
    del tensors["lm_head.weight"]
    tensors["score.weight"] = np.zeros((2, 64), np.float32)
  edit_tensors(ckpt, to_classifier)
  edit_config(ckpt, architectures=["Qwen2ForSequenceClassification"])
  refused(ckpt, f"{ckpt}: tensor 'lm_head.weight' is in none of its safetensors files (config.json: "
                "Qwen2ForSequenceClassification, tie_word_embeddings=False): a sequence-classification "
                "checkpoint, with a score head and no LM head to generate with")
  edit_config(ckpt, tie_word_embeddings=True)  # As Qwen2.5-0.5B: the embedding is the head.
  assert state.build_policy(model_config(ckpt), workdir="").cfg.tie_embeddings


def test_init_from_goes_through_the_same_check(ckpt):
  """init_from (state.load_params) and model.hf_dir (build_policy) end in the same line."""
  edit_tensors(ckpt, lambda t: t.update({"model.layers.0.mlp.up_proj.weight": np.zeros((7, 64), np.float32)}))
  msg = refused(ckpt, "tensor 'model.layers.0.mlp.up_proj.weight' has shape [7, 64]")
  cfg = qwen.preset("tiny")
  with pytest.raises(ConfigError) as e:
    state.load_params(ckpt, cfg, None, None)
  assert str(e.value) == msg
  with pytest.raises(ConfigError, match=r"architecture does not match .*hidden_size 64 vs 128; "
                                        r"head_size 16 vs 32"):
    state.check_architecture(ckpt, cfg.replace(hidden_size=128))


def test_the_entry_point_prints_one_line_and_exits_2(ckpt, capsys):
  edit_config(ckpt, num_attention_heads=0)
  with pytest.raises(SystemExit) as e, cli.user_errors():
    state.build_policy(model_config(ckpt), workdir="")
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1
  assert err.startswith(f"error: {ckpt}/config.json: num_attention_heads=0")


# ----------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("name", ["AutoModelForCausalLM", "AutoModelForCausalLMFast", "pipeline",
                                  "AutoTokenizer", "os.system", 7])
def test_a_tokenizer_class_that_is_not_a_tokenizer_is_refused(ckpt, name):
  fname = os.path.join(ckpt, "tokenizer_config.json")
  with open(fname) as f:
    config = json.load(f)
  with open(fname, "w") as f:
    json.dump({**config, "tokenizer_class": name}, f)
  refused(ckpt, f"{fname}: tokenizer_class={name!r} is not a tokenizer class")
  # Without one there, AutoTokenizer would take model config.json's: checked the same way.
  with open(fname, "w") as f:
    json.dump({k: v for k, v in config.items() if k != "tokenizer_class"}, f)
  edit_config(ckpt, tokenizer_class=name)
  refused(ckpt, f"{ckpt}/config.json: tokenizer_class={name!r} is not a tokenizer class")


def test_tokenizer_classes_of_transformers_are_allowed():
  for name in ("Qwen2Tokenizer", "Qwen2TokenizerFast", "PreTrainedTokenizerFast", "BertTokenizer",
               "TokenizersBackend", "NoSuchTokenizer", ""):
    tokenizer_lib.tokenizer_class(name, "x")


def test_a_damaged_tokenizer_file_is_named(ckpt):
  with open(os.path.join(ckpt, "tokenizer.json"), "r+b") as f:
    f.truncate(1000)
  refused(ckpt, f"{ckpt}: the tokenizer does not load (")


def test_a_tokenizer_larger_than_the_embedding_is_named(ckpt, tmp_path):
  tokenizer_lib.train_bpe(["a b c"] * 10, 300).save_pretrained(str(tmp_path / "small"))
  edit_config(ckpt, vocab_size=300)
  edit_tensors(ckpt, lambda t: t.update({k: v[:300] for k, v in t.items() if "embed" in k or "lm_head" in k}))
  refused(ckpt, f"{ckpt}: a tokenizer of 2,048 tokens, more than the 300 embedding rows of {ckpt}")


def test_a_truncated_tokenizer_cache_is_trained_again_with_a_note(tmp_path, capsys):
  cache = str(tmp_path / "tokenizer")
  want = tokenizer_lib.tiny(cache_dir=cache).get_vocab()
  with open(os.path.join(cache, "tokenizer.json"), "r+b") as f:
    f.truncate(4096)
  assert tokenizer_lib.tiny(cache_dir=cache).get_vocab() == want  # Deterministic: the same one.
  note = capsys.readouterr().err
  assert note.count("\n") == 1 and note.startswith(f"note: {cache}: the tokenizer does not load")
  assert tokenizer_lib.tiny(cache_dir=cache).get_vocab() == want and not capsys.readouterr().err


def test_a_tokenizer_cache_of_another_vocabulary_is_named(tmp_path):
  cache = str(tmp_path / "tokenizer")
  tokenizer_lib.train_bpe(["another corpus"] * 10, 300).save_pretrained(cache)
  with pytest.raises(ConfigError) as e:
    state.build_policy(model_config(""), workdir=str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"{cache}/tokenizer.json: a cached tokenizer of another vocabulary")
