"""RL statistics and losses against the peers' conventions on random batches (issue: GRPO's
statistics as every peer computes them). The references are written here in torch, the
way verl's trainer/ppo/core_algos.py and TRL's GRPOTrainer state them: group std with
Bessel's correction (torch.std), whitening with the unbiased masked variance, PPO-clip with
clip_ratio_low / clip_ratio_high and dual-clip's clip_ratio_c, CISPO's detached clipped
weight, REINFORCE++-baseline and GRPO's pass@k variant; and each against its paper's
formula where the paper writes one."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from r3jax.rl import algorithms, ops
from r3jax.rl.records import RLBatch

PCFG = ml_collections.ConfigDict(dict(gamma=1.0, lam=0.95, whiten=True, loss_agg="token_mean"))


def random_batch(b, t, seed, scores_B=None, spread=0.3):
  """An RLBatch with ragged response masks, behaviour log-probs and a log-prob shift."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, t + 1, b)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  old = -rng.uniform(0.05, 3.0, (b, t)).astype(np.float32) * mask
  logp = old + rng.normal(0, spread, (b, t)).astype(np.float32) * mask
  scores = rng.normal(size=b).astype(np.float32) if scores_B is None else np.asarray(scores_B, np.float32)
  rewards = np.asarray(ops.token_rewards(jnp.asarray(scores), jnp.zeros((b, t)), jnp.asarray(mask), 0.0))
  adv = rng.normal(size=(b, t)).astype(np.float32) * mask
  batch = RLBatch(seq_BS=None, mask_BS=None, resp_mask_BT=jnp.asarray(mask), old_logp_BT=jnp.asarray(old),
                  ref_logp_BT=jnp.asarray(old - rng.normal(0, 0.2, (b, t)).astype(np.float32) * mask),
                  values_BT=jnp.asarray(rng.normal(size=(b, t)).astype(np.float32) * mask),
                  scores_BK=None, rewards_BT=jnp.asarray(rewards), adv_BT=jnp.asarray(adv))
  return batch, jnp.asarray(logp)


def t(x):
  return torch.tensor(np.asarray(x), dtype=torch.float64)


# ----------------------------------------------------------------------------- references


def masked_whiten_ref(x, mask):
  mean = (x * mask).sum() / mask.sum()
  var = (((x - mean) ** 2) * mask).sum() / mask.sum() * mask.sum() / (mask.sum() - 1)
  return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def grpo_ref(scores, n, eps=1e-6):
  g = scores.view(-1, n)
  return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)).view(-1)


def gae_ref(rewards, values, mask, gamma, lam):
  b, length = rewards.shape
  adv, last = torch.zeros_like(rewards), torch.zeros(b, dtype=rewards.dtype)
  values = values * mask
  for i in reversed(range(length)):
    nxt = values[:, i + 1] if i + 1 < length else torch.zeros(b, dtype=rewards.dtype)
    delta = rewards[:, i] + gamma * nxt - values[:, i]
    last = (delta + gamma * lam * last) * mask[:, i]
    adv[:, i] = last
  return adv, (adv + values) * mask


def ppo_clip_ref(logp, old, adv, mask, low, high, c):
  ratio = torch.exp(logp - old)
  l1, l2 = -adv * ratio, -adv * torch.clamp(ratio, 1 - low, 1 + high)
  clipped = torch.maximum(l1, l2)
  losses = torch.where(adv < 0, torch.minimum(-adv * c, clipped), clipped) if c else clipped
  return (losses * mask).sum() / mask.sum()


def cispo_ref(logp, old, adv, mask, cap):
  """TRL's cispo: -clamp(ρ, max=ε_max).detach() · A · log π, token-averaged."""
  w = torch.clamp(torch.exp(logp - old), max=cap).detach()
  return ((-w * adv * logp) * mask).sum() / mask.sum()


def seq_max(adv_BT, mask_BT):
  """One value per sequence (each sequence-level estimator repeats it on its tokens)."""
  return np.asarray(adv_BT).max(1, initial=-np.inf, where=np.asarray(mask_BT) > 0)


# ----------------------------------------------------------------------------- estimators


@pytest.mark.parametrize("n", [2, 4, 8])
def test_grpo_divides_by_the_sample_std_as_trl_verl_and_tunix(n):
  scores = np.random.default_rng(n).normal(size=6 * n).astype(np.float32)
  scores[:n] = 0.7  # An equal-reward group: 0, never NaN.
  batch, _ = random_batch(6 * n, 5, n, scores)
  adv, _ = jax.jit(lambda b: algorithms.grpo(b, PCFG, n))(batch)
  want = grpo_ref(t(scores), n).numpy()
  np.testing.assert_allclose(seq_max(adv, batch.resp_mask_BT), want, rtol=1e-5, atol=1e-5)
  assert np.isfinite(np.asarray(adv)).all() and (np.asarray(adv)[:n] == 0).all()


