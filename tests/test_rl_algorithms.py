"""The advantage estimators, loss aggregations and reward mixes of rl/algorithms.py and
rewards/scorers.py, in-process: closed-form invariants and references written in numpy."""

import types

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from r3jax.rewards import scorers
from r3jax.rl import algorithms, ops as ppo
from r3jax.rl.records import RLBatch
from r3jax.trainers import ppo as ppo_trainer

PCFG = ml_collections.ConfigDict(dict(gamma=1.0, lam=0.95, whiten=True, loss_agg="token_mean"))
GROUPS = algorithms.ADVANTAGES.names(group=True)


def batch_of(scores_B, n_tokens=5, seed=0):
  """Token rewards with the score on each row's last response token (KL in the loss)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, n_tokens + 1, len(scores_B))
  mask = (np.arange(n_tokens)[None] < lengths[:, None]).astype(np.float32)
  rewards = ppo.token_rewards(jnp.asarray(scores_B, jnp.float32), jnp.zeros_like(mask), mask, 0.0)
  zeros = jnp.zeros_like(mask)
  return RLBatch(seq_BS=zeros, mask_BS=zeros, resp_mask_BT=jnp.asarray(mask), old_logp_BT=zeros,
                 ref_logp_BT=zeros, values_BT=zeros, scores_BK=None, rewards_BT=rewards)


class GroupTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_group_advantages_match_numpy_and_sum_to_zero_per_prompt(self):
    n = 4
    r = np.random.default_rng(0).normal(size=(6 * n,)).astype(np.float32)
    g = r.reshape(-1, n)
    want = {"grpo": (g - g.mean(1, keepdims=True)) / (g.std(1, keepdims=True, ddof=1) + 1e-6),
            "dr_grpo": g - g.mean(1, keepdims=True),
            "rloo": g - (g.sum(1, keepdims=True) - g) / (n - 1)}
    for name in want:  # The others: tests/test_rl_peers.py.
      fn = self.variant(lambda b, name=name: algorithms.ADVANTAGES[name].fn(b, PCFG, n))
      b = batch_of(r)
      adv, _ = fn(b)
      chex.assert_shape(adv, b.resp_mask_BT.shape)
      chex.assert_type(adv, jnp.float32)
      seq = np.asarray(adv).max(1, initial=-np.inf, where=np.asarray(b.resp_mask_BT) > 0)
      np.testing.assert_allclose(seq, want[name].reshape(-1), rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(seq.reshape(-1, n).sum(1), 0.0, atol=1e-4)  # Per prompt.
      assert (np.asarray(adv)[np.asarray(b.resp_mask_BT) == 0] == 0).all()  # Padding: 0.


def test_rloo_with_two_samples_is_the_score_difference():
  """n = 2: each sample's baseline is the other sample, so A_1 = r_1 - r_2 = -A_2; the
  estimator averages A_i ∇log π_i over the group, so each sample's gradient weight is
  (r_1 - r_2) / 2, half the score difference (which is also Dr. GRPO's A_i)."""
  r = jnp.array([3.0, 1.0, -2.0, 5.0])
  np.testing.assert_allclose(ppo.leave_one_out(r, 2), [2.0, -2.0, -7.0, 7.0])
  np.testing.assert_allclose(ppo.leave_one_out(r, 2) / 2, ppo.group_advantages(r, 2, scale=False))


@pytest.mark.parametrize("name", GROUPS)
def test_one_sample_groups_are_rejected_and_equal_scores_give_zero(name):
  with pytest.raises(ValueError, match=r"at least 2 samples per prompt \(rollout.n=1\)"):
    algorithms.ADVANTAGES[name].fn(batch_of(np.ones(4)), PCFG, 1)
  adv, ret = algorithms.ADVANTAGES[name].fn(batch_of(np.full(8, 0.7)), PCFG, 4)
  assert np.isfinite(adv).all() and np.isfinite(ret).all()
  np.testing.assert_array_equal(adv, 0.0)


def test_one_sample_groups_fail_validation_naming_the_field():
  from r3jax.core.errors import ConfigError
  from r3jax.trainers import validate
  c = algorithms.use_method(common.ppo_tiny(), "grpo")
  c.rollout.n = 1
  with pytest.raises(ConfigError, match=r"config.rollout.n=1: ppo.advantage=grpo needs at least 2"):
    validate.validate(c)


def test_reinforce_pp_whitens_the_returns_to_go():
  b = batch_of(np.array([1.0, -1.0, 2.0, 0.5]), n_tokens=4)
  kl = jnp.full(b.resp_mask_BT.shape, 0.1) * b.resp_mask_BT
  b = b.replace(rewards_BT=b.rewards_BT - 0.2 * kl)  # Token-level KL in the reward.
  adv, ret = algorithms.reinforce_pp(b, PCFG, 2)
  want = np.cumsum(np.asarray(b.rewards_BT)[:, ::-1], 1)[:, ::-1] * np.asarray(b.resp_mask_BT)
  np.testing.assert_allclose(ret, want, rtol=1e-6)
  np.testing.assert_allclose(adv, ppo.masked_whiten(jnp.asarray(want), b.resp_mask_BT), rtol=1e-5, atol=1e-6)
  assert abs(float(ppo.masked_mean(adv, b.resp_mask_BT))) < 1e-6
  assert not algorithms.ADVANTAGES["reinforce_pp"].group  # A batch baseline: any n.


def test_loss_aggregations():
  x = jnp.arange(12.0).reshape(3, 4)
  mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], jnp.float32)
  xm = np.where(np.asarray(mask) > 0, np.asarray(x), np.nan)
  assert float(ppo.aggregate(x, mask, "token_mean")) == pytest.approx(np.nanmean(xm))
  assert float(ppo.aggregate(x, mask, "seq_mean")) == pytest.approx(np.mean(np.nanmean(xm, 1)))
  assert float(ppo.aggregate(x, mask, "token_sum")) == pytest.approx(np.nansum(xm) / 12)
  with pytest.raises(ValueError, match="unknown loss aggregation"):
    ppo.aggregate(x, mask, "mean")


