"""Pairwise preference losses on per-sequence scores (Bradley–Terry: InstructGPT, Ouyang et
al. 2022 §3.5 eq. 1; the offline policy losses: each function's docstring cites its paper).

Bradley–Terry for reward models, and the offline policy losses, the entries of `LOSSES`
(config.loss.type; each function's docstring gives its formula): DPO ("sigmoid"), IPO, SLiC
("hinge"), RSO's "sigmoid_norm" / "hinge_norm", and the reference-free SimPO, ORPO and CPO.
KTO (`kto_loss`) learns from unpaired rows, so it is no entry of the pairwise registry.
Shapes: B comparisons (or KTO rows), K ranked responses per comparison. Policy inputs are
log-probs summed over response tokens.

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


def bradley_terry(r_chosen_B, r_rejected_B, margin=0.0, weight_B=None):
  """-mean log σ(r_w - r_l - m). Returns (loss, metrics).

  `margin` is a scalar or one per comparison (e.g. from rating gaps); 0 is plain BT.
  `weight_B` weighs each comparison in the loss and the metrics (None: all 1), e.g. 0 for
  the empty comparison slots of packed rows.
  """
  r_w, r_l = _f32(r_chosen_B), _f32(r_rejected_B)
  w_B = jnp.ones_like(r_w) if weight_B is None else _f32(weight_B)
  mean = lambda x_B, w=w_B: jnp.sum(x_B * w) / jnp.sum(w)
  diff_B = r_w - r_l
  loss = -mean(jax.nn.log_sigmoid(diff_B - margin))
  both, w_both = jnp.concatenate([r_w, r_l]), jnp.concatenate([w_B, w_B])
  both_mean = mean(both, w_both)
  metrics = {
      "rm/accuracy": mean((diff_B > 0).astype(jnp.float32)),
      "rm/margin": mean(diff_B),
      "rm/reward_mean": both_mean,
      "rm/reward_std": jnp.sqrt(mean(jnp.square(both - both_mean), w_both)),
  }
  return loss, metrics


def ranking_pairs(K: int) -> np.ndarray:
  """The C(K,2) (winner, loser) index pairs of a ranking whose index 0 is best: [C(K,2), 2].

  Plain numpy: K is a static shape, so the gather it drives is fixed at trace time.
  """
  return np.array(list(itertools.combinations(range(K), 2)), np.int32).reshape(-1, 2)


def bradley_terry_ranked(r_BK, margin=0.0, weight_B=None):
  """Bradley–Terry averaged over every pair of a K-wise ranking (index 0 best).

  Each response appears in K-1 pairs, so the reward mean/std metrics equal those of the
  plain [B, K] rewards; accuracy is over all pairs. `margin`: scalar or [B, C(K,2)];
  `weight_B`: as for bradley_terry, each comparison's pairs weighed alike.
  """
  pairs_P2 = ranking_pairs(r_BK.shape[-1])
  r_BK = _f32(r_BK)
  shape_BP = (r_BK.shape[0], len(pairs_P2))
  margin_BP = jnp.broadcast_to(jnp.asarray(margin, r_BK.dtype), shape_BP)
  weight_BP = None if weight_B is None else jnp.broadcast_to(_f32(weight_B)[:, None], shape_BP).reshape(-1)
  return bradley_terry(r_BK[:, pairs_P2[:, 0]].reshape(-1), r_BK[:, pairs_P2[:, 1]].reshape(-1),
                       margin_BP.reshape(-1), weight_BP)


@dataclasses.dataclass(frozen=True)
class PreferenceLoss:
  """An offline pairwise policy loss and what a trainer must supply to it.

  fn(h_w_B, h_l_B, *, beta, **kw) -> (per-example losses [B], the implicit rewards of the
  chosen and of the rejected responses [B] each[, the loss's own metrics {name: [B]}, per
  example, which dpo_loss averages]), where h = log π - log π_ref summed over the response
  (log π alone without a reference). kw holds label_smoothing when `smoothing`,
  chosen_len_B / rejected_len_B when `needs_lengths` (so also the average log-prob h / len,
  and the chosen NLL that ORPO and CPO add), weight_B when `pools`, and each config.loss
  field named in `params`.
  """
  fn: Callable
  needs_reference: bool = True  # False: no reference model is built and none runs.
  needs_lengths: bool = False  # fn reads the responses' token counts.
  smoothing: bool = False  # fn takes label smoothing ε (conservative DPO).
  # fn pools a quantity over the batch's tokens (the chosen NLL, _chosen_nll), so it takes
  # the examples' weights (weight_B: 0 for a packed row's empty slot).
  pools: bool = False
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


def _chosen_nll(h_w_B, chosen_len_B, weight_B):
  """Per-example shares of the chosen responses' NLL as TRL computes it (torch's
  CrossEntropyLoss on the concatenated chosen rows): -Σ log π(y_w) / Σ |y_w| over the
  batch's examples of weight 1, a mean over every chosen token rather than over examples.
  Each share is scaled by Σ weight_B, so that the weighted mean over examples is that NLL;
  a microbatch of an accumulated step then pools its own tokens, as each of TRL's
  accumulation steps does."""
  w_B = _f32(weight_B)
  n_tok = jnp.maximum(jnp.sum(w_B * _f32(chosen_len_B)), 1.0)
  return -h_w_B * (jnp.sum(w_B) / n_tok)


def _log1mexp(x):
  """log(1 - e^x) for x < 0 without cancellation (Mächler 2012), branching at -log 2 as TRL
  does: log(-expm1(x)) above, log1p(-e^x) below. Each branch sees only the inputs where it
  is finite, so jnp.where passes no NaN gradient from the branch it drops."""
  t = -np.log(2.0)
  above = jnp.log(-jnp.expm1(jnp.maximum(x, t)))
  below = jnp.log1p(-jnp.exp(jnp.minimum(x, t)))
  return jnp.where(x > t, above, below)


# Average log-probs are clamped below 0 before their odds: a policy certain of every token
# (an average that rounds to 0 in float32, which an overfit small model reaches) has odds
# 1/0, an infinite log-odds and a NaN gradient. -1e-6 is a per-token probability of
# 0.999999; an average that close to 0 gets no odds-ratio gradient (its NLL still trains).
_MAX_AVG_LOGP = -1e-6


@LOSSES.register("orpo", needs_reference=False, needs_lengths=True, pools=True)
def orpo(h_w_B, h_l_B, *, beta, chosen_len_B, rejected_len_B, weight_B):
  """ORPO (Hong et al. 2024, §4.2, eqs. 6-7): NLL(y_w) - λ log σ(log odds(y_w) - log odds(y_l)),
  odds(y) = P(y) / (1 - P(y)) with P(y) = exp(mean token log π(y)), the length-averaged
  likelihood of §4.1; no reference. λ is `beta`, TRL's ORPOConfig name, and the implicit
  rewards are β · the average log-probs, as TRL reports them.

  The NLL is TRL's mean over every chosen token of the batch (_chosen_nll), on the
  response's tokens only: TRL's ORPOTrainer also counts the prompt's, but the prompt-split
  layout (trainers/dpo.sequence_logprobs) runs the LM head on response positions only and
  keeps just the prompt's last prompt_len tokens, and the paper's L_SFT is the likelihood
  of the chosen response. With a one-token prompt (nothing to predict) the two agree.
  """
  avg_w = jnp.minimum(h_w_B / jnp.maximum(_f32(chosen_len_B), 1.0), _MAX_AVG_LOGP)
  avg_l = jnp.minimum(h_l_B / jnp.maximum(_f32(rejected_len_B), 1.0), _MAX_AVG_LOGP)
  log_odds_B = (avg_w - avg_l) - (_log1mexp(avg_w) - _log1mexp(avg_l))
  ratio_B = jax.nn.log_sigmoid(log_odds_B)
  nll_B = _chosen_nll(h_w_B, chosen_len_B, weight_B)
  metrics = {"nll_loss": nll_B, "log_odds_ratio": ratio_B, "log_odds_chosen": log_odds_B}
  return nll_B - beta * ratio_B, beta * avg_w, beta * avg_l, metrics


@LOSSES.register("cpo", needs_reference=False, needs_lengths=True, smoothing=True, pools=True,
                 params={"cpo_alpha": 1.0})
def cpo(h_w_B, h_l_B, *, beta, label_smoothing, chosen_len_B, rejected_len_B, weight_B, cpo_alpha):
  """CPO (Xu et al. 2024, §3): DPO's logistic loss with the reference dropped,
  -log σ(β(log π(y_w) - log π(y_l))) on summed log-probs (the paper's L_prefer, TRL's
  CPOTrainer with loss_type="sigmoid"; ε smooths it as there), plus cpo_alpha (TRL's name,
  its default 1) × the NLL of the chosen responses, TRL's mean over every chosen token of
  the batch (_chosen_nll). nll_loss is reported whatever cpo_alpha (TRL reports 0 at 0).
  """
  del rejected_len_B  # needs_lengths passes both; the NLL counts the chosen tokens only.
  nll_B = _chosen_nll(h_w_B, chosen_len_B, weight_B)
  losses_B = _smoothed_logistic(beta * (h_w_B - h_l_B), label_smoothing) + cpo_alpha * nll_B
  return losses_B, beta * h_w_B, beta * h_l_B, {"nll_loss": nll_B}


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
             weight_B=None, **params):
  """Offline preference loss LOSSES[loss_type]. Returns (per-example losses [B], metrics of
  batch means). weight_B (None: all 1) weighs the examples in the metrics and in what a
  loss pools over the batch (`pools`): 0 for the empty comparison slots of packed rows.

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
  w_B = jnp.ones_like(pw) if weight_B is None else _f32(weight_B)
  if LOSSES[loss_type].pools:
    kw["weight_B"] = w_B
  losses_B, reward_w, reward_l, *own = LOSSES[loss_type].fn(h_w, h_l, beta=beta, **kw)
  per_example = {
      "rewards/chosen": reward_w,
      "rewards/rejected": reward_l,
      "rewards/accuracy": (reward_w > reward_l).astype(jnp.float32),
      "rewards/margin": reward_w - reward_l,
      "logratio/chosen": h_w,
      "logratio/rejected": h_l,
      "logps/chosen": pw,
      "logps/rejected": pl,
      **(own[0] if own else {}),  # The loss's own: ORPO's odds, CPO's NLL.
  }
  return losses_B, {k: jnp.sum(w_B * v) / jnp.sum(w_B) for k, v in per_example.items()}


