"""Token-level language-model quantities, shared by SFT, reward models, DPO and PPO."""

import jax
import jax.numpy as jnp


def token_logprobs(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
  """log p(target_t) under logits_t, in fp32."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]


def head_logprobs(hidden_TD: jax.Array, head_DV: jax.Array, targets_T: jax.Array) -> jax.Array:
  """token_logprobs(hidden @ head, targets) over any leading dims, in fp32, without
  keeping the [..., V] logits for the backward pass (see `_head_logprobs`)."""
  d = hidden_TD.shape[-1]
  lp = _head_logprobs(hidden_TD.reshape(-1, d), head_DV, targets_T.reshape(-1))
  return lp.reshape(targets_T.shape)


@jax.custom_vjp
def _head_logprobs(hidden_ND, head_DV, targets_N):
  """The backward pass recomputes the logits instead of reading them back: one more
  matmul, but no [N, V] residual, no scatter for the gather's gradient and no transposed
  copy of the logits' gradient, which on CPU cost more than the matmul (bench/dpo_step)."""
  return _head_fwd(hidden_ND, head_DV, targets_N)[0]


def _head_logits(hidden_ND, head_DV):
  # The model's own head: inputs in the compute dtype, fp32 accumulation and logits.
  return jnp.einsum("nd,dv->nv", hidden_ND, head_DV.astype(hidden_ND.dtype),
                    preferred_element_type=jnp.float32)


def _head_fwd(hidden_ND, head_DV, targets_N):
  logits_NV = _head_logits(hidden_ND, head_DV)
  lse_N = jax.nn.logsumexp(logits_NV, axis=-1)
  target_N = jnp.take_along_axis(logits_NV, targets_N[:, None], axis=-1)[:, 0]
  return target_N - lse_N, (hidden_ND, head_DV, targets_N, lse_N)


def _head_bwd(res, g_N):
  hidden_ND, head_DV, targets_N, lse_N = res
  logits_NV = _head_logits(hidden_ND, head_DV)
  onehot_NV = jnp.arange(logits_NV.shape[-1])[None, :] == targets_N[:, None]
  dlogits_NV = g_N[:, None] * (onehot_NV - jnp.exp(logits_NV - lse_N[:, None]))
  return _head_grads(hidden_ND, head_DV, dlogits_NV)


_head_logprobs.defvjp(_head_fwd, _head_bwd)


def head_logprobs_entropy(hidden_TD: jax.Array, head_DV: jax.Array, targets_T: jax.Array):
  """(head_logprobs, entropy of softmax(hidden @ head)) over any leading dims, in fp32, with
  the same backward as `head_logprobs`: no [..., V] residual (PPO's policy loss)."""
  d = hidden_TD.shape[-1]
  lp, ent = _head_lp_ent(hidden_TD.reshape(-1, d), head_DV, targets_T.reshape(-1))
  return lp.reshape(targets_T.shape), ent.reshape(targets_T.shape)


@jax.custom_vjp
def _head_lp_ent(hidden_ND, head_DV, targets_N):
  return _lp_ent_fwd(hidden_ND, head_DV, targets_N)[0]


def _lp_ent_fwd(hidden_ND, head_DV, targets_N):
  logits_NV = _head_logits(hidden_ND, head_DV)
  lse_N = jax.nn.logsumexp(logits_NV, axis=-1)
  target_N = jnp.take_along_axis(logits_NV, targets_N[:, None], axis=-1)[:, 0]
  # H = lse - E_p[z]: one pass over the logits, no [N, V] log-probs kept.
  ent_N = lse_N - jnp.sum(jnp.exp(logits_NV - lse_N[:, None]) * logits_NV, axis=-1)
  return (target_N - lse_N, ent_N), (hidden_ND, head_DV, targets_N, lse_N, ent_N)


def _lp_ent_bwd(res, g):
  hidden_ND, head_DV, targets_N, lse_N, ent_N = res
  g_lp_N, g_ent_N = g
  logits_NV = _head_logits(hidden_ND, head_DV)
  logp_NV = logits_NV - lse_N[:, None]
  p_NV = jnp.exp(logp_NV)
  onehot_NV = jnp.arange(logits_NV.shape[-1])[None, :] == targets_N[:, None]
  # dH/dz_j = -p_j (log p_j + H).
  dlogits_NV = (g_lp_N[:, None] * (onehot_NV - p_NV)
                - g_ent_N[:, None] * p_NV * (logp_NV + ent_N[:, None]))
  return _head_grads(hidden_ND, head_DV, dlogits_NV)


def _head_grads(hidden_ND, head_DV, dlogits_NV):
  d_hidden = jnp.einsum("nv,dv->nd", dlogits_NV, head_DV.astype(jnp.float32))
  d_head = jnp.einsum("nd,nv->dv", hidden_ND.astype(jnp.float32), dlogits_NV)
  return d_hidden.astype(hidden_ND.dtype), d_head.astype(head_DV.dtype), None


_head_lp_ent.defvjp(_lp_ent_fwd, _lp_ent_bwd)


def masked_nll_sum(hidden_BTD, head_DV, targets_BT, weights_BT):
  """(sum of weighted NLL of the logits hidden @ head, sum of weights), through the lean
  head. Summed, so that microbatches and devices can be added up before one division: the
  mean is then exact whatever the split."""
  nll_BT = -head_logprobs(hidden_BTD, head_DV, targets_BT)
  w_BT = weights_BT.astype(jnp.float32)
  return jnp.sum(nll_BT * w_BT), jnp.sum(w_BT)
