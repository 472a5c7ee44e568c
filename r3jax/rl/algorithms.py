"""The RL methods side by side, chosen by name from the config (in the manner of Tunix's
rl/algo_core.py and verl's trainer/ppo/core_algos.py). Every kind is a `Registry` of
typed entries (core/registry.py); adding one is one function and one decorator here, and
the trainer, validation, presets (configs/grpo_qwen.py), `compare --algorithms`, the
memory planner and the tests read the registries.

  KL_ESTIMATORS  log-ratio -> per-token KL estimate (`kl.estimator`)
  ADVANTAGES     RLBatch -> (advantages, returns) (`ppo.advantage`); says whether it needs
                 a value model and groups of n >= 2 samples per prompt
  POLICY_LOSSES  (current log-probs, RLBatch) -> (loss, metrics) (`ppo.policy_loss`); its
                 own parameters, if any, are `ppo.loss_params.<name>.*`
  LOSS_TERMS     (Forward, RLBatch) -> (weighted term, metrics): the update's objective is
                 the sum of the active terms (policy, entropy, KL, ptx, value)
  METHODS        a named recipe: an estimator, a policy loss and the config overrides the
                 method's paper prescribes (what `compare --algorithms` and the presets run)

Shapes: B rollouts (prompt-major, n samples per prompt), T response tokens.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from r3jax.core import registry
from r3jax.rl import ops
from r3jax.rl.records import Forward, RLBatch

# ----------------------------------------------------------------------------- KL estimators

KL_ESTIMATORS = registry.Registry("KL estimator")


def kl_estimate(logp_BT, ref_logp_BT, kind: str = "k1"):
  """Per-token estimate of KL(π || π_ref) from samples of π (Schulman 2020, "Approximating
  KL divergence")."""
  return KL_ESTIMATORS.get(kind, "kl.estimator").fn(logp_BT - ref_logp_BT)


@KL_ESTIMATORS.register("k1")
def k1(log_ratio):
  """log π - log π_ref: unbiased, can be negative."""
  return log_ratio


@KL_ESTIMATORS.register("k2")
def k2(log_ratio):
  """½ (log ratio)²: biased, low variance."""
  return 0.5 * jnp.square(log_ratio)


@KL_ESTIMATORS.register("k3")
def k3(log_ratio):
  """(ρ - 1) - log ρ with ρ = π_ref / π: unbiased and never negative (GRPO's KL term)."""
  return jnp.expm1(-log_ratio) + log_ratio


# ----------------------------------------------------------------------------- advantages


@dataclasses.dataclass(frozen=True)
class Advantage:
  fn: Callable  # (batch: RLBatch, ppo config, n) -> (advantages_BT, returns_BT)
  uses_value: bool  # Needs a value model (the trainer builds none otherwise).
  group: bool = False  # Needs n >= 2 samples per prompt.


ADVANTAGES = registry.Registry("advantage estimator", Advantage)


def sequence(adv_B, mask_BT):
  """One advantage per sequence, on each of its response tokens (also the 'returns')."""
  adv_BT = adv_B[:, None] * mask_BT
  return adv_BT, adv_BT


def sequence_rewards(batch: RLBatch):
  """r = Σ_t rewards_t: the score, plus -β·KL where kl.placement puts the KL in the reward."""
  return batch.rewards_BT.sum(-1)


@ADVANTAGES.register("gae", uses_value=True)
def gae(batch: RLBatch, ppo_config, n):
  """PPO's learned value baseline: masked GAE(γ, λ) (Schulman et al. 2016) over the shaped
  token rewards, whitened over the batch if ppo.whiten (Ouyang et al. 2022, InstructGPT)."""
  del n
  mask = batch.resp_mask_BT
  adv, returns = ops.gae(batch.rewards_BT, batch.values_BT * mask, mask, ppo_config.gamma, ppo_config.lam)
  return (ops.masked_whiten(adv, mask) if ppo_config.whiten else adv), returns


@ADVANTAGES.register("grpo", uses_value=False, group=True)
def grpo(batch: RLBatch, ppo_config, n):
  """GRPO (Shao et al. 2024, DeepSeekMath §4.1): (r - group mean) / group std, per prompt."""
  del ppo_config
  return sequence(ops.group_advantages(sequence_rewards(batch), n, scale=True), batch.resp_mask_BT)


@ADVANTAGES.register("dr_grpo", uses_value=False, group=True)
def dr_grpo(batch: RLBatch, ppo_config, n):
  """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training" §3): r - group mean."""
  del ppo_config
  return sequence(ops.group_advantages(sequence_rewards(batch), n, scale=False), batch.resp_mask_BT)


@ADVANTAGES.register("rloo", uses_value=False, group=True)
def rloo(batch: RLBatch, ppo_config, n):
  """RLOO (Ahmadian et al. 2024, §3.3): r minus the mean of the prompt's other samples."""
  del ppo_config
  return sequence(ops.leave_one_out(sequence_rewards(batch), n), batch.resp_mask_BT)


@ADVANTAGES.register("grpo_passk", uses_value=False, group=True)
def grpo_passk(batch: RLBatch, ppo_config, n):
  """GRPO's pass@k variant: only each group's best sample is reinforced (ops.best_of_group_advantages)."""
  del ppo_config
  return sequence(ops.best_of_group_advantages(sequence_rewards(batch), n), batch.resp_mask_BT)


@ADVANTAGES.register("reinforce_pp_baseline", uses_value=False, group=True)
def reinforce_pp_baseline(batch: RLBatch, ppo_config, n):
  """REINFORCE++-baseline (Hu 2025, §3; verl's reinforce_plus_plus_baseline): the prompt's
  group mean subtracted from each sequence reward, then whitened over every response token
  of the batch (so the group's variance is not divided out per prompt, unlike GRPO)."""
  del ppo_config
  mask = batch.resp_mask_BT
  centred_BT = ops.group_advantages(sequence_rewards(batch), n, scale=False)[:, None] * mask
  adv_BT = ops.masked_whiten(centred_BT, mask)
  return adv_BT, adv_BT


@ADVANTAGES.register("reinforce_pp", uses_value=False)
def reinforce_pp(batch: RLBatch, ppo_config, n):
  """REINFORCE++ (Hu 2025, §3): returns-to-go of the token rewards (γ = ppo.gamma; no
  value: λ = 1 against V = 0), whitened over every response token of the batch."""
  del n
  mask = batch.resp_mask_BT
  _, returns = ops.gae(batch.rewards_BT, jnp.zeros_like(mask), mask, ppo_config.gamma, 1.0)
  return ops.masked_whiten(returns, mask), returns


# ----------------------------------------------------------------------------- policy losses


@dataclasses.dataclass(frozen=True)
class PolicyLoss:
  fn: Callable  # (logp_BT, batch: RLBatch, ppo config, params) -> (loss, metrics)
  params: dict = dataclasses.field(default_factory=dict)  # Defaults of ppo.loss_params.<name>.
  check: Callable = lambda params: ""  # params -> what is wrong with them ("": nothing).


def nonnegative(params) -> str:
  bad = [k for k, v in params.items() if not v >= 0]
  return f"{bad[0]}={params[bad[0]]} must be >= 0" if bad else ""


def clip_check(params) -> str:
  if not 0 <= params.eps_low < 1:
    return f"eps_low={params.eps_low}: the ratio's lower bound 1 - eps_low must lie in (0, 1]"
  if not params.dual_clip == 0 and not params.dual_clip > 1:
    return f"dual_clip={params.dual_clip}: a lower bound c > 1 on negative advantages' loss, or 0 for off"
  return nonnegative(params)


POLICY_LOSSES = registry.Registry("policy loss", PolicyLoss)


@POLICY_LOSSES.register("ppo_clip", params={"eps_low": 0.2, "eps_high": 0.2, "dual_clip": 3.0},
                        check=clip_check)
def ppo_clip(logp_BT, batch: RLBatch, ppo_config, params):
  """PPO's clipped surrogate (Schulman et al. 2017, eq. 7) with the ratio in [1 - eps_low,
  1 + eps_high] (eps_high > eps_low: DAPO's clip-higher, Yu et al. 2025 §3.1) and dual-clip's
  bound c on negative advantages (Ye et al. 2020; 3, verl's default; 0: off), aggregated by
  ppo.loss_agg (ops.policy_loss)."""
  return ops.policy_loss(logp_BT, batch.old_logp_BT, batch.adv_BT, batch.resp_mask_BT,
                         params.eps_low, params.eps_high, params.dual_clip, ppo_config.loss_agg)


@POLICY_LOSSES.register("cispo", params={"eps_low": 1.0, "eps_high": 4.0}, check=nonnegative)
def cispo(logp_BT, batch: RLBatch, ppo_config, params):
  """CISPO (MiniMax 2025, "MiniMax-M1" §3.1): the stop-gradient importance weight clipped to
  [1 - eps_low, 1 + eps_high] times A·log π (ops.cispo_loss), aggregated by ppo.loss_agg. The
  defaults leave the weight unbounded below and cap it at 5, as the paper (which tunes only
  the upper bound) and TRL (epsilon_high=5.0 for cispo) do."""
  return ops.cispo_loss(logp_BT, batch.old_logp_BT, batch.adv_BT, batch.resp_mask_BT,
                        params.eps_low, params.eps_high, ppo_config.loss_agg)


@POLICY_LOSSES.register("gspo", params={"eps_low": 3e-4, "eps_high": 4e-4, "max_log_ratio": 10.0},
                        check=nonnegative)
def gspo(logp_BT, batch: RLBatch, ppo_config, params):
  """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", §4.1-4.2): the
  importance ratio of a whole sequence, s = exp(mean_t log π/π_old), clipped to
  [1 - eps_low, 1 + eps_high] per sequence; each sequence's clipped objective is averaged
  over its tokens, then over sequences (ppo.loss_agg is not used, as in verl). The token
  form s·π_t/sg(π_t) has the sequence form's value and, for a sequence-level advantage,
  its gradient. The log-ratio is capped at max_log_ratio before exp, as verl does."""
  del ppo_config
  mask_BT = batch.resp_mask_BT
  log_ratio_BT = logp_BT - batch.old_logp_BT
  seq_log_ratio_B = ops.masked_mean(log_ratio_BT, mask_BT, axis=-1)
  log_s_BT = logp_BT - jax.lax.stop_gradient(logp_BT) + jax.lax.stop_gradient(seq_log_ratio_B)[:, None]
  s_BT = jnp.exp(jnp.minimum(log_s_BT, params.max_log_ratio))
  unclipped_BT = -batch.adv_BT * s_BT
  clipped_BT = -batch.adv_BT * jnp.clip(s_BT, 1.0 - params.eps_low, 1.0 + params.eps_high)
  loss = ops.aggregate(jnp.maximum(unclipped_BT, clipped_BT), mask_BT, "seq_mean")
  seq_mask_B = (mask_BT.sum(-1) > 0).astype(jnp.float32)
  s_B = jnp.exp(seq_log_ratio_B)
  return loss, {
      "policy/clipfrac": ops.masked_mean((clipped_BT > unclipped_BT).astype(jnp.float32), mask_BT),
      "policy/approx_kl": ops.masked_mean(jnp.expm1(-log_ratio_BT) + log_ratio_BT, mask_BT),
      "policy/ratio": ops.masked_mean(s_B, seq_mask_B),
  }


def policy_loss(config, logp_BT, batch: RLBatch):
  """The configured policy loss with its parameters."""
  name = config.ppo.policy_loss
  params = config.ppo.loss_params.get(name, None)
  return POLICY_LOSSES.get(name, "ppo.policy_loss").fn(logp_BT, batch, config.ppo, params)


# ----------------------------------------------------------------------------- loss terms


@dataclasses.dataclass(frozen=True)
class LossTerm:
  fn: Callable  # (fwd: Forward, batch: RLBatch, config, beta) -> (weighted term, metrics)
  active: Callable[[Any], bool]  # config -> whether the term is part of the objective.
  value: bool = False  # Trains the value model (not gated by the value warm-up).


LOSS_TERMS = registry.Registry("loss term", LossTerm)


def uses_value(config) -> bool:
  return ADVANTAGES.get(config.ppo.advantage, "ppo.advantage").uses_value


def kl_in_loss(config) -> bool:
  return config.kl.placement == "loss"


@LOSS_TERMS.register("policy", active=lambda c: True)
def policy_term(fwd: Forward, batch: RLBatch, config, beta):
  del beta
  loss, metrics = policy_loss(config, fwd.logp_BT, batch)
  return loss, {"policy/loss": loss, **metrics}


@LOSS_TERMS.register("entropy", active=lambda c: True)
def entropy_term(fwd: Forward, batch: RLBatch, config, beta):
  """-ppo.entropy_coef · the mean response-token entropy (logged even at coefficient 0)."""
  del beta
  entropy = ops.masked_mean(fwd.entropy_BT, batch.resp_mask_BT)
  return -(config.ppo.entropy_coef * entropy), {"policy/entropy": entropy}


@LOSS_TERMS.register("kl", active=kl_in_loss)
def kl_term(fwd: Forward, batch: RLBatch, config, beta):
  """β·KL(π || π_ref) of the current policy (kl.placement=loss: GRPO's term, Shao et al.
  2024 eq. 3), aggregated like the policy loss."""
  kl = kl_estimate(fwd.logp_BT, batch.ref_logp_BT, config.kl.estimator)
  kl_loss = ops.aggregate(kl, batch.resp_mask_BT, config.ppo.loss_agg)
  return beta * kl_loss, {"policy/kl_loss": kl_loss}


@LOSS_TERMS.register("ptx", active=lambda c: c.ptx.coef > 0)
def ptx_term(fwd: Forward, batch: RLBatch, config, beta):
  """PPO-ptx (Ouyang et al. 2022, eq. 2): ptx.coef · the LM loss on pretraining text."""
  del batch, beta
  return config.ptx.coef * fwd.ptx_nll, {"ptx/loss": fwd.ptx_nll}


@LOSS_TERMS.register("value", active=uses_value, value=True)
def value_term(fwd: Forward, batch: RLBatch, config, beta):
  """ppo.vf_coef · the clipped value loss against the returns."""
  del beta
  loss, metrics = ops.value_loss(fwd.values_BT, batch.values_BT, batch.returns_BT,
                                 batch.resp_mask_BT, config.ppo.value_clip)
  return config.ppo.vf_coef * loss, {"value/loss": loss, **metrics}


def objective(config, fwd: Forward, batch: RLBatch, train_policy, beta):
  """(loss, metrics): train_policy · (the policy-side terms' sum) + the value terms, in
  LOSS_TERMS order. train_policy is 0 during the value warm-up."""
  policy_sum, value_sum, metrics = None, None, {}
  for name, term in LOSS_TERMS.items():
    if not term.active(config):
      continue
    x, m = term.fn(fwd, batch, config, beta)
    metrics.update(m)
    if term.value:
      value_sum = x if value_sum is None else value_sum + x
    else:
      policy_sum = x if policy_sum is None else policy_sum + x
  loss = train_policy * policy_sum
  return (loss if value_sum is None else loss + value_sum), metrics


# ----------------------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class Method:
  fn: Callable  # config -> None: the method's own settings, applied after the common ones.
  advantage: str
  policy_loss: str = "ppo_clip"


METHODS = registry.Registry("RL method", Method)


@METHODS.register("ppo", advantage="gae")
def ppo_settings(c):
  """PPO as configured: learned values, KL in the reward (Ouyang et al. 2022)."""
  del c


@METHODS.register("grpo", advantage="grpo")
def grpo_settings(c):
  """k3 KL in the loss, per-sequence loss mean (Shao et al. 2024, eq. 3)."""
  c.kl.update(placement="loss", estimator="k3")
  c.ppo.loss_agg = "seq_mean"


@METHODS.register("dr_grpo", advantage="dr_grpo")
def dr_grpo_settings(c):
  """As GRPO, with no std and a token sum over a constant (Liu et al. 2025, §3.1)."""
  c.kl.update(placement="loss", estimator="k3")
  c.ppo.loss_agg = "token_sum"


@METHODS.register("rloo", advantage="rloo")
def rloo_settings(c):
  """Leave-one-out baseline, KL in the reward (as TRL's RLOO)."""
  del c


@METHODS.register("reinforce_pp", advantage="reinforce_pp")
def reinforce_pp_settings(c):
  """Batch-whitened returns, token-level KL in the reward (Hu 2025)."""
  del c


@METHODS.register("gspo", advantage="grpo", policy_loss="gspo")
def gspo_settings(c):
  """GRPO's group advantages with GSPO's sequence-level clipped ratio (Zheng et al. 2025);
  the KL is in the loss as GRPO's."""
  c.kl.update(placement="loss", estimator="k3")
  c.ppo.loss_agg = "seq_mean"


@METHODS.register("grpo_passk", advantage="grpo_passk")
def grpo_passk_settings(c):
  """GRPO with only each group's best sample reinforced (pass@k training)."""
  grpo_settings(c)


@METHODS.register("reinforce_pp_baseline", advantage="reinforce_pp_baseline")
def reinforce_pp_baseline_settings(c):
  """Group-mean baseline, batch whitening, k2 KL in the loss (Hu 2025; OpenRLHF's
  reinforce_baseline recipe)."""
  c.kl.update(placement="loss", estimator="k2")


@METHODS.register("clip_higher", advantage="grpo")
def clip_higher_settings(c):
  """DAPO's decoupled clip, ε_low 0.2 and ε_high 0.28, with token-level loss averaging (Yu et
  al. 2025 §3.1, §3.3) on GRPO's group advantages and k3 KL in the loss."""
  c.kl.update(placement="loss", estimator="k3")
  c.ppo.loss_params.ppo_clip.update(eps_low=0.2, eps_high=0.28)
  c.ppo.loss_agg = "token_mean"


@METHODS.register("cispo", advantage="grpo", policy_loss="cispo")
def cispo_settings(c):
  """CISPO's clipped importance weights on GRPO's group advantages, token-level averaging
  (MiniMax 2025 §3.1), k3 KL in the loss as GRPO's."""
  c.kl.update(placement="loss", estimator="k3")
  c.ppo.loss_agg = "token_mean"


@METHODS.register("dapo", advantage="grpo")
def dapo_settings(c):
  """DAPO (Yu et al. 2025): clip-higher and token-level averaging (§3.1, §3.3), dynamic
  sampling (§3.2), soft overlong punishment over the last fifth of the length limit (§3.4;
  the paper's 4,096 of 20,480), and no KL term (§2.3)."""
  clip_higher_settings(c)
  c.kl.update(beta=0.0, adaptive=False)
  c.rollout.dynamic_sampling = True
  c.reward.overlong_cache = max(c.rollout.max_new_tokens // 5, 1)


def use_method(c, name: str, group_n: int = 4):
  """`c` (a PPO config) switched to method `name` under the same sampling budget (prompts ×
  samples per iteration): a group method samples group_n per prompt from budget / group_n
  prompts; a method with no value model has no value warm-up. Returns `c`."""
  method = METHODS.get(name, "method")
  estimator = ADVANTAGES.get(method.advantage)
  c.ppo.advantage, c.ppo.policy_loss = method.advantage, method.policy_loss
  if not estimator.uses_value:
    c.ppo.value_warmup_steps = 0
  if estimator.group:
    budget = c.prompts_per_step * c.rollout.n
    c.rollout.n, c.prompts_per_step = group_n, budget // group_n
  method.fn(c)
  return c
