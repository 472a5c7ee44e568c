"""RL building blocks chosen by name from the config, in the manner of Tunix's
rl/algo_core.py: advantage estimators (`ppo.advantage`) and policy losses
(`ppo.policy_loss`). A new method is one function and one table entry here; the PPO
trainer's phases call whatever the config names.

An advantage estimator takes the rollout batch (a dict of [B, N] arrays: `rewards` (per
token: the sequence score on the last token, minus β·KL on every token when kl.placement
is "reward"), `values`, `resp_mask`), the `ppo` config section and n, the samples per
prompt (rows are prompt-major), and returns (advantages, returns), both [B, N].
`uses_value` says whether it needs a value model; those that do not (the group
baselines, REINFORCE++) make the trainer build none, which `python -m r3jax.plan` shows.

  gae          PPO's learned value baseline, GAE(γ, λ), whitened over the batch (SPEC §4)
  grpo         GRPO: (r - group mean) / group std, per prompt
  dr_grpo      Dr. GRPO: r - group mean (no std), used with ppo.loss_agg=token_sum
  rloo         RLOO: r - mean of the prompt's other samples
  reinforce_pp REINFORCE++: per-token returns of the KL-shaped rewards, whitened over the
               batch (a global baseline, no groups)

The group estimators read the sequence reward r = Σ_t rewards_t, so the KL enters them
only where kl.placement puts it: in r ("reward", as TRL's RLOO) or in the loss ("loss",
GRPO's k3 term, added by the trainer). A policy loss takes (logp, old_logp, advantages,
resp_mask, ppo config) and returns (loss, metrics); it runs inside the jitted update.
"""

import dataclasses
from typing import Callable

import jax.numpy as jnp

from r3jax.losses import ppo


@dataclasses.dataclass(frozen=True)
class Advantage:
  fn: Callable
  uses_value: bool
  group: bool = False  # Needs n >= 2 samples per prompt.


def gae(batch, pcfg, n):
  """Masked GAE(γ, λ) over the shaped token rewards, whitened over the batch if
  ppo.whiten (SPEC §4)."""
  del n
  mask = batch["resp_mask"]
  adv, returns = ppo.gae(batch["rewards"], batch["values"] * mask, mask, pcfg.gamma, pcfg.lam)
  return (ppo.masked_whiten(adv, mask) if pcfg.whiten else adv), returns


def sequence(adv_B, mask_BT):
  """One advantage per sequence, on each of its response tokens (also the 'returns')."""
  adv_BT = adv_B[:, None] * mask_BT
  return adv_BT, adv_BT


def grpo(batch, pcfg, n):
  del pcfg
  return sequence(ppo.group_advantages(batch["rewards"].sum(-1), n, scale=True), batch["resp_mask"])


def dr_grpo(batch, pcfg, n):
  del pcfg
  return sequence(ppo.group_advantages(batch["rewards"].sum(-1), n, scale=False), batch["resp_mask"])


def rloo(batch, pcfg, n):
  del pcfg
  return sequence(ppo.leave_one_out(batch["rewards"].sum(-1), n), batch["resp_mask"])


def reinforce_pp(batch, pcfg, n):
  """Returns-to-go of the token rewards (γ = ppo.gamma; no value: λ = 1 against V = 0),
  whitened over every response token of the batch."""
  del n
  mask = batch["resp_mask"]
  _, returns = ppo.gae(batch["rewards"], jnp.zeros_like(mask), mask, pcfg.gamma, 1.0)
  return ppo.masked_whiten(returns, mask), returns


def ppo_clip(logp, old_logp, adv, mask, pcfg):
  """PPO's clipped surrogate (ε = ppo.clip_eps), aggregated by ppo.loss_agg."""
  return ppo.policy_loss(logp, old_logp, adv, mask, pcfg.clip_eps, pcfg.loss_agg)


ADVANTAGES = {"gae": Advantage(gae, uses_value=True),
              "grpo": Advantage(grpo, uses_value=False, group=True),
              "dr_grpo": Advantage(dr_grpo, uses_value=False, group=True),
              "rloo": Advantage(rloo, uses_value=False, group=True),
              "reinforce_pp": Advantage(reinforce_pp, uses_value=False)}
POLICY_LOSSES = {"ppo_clip": ppo_clip}
KL_ESTIMATORS = ("k1", "k2", "k3")  # losses/ppo.kl_estimate
KL_PLACEMENTS = ("reward", "loss")
