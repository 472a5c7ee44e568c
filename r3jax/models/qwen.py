"""Qwen decoder (Qwen1, Qwen2, Qwen2.5 and Qwen3 layouts), a pure-functional Flax Linen module.

Architecture after the Qwen Technical Report (Bai et al. 2023, §2.3): pre-norm RMSNorm, RoPE
(fp32 angles), bias on q/k/v only (Qwen3: per-head q/k norms), SwiGLU, GQA, optional
tied embeddings. Every parameter carries logical axis names so that the sharding rules in
a config decide its layout; activations carry logical constraints for the same reason,
under their own names (`act_*`) so that a rule can shard a weight's `embed` dimension
over fsdp while the activations' batch dimension uses that mesh axis.

Shapes use suffixes: B batch, T query length, S key length, D model width, H query
heads, K kv heads, G = H // K, E head dim, F mlp width, V vocab.

Attention takes an explicit key-validity mask (`kv_mask_BS`) and a query offset, so one
code path serves a full forward pass and incremental decoding with a KV cache.
"""

import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
# A finite "minus infinity": a fully masked row (a left-pad query) then gives a uniform
# softmax instead of NaN, and its output is never read.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


@dataclasses.dataclass(frozen=True)
class QwenConfig:
  vocab_size: int = 151936
  hidden_size: int = 4096
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  intermediate_size: int = 11008
  head_dim: int | None = None  # None: hidden_size // num_heads.
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = False
  max_position_embeddings: int = 2048
  initializer_range: float = 0.02
  # Dtype policy: parameters are stored in param_dtype and cast to dtype for compute.
  param_dtype: str = "float32"
  dtype: str = "float32"
  logits_fp32: bool = True
  dropout_rate: float = 0.0
  remat: bool = False
  # Qwen1/2/2.5 have q/k/v biases; Qwen3 has none and RMSNorms each head's q and k instead.
  qkv_bias: bool = True
  qk_norm: bool = False

  @property
  def head_size(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  def replace(self, **kw) -> "QwenConfig":
    return dataclasses.replace(self, **kw)


# Qwen1 sizes: Qwen Technical Report (Bai et al. 2023), Table 1; the FFN width is the HF release's.
PRESETS = {
    "tiny": dict(vocab_size=2048, hidden_size=64, num_layers=2, num_heads=4,
                 num_kv_heads=2, intermediate_size=176, max_position_embeddings=512),
    # The sampler / train-step bench shape of the foundation issue.
    "bench": dict(vocab_size=32000, hidden_size=512, num_layers=8, num_heads=8,
                  num_kv_heads=2, intermediate_size=1408, max_position_embeddings=2048),
    "qwen-1.8b": dict(hidden_size=2048, num_layers=24, num_heads=16, num_kv_heads=16,
                      intermediate_size=5504),
    "qwen-7b": dict(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                    intermediate_size=11008),
    "qwen-14b": dict(hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40,
                     intermediate_size=13696),
    # Qwen2.5-0.5B's shape (its Coder-Instruct GGUF ships an untied head: hf_dir decides).
    "qwen2.5-0.5b": dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                         intermediate_size=4864, rope_theta=1e6, tie_embeddings=True,
                         max_position_embeddings=32768),
}


def preset(name: str, **overrides) -> QwenConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return QwenConfig(**{**PRESETS[name], **overrides})


def is_qwen1(hf: dict[str, Any]) -> bool:
  """A Qwen (v1) `QWenLMHeadModel` config (fused c_attn, w1/w2 MLP; models/hf.py)."""
  return hf.get("model_type") == "qwen" or "QWenLMHeadModel" in (hf.get("architectures") or ())


def _config_from_qwen1(hf: dict[str, Any]) -> dict[str, Any]:
  # v1's intermediate_size counts both MLP input projections: the FFN width is half of it.
  return dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
      num_kv_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"] // 2,
      head_dim=hf.get("kv_channels"), rope_theta=float(hf.get("rotary_emb_base", 10000.0)),
      rms_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position_embeddings=hf.get("seq_length") or hf.get("max_position_embeddings", 8192),
      initializer_range=hf.get("initializer_range", 0.02))


