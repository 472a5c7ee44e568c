"""RL's array operations, pure functions on [B, T] batches: masked statistics, token
rewards, GAE (Schulman et al. 2016) and group baselines, loss aggregation, PPO's clipped
policy and value losses (Schulman et al. 2017), running score moments and the adaptive KL
controller (Ziegler et al. 2019). rl/algorithms.py builds the registered methods from them.

Shapes: B sequences, T response tokens. `mask_BT` is 1 on response tokens (a
contiguous prefix of each row, the stop token included) and 0 on padding.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


def masked_mean(x, mask, axis=None):
  mask = mask.astype(x.dtype)
  return jnp.sum(x * mask, axis) / jnp.maximum(jnp.sum(mask, axis), 1.0)


def masked_var(x, mask):
  """The unbiased (Bessel-corrected) variance of the masked entries, as TRL's and verl's
  `masked_var(unbiased=True)` compute it; 0 for fewer than two entries."""
  mean = masked_mean(x, mask)
  n = jnp.sum(mask.astype(x.dtype))
  return masked_mean(jnp.square(x - mean), mask) * n / jnp.maximum(n - 1.0, 1.0)


def masked_whiten(x, mask, shift_mean: bool = True, eps: float = 1e-8):
  """(x - mean) / sqrt(var + eps) over the masked entries, with the unbiased variance (TRL's
  and verl's `masked_whiten`); padding comes out 0."""
  mean = masked_mean(x, mask)
  var = masked_var(x, mask)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return out * mask


def last_index(mask_BT):
  """Index of each row's last response token (0 for an empty row)."""
  return jnp.maximum(jnp.sum(mask_BT.astype(jnp.int32), axis=-1) - 1, 0)


def token_rewards(score_B, kl_BT, mask_BT, beta):
  """r_t = -β·kl_t on response tokens, plus the sequence score on the last one."""
  r_BT = -beta * kl_BT * mask_BT
  onehot_BT = jax.nn.one_hot(last_index(mask_BT), mask_BT.shape[-1], dtype=r_BT.dtype)
  return r_BT + onehot_BT * score_B[:, None] * (jnp.sum(mask_BT, -1, keepdims=True) > 0)


def overlong_penalty(length_B, max_len: int, cache: int):
  """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to max_len - cache
  tokens, then falling linearly to -1 at max_len (and -1 beyond)."""
  over_B = (length_B - (max_len - cache)) / cache
  return -jnp.clip(over_B, 0.0, 1.0)


def gae(rewards_BT, values_BT, mask_BT, gamma: float, lam: float):
  """Masked generalised advantage estimation. Returns (advantages_BT, returns_BT).

  δ_t = r_t + γ V_{t+1} - V_t and A_t = δ_t + γλ A_{t+1}, with V and A zero after the last
  response token; padding gets zero advantage and return.
  """
  mask_BT = mask_BT.astype(rewards_BT.dtype)
  values_BT = values_BT * mask_BT
  next_values_BT = jnp.concatenate([values_BT[:, 1:], jnp.zeros_like(values_BT[:, :1])], 1)
  deltas_BT = rewards_BT + gamma * next_values_BT - values_BT
  next_mask_BT = jnp.concatenate([mask_BT[:, 1:], jnp.zeros_like(mask_BT[:, :1])], 1)

  def step(adv_next_B, xs):
    delta_B, m_B, m_next_B = xs
    adv_B = (delta_B + gamma * lam * adv_next_B * m_next_B) * m_B
    return adv_B, adv_B

  _, adv_TB = jax.lax.scan(step, jnp.zeros_like(rewards_BT[:, 0]),
                           (deltas_BT.T, mask_BT.T, next_mask_BT.T), reverse=True)
  adv_BT = adv_TB.T
  return adv_BT, (adv_BT + values_BT) * mask_BT


def group_scores(score_B, n: int):
  """[B] -> [B / n, n]: each prompt's n samples, prompt-major as the sampler orders them."""
  if n < 2:
    raise ValueError(f"a group baseline needs at least 2 samples per prompt (rollout.n={n})")
  if score_B.shape[0] % n:
    raise ValueError(f"{score_B.shape[0]} scores do not split into groups of {n}")
  return score_B.reshape(-1, n)


def group_advantages(score_B, n: int, scale: bool, eps: float = 1e-6):
  """GRPO's (r - mean) / (std + eps) within each prompt's group, or Dr. GRPO's r - mean
  without the std (scale=False). The std is the sample std (ddof=1), as TRL, verl and Tunix
  compute it; eps is verl's and Tunix's (TRL adds 1e-4). A group of equal scores gets 0,
  never NaN."""
  g_GN = group_scores(score_B, n)
  # Shifted by each group's first score first: the same advantages, but a group of equal
  # scores centres to exactly 0 (fp32's mean of eight 0.7s is not 0.7, and the std's eps
  # would turn that rounding into advantages of 0.06).
  g_GN = g_GN - g_GN[:, :1]
  adv_GN = g_GN - jnp.mean(g_GN, -1, keepdims=True)
  if scale:
    adv_GN = adv_GN / (jnp.std(g_GN, -1, keepdims=True, ddof=1) + eps)
  return adv_GN.reshape(-1)


def best_of_group_advantages(score_B, n: int, eps: float = 1e-6):
  """GRPO's pass@k variant (verl's grpo_passk, after arXiv:2503.19595): only each group's
  best sample gets an advantage, (r_max - r_second) / (group std + eps), so the update
  rewards the sample that makes pass@k, not every good one; ties go to the first sample."""
  g_GN = group_scores(score_B, n)
  top2_G2 = jax.lax.top_k(g_GN, 2)[0]
  best_GN = jax.nn.one_hot(jnp.argmax(g_GN, -1), n, dtype=g_GN.dtype)
  gap_G = (top2_G2[:, 0] - top2_G2[:, 1]) / (jnp.std(g_GN, -1, ddof=1) + eps)
  return (best_GN * gap_G[:, None]).reshape(-1)


def leave_one_out(score_B, n: int):
  """RLOO: r_i minus the mean of the other n - 1 samples of its prompt."""
  g_GN = group_scores(score_B, n)
  return (g_GN - (jnp.sum(g_GN, -1, keepdims=True) - g_GN) / (n - 1)).reshape(-1)


def aggregate(x_BT, mask_BT, how: str = "token_mean"):
  """A per-token loss to a scalar: token_mean over all response tokens of the batch;
  seq_mean (GRPO's paper): each sequence's token mean, then the mean over sequences;
  token_sum (Dr. GRPO): the token sum over a constant, rows × T, so that length does not
  rescale a sequence's gradient."""
  mask_BT = mask_BT.astype(x_BT.dtype)
  if how == "token_mean":
    return masked_mean(x_BT, mask_BT)
  if how == "seq_mean":
    return jnp.mean(masked_mean(x_BT, mask_BT, axis=-1))
  if how == "token_sum":
    return jnp.sum(x_BT * mask_BT) / (x_BT.shape[0] * x_BT.shape[1])
  raise ValueError(f"unknown loss aggregation {how!r}; expected token_mean, seq_mean or token_sum")


AGGREGATIONS = ("token_mean", "seq_mean", "token_sum")


def policy_loss(logp_BT, old_logp_BT, adv_BT, mask_BT, eps_low: float, eps_high: float | None = None,
                dual_clip: float = 0.0, agg: str = "token_mean"):
  """PPO-clip (Schulman et al. 2017, eq. 7) with the ratio clipped to [1 - eps_low,
  1 + eps_high] (DAPO's clip-higher when eps_high > eps_low, Yu et al. 2025 §3.1) and, where
  dual_clip = c > 1, the loss of a negative advantage capped at -A·c (dual-clip PPO, Ye et
  al. 2020 §4.1; verl's clip_ratio_c). Aggregated over response tokens by `agg`. Returns
  (loss, metrics)."""
  eps_high = eps_low if eps_high is None else eps_high
  log_ratio_BT = logp_BT - old_logp_BT
  ratio_BT = jnp.exp(log_ratio_BT)
  unclipped_BT = -adv_BT * ratio_BT
  clipped_BT = -adv_BT * jnp.clip(ratio_BT, 1.0 - eps_low, 1.0 + eps_high)
  loss_BT = jnp.maximum(unclipped_BT, clipped_BT)
  lower_BT = jnp.zeros_like(loss_BT)
  if dual_clip:
    capped_BT = jnp.minimum(loss_BT, -adv_BT * dual_clip)
    lower_BT = ((adv_BT < 0) & (loss_BT > -adv_BT * dual_clip)).astype(jnp.float32)
    loss_BT = jnp.where(adv_BT < 0, capped_BT, loss_BT)
  loss = aggregate(loss_BT, mask_BT, agg)
  metrics = {
      "policy/clipfrac": masked_mean((clipped_BT > unclipped_BT).astype(jnp.float32), mask_BT),
      "policy/clipfrac_lower": masked_mean(lower_BT, mask_BT),  # Dual-clip's share.
      # k3 of the new policy against the rollout policy: the usual "approx_kl".
      "policy/approx_kl": masked_mean(jnp.expm1(-log_ratio_BT) + log_ratio_BT, mask_BT),
      "policy/ratio": masked_mean(ratio_BT, mask_BT),
  }
  return loss, metrics


def cispo_loss(logp_BT, old_logp_BT, adv_BT, mask_BT, eps_low: float, eps_high: float,
               agg: str = "token_mean"):
  """CISPO (MiniMax 2025, "MiniMax-M1" §3.1, eq. 4): -sg(clip(ρ, 1 - eps_low, 1 + eps_high))
  · A · log π per token. The clip bounds the importance weight, not the update, so every
  token keeps a gradient. Returns (loss, metrics)."""
  log_ratio_BT = logp_BT - old_logp_BT
  ratio_BT = jnp.exp(log_ratio_BT)
  weight_BT = jax.lax.stop_gradient(jnp.clip(ratio_BT, 1.0 - eps_low, 1.0 + eps_high))
  loss = aggregate(-weight_BT * adv_BT * logp_BT, mask_BT, agg)
  return loss, {
      "policy/clipfrac": masked_mean((weight_BT != ratio_BT).astype(jnp.float32), mask_BT),
      "policy/approx_kl": masked_mean(jnp.expm1(-log_ratio_BT) + log_ratio_BT, mask_BT),
      "policy/ratio": masked_mean(ratio_BT, mask_BT),
  }


def value_loss(values_BT, old_values_BT, returns_BT, mask_BT, clip: float):
  """½·mean max((V - R)², (V_clip - R)²) with V_clip = V_old + clip(V - V_old, ±clip)."""
  v_clipped_BT = old_values_BT + jnp.clip(values_BT - old_values_BT, -clip, clip)
  unclipped_BT = jnp.square(values_BT - returns_BT)
  clipped_BT = jnp.square(v_clipped_BT - returns_BT)
  loss = 0.5 * masked_mean(jnp.maximum(unclipped_BT, clipped_BT), mask_BT)
  return loss, {"value/clipfrac": masked_mean((clipped_BT > unclipped_BT).astype(jnp.float32), mask_BT)}


def explained_variance(values_BT, returns_BT, mask_BT):
  var_r = masked_mean(jnp.square(returns_BT - masked_mean(returns_BT, mask_BT)), mask_BT)
  resid = returns_BT - values_BT
  var_resid = masked_mean(jnp.square(resid - masked_mean(resid, mask_BT)), mask_BT)
  return 1.0 - var_resid / jnp.maximum(var_r, 1e-8)


class Moments(NamedTuple):
  """Running mean and variance of sequence scores (Chan et al.'s parallel update)."""
  mean: jax.Array
  var: jax.Array
  count: jax.Array

  @classmethod
  def init(cls):
    return cls(jnp.float32(0.0), jnp.float32(1.0), jnp.float32(0.0))


def update_moments(m: Moments, x_B) -> Moments:
  """Merges a batch into the running moments (so one-by-one equals concatenated)."""
  n = jnp.float32(x_B.shape[0])
  batch_mean = jnp.mean(x_B)
  batch_var = jnp.mean(jnp.square(x_B - batch_mean))
  total = m.count + n
  delta = batch_mean - m.mean
  mean = m.mean + delta * n / total
  m2 = m.var * m.count + batch_var * n + jnp.square(delta) * m.count * n / total
  return Moments(mean, m2 / total, total)


def normalize_score(score_B, m: Moments, use_std: bool = True, clip: float = 0.0):
  """Normalises with moments that already include this batch (as TRL's PPOTrainer, which the
  R³ authors' code runs); optional clip."""
  out = score_B - m.mean
  if use_std:
    out = out * jax.lax.rsqrt(m.var + 1e-8)
  return jnp.clip(out, -clip, clip) if clip else out


def adaptive_kl(beta, kl_observed, target: float, horizon: float, n_steps: float):
  """Ziegler et al.'s controller: β ← β·(1 + clip(KL/target - 1, ±0.2)·n/horizon)."""
  error = jnp.clip(kl_observed / target - 1.0, -0.2, 0.2)
  return beta * (1.0 + error * n_steps / horizon)