@pytest.mark.parametrize("name", ["gae", "reinforce_pp"])
def test_whitened_advantages_use_the_unbiased_variance(name):
  batch, _ = random_batch(12, 9, 1)
  adv, ret = algorithms.ADVANTAGES[name].fn(batch, PCFG, 1)
  mask = t(batch.resp_mask_BT)
  values = t(batch.values_BT) if name == "gae" else torch.zeros_like(mask)
  raw, returns = gae_ref(t(batch.rewards_BT), values, mask, PCFG.gamma, PCFG.lam if name == "gae" else 1.0)
  np.testing.assert_allclose(ret, returns.numpy(), rtol=1e-5, atol=1e-5)
  whitened = masked_whiten_ref(raw if name == "gae" else returns, mask)
  np.testing.assert_allclose(adv, whitened.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_reinforce_pp_baseline_subtracts_the_group_mean_then_whitens_the_batch(n):
  scores = np.random.default_rng(n).normal(size=4 * n).astype(np.float32)
  batch, _ = random_batch(4 * n, 6, n, scores)
  adv, ret = algorithms.reinforce_pp_baseline(batch, PCFG, n)
  g = t(scores).view(-1, n)
  mask = t(batch.resp_mask_BT)
  centred = (g - g.mean(1, keepdim=True)).view(-1, 1) * mask
  np.testing.assert_allclose(adv, masked_whiten_ref(centred, mask).numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(adv, ret)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_grpo_passk_reinforces_only_each_groups_best_sample(n):
  rng = np.random.default_rng(n)
  scores = rng.integers(0, 3, 5 * n).astype(np.float32)  # Ties within groups.
  batch, _ = random_batch(5 * n, 4, n, scores)
  got = seq_max(algorithms.grpo_passk(batch, PCFG, n)[0], batch.resp_mask_BT).reshape(-1, n)
  for g, row in zip(scores.reshape(-1, n), got):
    want = np.zeros(n)
    top = np.sort(g)[::-1]
    want[int(np.argmax(g))] = (top[0] - top[1]) / (np.std(g, ddof=1) + 1e-6)
    np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- policy losses


class PolicyLossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_ppo_clip_with_clip_higher_and_dual_clip_equals_verls(self):
    batch, logp = random_batch(32, 8, 3, spread=0.6)  # Wide enough to reach ratio > c = 1.5.
    for low, high, c in [(0.2, 0.2, 0.0), (0.2, 0.28, 0.0), (0.2, 0.28, 1.5), (0.1, 0.3, 3.0)]:
      params = ml_collections.ConfigDict(dict(eps_low=low, eps_high=high, dual_clip=c))
      fn = self.variant(lambda lp, p=params: algorithms.ppo_clip(lp, batch, PCFG, p))
      loss, metrics = fn(logp)
      want = ppo_clip_ref(t(logp), t(batch.old_logp_BT), t(batch.adv_BT), t(batch.resp_mask_BT), low, high, c)
      np.testing.assert_allclose(loss, want.item(), rtol=1e-5, atol=1e-6)
      ratio = np.exp(np.asarray(logp - batch.old_logp_BT))
      adv, mask = np.asarray(batch.adv_BT), np.asarray(batch.resp_mask_BT)
      lower = ((adv < 0) & (ratio > c) & (mask > 0)).sum() / mask.sum() if c else 0.0
      assert float(metrics["policy/clipfrac_lower"]) == pytest.approx(lower), (low, high, c)
      assert (lower > 0) == bool(c), (low, high, c)  # The batch reaches the dual clip.

  @chex.variants(with_jit=True, without_jit=True)
  def test_cispo_equals_trls_and_keeps_every_tokens_gradient(self):
    batch, logp = random_batch(32, 8, 4, spread=1.0)
    params = ml_collections.ConfigDict(dict(eps_low=1.0, eps_high=4.0))
    fn = self.variant(lambda lp: algorithms.cispo(lp, batch, PCFG, params)[0])
    lp_t = t(logp).requires_grad_(True)
    want = cispo_ref(lp_t, t(batch.old_logp_BT), t(batch.adv_BT), t(batch.resp_mask_BT), 5.0)
    want.backward()
    np.testing.assert_allclose(fn(logp), want.item(), rtol=1e-5, atol=1e-6)
    grad = np.asarray(jax.grad(fn)(logp))
    np.testing.assert_allclose(grad, lp_t.grad.numpy(), rtol=1e-4, atol=1e-7)
    mask, adv = np.asarray(batch.resp_mask_BT), np.asarray(batch.adv_BT)
    # Clipped tokens still move (PPO-clip zeroes them): MiniMax-M1's reason for CISPO.
    ratio = np.exp(np.asarray(logp - batch.old_logp_BT))
    assert (np.abs(grad[(mask > 0) & (ratio > 5.0) & (adv != 0)]) > 0).all()
    assert (ratio[mask > 0] > 5.0).any()


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_the_kl_term_is_beta_times_its_estimator_against_the_reference(estimator):
  batch, logp = random_batch(8, 6, 5)
  config = ml_collections.ConfigDict(dict(kl=dict(estimator=estimator), ppo=dict(loss_agg="seq_mean")))
  from r3jax.rl.records import Forward  # pylint: disable=g-import-not-at-top
  term, metrics = algorithms.kl_term(Forward(logp, jnp.zeros_like(logp)), batch, config, 0.04)
  lr = t(logp) - t(batch.ref_logp_BT)
  per_token = {"k1": lr, "k2": 0.5 * lr ** 2, "k3": torch.exp(-lr) - 1 + lr}[estimator]
  mask = t(batch.resp_mask_BT)
  want = ((per_token * mask).sum(1) / mask.sum(1)).mean().item()
  assert float(metrics["policy/kl_loss"]) == pytest.approx(want, rel=1e-5, abs=1e-7)
  assert float(term) == pytest.approx(0.04 * want, rel=1e-5, abs=1e-8)
