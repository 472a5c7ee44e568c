"""HF Qwen2/Qwen2.5/Qwen3 checkpoint import and export, Qwen (v1) import (safetensors, no
torch).

The param tree of `models/qwen.py` stores projections as [in, heads, head_dim] or
[in, out]; HF stores `nn.Linear` weights as [out, in]. Each row of `_layout` names the HF
tensor, the path in our tree, and how to reshape between the two.
"""

import json
import math
import os
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from r3jax.core import paths
from r3jax.core.errors import ConfigError
from r3jax.models import qwen

_Conv = Callable[[np.ndarray, qwen.QwenConfig], np.ndarray]


_ID = (lambda w, c: w, lambda p, c: p)
_T = (lambda w, c: w.T, lambda p, c: p.T)
# o: HF [D, H*E] -> ours [H, E, D].
_O = (lambda w, c: w.T.reshape(c.num_heads, c.head_size, c.hidden_size),
      lambda p, c: p.reshape(-1, p.shape[-1]).T)


def _bias(heads_attr):
  # q/k/v bias: HF [heads*E] -> ours [heads, E].
  return (lambda w, c: w.reshape(getattr(c, heads_attr), c.head_size),
          lambda p, c: p.reshape(-1))


def _in_heads(heads_attr):
  # q/k/v: HF [heads*E, D] -> ours [D, heads, E].
  return (lambda w, c: w.T.reshape(c.hidden_size, getattr(c, heads_attr), c.head_size),
          lambda p, c: p.reshape(p.shape[0], -1).T)


def _layout(cfg: qwen.QwenConfig) -> list[tuple[str, tuple[str, ...], tuple[_Conv, _Conv]]]:
  rows = [("model.embed_tokens.weight", ("embed",), _ID),
          ("model.norm.weight", ("final_norm", "scale"), _ID)]
  if not cfg.tie_embeddings:
    rows.append(("lm_head.weight", ("lm_head",), _T))
  for i in range(cfg.num_layers):
    hf, ours = f"model.layers.{i}.", f"layers_{i}"
    rows += [
        (hf + "input_layernorm.weight", (ours, "input_norm", "scale"), _ID),
        (hf + "post_attention_layernorm.weight", (ours, "post_attn_norm", "scale"), _ID),
        (hf + "self_attn.q_proj.weight", (ours, "attn", "q_kernel"), _in_heads("num_heads")),
        (hf + "self_attn.k_proj.weight", (ours, "attn", "k_kernel"), _in_heads("num_kv_heads")),
        (hf + "self_attn.v_proj.weight", (ours, "attn", "v_kernel"), _in_heads("num_kv_heads")),
        (hf + "self_attn.o_proj.weight", (ours, "attn", "o_kernel"), _O),
        (hf + "mlp.gate_proj.weight", (ours, "mlp", "gate_kernel"), _T),
        (hf + "mlp.up_proj.weight", (ours, "mlp", "up_kernel"), _T),
        (hf + "mlp.down_proj.weight", (ours, "mlp", "down_kernel"), _T),
    ]
    if cfg.qkv_bias:
      rows += [(hf + f"self_attn.{p}_proj.bias", (ours, "attn", f"{p}_bias"), _bias(heads))
               for p, heads in (("q", "num_heads"), ("k", "num_kv_heads"), ("v", "num_kv_heads"))]
    if cfg.qk_norm:  # Qwen3.
      rows += [(hf + f"self_attn.{p}_norm.weight", (ours, "attn", f"{p}_norm", "scale"), _ID)
               for p in ("q", "k")]
  return rows


def _fused(part: int, conv):
  # Qwen v1's c_attn: q, k and v stacked along the HF output axis; `part` is one third.
  return (lambda w, c: conv[0](np.split(w, 3, axis=0)[part], c), None)


