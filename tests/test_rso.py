"""RSO rejection sampling (its target distribution, by chi-square) and pair construction."""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from r3jax.rl import rso

# Compiled once per (shape, k) and shared: tests stay fast with β traced.
sample = jax.jit(rso.rejection_sample, static_argnames="k")
sample_batch = jax.jit(rso.rejection_sample_batch, static_argnames="k")

PI_SFT = np.array([0.4, 0.3, 0.2, 0.1])
REWARD = np.array([0.0, 0.5, 1.0, 1.5], np.float32)


def toy_candidates(key, trials, n):
  """Outcomes ~ π_sft i.i.d. and their rewards: ([trials, n] int, [trials, n] float)."""
  y = jax.random.categorical(key, jnp.log(jnp.asarray(PI_SFT)), shape=(trials, n))
  return y, jnp.asarray(REWARD)[y]


@functools.partial(jax.jit, static_argnames=("trials", "n", "k"))
def toy_run(key, beta, trials, n, k):
  key_y, key_rs = jax.random.split(key)
  y_TN, r_TN = toy_candidates(key_y, trials, n)
  accepted_TN, order_TK = rso.rejection_sample_batch(key_rs, r_TN, jnp.ones_like(r_TN, bool), k, beta)
  return jnp.take_along_axis(y_TN, order_TK, 1), accepted_TN


def tilted(beta):
  p = PI_SFT * np.exp(REWARD / beta)
  return p / p.sum()


def test_accepted_outcome_follows_tilted_distribution():
  trials, beta = 20000, 0.5
  y_T1, _ = toy_run(jax.random.PRNGKey(0), beta, trials, 64, 1)
  counts = np.bincount(np.asarray(y_T1[:, 0]), minlength=4)
  assert stats.chisquare(counts, tilted(beta) * trials).pvalue > 1e-3
  # Power: the same counts are far from plain SFT samples.
  assert stats.chisquare(counts, PI_SFT * trials).pvalue < 1e-6


def test_huge_beta_is_plain_sft_sampling():
  trials = 20000
  y_T1, _ = toy_run(jax.random.PRNGKey(1), 1e6, trials, 64, 1)
  counts = np.bincount(np.asarray(y_T1[:, 0]), minlength=4)
  assert stats.chisquare(counts, PI_SFT * trials).pvalue > 1e-3
  assert stats.chisquare(counts, tilted(0.5) * trials).pvalue < 1e-6


def reference_loop(rng, rewards, k, beta):
  """RSO's Algorithm 1 (Liu et al. 2024, §3) sequentially: candidates by index, one at a time."""
  remaining, accepted = list(range(len(rewards))), []
  while len(accepted) < k and remaining:
    r_max = max(rewards[i] for i in remaining)
    taken = []
    for i in remaining:
      if rng.uniform() < np.exp((rewards[i] - r_max) / beta):
        accepted.append(i)
        taken.append(i)
        if len(accepted) == k:
          break
    remaining = [i for i in remaining if i not in taken]
  return accepted


def test_several_passes_match_the_sequential_loop():
  # k = 3 of N = 12 at β = 1 needs several passes; compare which outcomes get accepted.
  trials, n, k, beta = 3000, 12, 3, 1.0
  y_TK, _ = toy_run(jax.random.PRNGKey(2), beta, trials, n, k)
  ours = collections.Counter(tuple(sorted(row)) for row in np.asarray(y_TK).tolist())
  rng = np.random.RandomState(0)
  loop = collections.Counter()
  for _ in range(trials):
    y = rng.choice(4, n, p=PI_SFT)
    loop[tuple(sorted(y[reference_loop(rng, REWARD[y], k, beta)]))] += 1
  keys = sorted(set(ours) | set(loop))
  table = np.array([[ours[c] for c in keys], [loop[c] for c in keys]])
  table = table[:, table.sum(0) >= 10]  # Chi-square needs enough expected counts per cell.
  assert stats.chi2_contingency(table).pvalue > 1e-3


