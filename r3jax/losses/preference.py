"""Pairwise preference losses on per-sequence scores (Bradley–Terry: InstructGPT, Ouyang et
al. 2022 §3.5 eq. 1; the offline policy losses: each function's docstring cites its paper).

Bradley–Terry for reward models, and the offline policy losses, the entries of `LOSSES`
(config.loss.type; each function's docstring gives its formula): DPO ("sigmoid"), IPO, SLiC
("hinge"), RSO's "sigmoid_norm" / "hinge_norm", and reference-free ones. Shapes: B
comparisons, K ranked responses per comparison. Policy inputs are log-probs summed over
response tokens.

Naming trap (RSO, Liu et al. 2024 §3, against TRL's names): RSO's "sigmoid_norm" means
normalised by the *reference policy*, i.e. plain DPO with γ in place of β. It is not TRL's `sigmoid_norm` (length-normalised
DPO). RSO's "hinge_norm" is TRL's `hinge`.
"""

import dataclasses
import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from r3jax.core import registry


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


@dataclasses.dataclass(frozen=True)
class PreferenceLoss:
  """An offline pairwise policy loss and what a trainer must supply to it.

  fn(h_w_B, h_l_B, *, beta, **kw) -> (per-example losses [B], the implicit rewards of the
  chosen and of the rejected responses [B] each), where h = log π - log π_ref summed over
  the response (log π alone without a reference). kw holds label_smoothing when
  `smoothing`, chosen_len_B / rejected_len_B when `needs_lengths`, and each config.loss
  field named in `params`.
  """
  fn: Callable
  needs_reference: bool = True  # False: no reference model is built and none runs.
  needs_lengths: bool = False  # fn reads the responses' token counts.
  smoothing: bool = False  # fn takes label smoothing ε (conservative DPO).
  # config.loss fields fn takes besides beta and ε, with their defaults (schema.preference
  # copies them into every DPO config).
  params: dict = dataclasses.field(default_factory=dict)


LOSSES = registry.Registry("preference loss", PreferenceLoss)


def _smoothed_logistic(z_B, eps):
  """-(1-ε) log σ(z) - ε log σ(-z): the logistic loss with labels flipped at rate ε."""
  return -(1.0 - eps) * jax.nn.log_sigmoid(z_B) - eps * jax.nn.log_sigmoid(-z_B)


@LOSSES.register("sigmoid", smoothing=True)
def sigmoid(h_w_B, h_l_B, *, beta, label_smoothing):
  """DPO (Rafailov et al. 2023, eq. 7); ε > 0 is cDPO (Mitchell 2023)."""
  return _smoothed_logistic(beta * (h_w_B - h_l_B), label_smoothing), beta * h_w_B, beta * h_l_B


@LOSSES.register("ipo", needs_lengths=True)
def ipo(h_w_B, h_l_B, *, beta, chosen_len_B, rejected_len_B):
  """IPO (Azar et al. 2023, eq. 17) on length-averaged h, as TRL computes it."""
  # An empty response would divide by 0; it contributes a summed h of 0 either way.
  delta_avg = (h_w_B / jnp.maximum(_f32(chosen_len_B), 1.0)
               - h_l_B / jnp.maximum(_f32(rejected_len_B), 1.0))
  return jnp.square(delta_avg - 1.0 / (2.0 * beta)), beta * h_w_B, beta * h_l_B


@LOSSES.register("hinge")
def hinge(h_w_B, h_l_B, *, beta):
  """SLiC-HF's hinge (Zhao et al. 2023) on the reference-normalised Δ: max(0, 1 - βΔ)."""
  return jax.nn.relu(1.0 - beta * (h_w_B - h_l_B)), beta * h_w_B, beta * h_l_B


# RSO (Liu et al. 2024): normalised by the reference policy, i.e. DPO / SLiC with γ as β.
LOSSES.register("sigmoid_norm", smoothing=True)(sigmoid)
LOSSES.register("hinge_norm")(hinge)