def config_from_hf(hf: dict[str, Any] | str, **overrides) -> QwenConfig:
  """QwenConfig from an HF `config.json` (a dict or a path to the file) of Qwen2/2.5,
  Qwen3 (`Qwen3ForCausalLM`) or Qwen (v1, `QWenLMHeadModel`)."""
  if isinstance(hf, str):
    with open(hf) as f:
      hf = json.load(f)
  if is_qwen1(hf):
    return QwenConfig(**{**_config_from_qwen1(hf), **overrides})
  qwen3 = hf.get("model_type") == "qwen3"
  if qwen3 and hf.get("attention_bias"):
    raise ValueError("a Qwen3 config with attention_bias=True (biases on q/k/v and o) is not supported")
  theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 1e6)
  kw = dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
      num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"], head_dim=hf.get("head_dim"),
      rope_theta=float(theta), rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position_embeddings=hf.get("max_position_embeddings", 32768),
      initializer_range=hf.get("initializer_range", 0.02), qkv_bias=not qwen3, qk_norm=qwen3)
  return QwenConfig(**{**kw, **overrides})


def to_hf_config(cfg: QwenConfig) -> dict[str, Any]:
  """The HF config of this model: Qwen3's layout with q/k norms, else Qwen2's (a Qwen v1
  checkpoint exports as the equivalent Qwen2)."""
  if cfg.qk_norm != (not cfg.qkv_bias):
    raise ValueError(f"qkv_bias={cfg.qkv_bias} with qk_norm={cfg.qk_norm} matches no HF Qwen layout")
  arch = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False} \
      if cfg.qk_norm else {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
  return {
      **arch,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_size, "hidden_act": "silu",
      "max_position_embeddings": cfg.max_position_embeddings,
      "initializer_range": cfg.initializer_range, "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_embeddings,
      "use_sliding_window": False, "attention_dropout": 0.0, "use_cache": True,
      "torch_dtype": cfg.param_dtype,
  }


# ----------------------------------------------------------------------------- helpers


def positions_from_mask(mask_BT: Array) -> Array:
  """Position ids of a left-padded batch: 0 at each row's first real token."""
  return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=-1) - 1, 0)


def segment_positions(segment_ids_BT: Array) -> Array:
  """Position ids of packed rows: 0 at each segment's first token (a change of id)."""
  t = jnp.arange(segment_ids_BT.shape[1])
  starts_BT = jnp.concatenate([jnp.ones_like(segment_ids_BT[:, :1], bool),
                               segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]], axis=1)
  return t - jax.lax.cummax(jnp.where(starts_BT, t, 0), axis=1)


def rope(x_BTNE: Array, positions_BT: Array, theta: float) -> Array:
  """Rotary embedding in the rotate-half layout of HF Qwen2, with fp32 angles."""
  e = x_BTNE.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))
  angles_BTE = positions_BT.astype(jnp.float32)[..., None] * inv_freq
  angles_BTE = jnp.concatenate([angles_BTE, angles_BTE], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles_BTE), jnp.sin(angles_BTE)
  x = x_BTNE.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos + rotated * sin).astype(x_BTNE.dtype)


def init_cache(cfg: QwenConfig, batch: int, length: int, dtype=None) -> list[dict[str, Array]]:
  """An empty KV cache: one {k, v} of shape [B, K, S, E] per layer.

  Heads before slots makes the attention dots plain batched matmuls over (B, K), so the
  cache is never transposed while decoding.
  """
  dtype = dtype or cfg.dtype
  shape = (batch, cfg.num_kv_heads, length, cfg.head_size)
  return [dict(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))
          for _ in range(cfg.num_layers)]


def _dot(eq: str, x: Array, w: Array, dtype, out_dtype=None) -> Array:
  """einsum in `dtype` with fp32 accumulation (bf16 dots stay bf16 in memory only)."""
  dtype = jnp.dtype(dtype)
  out = jnp.einsum(eq, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
  return out.astype(out_dtype or dtype)


def _param(module: nn.Module, name: str, init, shape, axes, cfg: QwenConfig):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape,
                      jnp.dtype(cfg.param_dtype))


# ----------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
  cfg: QwenConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("norm",), self.cfg)
    # Normalise in fp32, cast back before the scale, as HF Qwen2RMSNorm does.
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.rms_norm_eps)
    return scale.astype(self.cfg.dtype) * x32.astype(self.cfg.dtype)


