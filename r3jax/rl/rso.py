"""Statistical rejection sampling and preference-pair construction (RSO: Liu et al. 2024,
"Statistical Rejection Sampling Improves Preference Optimization", §3, Algorithm 1).

For each prompt, N candidates y ~ π_sft are scored by a reward r. `rejection_sample` keeps k
of them, distributed as π_r(y) ∝ π_sft(y)·exp(r(y)/β). Pairs are then built from the kept
ones and labelled by the reward, for the sigmoid_norm / hinge_norm losses.

The RSO paper compares three ways to get training pairs:
  rso-sample-rank: `rejection_sample`, then `pairs_first_round` (best) or `pairs_tournament`.
  sft-sample-rank: `sft_sample` (k uniform draws of the N, no reward tilt), same pairing.
  direct: the dataset's own (chosen, rejected) pair as is; nothing to do here, the
    trainer feeds it straight to the loss.

Sampling is jittable (k static). Pairing runs on host, once per prompt, in numpy.
Pairs whose two rewards are equal are dropped: the label would be a coin flip and would
only add noise to the loss. Duplicate texts should count once (RSO's Algorithm 1 draws
only a y not yet accepted): pass `unique_mask(texts)` as (part of) `valid_N`.
"""

import jax
import jax.numpy as jnp
import numpy as np

PAIRINGS = ("first_round", "tournament")


def rejection_sample(key, rewards_N, valid_N, k: int, beta):
  """k passes of RSO's rejection step. Returns (accepted_N bool, order_K int32).

  Each pass takes r_max over the remaining valid candidates and accepts each remaining
  one with probability exp((r - r_max)/β); the arg-max always passes, so every pass that
  has candidates accepts one, and k passes suffice. Of those accepted in a pass only the
  first k - (accepted so far) are kept. "First" is in a random visiting order drawn once
  per call: for i.i.d. candidates that is the same distribution as scanning by index (the
  reference loop), and it stays unbiased when the candidate order carries information
  (e.g. a sampler that sorts by length).

  Exactly min(k, n_valid) are accepted. `order_K` lists their indices in acceptance order,
  padded with -1. β = 0 is exact greedy (descending reward); β = inf accepts everything in
  the first pass, i.e. k uniform draws without replacement.
  """
  n = rewards_N.shape[0]
  valid_N = valid_N.astype(bool)
  # Padding may hold garbage (nan, -inf); it is never accepted, so any finite stand-in works.
  r_N = jnp.where(valid_N, rewards_N.astype(jnp.float32), 0.0)
  beta = jnp.asarray(beta, jnp.float32)
  key_order, key_passes = jax.random.split(key)
  visit_N = jax.random.permutation(key_order, n)  # visit_N[j]: the j-th candidate looked at.

  def one_pass(i, carry):
    remaining_N, rank_N, count = carry
    r_max = jnp.max(jnp.where(remaining_N, r_N, -jnp.inf))
    # r == r_max is forced to exp(0) = 1, and β = 0 becomes a division by the smallest
    # normal float: -inf below the max, greedy, with no 0/0 anywhere (debug_nans stays quiet).
    scaled_N = (r_N - r_max) / jnp.maximum(beta, jnp.finfo(jnp.float32).tiny)
    log_p_N = jnp.where(r_N >= r_max, 0.0, scaled_N)
    u_N = jax.random.uniform(jax.random.fold_in(key_passes, i), (n,))
    accept_N = remaining_N & (u_N < jnp.exp(log_p_N))
    accept_V = accept_N[visit_N]
    cum_V = jnp.cumsum(accept_V.astype(jnp.int32))
    keep_V = accept_V & (cum_V <= k - count)
    keep_N = jnp.zeros_like(remaining_N).at[visit_N].set(keep_V)
    rank_N = rank_N.at[visit_N].set(jnp.where(keep_V, count + cum_V - 1, rank_N[visit_N]))
    return remaining_N & ~keep_N, rank_N, count + jnp.sum(keep_V.astype(jnp.int32))

  init = (valid_N, jnp.full((n,), -1, jnp.int32), jnp.int32(0))
  _, rank_N, _ = jax.lax.fori_loop(0, k, one_pass, init)
  accepted_N = rank_N >= 0
  # Scatter each index to its rank; the unaccepted go to slot k, which is dropped.
  order_K = jnp.full((k,), -1, jnp.int32).at[jnp.where(accepted_N, rank_N, k)].set(
      jnp.arange(n, dtype=jnp.int32), mode="drop")
  return accepted_N, order_K