def random_instance(seed, n=12):
  rng = np.random.RandomState(seed)
  rewards = rng.randn(n).astype(np.float32)
  valid = rng.rand(n) < 0.6
  rewards[~valid] = np.nan  # Padding may hold anything.
  return rewards, valid


@pytest.mark.parametrize("beta", [0.0, 0.1, 1.0, 1e6])
def test_counts_validity_and_argmax(beta):
  for seed in range(12):
    rewards, valid = random_instance(seed)
    n_valid = int(valid.sum())
    for k in (1, 3, 8, 20):
      accepted, order = map(np.asarray, sample(jax.random.PRNGKey(seed), rewards, valid, k=k, beta=beta))
      m = min(k, n_valid)
      assert accepted.sum() == m and not (accepted & ~valid).any()
      assert order.shape == (k,) and (order[m:] == -1).all()
      assert sorted(order[:m]) == sorted(np.flatnonzero(accepted))
      # The arg-max always passes its coin, but a pass that accepts more than k keeps only
      # the first k in visiting order, so it is certain to stay only when that cannot bite.
      if n_valid and (beta == 0.0 or k >= n_valid):
        assert accepted[np.nanargmax(np.where(valid, rewards, -np.inf))]
      if k >= n_valid:
        np.testing.assert_array_equal(accepted, valid)


@pytest.mark.parametrize("beta", [0.0, 1e-6])
def test_tiny_beta_is_greedy(beta):
  for seed in range(10):
    rewards, valid = random_instance(seed)
    _, order = sample(jax.random.PRNGKey(seed), rewards, valid, 4, beta)
    by_reward = np.argsort(-np.where(valid, rewards, -np.inf))[:min(4, valid.sum())]
    # Rewards differ by far more than β here, so every pass keeps just the current best.
    np.testing.assert_array_equal(np.asarray(order)[:len(by_reward)], by_reward)


def test_huge_beta_accepts_valid_candidates_uniformly():
  rewards, valid = random_instance(3)
  trials = 6000
  keys = jax.random.split(jax.random.PRNGKey(4), trials)
  first = jax.jit(jax.vmap(lambda key: rso.rejection_sample(key, rewards, valid, 1, 1e6)[1][0]))(keys)
  counts = np.bincount(np.asarray(first), minlength=len(rewards))
  assert counts[~valid].sum() == 0
  assert stats.chisquare(counts[valid]).pvalue > 1e-3


def test_sft_sample_and_best_of_n():
  rewards, valid = random_instance(5)
  accepted, order = jax.jit(rso.sft_sample, static_argnames="k")(jax.random.PRNGKey(0), valid, k=3)
  assert int(accepted.sum()) == 3 and not (np.asarray(accepted) & ~valid).any()
  rewards_PN = np.stack([rewards, np.arange(12, dtype=np.float32), np.zeros(12, np.float32)])
  valid_PN = np.stack([valid, np.arange(12) < 5, np.zeros(12, bool)])
  best = np.asarray(rso.best_of_n(rewards_PN, valid_PN))
  np.testing.assert_array_equal(best, [np.nanargmax(np.where(valid, rewards, -np.inf)), 4, -1])


def test_batched_matches_per_prompt():
  rewards_PN = np.stack([random_instance(s)[0] for s in range(3)])
  valid_PN = np.stack([random_instance(s)[1] for s in range(3)])
  accepted_PN, order_PK = sample_batch(jax.random.PRNGKey(7), rewards_PN, valid_PN, 4, 0.5)
  keys = jax.random.split(jax.random.PRNGKey(7), 3)
  for p in range(3):
    a, o = sample(keys[p], rewards_PN[p], valid_PN[p], 4, 0.5)
    np.testing.assert_array_equal(accepted_PN[p], a)
    np.testing.assert_array_equal(order_PK[p], o)


def test_unique_mask():
  np.testing.assert_array_equal(rso.unique_mask(["a", "b", "a", "c", "b"]), [1, 1, 0, 1, 0])


