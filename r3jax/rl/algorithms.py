"""RL building blocks chosen by name from the config, in the manner of Tunix's
rl/algo_core.py: advantage estimators (`ppo.advantage`) and policy losses
(`ppo.policy_loss`). A new method is one function and one table entry here; the PPO
trainer's phases call whatever the config names.

An advantage estimator takes the rollout batch (a dict of [B, N] arrays: `rewards` (the
KL-shaped per-token rewards), `values`, `resp_mask`, and `score` ([B], the normalised
sequence score)) with the `ppo` config section, and returns (advantages, returns), both
[B, N]. `uses_value` says whether it needs a value model: an estimator that does not
(a group baseline) lets the trainer skip building one.

A policy loss takes (logp, old_logp, advantages, resp_mask, ppo config) and returns
(loss, metrics); it runs inside the jitted update, so it must be traceable.
"""

import dataclasses
from typing import Callable

from r3jax.losses import ppo


@dataclasses.dataclass(frozen=True)
class Advantage:
  fn: Callable
  uses_value: bool


def gae(batch, pcfg):
  """Masked GAE(γ, λ) over the shaped token rewards, whitened over the batch if
  ppo.whiten (SPEC §4)."""
  mask = batch["resp_mask"]
  adv, returns = ppo.gae(batch["rewards"], batch["values"] * mask, mask, pcfg.gamma, pcfg.lam)
  return (ppo.masked_whiten(adv, mask) if pcfg.whiten else adv), returns


def ppo_clip(logp, old_logp, adv, mask, pcfg):
  """PPO's clipped surrogate (ε = ppo.clip_eps), averaged over response tokens."""
  return ppo.policy_loss(logp, old_logp, adv, mask, pcfg.clip_eps)


ADVANTAGES = {"gae": Advantage(gae, uses_value=True)}
POLICY_LOSSES = {"ppo_clip": ppo_clip}
KL_ESTIMATORS = ("k1", "k2", "k3")  # losses/ppo.kl_estimate
