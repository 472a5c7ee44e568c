"""HF Qwen2/Qwen2.5/Qwen3 checkpoint import and export, Qwen (v1) import (safetensors, no
torch).

The param tree of `models/qwen.py` stores projections as [in, heads, head_dim] or
[in, out]; HF stores `nn.Linear` weights as [out, in]. Each row of `_layout` names the HF
tensor, the path in our tree, and how to reshape between the two.
"""

import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

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


def _tensor_files(path: str) -> dict[str, str]:
  """HF tensor name -> safetensors file, for single-file or sharded checkpoints."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return {k: os.path.join(path, v) for k, v in weight_map.items()}
  single = os.path.join(path, "model.safetensors")
  if not os.path.exists(single):
    raise FileNotFoundError(
        f"{path}: no model.safetensors or model.safetensors.index.json (only safetensors "
        "checkpoints are supported)")
  with safe_open(single, "numpy") as f:
    return {k: single for k in f.keys()}


def load_config(path: str, **overrides) -> qwen.QwenConfig:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{cfg_path}: not found; expected an HF Qwen2 checkpoint dir")
  return qwen.config_from_hf(cfg_path, **overrides)


def load_params(path: str, cfg: qwen.QwenConfig, shardings=None) -> dict[str, Any]:
  """Loads an HF checkpoint dir into our param tree, cast to cfg.param_dtype.

  Tensors are read one at a time (safetensors is memory-mapped), so host memory holds one
  tensor beyond the result. With `shardings` (a matching tree of jax Shardings) each leaf
  is placed directly into its sharding.
  """
  files = _tensor_files(path)
  dtype = np.dtype(jnp.dtype(cfg.param_dtype))
  params: dict[str, Any] = {}
  handles: dict[str, Any] = {}
  with open(os.path.join(path, "config.json")) as f:
    layout = _layout_qwen1 if qwen.is_qwen1(json.load(f)) else _layout
  try:
    for hf_name, ours, (to_ours, _) in layout(cfg):
      if hf_name not in files:
        raise KeyError(f"{path}: tensor {hf_name!r} missing from the checkpoint "
                       f"(tie_embeddings={cfg.tie_embeddings})")
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