# --- pairs ---

def test_first_round_pairs():
  rewards = np.random.RandomState(0).randn(20)
  idx = np.array([7, 2, 11, 0, 5, 19, 3, 8])
  pairs = rso.pairs_first_round(idx, rewards)
  assert pairs.shape == (4, 2)
  assert len(set(pairs.ravel())) == 8 and set(pairs.ravel()) == set(idx)
  assert (rewards[pairs[:, 0]] > rewards[pairs[:, 1]]).all()
  np.testing.assert_array_equal(np.sort(pairs, 1), np.sort(idx.reshape(4, 2), 1))  # Consecutive.
  # -1 padding and an odd last one are ignored.
  assert rso.pairs_first_round(np.array([7, 2, 11, -1]), rewards).shape == (1, 2)


def test_tournament_pairs():
  rng = np.random.RandomState(1)
  for k in (2, 5, 8):
    rewards = rng.randn(20)
    idx = rng.permutation(20)[:k]
    pairs = rso.pairs_tournament(idx, rewards)
    assert pairs.shape == (k - 1, 2)
    assert (rewards[pairs[:, 0]] > rewards[pairs[:, 1]]).all()
    losers = collections.Counter(pairs[:, 1].tolist())
    assert all(c == 1 for c in losers.values())  # Single elimination: one loss each.
    (winner,) = set(idx) - set(losers)
    assert winner == idx[np.argmax(rewards[idx])]


def test_ties_are_dropped():
  rewards = np.array([1.0, 1.0, 2.0, 0.0, 2.0, 2.0])
  assert rso.pairs_first_round([0, 1, 2, 3, 4, 5], rewards).tolist() == [[2, 3]]
  pairs = rso.pairs_tournament([0, 1, 2, 3, 4, 5], rewards)
  # Games: (0,1) tie, (2,3), (4,5) tie; then (0,2), then 4 gets a bye to meet 2: a tie.
  assert pairs.tolist() == [[2, 3], [2, 0]]
  assert rso.make_pairs([0, 1, 2, 3], rewards, "tournament").tolist() == [[2, 3], [2, 0]]
  with pytest.raises(ValueError):
    rso.make_pairs([0, 1], rewards, "round_robin")


def test_end_to_end_rso_pairs():
  rewards, valid = random_instance(6, n=64)
  _, order = sample(jax.random.PRNGKey(0), rewards, valid, 8, 0.5)
  for pairing, n_pairs in (("first_round", 4), ("tournament", 7)):
    pairs = rso.make_pairs(order, rewards, pairing)
    assert pairs.shape == (n_pairs, 2) and valid[pairs].all()
    assert (rewards[pairs[:, 0]] > rewards[pairs[:, 1]]).all()


def test_gold_figures_of_pairs_and_candidates():
  """RSO's pairs report what the gold judge thinks of chosen vs rejected (trainers/rso.py)."""
  from r3jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from r3jax.trainers import rso as rso_stage  # pylint: disable=g-import-not-at-top
  rows = synthetic.comparisons(2, seed=4, world_only=True)
  kb = synthetic.world()
  full = [" ".join(synthetic.facts(kb[r["entity"]])) for r in rows]
  texts = [[full[i], "Nothing true.", rows[i]["responses"][0]] for i in range(2)]
  g = rso_stage.candidate_gold(rows, texts)
  assert g["score"].shape == (2, 3) and (g["score"][:, 1] == 0).all() and (g["precision"][:, 0] == 1).all()
  valid = np.ones((2, 3), bool)
  out = rso_stage.pair_gold(g, [(0, 0, 1), (1, 1, 0)], valid)
  assert out["gold_agrees"] == 0.5 and out["gold_ties"] == 0.0
  assert out["chosen_score"] == pytest.approx((g["score"][0, 0] + 0.0) / 2)
  assert rso_stage.candidate_gold([{"prompt": "hi"}], [["x"]]) is None  # Not the world's.