def _layout_qwen1(cfg: qwen.QwenConfig) -> list[tuple[str, tuple[str, ...], tuple[_Conv, _Conv]]]:
  """Qwen (v1) `QWenLMHeadModel` names, import only (it exports as the equivalent Qwen2).
  Its MLP computes c_proj(w1(x) * silu(w2(x))): w2 is the gate, w1 the up projection."""
  rows = [("transformer.wte.weight", ("embed",), _ID),
          ("transformer.ln_f.weight", ("final_norm", "scale"), _ID)]
  if not cfg.tie_embeddings:
    rows.append(("lm_head.weight", ("lm_head",), _T))
  for i in range(cfg.num_layers):
    hf, ours = f"transformer.h.{i}.", f"layers_{i}"
    rows += [
        (hf + "ln_1.weight", (ours, "input_norm", "scale"), _ID),
        (hf + "ln_2.weight", (ours, "post_attn_norm", "scale"), _ID),
        (hf + "attn.c_proj.weight", (ours, "attn", "o_kernel"), _O),
        (hf + "mlp.w2.weight", (ours, "mlp", "gate_kernel"), _T),
        (hf + "mlp.w1.weight", (ours, "mlp", "up_kernel"), _T),
        (hf + "mlp.c_proj.weight", (ours, "mlp", "down_kernel"), _T),
    ]
    for part, p in enumerate("qkv"):
      heads = "num_heads" if p == "q" else "num_kv_heads"
      rows += [(hf + "attn.c_attn.weight", (ours, "attn", f"{p}_kernel"), _fused(part, _in_heads(heads))),
               (hf + "attn.c_attn.bias", (ours, "attn", f"{p}_bias"), _fused(part, _bias(heads)))]
  return rows


# safetensors' own bound on its JSON header: a damaged length field is refused before
# anything of that size is read.
_MAX_HEADER_BYTES = 100_000_000
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
             "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_FLOATS = ("F16", "BF16", "F32", "F64")
_QWEN_TYPES = ("qwen2", "qwen3")  # And Qwen (v1), by qwen.is_qwen1.
# The fields that fix the param tree's shapes: a checkpoint loads only into a config equal in all.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_size",
                "intermediate_size", "tie_embeddings", "qkv_bias", "qk_norm")


DAMAGED = "; the checkpoint is damaged"


def _check_entry(fname: str, name: str, entry, data_bytes: int) -> tuple[str, tuple[int, ...]]:
  """(dtype, shape) of one header entry, its byte range checked against the file."""
  if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
          and isinstance(entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)
          and all(type(n) is int and n >= 0 for n in entry["shape"] + entry["data_offsets"])
          and len(entry["data_offsets"]) == 2 and entry["data_offsets"][0] <= entry["data_offsets"][1]):
    raise ConfigError(f"{fname}: header entry {name!r} is not a tensor (dtype, shape, data_offsets)")
  dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
  if dtype in _ITEMSIZE and end - begin != math.prod(shape) * _ITEMSIZE[dtype]:
    raise ConfigError(f"{fname}: tensor {name!r} of shape {list(shape)} {dtype} spans "
                      f"{end - begin:,} bytes in the header, not {math.prod(shape) * _ITEMSIZE[dtype]:,}")
  if end > data_bytes:
    raise ConfigError(f"{fname}: truncated: tensor {name!r} ends at data byte {end:,}, the file "
                      f"holds {max(data_bytes, 0):,} data bytes")
  return dtype, shape


def read_header(fname: str) -> dict[str, tuple[str, tuple[int, ...]]]:
  """Tensor name -> (dtype, shape) from a safetensors file's header, read without mapping
  the file: the 8-byte header length and every tensor's byte range are checked against
  the file's size first, so a truncated or damaged file is one ConfigError naming it."""
  if not os.path.exists(fname):
    raise FileNotFoundError(f"{fname}: no such safetensors file")
  size = os.path.getsize(fname)
  with open(fname, "rb") as f:
    head = f.read(8)
    n = int.from_bytes(head, "little")
    if len(head) < 8 or n > min(size - 8, _MAX_HEADER_BYTES):
      raise ConfigError(f"{fname}: not a safetensors file, or truncated: its header length field "
                        f"says {n:,} bytes, the file has {size:,}")
    raw = f.read(n)
  try:
    header = json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
    raise ConfigError(f"{fname}: the safetensors header is not JSON ({e}); the file is "
                      "damaged") from None
  if not isinstance(header, dict):
    raise ConfigError(f"{fname}: the safetensors header is not a JSON object")
  return {k: _check_entry(fname, k, v, size - 8 - n) for k, v in header.items() if k != "__metadata__"}


