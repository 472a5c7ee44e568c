"""lm.head_logprobs (a custom VJP) against autodiff through the plain log-softmax."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from r3jax.losses import lm
from r3jax.models import qwen


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