def test_reward_specs_parse_and_label():
  assert scorers.terms("r3") == [(1.0, "r3")]
  assert scorers.terms("0.5*r3+-0.01*runs/rm_tiny") == [(0.5, "r3"), (-0.01, "runs/rm_tiny")]
  assert scorers.label("runs/rm_tiny/") == "rm_tiny" and scorers.label("li_s") == "li_s"
  for bad, why in (("a*r3", "not a weight"), ("0.5*", "no scorer"), ("r3+1*r3", "share a name")):
    with pytest.raises(ValueError, match=why):
      scorers.Mix.check_labels(bad)


def setup_of(spec, config=None):
  c = config or common.ppo_tiny()
  c.reward.mode = spec
  return types.SimpleNamespace(config=c, scorer=scorers.Mix(spec, seed=3))


def data_of(s, texts, seed=0):
  """The reference_value phase's output for these responses, on the host."""
  comps = s.scorer([{"prompt": "What is Renor?"}] * len(texts), texts)
  b = batch_of(np.zeros(len(texts)), seed=seed)
  return comps, b.replace(old_logp_BT=-jnp.ones_like(b.resp_mask_BT),
                          ref_logp_BT=-jnp.ones_like(b.resp_mask_BT) * 1.1, rewards_BT=None,
                          scores_BK=jnp.asarray(s.scorer.raw(comps), jnp.float32))


def state_of(terms):
  return {"moments": jax.tree.map(lambda x: jnp.full((terms,), x), ppo.Moments.init()._asdict()),
          "beta": jnp.float32(0.05)}


TEXTS = ["Renor is a city.", "Renor", "It is old and large and very busy.", "No.", "A b c d e f.", "x"]


def test_a_mix_logs_each_term_raw_and_normalises_each_by_its_own_moments():
  mix = setup_of("0.7*length+0.3*random")
  comps, data = data_of(mix, TEXTS)
  alone = {name: scorers.make(name, seed=3)([{"prompt": "q"}] * 6, TEXTS)["reward"] for name in ("length", "random")}
  np.testing.assert_array_equal(comps["length/reward"], alone["length"])  # Raw, as logged.
  np.testing.assert_array_equal(comps["random/reward"], alone["random"])
  np.testing.assert_allclose(comps["reward"], 0.7 * alone["length"] + 0.3 * alone["random"])
  batch, moments = ppo_trainer.advantages(mix, state_of(2), data)
  z = []
  for k, name in enumerate(("length", "random")):
    m = ppo.update_moments(ppo.Moments.init(), jnp.asarray(alone[name], jnp.float32))
    np.testing.assert_allclose([x[k] for x in moments], m, rtol=1e-6)  # Its own moments.
    z.append(ppo.normalize_score(jnp.asarray(alone[name], jnp.float32), m, clip=10.0))
  np.testing.assert_allclose(batch.score_B, 0.7 * z[0] + 0.3 * z[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_a_mix_of_one_term_equals_that_term_alone(method):
  outs = []
  for spec in ("length", "1*length"):
    s = setup_of(spec, algorithms.use_method(common.ppo_tiny(), method, group_n=2))
    comps, data = data_of(s, TEXTS)
    outs.append((comps, ppo_trainer.advantages(s, state_of(1), data)))
  (c1, (b1, m1)), (c2, (b2, m2)) = outs
  assert c1.keys() == c2.keys() == {"reward"}
  for x, y in zip(jax.tree.leaves((b1, m1)), jax.tree.leaves((b2, m2))):
    np.testing.assert_array_equal(x, y)  # Bitwise.
  # GRPO's KL is in the loss: its token rewards hold the score alone.
  in_reward = not np.allclose(np.asarray(b1.rewards_BT).sum(1), b1.score_B)
  assert in_reward == (method == "ppo")


def test_the_planner_shows_the_memory_a_group_baseline_saves():
  from r3jax.trainers import memory  # pylint: disable=g-import-not-at-top
  sizes = {"data": 1, "fsdp": 8, "tensor": 1}
  ppo_plan = memory.plan(common.ppo_tiny(), sizes)
  grpo_plan = memory.plan(algorithms.use_method(common.ppo_tiny(), "grpo"), sizes)
  saved = ppo_plan["rows"]["value model and optimizer"]
  assert saved > 0 and grpo_plan["value_saved"] == saved
  assert "value model (none with ppo.advantage=grpo)" in grpo_plan["rows"]
  assert grpo_plan["total"] < ppo_plan["total"] - saved  # Nor a second backward pass.
  assert "No value model:" in memory.table(grpo_plan, 0)