def _write(cache_BKSE: Array, x_BKTE: Array, index) -> Array:
  """cache with x written at slots [index, index + T): one index for the batch, or one per
  row (a continuous-batching engine's slots each decode at their own position)."""
  x_BKTE = x_BKTE.astype(cache_BKSE.dtype)
  if jnp.ndim(index) == 0:
    return jax.lax.dynamic_update_slice_in_dim(cache_BKSE, x_BKTE, index, 2)
  row = lambda c_KSE, x_KTE, i: jax.lax.dynamic_update_slice_in_dim(c_KSE, x_KTE, i, 1)
  return jax.vmap(row)(cache_BKSE, x_BKTE, index)


class Attention(nn.Module):
  cfg: QwenConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, allowed_BTS, cache, cache_index):
    cfg = self.cfg
    d, h, k, e = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_size
    dt = jnp.dtype(cfg.dtype)
    init = nn.initializers.normal(cfg.initializer_range)
    wq = _param(self, "q_kernel", init, (d, h, e), ("embed", "heads", "head_dim"), cfg)
    wk = _param(self, "k_kernel", init, (d, k, e), ("embed", "kv_heads", "head_dim"), cfg)
    wv = _param(self, "v_kernel", init, (d, k, e), ("embed", "kv_heads", "head_dim"), cfg)
    if cfg.qkv_bias:  # Created before o_kernel: the order of params fixes their init keys.
      zeros = nn.initializers.zeros
      bq = _param(self, "q_bias", zeros, (h, e), ("heads", "head_dim"), cfg).astype(dt)
      bk = _param(self, "k_bias", zeros, (k, e), ("kv_heads", "head_dim"), cfg).astype(dt)
      bv = _param(self, "v_bias", zeros, (k, e), ("kv_heads", "head_dim"), cfg).astype(dt)
    else:
      bq = bk = bv = jnp.zeros((), dt)
    wo = _param(self, "o_kernel", init, (h, e, d), ("heads", "head_dim", "embed"), cfg)

    x_BTD = x_BTD.astype(dt)
    q_BTHE = _dot("btd,dhe->bthe", x_BTD, wq, dt) + bq
    k_BTKE = _dot("btd,dke->btke", x_BTD, wk, dt) + bk
    v_BTKE = _dot("btd,dke->btke", x_BTD, wv, dt) + bv
    if cfg.qk_norm:  # Qwen3: RMSNorm over each head's E, before RoPE.
      q_BTHE = RMSNorm(cfg, name="q_norm")(q_BTHE)
      k_BTKE = RMSNorm(cfg, name="k_norm")(k_BTKE)
    q_BTHE = rope(q_BTHE, positions_BT, cfg.rope_theta)
    k_BTKE = rope(k_BTKE, positions_BT, cfg.rope_theta)

    k_BKTE, v_BKTE = k_BTKE.transpose(0, 2, 1, 3), v_BTKE.transpose(0, 2, 1, 3)
    if cache is not None:
      # Write this chunk at slots [cache_index, cache_index + T) and attend over the cache.
      cache = dict(k=_write(cache["k"], k_BKTE, cache_index), v=_write(cache["v"], v_BKTE, cache_index))
      k_BKSE, v_BKSE = cache["k"].astype(dt), cache["v"].astype(dt)
    else:
      k_BKSE, v_BKSE = k_BKTE, v_BKTE

    b, t = x_BTD.shape[:2]
    q_BTKGE = q_BTHE.reshape(b, t, k, h // k, e)
    # Plain einsums here: XLA:CPU has no batched bf16 x bf16 -> f32 dot.
    logits_BKGTS = jnp.einsum("btkge,bkse->bkgts", q_BTKGE, k_BKSE).astype(jnp.float32)
    logits_BKGTS = logits_BKGTS / jnp.sqrt(jnp.float32(e))
    logits_BKGTS = jnp.where(allowed_BTS[:, None, None], logits_BKGTS, _MASK_VALUE)
    probs_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1).astype(dt)
    # Batch dims leading in the output too: XLA:CPU is 2-7x slower writing "btkge" directly.
    out_BKGTE = jnp.einsum("bkgts,bkse->bkgte", probs_BKGTS, v_BKSE)
    out_BTHE = out_BKGTE.transpose(0, 3, 1, 2, 4).reshape(b, t, h, e)
    return _dot("bthe,hed->btd", out_BTHE, wo, dt), cache