def kto_loss(policy_logp_B, ref_logp_B, policy_kl_logp_B, ref_kl_logp_B, desirable_B, *, beta,
             desirable_weight=1.0, undesirable_weight=1.0):
  """KTO (Ethayarajh et al. 2024, §4) on B unpaired rows, each a completion labelled
  desirable or not. Returns (per-example losses [B], metrics).

  With h = log π(y|x) - log π_ref(y|x) summed over the completion, a desirable row's loss is
  λ_D (1 - σ(β(h - z₀))) and an undesirable one's λ_U (1 - σ(β(z₀ - h))) (the paper's
  λ_y - v(x, y)). The reference point z₀ estimates KL(π || π_ref) from mismatched pairs:
  each row's prompt with another row's completion (the `*_kl_*` log-probs), as TRL's
  KTOTrainer does: the mean of their h over the batch, clamped at 0 and detached (the
  paper back-propagates nothing through it). The mean of the losses is TRL's loss; the
  weights are TRL's desirable_weight and undesirable_weight.

  Metrics: TRL 1.16's `kl` and the means over each side's rows (rewards/chosen = mean β h
  of the desirable rows, logps/* the summed log-probs, rewards/margins the difference),
  0 for a side this batch has no rows of (TRL logs nothing then); and the sums and counts
  they come from (`*_sum`, count/*, the names of TRL's earlier KTOTrainer), which add up
  exactly over microbatches and batches. rewards/label_accuracy, an r3jax extra, is the
  share of rows whose h lies on their label's side of z₀.
  """
  h_B = _f32(policy_logp_B) - _f32(ref_logp_B)
  kl = jnp.mean(_f32(policy_kl_logp_B) - _f32(ref_kl_logp_B))
  z0 = jax.lax.stop_gradient(jnp.maximum(kl, 0.0))
  d_B = jnp.asarray(desirable_B).astype(bool)
  # 1 - σ(x) written as σ(-x): the same value, without cancellation when σ(x) is near 1.
  losses_B = jnp.where(d_B, desirable_weight * jax.nn.sigmoid(-beta * (h_B - z0)),
                       undesirable_weight * jax.nn.sigmoid(-beta * (z0 - h_B)))
  rewards_B, logp_B = beta * h_B, _f32(policy_logp_B)
  sums = {"count/chosen": jnp.sum(d_B.astype(jnp.float32)),
          "count/rejected": jnp.sum((~d_B).astype(jnp.float32))}
  for side, mask_B in (("chosen", d_B), ("rejected", ~d_B)):
    sums[f"rewards/{side}_sum"] = jnp.sum(jnp.where(mask_B, rewards_B, 0.0))
    sums[f"logps/{side}_sum"] = jnp.sum(jnp.where(mask_B, logp_B, 0.0))
  metrics = {"kl": z0, **sums, **kto_means(sums),
             "rewards/label_accuracy": jnp.mean((d_B == (h_B > z0)).astype(jnp.float32))}
  return losses_B, metrics


def kto_means(sums: dict) -> dict:
  """rewards/chosen, rewards/rejected, rewards/margins, logps/chosen and logps/rejected from
  kto_loss's sums and counts (or from any common multiple of them, such as their shares of
  a run's rows): means over each side's rows, 0 for a side without rows."""
  out = {}
  for side in ("chosen", "rejected"):
    n = sums[f"count/{side}"]
    for name in ("rewards", "logps"):
      out[f"{name}/{side}"] = jnp.where(n > 0, sums[f"{name}/{side}_sum"] / jnp.maximum(n, 1e-9), 0.0)
  both = (sums["count/chosen"] > 0) & (sums["count/rejected"] > 0)
  out["rewards/margins"] = jnp.where(both, out["rewards/chosen"] - out["rewards/rejected"], 0.0)
  return out