def tensor_index(path: str) -> dict[str, tuple[str, str, tuple[int, ...]]]:
  """HF tensor name -> (safetensors file, dtype, shape), single-file or sharded; headers only."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    weight_map = paths.read_json_object(index, DAMAGED).get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) and v == os.path.basename(v) for v in weight_map.values()):
      raise ConfigError(f"{index}: 'weight_map' should map tensor names to file names in {path}")
    headers = {v: read_header(os.path.join(path, v)) for v in set(weight_map.values())}
    for k, v in weight_map.items():
      if k not in headers[v]:
        raise ConfigError(f"{index}: maps {k!r} to {v}, whose header has no such tensor")
    return {k: (os.path.join(path, v), *headers[v][k]) for k, v in weight_map.items()}
  single = os.path.join(path, "model.safetensors")
  if not os.path.exists(single):
    raise FileNotFoundError(
        f"{path}: no model.safetensors or model.safetensors.index.json (only safetensors "
        "checkpoints are supported)")
  return {k: (single, *v) for k, v in read_header(single).items()}


def _check_dims(hf_cfg: dict[str, Any], cfg_path: str) -> None:
  """Sizes that are positive integers and heads that divide evenly, before any is used."""
  for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "num_key_value_heads", "head_dim", "kv_channels"):
    value = hf_cfg.get(key)
    required = key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "intermediate_size")
    if (value is not None or required) and not (type(value) is int and value > 0):
      raise ConfigError(f"{cfg_path}: {key}={value!r}: expected a positive integer")
  heads, hidden = hf_cfg["num_attention_heads"], hf_cfg["hidden_size"]
  head_dim = hf_cfg.get("kv_channels" if qwen.is_qwen1(hf_cfg) else "head_dim")
  if head_dim is None and hidden % heads:
    raise ConfigError(f"{cfg_path}: hidden_size={hidden} is not a multiple of "
                      f"num_attention_heads={heads}")
  if (head_dim or hidden // heads) % 2:  # Rotary embeddings rotate halves of each head.
    raise ConfigError(f"{cfg_path}: head size {head_dim or hidden // heads} is odd; rotary "
                      "embeddings need it even")
  kv = hf_cfg.get("num_key_value_heads") or heads
  if not qwen.is_qwen1(hf_cfg) and heads % kv:
    raise ConfigError(f"{cfg_path}: num_attention_heads={heads} is not a multiple of "
                      f"num_key_value_heads={kv}")


def read_config(path: str) -> dict[str, Any]:
  """An HF Qwen checkpoint's config.json, its model type and sizes checked."""
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{cfg_path}: not found; expected an HF Qwen2 checkpoint dir")
  hf_cfg = paths.read_json_object(cfg_path, DAMAGED)
  kind = hf_cfg.get("model_type", "?")
  if kind not in _QWEN_TYPES and not qwen.is_qwen1(hf_cfg):
    raise ConfigError(f"{path}: a {kind!r} checkpoint, not a Qwen2 decoder (nor Qwen3 or Qwen v1); "
                      "init_from and model.hf_dir take Qwen2 checkpoints (or an r3jax run directory)")
  _check_dims(hf_cfg, cfg_path)
  return hf_cfg


def load_config(path: str, **overrides) -> qwen.QwenConfig:
  return _qwen_config(path, read_config(path), overrides)


