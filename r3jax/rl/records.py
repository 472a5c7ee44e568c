"""Typed records passed between the phases of an RL iteration (trainers/ppo.py):

  rollout  -> Rollout   prompts and sampled responses (host arrays, this process's rows)
  score    -> Scored    decoded texts, the reward's components, the per-term raw scores
  reference_value, advantages -> RLBatch   everything an estimator or a loss reads (on the
                                          mesh); `advantages` fills its last fields
  update   -> Forward   (inside the jitted step) what the current models say of a minibatch

Estimators (`ADVANTAGES`), policy losses and loss terms (rl/algorithms.py) take an
`RLBatch`, so a new method reads any of its fields without a change to the trainer.
Shapes: B rollouts (prompt-major, n per prompt), S = prompt_len + T tokens, T response
tokens, K reward terms.
"""

import dataclasses
from typing import Any

from flax import struct
import jax
import numpy as np

from r3jax.models import sampling


@dataclasses.dataclass(frozen=True)
class Rollout:
  """One iteration's prompts and this process's sampled responses."""
  rows: list[dict]  # The prompt rows (prompt, reference, query_type, and any other field).
  prompt_tok: np.ndarray  # [P, prompt_len] left-padded prompt ids.
  prompt_mask: np.ndarray
  samples: sampling.Samples  # n responses per prompt, prompt-major.
  truncated: int  # Prompts longer than rollout.prompt_len (their end is kept).


@dataclasses.dataclass(frozen=True)
class Scored:
  """The rollout as the reward and the judges see it."""
  texts: list[str]
  components: dict[str, np.ndarray]  # "reward" and each scorer's terms, per response.
  terms: np.ndarray  # [B, K] raw scores of the reward's terms, before normalisation.
  judged: dict[str, np.ndarray]  # Gold judge and diversity figures the reward does not see.


@struct.dataclass
class RLBatch:
  """The rollouts on the mesh, with everything an estimator or a loss may read."""
  seq_BS: jax.Array  # Prompt and response token ids.
  mask_BS: jax.Array  # Attention mask (prompt padding and response padding are 0).
  resp_mask_BT: jax.Array  # 1.0 on response tokens (the stop token included), float32.
  old_logp_BT: jax.Array  # Behaviour (sampling-time model) log-probs, 0 on padding.
  ref_logp_BT: jax.Array  # Reference (frozen SFT) log-probs.
  values_BT: jax.Array  # The value model's values at sampling time (0 without one).
  scores_BK: jax.Array  # Raw per-term reward scores × reward.scale.
  # Filled by the advantages phase:
  kl_BT: Any = None  # kl.estimator of the behaviour against the reference, masked.
  score_B: Any = None  # The normalised, weighted sequence score.
  rewards_BT: Any = None  # Per-token rewards: the score on the last token (- β·KL).
  adv_BT: Any = None
  returns_BT: Any = None

  @property
  def lengths_B(self):
    return self.resp_mask_BT.sum(-1)


@struct.dataclass
class Forward:
  """What the models being trained compute for a minibatch inside the update step."""
  logp_BT: jax.Array  # Current policy's log-probs of the response tokens.
  entropy_BT: jax.Array  # Its per-token entropies.
  values_BT: Any = None  # Current value model's values (None without one).
  ptx_nll: Any = None  # Mean LM loss on a PPO-ptx batch (None without ptx).


@dataclasses.dataclass(frozen=True)
class Iteration:
  """One finished iteration, as the logs read it."""
  rollout: Rollout
  scored: Scored
  batch: RLBatch
  update_metrics: list[dict]  # One dict per minibatch step.
  kl_seq: float  # Mean sequence KL of the behaviour policy against the reference.
  sampling: dict = dataclasses.field(default_factory=dict)  # Dynamic sampling's counts, overlong penalty.
