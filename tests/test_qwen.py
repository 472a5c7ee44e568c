"""Model parity with transformers' Qwen2, HF import/export, cache and dtype policy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from r3jax.models import hf, qwen
from helpers import left_padded_batch, make_hf_qwen


def torch_logits(model, ids, mask):
  with torch.no_grad():
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(pos)).logits.float().numpy()


def ours_logits(cfg, params, ids, mask):
  logits, _, _ = qwen.Qwen(cfg).apply({"params": params}, jnp.asarray(ids),
                                      kv_mask_BS=jnp.asarray(mask))
  return np.asarray(logits)


def masked_maxdiff(a, b, mask):
  return float((np.abs(a - b) * mask[..., None]).max())


@pytest.mark.parametrize("tie,kv_heads", [(False, 2), (True, 2), (False, 4)],
                         ids=["gqa-untied", "gqa-tied", "mha-untied"])
def test_hf_parity_and_export_roundtrip(tmp_path, tie, kv_heads):
  ref = make_hf_qwen(tmp_path / "hf", tie=tie, kv_heads=kv_heads)
  cfg, params = hf.load(str(tmp_path / "hf"))
  assert cfg.tie_embeddings == tie and cfg.num_kv_heads == kv_heads
  assert ("lm_head" in params) == (not tie)
  ids, mask = left_padded_batch()
  want = torch_logits(ref, ids, mask)
  got = ours_logits(cfg, params, ids, mask)
  assert masked_maxdiff(got, want, mask) <= 1e-4

  # Export and reload with transformers itself.
  from transformers import AutoModelForCausalLM
  hf.export(params, cfg, str(tmp_path / "out"))
  back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  assert masked_maxdiff(torch_logits(back, ids, mask), want, mask) <= 1e-5


def test_sharded_and_bf16_load(tmp_path):
  ref = make_hf_qwen(tmp_path / "hf")
  cfg, params = hf.load(str(tmp_path / "hf"))
  hf.export(params, cfg, str(tmp_path / "sharded"), max_shard_bytes=20_000)
  assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
  cfg2, params2 = hf.load(str(tmp_path / "sharded"))
  chex.assert_trees_all_equal(params, params2)

  cfg16, params16 = hf.load(str(tmp_path / "hf"), param_dtype="bfloat16", dtype="bfloat16")
  chex.assert_trees_all_equal_dtypes(params16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
  ids, mask = left_padded_batch()
  got = ours_logits(cfg16, params16, ids, mask)
  assert got.dtype == np.float32  # logits_fp32 default.
  # bf16 weights and activations: close to fp32, not equal.
  assert masked_maxdiff(got, torch_logits(ref, ids, mask), mask) < 0.1


def test_missing_checkpoint_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    hf.load(str(tmp_path))


class CacheTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_incremental_decoding_matches_full_pass(self):
    cfg = qwen.preset("tiny", vocab_size=97)
    params = qwen.init_params(cfg, jax.random.key(1))
    ids, mask = left_padded_batch(vocab=97)
    full = ours_logits(cfg, params, ids, mask)
    model = qwen.Qwen(cfg)
    b, t = ids.shape
    split = 7  # Prefill 7 tokens, then feed the rest one at a time.
    cache = qwen.init_cache(cfg, b, t)
    pos = qwen.positions_from_mask(jnp.asarray(mask))
    fwd = self.variant(lambda p, x, ps, m, c, i: model.apply({"params": p}, x, ps, m, c, i))
    logits, _, cache = fwd(params, jnp.asarray(ids[:, :split]), pos[:, :split], jnp.asarray(mask),
                           cache, 0)
    steps = [np.asarray(logits)]
    for i in range(split, t):
      logits, _, cache = fwd(params, jnp.asarray(ids[:, i:i + 1]), pos[:, i:i + 1],
                             jnp.asarray(mask), cache, jnp.int32(i))
      steps.append(np.asarray(logits))
    inc = np.concatenate(steps, axis=1)
    chex.assert_shape(inc, (b, t, 97))
    assert masked_maxdiff(inc, full, mask) <= 1e-5


def test_dtype_policy_and_rope_in_fp32():
  cfg = qwen.preset("tiny", param_dtype="float32", dtype="bfloat16", logits_fp32=False)
  params = qwen.init_params(cfg, jax.random.key(0))
  ids = jnp.ones((2, 5), jnp.int32)
  logits, hidden, _ = qwen.Qwen(cfg).apply({"params": params}, ids)
  chex.assert_type([logits, hidden], jnp.bfloat16)
  logits32, _, _ = qwen.Qwen(cfg.replace(logits_fp32=True)).apply({"params": params}, ids)
  chex.assert_type(logits32, jnp.float32)
  # bf16 has an 8-bit mantissa: a bf16 angle at position 1000 would be off by several
  # radians. Rotating a bf16 input must agree with the fp32 rotation to bf16 precision.
  x = jax.random.normal(jax.random.key(0), (1, 1, 1, 64))
  pos = jnp.array([[1000]])
  got = qwen.rope(x.astype(jnp.bfloat16), pos, 1e6).astype(jnp.float32)
  want = qwen.rope(x, pos, 1e6)
  assert float(jnp.abs(got - want).max()) < 0.05


def test_remat_and_dropout():
  cfg = qwen.preset("tiny", dropout_rate=0.1)
  params = qwen.init_params(cfg, jax.random.key(0))
  ids = jax.random.randint(jax.random.key(1), (2, 6), 0, cfg.vocab_size)

  def loss(p, c, rng):
    logits, _, _ = qwen.Qwen(c).apply({"params": p}, ids, deterministic=False,
                                      rngs={"dropout": rng})
    return jnp.mean(logits ** 2)

  g1 = jax.grad(loss)(params, cfg, jax.random.key(2))
  g2 = jax.grad(loss)(params, cfg.replace(remat=True), jax.random.key(2))
  chex.assert_trees_all_close(g1, g2, atol=1e-6)
  assert float(loss(params, cfg, jax.random.key(2))) != float(loss(params, cfg, jax.random.key(3)))


def test_every_param_has_logical_axes():
  cfg = qwen.preset("tiny")
  axes = qwen.logical_axes(cfg)
  params = qwen.init_params(cfg, jax.random.key(0))
  names = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm"}
  for (path, spec), p in zip(jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                             jax.tree.leaves(params)):
    assert len(spec) == p.ndim and set(spec) <= names, (path, spec)


def test_presets_and_hf_config():
  assert qwen.preset("qwen-7b").hidden_size == 4096
  assert qwen.preset("qwen-14b").num_layers == 40
  cfg = qwen.config_from_hf({"vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24,
                             "num_attention_heads": 14, "num_key_value_heads": 2,
                             "intermediate_size": 4864, "rope_theta": 1000000.0,
                             "tie_word_embeddings": True})
  assert cfg.head_size == 64 and cfg.tie_embeddings and cfg.rope_theta == 1e6
  with pytest.raises(ValueError, match="unknown model preset"):
    qwen.preset("nope")