def rejection_sample_batch(key, rewards_PN, valid_PN, k: int, beta):
  """`rejection_sample` for P prompts at once: ([P, N] bool, [P, k] int32)."""
  keys_P = jax.random.split(key, rewards_PN.shape[0])
  return jax.vmap(rejection_sample, in_axes=(0, 0, 0, None, None))(keys_P, rewards_PN, valid_PN, k, beta)


def sft_sample(key, valid_N, k: int):
  """RSO's sft-sample-rank: k of the valid candidates, uniformly, without replacement.

  Equal rewards make every candidate pass the first rejection pass, so this is
  `rejection_sample` with the reward tilt switched off.
  """
  return rejection_sample(key, jnp.zeros(valid_N.shape, jnp.float32), valid_N, k, 1.0)


def best_of_n(rewards_PN, valid_PN):
  """Index of the highest-reward valid candidate per prompt (-1 where none is valid)."""
  masked_PN = jnp.where(valid_PN, rewards_PN, -jnp.inf)
  return jnp.where(jnp.any(valid_PN, -1), jnp.argmax(masked_PN, -1), -1).astype(jnp.int32)


def unique_mask(items) -> np.ndarray:
  """True at the first occurrence of each item, so duplicate texts count once."""
  seen, out = set(), []
  for item in items:
    out.append(item not in seen)
    seen.add(item)
  return np.array(out, bool)


def _labelled(a, b, rewards):
  """(chosen, rejected) by reward, or None on a tie."""
  if rewards[a] == rewards[b]:
    return None
  return (a, b) if rewards[a] > rewards[b] else (b, a)


def _as_pairs(pairs):
  return np.array(pairs, np.int32).reshape(-1, 2)


def pairs_first_round(idx, rewards) -> np.ndarray:
  """Disjoint consecutive pairs (idx[0], idx[1]), (idx[2], idx[3]), ... as [P, 2] (chosen, rejected).

  `idx`: candidate indices in acceptance order (`order_K`; -1 padding is ignored, as is an
  odd last one). `rewards`: indexed by candidate, e.g. the prompt's rewards_N.
  """
  idx = [int(i) for i in np.asarray(idx) if i >= 0]
  rewards = np.asarray(rewards)
  pairs = [_labelled(a, b, rewards) for a, b in zip(idx[0::2], idx[1::2])]
  return _as_pairs([p for p in pairs if p is not None])


def pairs_tournament(idx, rewards) -> np.ndarray:
  """Single elimination over idx in acceptance order: len(idx) - 1 games as [P, 2].

  Each round pairs neighbours and the higher reward advances; an odd one out gets a bye.
  A tied game is dropped from the pairs and its earlier entrant advances, so the final
  winner still has the maximum reward.
  """
  field = [int(i) for i in np.asarray(idx) if i >= 0]
  rewards = np.asarray(rewards)
  pairs = []
  while len(field) > 1:
    advance = []
    for a, b in zip(field[0::2], field[1::2]):
      game = _labelled(a, b, rewards)
      if game is not None:
        pairs.append(game)
      advance.append(a if game is None else game[0])
    if len(field) % 2:
      advance.append(field[-1])
    field = advance
  return _as_pairs(pairs)


def make_pairs(idx, rewards, pairing: str = "first_round") -> np.ndarray:
  if pairing == "first_round":
    return pairs_first_round(idx, rewards)
  if pairing == "tournament":
    return pairs_tournament(idx, rewards)
  raise ValueError(f"unknown pairing {pairing!r}; expected one of {PAIRINGS}")