class MLP(nn.Module):
  cfg: QwenConfig

  @nn.compact
  def __call__(self, x_BTD):
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    init = nn.initializers.normal(cfg.initializer_range)
    d, f = cfg.hidden_size, cfg.intermediate_size
    w_gate = _param(self, "gate_kernel", init, (d, f), ("embed", "mlp"), cfg)
    w_up = _param(self, "up_kernel", init, (d, f), ("embed", "mlp"), cfg)
    w_down = _param(self, "down_kernel", init, (f, d), ("mlp", "embed"), cfg)
    x_BTD = x_BTD.astype(dt)
    gate_BTF = _dot("btd,df->btf", x_BTD, w_gate, dt)
    up_BTF = _dot("btd,df->btf", x_BTD, w_up, dt)
    h_BTF = nn.with_logical_constraint(jax.nn.silu(gate_BTF) * up_BTF, ("act_batch", "act_length", "act_mlp"))
    return _dot("btf,fd->btd", h_BTF, w_down, dt)


class Block(nn.Module):
  cfg: QwenConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, allowed_BTS, cache, cache_index, deterministic):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
    attn_BTD, cache = Attention(cfg, name="attn")(
        RMSNorm(cfg, name="input_norm")(x_BTD), positions_BT, allowed_BTS, cache, cache_index)
    x_BTD = x_BTD + drop(attn_BTD)
    x_BTD = x_BTD + drop(MLP(cfg, name="mlp")(RMSNorm(cfg, name="post_attn_norm")(x_BTD)))
    return nn.with_logical_constraint(x_BTD, ("act_batch", "act_length", "act_embed")), cache