def _qwen_config(path: str, hf_cfg: dict[str, Any], overrides) -> qwen.QwenConfig:
  try:
    return qwen.config_from_hf(hf_cfg, **overrides)
  except (KeyError, TypeError, ValueError) as e:
    raise ConfigError(f"{os.path.join(path, 'config.json')}: {e}") from None


def _hf_shapes(cfg: qwen.QwenConfig) -> dict[str, tuple[int, ...]]:
  """Each HF tensor's shape for this config, by its name without the model/layer prefix."""
  d, v, f, e = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size, cfg.head_size
  q, kv = cfg.num_heads * e, cfg.num_kv_heads * e
  return {
      "embed_tokens.weight": (v, d), "norm.weight": (d,), "lm_head.weight": (v, d),
      "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
      "self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d),
      "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, q),
      "self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
      "self_attn.q_norm.weight": (e,), "self_attn.k_norm.weight": (e,),
      "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
      # Qwen (v1): q, k and v fused (as many KV heads as query heads), w1/w2/c_proj MLP.
      "wte.weight": (v, d), "ln_f.weight": (d,), "ln_1.weight": (d,), "ln_2.weight": (d,),
      "attn.c_attn.weight": (3 * q, d), "attn.c_attn.bias": (3 * q,), "attn.c_proj.weight": (d, q),
      "mlp.w1.weight": (f, d), "mlp.w2.weight": (f, d), "mlp.c_proj.weight": (d, f)}


_PREFIX = re.compile(r"^(model\.layers\.\d+\.|transformer\.h\.\d+\.|model\.|transformer\.)")
_LAYER = re.compile(r"(?:model\.layers|transformer\.h)\.(\d+)\.")


def _missing(path: str, name: str, hf_cfg: dict[str, Any], tensors) -> str:
  why = f"{path}: tensor {name!r} is in none of its safetensors files"
  if name == "lm_head.weight":
    archs = ", ".join(hf_cfg.get("architectures") or ()) or "?"
    why += f" (config.json: {archs}, tie_word_embeddings={hf_cfg.get('tie_word_embeddings', False)})"
    if "score.weight" in tensors or "ForSequenceClassification" in archs:
      why += ": a sequence-classification checkpoint, with a score head and no LM head to generate with"
  return why


def check(path: str, cfg: qwen.QwenConfig | None = None) -> dict[str, str]:
  """The one architecture and tensor-shape check of an HF checkpoint dir, for model.hf_dir and
  init_from alike: config.json (type, sizes), `cfg` against it when given, then every tensor
  the layout reads against the safetensors headers. No tensor is read, so a damaged or
  mismatched checkpoint is a ConfigError naming the file before any reshape or allocation.
  Returns HF tensor name -> its file."""
  hf_cfg = read_config(path)
  theirs = _qwen_config(path, hf_cfg, {})
  if cfg is not None:
    diff = [f"{f} {getattr(theirs, f)} vs {getattr(cfg, f)}" for f in SHAPE_FIELDS
            if getattr(theirs, f) != getattr(cfg, f)]
    if diff:
      raise ConfigError(f"{path}: the checkpoint's architecture does not match the config's model "
                        f"({'; '.join(diff)}, checkpoint vs config); set --config.model.hf_dir={path} "
                        "to take its architecture")
  tensors, want = tensor_index(path), _hf_shapes(theirs)
  layers = {m.group(1) for m in map(_LAYER.match, tensors) if m}
  if theirs.num_layers > len(layers):  # Before a layout of that many rows is built.
    raise ConfigError(f"{os.path.join(path, 'config.json')}: num_hidden_layers={theirs.num_layers}, "
                      f"but its safetensors hold {len(layers)} layers")
  for hf_name, _, _ in (_layout_qwen1 if qwen.is_qwen1(hf_cfg) else _layout)(theirs):
    if hf_name not in tensors:
      raise ConfigError(_missing(path, hf_name, hf_cfg, tensors))
    fname, dtype, shape = tensors[hf_name]
    if shape != want[_PREFIX.sub("", hf_name)]:
      raise ConfigError(f"{fname}: tensor {hf_name!r} has shape {list(shape)}, config.json's sizes "
                        f"give {list(want[_PREFIX.sub('', hf_name)])}")
    if dtype not in _FLOATS:
      raise ConfigError(f"{fname}: tensor {hf_name!r} is {dtype}; expected a float dtype "
                        f"({', '.join(_FLOATS)})")
  return {k: v[0] for k, v in tensors.items()}


