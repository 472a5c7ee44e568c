"""Token-level language-model quantities, shared by SFT, reward models, DPO and PPO."""

import jax
import jax.numpy as jnp


def token_logprobs(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
  """log p(target_t) under logits_t, in fp32."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]


def token_entropy(logits_BTV: jax.Array) -> jax.Array:
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp_BTV) * logp_BTV, axis=-1)


def masked_nll_sum(logits_BTV, targets_BT, weights_BT):
  """(sum of weighted NLL, sum of weights). Summed, so that microbatches and devices
  can be added up before one division: the mean is then exact whatever the split."""
  nll_BT = -token_logprobs(logits_BTV, targets_BT)
  w_BT = weights_BT.astype(jnp.float32)
  return jnp.sum(nll_BT * w_BT), jnp.sum(w_BT)