class Qwen(nn.Module):
  """Causal LM. `__call__` returns (logits_BTV, hidden_BTD, new_cache)."""
  cfg: QwenConfig

  @nn.compact
  def __call__(self, tokens_BT, positions_BT=None, kv_mask_BS=None, cache=None,
               cache_index=0, deterministic=True, last_only=False, segment_ids_BT=None,
               branch_ids_BT=None):
    """Runs the decoder.

    Args:
      tokens_BT: token ids.
      positions_BT: RoPE positions; derived from kv_mask_BS when omitted (no cache).
      kv_mask_BS: 1 for keys that may be attended to. Without a cache S == T and this is
        the attention (padding) mask; with a cache S is the cache length.
      cache: from `init_cache`, or None for a full pass.
      cache_index: cache slot of tokens_BT[:, 0]: one for the batch, or one per row [B].
      deterministic: False enables dropout (needs a 'dropout' rng).
      last_only: compute logits for the last position only (prefill before sampling).
      segment_ids_BT: packed rows (full pass only): each token attends only within its
        segment, and positions (when omitted) restart at each segment's first token.
      branch_ids_BT: with segment_ids_BT, a segment that is one prompt and its K responses
        (pipeline.pack_comparisons): 0 on the shared prompt, k on the k-th response. A
        token attends to the prompt and to its own response only, and positions (when
        omitted) count the keys it sees, so each response continues from its prompt.
    """
    cfg = self.cfg
    if kv_mask_BS is None:
      kv_mask_BS = jnp.ones(tokens_BT.shape, jnp.int32)
    if segment_ids_BT is not None and cache is not None:
      raise ValueError("segment_ids_BT is for a full pass over packed rows, not a cached decode")
    if branch_ids_BT is not None and segment_ids_BT is None:
      raise ValueError("branch_ids_BT needs segment_ids_BT: branches share a segment's prompt")
    embed_VD = _param(self, "embed", nn.initializers.normal(cfg.initializer_range),
                      (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg)
    x_BTD = jnp.take(embed_VD, tokens_BT, axis=0).astype(cfg.dtype)
    x_BTD = nn.with_logical_constraint(x_BTD, ("act_batch", "act_length", "act_embed"))
    x_BTD = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)(x_BTD)

    # Causal over cache slots, and only to valid keys; shared by all layers.
    query_slot_BT = jnp.reshape(cache_index, (-1, 1)) + jnp.arange(tokens_BT.shape[1])
    causal_BTS = jnp.arange(kv_mask_BS.shape[1]) <= query_slot_BT[:, :, None]
    allowed_BTS = causal_BTS & kv_mask_BS[:, None, :].astype(bool)
    if segment_ids_BT is not None:
      allowed_BTS &= segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    if branch_ids_BT is not None:
      same_BTS = branch_ids_BT[:, :, None] == branch_ids_BT[:, None, :]
      allowed_BTS &= same_BTS | (branch_ids_BT[:, None, :] == 0)
    if positions_BT is None:
      positions_BT = (positions_from_mask(kv_mask_BS) if segment_ids_BT is None else
                      segment_positions(segment_ids_BT) if branch_ids_BT is None else
                      # A response's position continues from its prompt: the keys it sees, less one.
                      jnp.maximum(jnp.sum(allowed_BTS, axis=-1) - 1, 0))

    block = nn.remat(Block, static_argnums=(6,)) if cfg.remat else Block
    new_cache = [] if cache is not None else None
    for i in range(cfg.num_layers):
      x_BTD, layer_cache = block(cfg, name=f"layers_{i}")(
          x_BTD, positions_BT, allowed_BTS, None if cache is None else cache[i],
          cache_index, deterministic)
      if cache is not None:
        new_cache.append(layer_cache)
    hidden_BTD = RMSNorm(cfg, name="final_norm")(x_BTD)

    if last_only:
      hidden_BTD = hidden_BTD[:, -1:]
    out_dt = jnp.float32 if cfg.logits_fp32 else jnp.dtype(cfg.dtype)
    if cfg.tie_embeddings:
      head_DV = embed_VD.T
    else:
      head_DV = _param(self, "lm_head", nn.initializers.normal(cfg.initializer_range),
                       (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg)
    logits_BTV = _dot("btd,dv->btv", hidden_BTD, head_DV, cfg.dtype, out_dt)
    logits_BTV = nn.with_logical_constraint(logits_BTV, ("act_batch", "act_length", "act_vocab"))
    return logits_BTV, hidden_BTD, new_cache


def init_params(cfg: QwenConfig, key: Array, boxed: bool = False):
  """Random parameters. `boxed=True` keeps the LogicallyPartitioned metadata."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = Qwen(cfg).init(key, tokens)["params"]
  return params if boxed else nn.meta.unbox(params)


def logical_axes(cfg: QwenConfig):
  """Pytree of logical axis-name tuples, matching the param tree, without allocating."""
  boxed = jax.eval_shape(lambda k: init_params(cfg, k, boxed=True), jax.random.key(0))
  return nn.get_partition_spec(boxed)


def head_kernel(params, cfg: QwenConfig) -> Array:
  """The LM head as [D, V], for losses that apply it themselves (lm.head_logprobs)."""
  return params["embed"].T if cfg.tie_embeddings else params["lm_head"]


def param_count(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


# ----------------------------------------------------------------------------- scalar head
# Reward and value models: the decoder's final hidden state times a vector, plus a bias.
# Params are {"backbone": <decoder params>, "head": {"w": [D], "b": []}}.


def init_scalar_head(cfg: QwenConfig) -> dict[str, Array]:
  return {"w": jnp.zeros((cfg.hidden_size,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def scalar_outputs(params, cfg: QwenConfig, tokens_BT: Array, mask_BT: Array, **packed) -> Array:
  """A scalar per position, [B, T], in fp32. packed: Qwen's segment_ids_BT and branch_ids_BT."""
  _, hidden_BTD, _ = Qwen(cfg).apply({"params": params["backbone"]}, tokens_BT, kv_mask_BS=mask_BT,
                                     **packed)
  return hidden_BTD.astype(jnp.float32) @ params["head"]["w"] + params["head"]["b"]


def end_index(mask_BT: Array) -> Array:
  """Position of each row's last real token, whichever side the padding is on."""
  pos_BT = jnp.where(mask_BT.astype(bool), jnp.arange(mask_BT.shape[-1]), -1)
  return jnp.maximum(jnp.max(pos_BT, axis=-1), 0)


def sequence_scores(params, cfg: QwenConfig, tokens_BT: Array, mask_BT: Array) -> Array:
  """A reward model's score: the scalar at the last real token (`<|im_end|>`), [B]."""
  s_BT = scalar_outputs(params, cfg, tokens_BT, mask_BT)
  return jnp.take_along_axis(s_BT, end_index(mask_BT)[:, None], axis=-1)[:, 0]
