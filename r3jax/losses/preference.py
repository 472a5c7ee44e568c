"""Pairwise preference losses on per-sequence scores (SPEC §3 and §6).

Bradley–Terry for reward models, and the offline policy losses: DPO ("sigmoid"), IPO, SLiC
("hinge") and RSO's "sigmoid_norm" / "hinge_norm". Shapes: B comparisons, K ranked
responses per comparison. Policy inputs are log-probs summed over response tokens.

Naming trap (SPEC §8): RSO's "sigmoid_norm" means normalised by the *reference policy*,
i.e. plain DPO with γ in place of β. It is not TRL's `sigmoid_norm` (length-normalised
DPO). RSO's "hinge_norm" is TRL's `hinge`.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "sigmoid_norm", "hinge_norm")
_SIGMOID_TYPES = ("sigmoid", "sigmoid_norm")


def _f32(x):
  # Sums of token log-probs are large and their differences small: bf16 would lose Δ.
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def bradley_terry(r_chosen_B, r_rejected_B, margin=0.0):
  """-mean log σ(r_w - r_l - m). Returns (loss, metrics).

  `margin` is a scalar or one per comparison (e.g. from rating gaps); 0 is plain BT.
  """
  r_w, r_l = _f32(r_chosen_B), _f32(r_rejected_B)
  diff_B = r_w - r_l
  loss = -jnp.mean(jax.nn.log_sigmoid(diff_B - margin))
  both = jnp.concatenate([r_w, r_l])
  metrics = {
      "rm/accuracy": jnp.mean((diff_B > 0).astype(jnp.float32)),
      "rm/margin": jnp.mean(diff_B),
      "rm/reward_mean": jnp.mean(both),
      "rm/reward_std": jnp.std(both),
  }
  return loss, metrics


def ranking_pairs(K: int) -> np.ndarray:
  """The C(K,2) (winner, loser) index pairs of a ranking whose index 0 is best: [C(K,2), 2].

  Plain numpy: K is a static shape, so the gather it drives is fixed at trace time.
  """
  return np.array(list(itertools.combinations(range(K), 2)), np.int32).reshape(-1, 2)


def bradley_terry_ranked(r_BK, margin=0.0):
  """Bradley–Terry averaged over every pair of a K-wise ranking (index 0 best).

  Each response appears in K-1 pairs, so the reward mean/std metrics equal those of the
  plain [B, K] rewards; accuracy is over all pairs. `margin`: scalar or [B, C(K,2)].
  """
  pairs_P2 = ranking_pairs(r_BK.shape[-1])
  r_BK = _f32(r_BK)
  margin_BP = jnp.broadcast_to(jnp.asarray(margin, r_BK.dtype), (r_BK.shape[0], len(pairs_P2)))
  return bradley_terry(r_BK[:, pairs_P2[:, 0]].reshape(-1), r_BK[:, pairs_P2[:, 1]].reshape(-1),
                       margin_BP.reshape(-1))


def dpo_loss(policy_chosen_logp_B, policy_rejected_logp_B, ref_chosen_logp_B, ref_rejected_logp_B,
             *, loss_type: str, beta, label_smoothing=0.0, chosen_len_B=None, rejected_len_B=None):
  """Offline preference loss. Returns (per-example losses [B], metrics of batch means).

  Per-example rather than the mean so the caller can drop padded rows or weight examples
  and still get an exact mean across microbatches; take `jnp.mean` for the plain batch.

  With h(y) = log π(y) - log π_ref(y) and Δ = h(y_w) - h(y_l):
    sigmoid, sigmoid_norm: -(1-ε) log σ(βΔ) - ε log σ(-βΔ)   (β is RSO's γ for *_norm)
    ipo: (Δ' - 1/(2β))², Δ' from length-averaged h, so both lengths are required
    hinge, hinge_norm: max(0, 1 - βΔ)
  Passing None for both reference log-probs is the reference-free variant (h = log π).
  `label_smoothing` (ε) only exists for the sigmoid losses.
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"unknown loss type {loss_type!r}; expected one of {LOSS_TYPES}")
  # Only a concrete number can be checked; a traced ε is trusted.
  if loss_type not in _SIGMOID_TYPES and isinstance(label_smoothing, (int, float)) and label_smoothing:
    raise ValueError(f"label_smoothing is only defined for {_SIGMOID_TYPES}, not {loss_type!r}")
  pw, pl = _f32(policy_chosen_logp_B), _f32(policy_rejected_logp_B)
  rw = jnp.zeros_like(pw) if ref_chosen_logp_B is None else _f32(ref_chosen_logp_B)
  rl = jnp.zeros_like(pl) if ref_rejected_logp_B is None else _f32(ref_rejected_logp_B)
  h_w, h_l = pw - rw, pl - rl

  if loss_type in _SIGMOID_TYPES:
    z = beta * (h_w - h_l)
    losses_B = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)
  elif loss_type == "ipo":
    if chosen_len_B is None or rejected_len_B is None:
      raise ValueError("ipo averages log-probs over tokens: pass chosen_len_B and rejected_len_B")
    # An empty response would divide by 0; it contributes a summed h of 0 either way.
    delta_avg = (h_w / jnp.maximum(_f32(chosen_len_B), 1.0)
                 - h_l / jnp.maximum(_f32(rejected_len_B), 1.0))
    losses_B = jnp.square(delta_avg - 1.0 / (2.0 * beta))
  else:  # hinge, hinge_norm
    losses_B = jax.nn.relu(1.0 - beta * (h_w - h_l))

  reward_w, reward_l = beta * h_w, beta * h_l
  metrics = {
      "rewards/chosen": jnp.mean(reward_w),
      "rewards/rejected": jnp.mean(reward_l),
      "rewards/accuracy": jnp.mean((reward_w > reward_l).astype(jnp.float32)),
      "rewards/margin": jnp.mean(reward_w - reward_l),
      "logratio/chosen": jnp.mean(h_w),
      "logratio/rejected": jnp.mean(h_l),
      "logps/chosen": jnp.mean(pw),
      "logps/rejected": jnp.mean(pl),
  }
  return losses_B, metrics
