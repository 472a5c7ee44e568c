"""PPO pieces against plain-Python references and closed-form invariants."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3jax.rl import ops as ppo
from r3jax.rl import algorithms


def random_masked(seed, b=5, t=9):
  rng = np.random.RandomState(seed)
  lengths = rng.randint(0, t + 1, b)
  lengths[0] = t  # One full row, one empty row.
  lengths[1] = 0
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  return rng.randn(b, t).astype(np.float32) * mask, rng.randn(b, t).astype(np.float32), mask


def gae_loop(r, v, m, gamma, lam):
  b, t = r.shape
  adv = np.zeros((b, t), np.float64)
  for i in range(b):
    n = int(m[i].sum())
    last = 0.0
    for s in reversed(range(n)):
      v_next = v[i, s + 1] if s + 1 < n else 0.0
      delta = r[i, s] + gamma * v_next - v[i, s]
      last = delta + gamma * lam * last
      adv[i, s] = last
  return adv, (adv + v * m) * m


class GaeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @pytest.mark.filterwarnings("ignore")
  def test_matches_python_loop(self):
    for seed, (gamma, lam) in enumerate([(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)]):
      r, v, m = random_masked(seed)
      adv, ret = self.variant(ppo.gae, static_argnames=("gamma", "lam"))(r, v, m, gamma=gamma, lam=lam)
      want_adv, want_ret = gae_loop(r, v, m, gamma, lam)
      np.testing.assert_allclose(adv, want_adv, atol=1e-5)
      np.testing.assert_allclose(ret, want_ret, atol=1e-5)
      assert (np.asarray(adv)[m == 0] == 0).all() and (np.asarray(ret)[m == 0] == 0).all()


def test_gamma_lambda_one_is_reward_to_go_minus_value():
  r, v, m = random_masked(3)
  adv, _ = ppo.gae(r, v, m, 1.0, 1.0)
  to_go = np.flip(np.cumsum(np.flip(r * m, 1), 1), 1)
  np.testing.assert_allclose(adv, (to_go - v) * m, atol=1e-5)


def test_terminal_score_without_kl_gives_score_minus_value():
  _, v, m = random_masked(4)
  score = np.array([2.0, 5.0, -1.0, 0.5, 3.0], np.float32)
  rewards = ppo.token_rewards(jnp.asarray(score), jnp.zeros_like(v), jnp.asarray(m), 0.0)
  adv, _ = ppo.gae(rewards, v, m, 1.0, 1.0)
  np.testing.assert_allclose(adv, (score[:, None] - v) * m, atol=1e-5)


def test_token_rewards_sum_and_placement():
  _, _, m = random_masked(5)
  kl = np.random.RandomState(0).randn(*m.shape).astype(np.float32)
  score = np.arange(5, dtype=np.float32) + 1
  r = np.asarray(ppo.token_rewards(jnp.asarray(score), jnp.asarray(kl), jnp.asarray(m), 0.1))
  has = m.sum(1) > 0
  np.testing.assert_allclose(r.sum(1)[has], (score - 0.1 * (kl * m).sum(1))[has], atol=1e-5)
  assert (r[m == 0] == 0).all()  # Never on padding, not even the score of an empty row.
  last = m.sum(1).astype(int) - 1
  for i in np.where(has)[0]:
    assert r[i, last[i]] == pytest.approx(score[i] - 0.1 * kl[i, last[i]], abs=1e-5)


def test_kl_estimators():
  logp = jnp.asarray(np.random.RandomState(0).randn(1000) * 2)
  ref = jnp.asarray(np.random.RandomState(1).randn(1000) * 2)
  kl = algorithms.kl_estimate
  np.testing.assert_allclose(kl(logp, ref, "k1"), logp - ref, rtol=1e-6)
  assert (kl(logp, ref, "k2") >= 0).all() and (kl(logp, ref, "k3") >= 0).all()
  assert float(jnp.abs(kl(logp, logp, "k3")).max()) == 0.0
  with pytest.raises(ValueError, match=r"config.kl.estimator='k9': unknown KL estimator; expected one of k1, k2, k3"):
    kl(logp, ref, "k9")


def test_policy_loss_gradient_and_clipping():
  eps = 0.2
  mask = jnp.ones((1, 1))
  grad = lambda logp, old, adv: jax.grad(lambda lp: ppo.policy_loss(lp, old, adv, mask, eps)[0])(logp)
  zero = jnp.zeros((1, 1))
  assert float(grad(zero, zero, zero)[0, 0]) == 0.0  # ρ = 1 and A = 0.
  assert float(grad(zero, zero, jnp.ones((1, 1)))[0, 0]) == -1.0  # ρ = 1: d/dlogp = -A.
  for ratio in [0.5, 0.79, 0.81, 1.0, 1.19, 1.21, 2.0]:
    lp = jnp.full((1, 1), np.log(ratio), jnp.float32)
    g_pos = float(grad(lp, zero, jnp.ones((1, 1)))[0, 0])
    g_neg = float(grad(lp, zero, -jnp.ones((1, 1)))[0, 0])
    # A > 0: no push beyond 1 + ε; A < 0: no push below 1 - ε. Inside, gradient -A·ρ.
    assert (g_pos == 0.0) == (ratio > 1 + eps), ratio
    assert (g_neg == 0.0) == (ratio < 1 - eps), ratio
    if g_pos:
      assert g_pos == pytest.approx(-ratio, rel=1e-5)


def test_value_loss_clipping():
  old, ret, mask = jnp.zeros((1, 1)), jnp.full((1, 1), 1.0), jnp.ones((1, 1))
  loss = lambda v: ppo.value_loss(jnp.full((1, 1), v), old, ret, mask, 0.15)[0]
  # Inside the clip range: plain ½(V - R)².
  assert float(loss(0.1)) == pytest.approx(0.5 * 0.9 ** 2)
  # Moving past the clip toward R: the clipped error (R - 0.15)² dominates.
  assert float(loss(0.5)) == pytest.approx(0.5 * 0.85 ** 2)
  assert float(jax.grad(loss)(0.5)) == 0.0
  # Moving away from R is never clipped: the gradient still pulls back.
  assert float(jax.grad(loss)(-0.5)) == pytest.approx(-1.5)


def test_running_moments_batched_equals_concatenated():
  xs = [np.random.RandomState(i).randn(n).astype(np.float32) * (i + 1) + i for i, n in enumerate([3, 7, 1, 12])]
  m = ppo.Moments.init()
  for x in xs:
    m = ppo.update_moments(m, jnp.asarray(x))
  allx = np.concatenate(xs)
  one = ppo.update_moments(ppo.Moments.init(), jnp.asarray(allx))
  np.testing.assert_allclose([m.mean, m.var, m.count], [one.mean, one.var, one.count], rtol=1e-5)
  np.testing.assert_allclose([m.mean, m.var], [allx.mean(), allx.var()], rtol=1e-5)
  z = ppo.normalize_score(jnp.asarray(allx), one, clip=1.0)
  assert float(jnp.abs(z).max()) <= 1.0


def test_adaptive_kl_stays_in_band():
  for kl in [0.0, 3.0, 6.0, 9.0, 100.0]:
    new = float(ppo.adaptive_kl(0.2, kl, target=6.0, horizon=10000, n_steps=256))
    assert 0.2 * (1 - 0.2 * 256 / 10000) - 1e-6 <= new <= 0.2 * (1 + 0.2 * 256 / 10000) + 1e-6  # fp32
  assert float(ppo.adaptive_kl(0.2, 6.0, 6.0, 10000, 256)) == pytest.approx(0.2)
  assert float(ppo.adaptive_kl(0.2, 12.0, 6.0, 10000, 256)) > 0.2


def test_whiten():
  x, _, m = random_masked(7)
  w = np.asarray(ppo.masked_whiten(jnp.asarray(x), jnp.asarray(m)))
  # Unit sample std (ddof=1: the unbiased variance, as TRL and verl whiten).
  assert abs(w[m == 1].mean()) < 1e-5 and abs(w[m == 1].std(ddof=1) - 1) < 1e-3 and (w[m == 0] == 0).all()


def gspo_reference(logp, old, adv_B, mask, eps_low, eps_high):
  """GSPO's objective as its paper writes it (Zheng et al. 2025, eq. 5-7), per sequence:
  s_i = (π(y_i) / π_old(y_i))^(1/|y_i|), J = mean_i min(s_i A_i, clip(s_i, 1-εl, 1+εh) A_i)."""
  n = jnp.maximum(mask.sum(-1), 1.0)
  s = jnp.exp(((logp - old) * mask).sum(-1) / n)
  return -jnp.mean(jnp.minimum(s * adv_B, jnp.clip(s, 1 - eps_low, 1 + eps_high) * adv_B))


class GSPOTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_gspo_equals_the_papers_sequence_objective_in_value_and_gradient(self):
    from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
    from r3jax.rl.records import RLBatch  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(0)
    b, t = 16, 7
    lengths = rng.integers(1, t + 1, b)
    mask = jnp.asarray((np.arange(t)[None] < lengths[:, None]).astype(np.float32))
    old = jnp.asarray(-rng.uniform(0.1, 3.0, (b, t)), jnp.float32) * mask
    logp = old + jnp.asarray(rng.normal(0, 0.15, (b, t)), jnp.float32) * mask
    adv_B = jnp.asarray(rng.normal(size=b), jnp.float32)
    params = ConfigDict(dict(eps_low=0.03, eps_high=0.05, max_log_ratio=10.0))
    batch = RLBatch(seq_BS=None, mask_BS=None, resp_mask_BT=mask, old_logp_BT=old, ref_logp_BT=old,
                    values_BT=None, scores_BK=None, adv_BT=adv_B[:, None] * mask)
    fn = self.variant(lambda lp: algorithms.POLICY_LOSSES["gspo"].fn(lp, batch, None, params))
    loss, metrics = fn(logp)
    want = gspo_reference(logp, old, adv_B, mask, 0.03, 0.05)
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-7)
    frac = float(metrics["policy/clipfrac"])
    assert 0.0 < frac < 1.0  # Both regimes are exercised by this batch.
    grad = jax.grad(lambda lp: fn(lp)[0])(logp)
    want_grad = jax.grad(lambda lp: gspo_reference(lp, old, adv_B, mask, 0.03, 0.05))(logp)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)
    assert (np.asarray(grad)[np.asarray(mask) == 0] == 0).all()


def test_gspo_is_a_registered_loss_with_its_defaults_in_the_schema():
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  from r3jax.trainers import schema  # pylint: disable=g-import-not-at-top
  c = schema.ppo()
  assert c.ppo.loss_params.gspo.to_dict() == algorithms.POLICY_LOSSES["gspo"].params
  for name, entry in algorithms.POLICY_LOSSES.items():
    assert c.ppo.loss_params.get(name, ConfigDict()).to_dict() == entry.params, name
