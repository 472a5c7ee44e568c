"""lm.head_logprobs and head_logprobs_entropy (custom VJPs) against autodiff through the plain
log-softmax, and SFT's and PPO's losses through them against the full-logits path."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3jax.losses import lm
from r3jax.models import qwen
from r3jax.trainers import ppo as ppo_trainer, sft


def _entropy(logits):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def _plain(hidden, head, targets):
  logits = jnp.einsum("...d,dv->...v", hidden, head.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  return lm.token_logprobs(logits, targets)


class HeadLogprobsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_values_and_gradients_match_autodiff(self):
    k = jax.random.split(jax.random.key(0), 4)
    hidden, head = jax.random.normal(k[0], (3, 5, 16)), jax.random.normal(k[1], (16, 50))
    targets, w = jax.random.randint(k[2], (3, 5), 0, 50), jax.random.normal(k[3], (3, 5))
    objective = lambda f: lambda h, W: jnp.sum(f(h, W, targets) * w)
    got = self.variant(lm.head_logprobs)(hidden, head, targets)
    chex.assert_shape(got, (3, 5))
    chex.assert_type(got, jnp.float32)
    np.testing.assert_allclose(got, _plain(hidden, head, targets), rtol=1e-5, atol=1e-5)
    g_got = self.variant(jax.grad(objective(lm.head_logprobs), (0, 1)))(hidden, head)
    g_ref = jax.grad(objective(_plain), (0, 1))(hidden, head)
    for a, b in zip(g_got, g_ref):
      chex.assert_equal_shape([a, b])
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

  def test_bf16_hidden_and_tied_head(self):
    cfg = qwen.preset("tiny", num_layers=1, tie_embeddings=True)
    params = qwen.init_params(cfg, jax.random.key(1))
    head = qwen.head_kernel(params, cfg)
    chex.assert_shape(head, (cfg.hidden_size, cfg.vocab_size))
    hidden = jax.random.normal(jax.random.key(2), (4, cfg.hidden_size), jnp.bfloat16)
    targets = jnp.arange(4)
    got = lm.head_logprobs(hidden, head, targets)
    chex.assert_type(got, jnp.float32)
    np.testing.assert_allclose(got, _plain(hidden, head, targets), rtol=1e-3, atol=1e-3)
    g = jax.grad(lambda h: jnp.sum(lm.head_logprobs(h, head, targets)))(hidden)
    chex.assert_type(g, jnp.bfloat16)

  @chex.variants(with_jit=True, without_jit=True)
  def test_entropy_head_values_and_gradients_match_autodiff(self):
    k = jax.random.split(jax.random.key(3), 5)
    # Logits of std ~1, as a trained model's: std 4 would test fp32 cancellation, not the VJP.
    hidden, head = jax.random.normal(k[0], (3, 5, 16)), 0.25 * jax.random.normal(k[1], (16, 50))
    targets = jax.random.randint(k[2], (3, 5), 0, 50)
    w_lp, w_ent = jax.random.normal(k[3], (3, 5)), jax.random.normal(k[4], (3, 5))

    def plain(h, W, t):
      logits = jnp.einsum("...d,dv->...v", h, W, preferred_element_type=jnp.float32)
      return lm.token_logprobs(logits, t), _entropy(logits)

    def objective(f):
      def obj(h, W):
        lp, ent = f(h, W, targets)
        return jnp.sum(lp * w_lp) + jnp.sum(ent * w_ent)
      return obj

    got, want = self.variant(lm.head_logprobs_entropy)(hidden, head, targets), plain(hidden, head, targets)
    for a, b in zip(got, want):
      chex.assert_shape(a, (3, 5))
      chex.assert_type(a, jnp.float32)
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    g_got = self.variant(jax.grad(objective(lm.head_logprobs_entropy), (0, 1)))(hidden, head)
    g_ref = jax.grad(objective(plain), (0, 1))(hidden, head)
    for a, b in zip(g_got, g_ref):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _tiny(tie):
  cfg = qwen.preset("tiny", tie_embeddings=tie)
  params = qwen.init_params(cfg, jax.random.key(4))
  tokens = jax.random.randint(jax.random.key(5), (2, 12), 0, cfg.vocab_size)
  mask = jnp.ones((2, 12), jnp.int32).at[0, :3].set(0)  # Row 0 left-padded.
  return cfg, params, tokens, mask


def _assert_trees_close(a, b, tol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


@pytest.mark.slow
@pytest.mark.parametrize("tie", [False, True])
def test_sft_loss_and_grads_equal_the_full_logits_path(tie):
  """The lean head is a pure refactor of SFT's loss: same value, same gradients (#18)."""
  cfg, params, tokens, mask = _tiny(tie)
  loss_mask = mask.at[:, :6].set(0)
  batch = {"tokens": tokens, "attn_mask": mask, "loss_mask": loss_mask}

  def full_logits(p):
    logits, _, _ = qwen.Qwen(cfg).apply({"params": p}, tokens[:, :-1], kv_mask_BS=mask[:, :-1])
    w = loss_mask[:, 1:].astype(jnp.float32)
    return -jnp.sum(lm.token_logprobs(logits, tokens[:, 1:]) * w) / jnp.sum(w)

  lean = lambda p: (lambda nll, aux: nll / aux[0])(*sft.loss_fn(p, batch, jax.random.key(0), model_cfg=cfg, deterministic=True))
  np.testing.assert_allclose(jax.jit(lean)(params), full_logits(params), rtol=1e-5, atol=1e-5)
  _assert_trees_close(jax.jit(jax.grad(lean))(params), jax.grad(full_logits)(params))


@pytest.mark.slow
@pytest.mark.parametrize("tie", [False, True])
def test_ppo_logprobs_entropy_and_grads_equal_the_full_logits_path(tie):
  cfg, params, seq, mask = _tiny(tie)
  p_len = 5
  w = jax.random.normal(jax.random.key(6), (2, 12 - p_len))

  def full_logits(p):
    logits, _, _ = qwen.Qwen(cfg).apply({"params": p}, seq, kv_mask_BS=mask)
    logits = logits[:, p_len - 1:-1]
    return lm.token_logprobs(logits, seq[:, p_len:]), _entropy(logits)

  lean = lambda p: ppo_trainer.response_logprobs(p, cfg, seq, mask, p_len)
  _assert_trees_close(jax.jit(lean)(params), full_logits(params))
  obj = lambda f: lambda p: (lambda lp, ent: jnp.sum(lp * w) - 0.01 * jnp.sum(ent * w))(*f(p))
  _assert_trees_close(jax.jit(jax.grad(obj(lean)))(params), jax.grad(obj(full_logits))(params))