@LOSSES.register("simpo", needs_reference=False, needs_lengths=True, smoothing=True,
                 params={"simpo_gamma": 0.5})
def simpo(h_w_B, h_l_B, *, beta, label_smoothing, chosen_len_B, rejected_len_B, simpo_gamma):
  """SimPO (Meng et al. 2024, eq. 6): -log σ(β/|y_w| log π(y_w) - β/|y_l| log π(y_l) - γ).

  The length-normalised log-likelihood is the implicit reward, so there is no reference;
  γ (simpo_gamma, TRL's name) is the target reward margin. ε smooths as TRL's CPOTrainer.
  """
  r_w = beta * h_w_B / jnp.maximum(_f32(chosen_len_B), 1.0)
  r_l = beta * h_l_B / jnp.maximum(_f32(rejected_len_B), 1.0)
  return _smoothed_logistic(r_w - r_l - simpo_gamma, label_smoothing), r_w, r_l


def loss_kwargs(loss_type: str, references: bool, label_smoothing, lengths, params) -> dict:
  """The keyword arguments of LOSSES[loss_type].fn besides beta; ValueError for a call the
  loss cannot take (lengths, ε, references or params it lacks or does not read)."""
  if loss_type not in LOSSES:
    raise ValueError(f"unknown loss type {loss_type!r}; expected one of {', '.join(LOSSES)}")
  entry, kw = LOSSES[loss_type], {}
  if references and not entry.needs_reference:
    raise ValueError(f"{loss_type} is reference-free: pass None for the reference log-probs")
  if entry.needs_lengths:
    if any(n is None for n in lengths):
      raise ValueError(f"{loss_type} averages log-probs over tokens: pass chosen_len_B and "
                       "rejected_len_B")
    kw.update(chosen_len_B=lengths[0], rejected_len_B=lengths[1])
  if entry.smoothing:
    kw["label_smoothing"] = label_smoothing
  # Only a concrete number can be checked; a traced ε is trusted.
  elif isinstance(label_smoothing, (int, float)) and label_smoothing:
    raise ValueError(f"label_smoothing is only defined for {LOSSES.names(smoothing=True)}, "
                     f"not {loss_type!r}")
  if set(params) != set(entry.params):
    raise ValueError(f"{loss_type} takes the parameters {tuple(entry.params)}, given {tuple(params)}")
  return {**kw, **params}


def dpo_loss(policy_chosen_logp_B, policy_rejected_logp_B, ref_chosen_logp_B, ref_rejected_logp_B,
             *, loss_type: str, beta, label_smoothing=0.0, chosen_len_B=None, rejected_len_B=None,
             **params):
  """Offline preference loss LOSSES[loss_type]. Returns (per-example losses [B], metrics of
  batch means).

  Per-example rather than the mean so the caller can drop padded rows or weight examples
  and still get an exact mean across microbatches; take `jnp.mean` for the plain batch.

  Each entry's fn gives its formula in h(y) = log π(y) - log π_ref(y). Passing None for
  both reference log-probs is the reference-free variant (h = log π), the only one a loss
  with needs_reference=False takes. `label_smoothing` (ε) only exists for the losses with
  smoothing=True; `params` are the loss's own (LOSSES[loss_type].params).
  """
  references = ref_chosen_logp_B is not None or ref_rejected_logp_B is not None
  kw = loss_kwargs(loss_type, references, label_smoothing, (chosen_len_B, rejected_len_B), params)
  pw, pl = _f32(policy_chosen_logp_B), _f32(policy_rejected_logp_B)
  rw = jnp.zeros_like(pw) if ref_chosen_logp_B is None else _f32(ref_chosen_logp_B)
  rl = jnp.zeros_like(pl) if ref_rejected_logp_B is None else _f32(ref_rejected_logp_B)
  h_w, h_l = pw - rw, pl - rl
  losses_B, reward_w, reward_l = LOSSES[loss_type].fn(h_w, h_l, beta=beta, **kw)
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
