"""LoRA: the merged kernels, the starting point (= base), and where gradients go."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3jax.models import lora, qwen


def _base():
  cfg = qwen.preset("tiny", vocab_size=64, num_layers=2)
  return cfg, qwen.init_params(cfg, jax.random.key(0))


def test_merge_starts_at_base_and_adds_scaled_low_rank_delta():
  cfg, params = _base()
  ad = lora.init(jax.random.key(1), params, ("q_kernel", "v_kernel"), rank=4)
  assert set(ad["layers_0"]["attn"]) == {"q_kernel", "v_kernel"}
  merged = lora.merge(params, ad, alpha=8.0)
  for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
    np.testing.assert_array_equal(x, y)  # B = 0: exactly the base model.

  ad = jax.tree.map(lambda x: x + 0.1, ad)
  merged = lora.merge(params, ad, alpha=8.0)
  w = params["layers_1"]["attn"]["q_kernel"]
  a, b = ad["layers_1"]["attn"]["q_kernel"]["a"], ad["layers_1"]["attn"]["q_kernel"]["b"]
  want = np.asarray(w) + 2.0 * (np.asarray(a) @ np.asarray(b)).reshape(w.shape)  # alpha/r = 2.
  np.testing.assert_allclose(merged["layers_1"]["attn"]["q_kernel"], want, atol=1e-6)
  np.testing.assert_array_equal(merged["layers_1"]["attn"]["k_kernel"], params["layers_1"]["attn"]["k_kernel"])


def test_gradients_reach_only_adapters():
  cfg, params = _base()
  ad = lora.init(jax.random.key(1), params, ("q_kernel", "v_kernel"), rank=4)
  tokens = jax.random.randint(jax.random.key(2), (2, 8), 0, 64)

  def loss(ad):
    logits, _, _ = qwen.Qwen(cfg).apply({"params": lora.merge(params, ad, 8.0)}, tokens)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  g = jax.grad(loss)(ad)
  assert jax.tree.structure(g) == jax.tree.structure(ad)
  v = g["layers_0"]["attn"]["v_kernel"]
  assert float(jnp.abs(v["b"]).max()) > 0  # B gets gradient from the start ...
  assert float(jnp.abs(v["a"]).max()) == 0  # ... A only once B is non-zero.
  assert qwen.param_count(ad) == 2 * 2 * (4 * cfg.hidden_size + 4 * cfg.num_heads * cfg.head_size) - \
      2 * 4 * (cfg.num_heads - cfg.num_kv_heads) * cfg.head_size


def test_unknown_target_is_an_error():
  _, params = _base()
  with pytest.raises(ValueError, match="match no parameter"):
    lora.init(jax.random.key(0), params, ("qkv",), rank=4)