def load_params(path: str, cfg: qwen.QwenConfig, shardings=None) -> dict[str, Any]:
  """Loads an HF checkpoint dir into our param tree, cast to cfg.param_dtype, after `check`.

  Tensors are read one at a time (safetensors is memory-mapped), so host memory holds one
  tensor beyond the result. With `shardings` (a matching tree of jax Shardings) each leaf
  is placed directly into its sharding.
  """
  files = check(path, cfg)
  dtype = np.dtype(jnp.dtype(cfg.param_dtype))
  params: dict[str, Any] = {}
  handles: dict[str, Any] = {}
  layout = _layout_qwen1 if qwen.is_qwen1(read_config(path)) else _layout
  try:
    for hf_name, ours, (to_ours, _) in layout(cfg):
      fname = files[hf_name]
      if fname not in handles:
        handles[fname] = safe_open(fname, "numpy").__enter__()
      w = handles[fname].get_tensor(hf_name)
      w = np.ascontiguousarray(to_ours(w.astype(np.float32) if w.dtype != dtype else w, cfg)).astype(dtype)
      node = params
      for k in ours[:-1]:
        node = node.setdefault(k, {})
      node[ours[-1]] = w
  finally:
    for h in handles.values():
      h.__exit__(None, None, None)
  if shardings is not None:
    return jax.tree.map(jax.device_put, params, shardings)
  return jax.tree.map(jnp.asarray, params)


def load(path: str, **overrides) -> tuple[qwen.QwenConfig, dict[str, Any]]:
  cfg = load_config(path, **overrides)
  return cfg, load_params(path, cfg)


def export(params, cfg: qwen.QwenConfig, path: str, tokenizer=None,
           dtype: str | None = None, max_shard_bytes: int = 4 << 30) -> None:
  """Writes an HF directory that `AutoModelForCausalLM.from_pretrained` loads."""
  os.makedirs(path, exist_ok=True)
  out_dtype = np.dtype(jnp.dtype(dtype or cfg.param_dtype))
  tensors = {}
  for hf_name, ours, (_, to_hf) in _layout(cfg):
    node = params
    for k in ours:
      node = node[k]
    w = np.asarray(jax.device_get(node)).astype(np.float32)
    tensors[hf_name] = np.ascontiguousarray(to_hf(w, cfg)).astype(out_dtype)

  shards, current, size = [], {}, 0
  for name, w in tensors.items():
    if current and size + w.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = w
    size += w.nbytes
  shards.append(current)
  if len(shards) == 1:
    save_file(shards[0], os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, os.path.join(path, fname), metadata={"format": "pt"})
      weight_map.update({k: fname for k in shard})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": sum(w.nbytes for w in tensors.values())},
                 "weight_map": weight_map}, f, indent=2)

  hf_cfg = qwen.to_hf_config(cfg)
  hf_cfg["torch_dtype"] = {np.dtype(ml_dtypes.bfloat16): "bfloat16"}.get(out_dtype, str(out_dtype))
  if tokenizer is not None:
    hf_cfg.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    tokenizer.save_pretrained(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2)


def model_dir(path: str) -> str:
  """The HF directory of a run (its hf/ export) or the path itself."""
  for d in (os.path.join(path, "hf"), path):
    if os.path.exists(os.path.join(d, "config.json")) and os.path.exists(os.path.join(d, "tokenizer.json")):
      return d
  raise FileNotFoundError(f"{path}: neither a run with an exported hf/ directory nor an HF "
                          "model directory (config.json + tokenizer.json)")
