"""Preference losses against the papers' formulas, a float64 numpy reference, and TRL's DPOTrainer
and CPOTrainer (SimPO); ORPO, CPO and KTO against TRL are in test_offline_peers.py."""

import collections
import functools
import itertools
import math
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from r3jax.losses import preference

LOG2 = math.log(2.0)
# The losses against a reference model, which the numpy reference below covers.
REFERENCE_LOSSES = preference.LOSSES.names(needs_reference=True)


def random_logps(seed, b=16):
  """Summed log-probs in a realistic range, with lengths; Δ spread over both hinge sides."""
  rng = np.random.RandomState(seed)
  pw, pl = -rng.uniform(5, 80, b), -rng.uniform(5, 80, b)
  rw, rl = pw + rng.randn(b) * 3, pl + rng.randn(b) * 3
  lw, ll = rng.randint(1, 40, b), rng.randint(1, 40, b)
  return [x.astype(np.float32) for x in (pw, pl, rw, rl)] + [lw, ll]


def np_dpo(pw, pl, rw, rl, lw, ll, loss_type, beta, eps=0.0):
  """Straight from the papers' formulas (DPO eq. 7, IPO eq. 17, SLiC's hinge), in float64."""
  pw, pl, rw, rl = (np.asarray(x, np.float64) for x in (pw, pl, rw, rl))
  d = (pw - rw) - (pl - rl)
  log_sig = lambda z: -np.logaddexp(0.0, -z)
  if loss_type in ("sigmoid", "sigmoid_norm"):
    return -(1 - eps) * log_sig(beta * d) - eps * log_sig(-beta * d)
  if loss_type == "ipo":
    d_avg = (pw - rw) / np.maximum(lw, 1) - (pl - rl) / np.maximum(ll, 1)
    return (d_avg - 1 / (2 * beta)) ** 2
  return np.maximum(0.0, 1 - beta * d)


def loss_fn(loss_type, beta, **kw):
  return functools.partial(preference.dpo_loss, loss_type=loss_type, beta=beta, **kw)


def grads(loss_type, beta, pw, pl, rw, rl, **kw):
  """d mean-loss / d (policy chosen, policy rejected)."""
  f = lambda a, b: jnp.mean(preference.dpo_loss(a, b, rw, rl, loss_type=loss_type, beta=beta, **kw)[0])
  return jax.grad(f, argnums=(0, 1))(jnp.asarray(pw, jnp.float32), jnp.asarray(pl, jnp.float32))


class DpoVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*REFERENCE_LOSSES)
  def test_matches_numpy_reference(self, loss_type):
    pw, pl, rw, rl, lw, ll = random_logps(0)
    for beta, eps in [(0.1, 0.0), (0.5, 0.0), (0.05, 0.2)]:
      eps = eps if loss_type in ("sigmoid", "sigmoid_norm") else 0.0
      losses, m = self.variant(loss_fn(loss_type, beta, label_smoothing=eps))(
          pw, pl, rw, rl, chosen_len_B=lw, rejected_len_B=ll)
      chex.assert_shape(losses, (16,))
      chex.assert_type(losses, jnp.float32)
      np.testing.assert_allclose(losses, np_dpo(pw, pl, rw, rl, lw, ll, loss_type, beta, eps),
                                 rtol=1e-5, atol=1e-5)
      hw, hl = pw.astype(np.float64) - rw, pl.astype(np.float64) - rl
      want = {"rewards/chosen": beta * hw.mean(), "rewards/rejected": beta * hl.mean(),
              "rewards/accuracy": (hw > hl).mean(), "rewards/margin": beta * (hw - hl).mean(),
              "logratio/chosen": hw.mean(), "logratio/rejected": hl.mean(),
              "logps/chosen": pw.mean(), "logps/rejected": pl.mean()}
      self.assertEqual(set(m), set(want))
      for name, value in want.items():
        chex.assert_shape(m[name], ())
        np.testing.assert_allclose(m[name], value, rtol=1e-5, atol=1e-5, err_msg=name)

  @chex.variants(with_jit=True, without_jit=True)
  def test_bf16_inputs_give_f32_losses(self):
    pw, pl, rw, rl, lw, ll = (jnp.asarray(x, jnp.bfloat16) for x in random_logps(1))
    for loss_type, entry in preference.LOSSES.items():
      refs = (rw, rl) if entry.needs_reference else (None, None)
      params = {name: 0.5 for name in entry.params}
      losses, m = self.variant(loss_fn(loss_type, 0.1, **params))(pw, pl, *refs, chosen_len_B=lw,
                                                                    rejected_len_B=ll)
      chex.assert_type([losses, m["rewards/margin"]], jnp.float32)
      chex.assert_tree_all_finite(losses)

  @chex.variants(with_jit=True, without_jit=True)
  def test_traced_beta_and_smoothing(self):
    pw, pl, rw, rl, _, _ = random_logps(2)
    f = lambda beta, eps: preference.dpo_loss(pw, pl, rw, rl, loss_type="sigmoid", beta=beta,
                                              label_smoothing=eps)[0]
    np.testing.assert_allclose(self.variant(f)(0.3, 0.1), np_dpo(pw, pl, rw, rl, 1, 1, "sigmoid", 0.3, 0.1),
                               rtol=1e-5)


def test_sigmoid_is_log2_when_policy_is_reference():
  pw, pl, _, _, _, _ = random_logps(3)
  losses, m = preference.dpo_loss(pw, pl, pw, pl, loss_type="sigmoid", beta=0.1)
  np.testing.assert_allclose(losses, LOG2, rtol=1e-6)
  assert float(m["rewards/margin"]) == 0.0 and float(m["rewards/accuracy"]) == 0.0


def test_sigmoid_gradient_raises_chosen_lowers_rejected():
  pw, pl, rw, rl, _, _ = random_logps(4)
  g_w, g_l = grads("sigmoid", 0.1, pw, pl, rw, rl)
  # Descent moves against the gradient: chosen log-probs go up, rejected go down.
  assert (np.asarray(g_w) < 0).all() and (np.asarray(g_l) > 0).all()
  # Closed form: dL/dlogπ(y_w) = -β σ(-βΔ) / B.
  d = (pw - rw) - (pl - rl)
  np.testing.assert_allclose(g_w, -0.1 / (1 + np.exp(0.1 * d)) / len(d), rtol=1e-4)
  np.testing.assert_allclose(g_l, -np.asarray(g_w), rtol=1e-6)


def test_sigmoid_invariant_to_shared_constant():
  pw, pl, rw, rl, _, _ = random_logps(5)
  base, _ = preference.dpo_loss(pw, pl, rw, rl, loss_type="sigmoid", beta=0.1)
  shifted, _ = preference.dpo_loss(pw + 7.0, pl + 7.0, rw, rl, loss_type="sigmoid", beta=0.1)
  np.testing.assert_allclose(shifted, base, rtol=1e-5)


def test_label_smoothing():
  pw, pl, rw, rl, _, _ = random_logps(6)
  beta = 0.5
  z = beta * ((pw - rw) - (pl - rl)).astype(np.float64)
  # ε = ½ says nothing about which response is better: the loss is ½ log(2 + 2 cosh βΔ),
  # even in Δ, log 2 at Δ = 0 and above it elsewhere (not constant in Δ), and descent
  # pulls Δ towards 0 from either side.
  half, _ = preference.dpo_loss(pw, pl, rw, rl, loss_type="sigmoid", beta=beta, label_smoothing=0.5)
  np.testing.assert_allclose(half, 0.5 * np.log(2 + 2 * np.cosh(z)), rtol=1e-5)
  flipped, _ = preference.dpo_loss(pl, pw, rl, rw, loss_type="sigmoid", beta=beta, label_smoothing=0.5)
  np.testing.assert_allclose(flipped, half, rtol=1e-6)
  assert (np.asarray(half) > LOG2).all()
  at_zero, _ = preference.dpo_loss(pw, pl, pw, pl, loss_type="sigmoid", beta=beta, label_smoothing=0.5)
  np.testing.assert_allclose(at_zero, LOG2, rtol=1e-6)
  g_w, _ = grads("sigmoid", beta, pw, pl, rw, rl, label_smoothing=0.5)
  np.testing.assert_array_equal(np.sign(g_w), np.sign(z))
  # Swapping chosen and rejected maps ε to 1 - ε.
  a, _ = preference.dpo_loss(pw, pl, rw, rl, loss_type="sigmoid", beta=0.5, label_smoothing=0.2)
  b, _ = preference.dpo_loss(pl, pw, rl, rw, loss_type="sigmoid", beta=0.5, label_smoothing=0.8)
  np.testing.assert_allclose(a, b, rtol=1e-5)


def test_ipo_minimum_and_gradient_signs():
  beta, lw, ll = 0.25, np.array([4.0]), np.array([10.0])
  target = 1 / (2 * beta)
  rw, rl, pl = np.zeros(1, np.float32), np.zeros(1, np.float32), np.full(1, -20.0, np.float32)
  # Δ' = pw/lw - pl/ll, so pw = lw (Δ' + pl/ll) puts Δ' where wanted.
  at = lambda delta: (lw * (delta + pl / ll)).astype(np.float32)
  for delta, sign in [(target - 0.5, -1), (target, 0), (target + 0.5, 1)]:
    loss, _ = preference.dpo_loss(at(delta), pl, rw, rl, loss_type="ipo", beta=beta,
                                  chosen_len_B=lw, rejected_len_B=ll)
    g_w, _ = grads("ipo", beta, at(delta), pl, rw, rl, chosen_len_B=lw, rejected_len_B=ll)
    if sign == 0:
      np.testing.assert_allclose(loss, 0.0, atol=1e-10)
      np.testing.assert_allclose(g_w, 0.0, atol=1e-6)
    else:
      assert float(loss[0]) == pytest.approx(0.25, rel=1e-5)
      assert np.sign(float(g_w[0])) == sign
  # IPO at Δ = 0 is 1/(4β²) (Azar et al. 2023, eq. 17).
  loss, _ = preference.dpo_loss(pl, pl, pl, pl, loss_type="ipo", beta=beta, chosen_len_B=lw, rejected_len_B=ll)
  np.testing.assert_allclose(loss, 1 / (4 * beta**2), rtol=1e-6)


@pytest.mark.parametrize("loss_type", ["hinge", "hinge_norm"])
def test_hinge_margin(loss_type):
  beta = 0.1
  d = np.array([25.0, 10.0, 9.0, 0.0, -5.0], np.float32)  # βΔ = 2.5, 1, 0.9, 0, -0.5
  zeros = np.zeros_like(d)
  losses, _ = preference.dpo_loss(d, zeros, zeros, zeros, loss_type=loss_type, beta=beta)
  np.testing.assert_allclose(losses, np.maximum(0.0, 1.0 - beta * d), atol=1e-6)
  assert (np.asarray(losses)[:2] == 0.0).all() and (np.asarray(losses)[2:] > 0).all()
  g_w, g_l = grads(loss_type, beta, d, zeros, zeros, zeros)
  assert (np.asarray(g_w)[:2] == 0).all() and (np.asarray(g_l)[:2] == 0).all()
  np.testing.assert_allclose(np.asarray(g_w)[2:], -beta / len(d), rtol=1e-6)


def test_norm_variants_equal_their_base():
  pw, pl, rw, rl, _, _ = random_logps(7)
  for norm, base in [("sigmoid_norm", "sigmoid"), ("hinge_norm", "hinge")]:
    a, ma = preference.dpo_loss(pw, pl, rw, rl, loss_type=norm, beta=0.05)
    b, mb = preference.dpo_loss(pw, pl, rw, rl, loss_type=base, beta=0.05)
    np.testing.assert_array_equal(a, b)
    chex.assert_trees_all_equal(ma, mb)


def test_reference_free_is_zero_reference():
  pw, pl, _, _, _, _ = random_logps(8)
  z = np.zeros_like(pw)
  a, ma = preference.dpo_loss(pw, pl, None, None, loss_type="sigmoid", beta=0.1)
  b, mb = preference.dpo_loss(pw, pl, z, z, loss_type="sigmoid", beta=0.1)
  np.testing.assert_array_equal(a, b)
  chex.assert_trees_all_close(ma, mb)


def test_bad_arguments():
  x = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match="unknown loss type"):
    preference.dpo_loss(x, x, x, x, loss_type="kto", beta=0.1)
  with pytest.raises(ValueError, match="lengths|chosen_len_B"):
    preference.dpo_loss(x, x, x, x, loss_type="ipo", beta=0.1)
  with pytest.raises(ValueError, match="label_smoothing"):
    preference.dpo_loss(x, x, x, x, loss_type="hinge", beta=0.1, label_smoothing=0.1)


# --- TRL: run DPOTrainer._compute_loss on a stand-in `self` and model, no trainer built. ---

def trl_dpo(pw, pl, rw, rl, lw, ll, loss_type, beta, eps=0.0):
  """TRL's loss and metrics for given per-sequence log-probs (a fake model emits per-token
  log-probs that sum to them over `length` completion tokens)."""
  torch = pytest.importorskip("torch")
  dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
  lengths = np.concatenate([lw, ll]).astype(int)
  t = lengths.max() + 1
  # Position 0 is the prompt; the shifted mask then has `length` ones, and so does the
  # unshifted one IPO divides by.
  completion = (np.arange(t)[None] >= 1) & (np.arange(t)[None] <= lengths[:, None])
  per_token = np.where(completion[:, 1:], (np.concatenate([pw, pl]) / lengths)[:, None], 0.0)
  outputs = types.SimpleNamespace(
      log_probs=torch.tensor(per_token, dtype=torch.float32),
      entropy=torch.zeros(len(lengths), t - 1), mean_logits=torch.zeros(len(lengths), t - 1),
      is_top1=torch.zeros(len(lengths), t - 1, dtype=torch.bool))
  model = lambda **kwargs: outputs
  stub = types.SimpleNamespace(
      model=types.SimpleNamespace(training=True),
      accelerator=types.SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x),
      aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
      f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
      label_smoothing=eps, use_weighting=False, _total_train_tokens=0, _tp_size=1,
      _metrics=collections.defaultdict(lambda: collections.defaultdict(list)))
  inputs = {
      "input_ids": torch.ones(len(lengths), t, dtype=torch.long),
      "attention_mask": torch.ones(len(lengths), t, dtype=torch.long),
      "completion_mask": torch.tensor(completion, dtype=torch.long),
      "ref_chosen_logps": torch.tensor(rw), "ref_rejected_logps": torch.tensor(rl),
  }
  try:
    loss = dpo_trainer.DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)
  except (AttributeError, KeyError, TypeError) as e:  # Private API: another TRL version may differ.
    pytest.skip(f"TRL's DPOTrainer._compute_loss is not callable this way here: {e!r}")
  return float(loss), {k: v[-1] for k, v in stub._metrics["train"].items()}


# ε only for SimPO and CPO (test_offline_peers.py), whose smoothed logistic is DPO's: TRL
# 1.16's DPOTrainer reads label_smoothing for its robust/exo/aot losses but not for sigmoid.
@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0)])
def test_matches_trl(loss_type, eps):
  pw, pl, rw, rl, lw, ll = random_logps(9, b=12)
  for beta in (0.1, 0.5):
    want_loss, want = trl_dpo(pw, pl, rw, rl, lw, ll, loss_type, beta, eps)
    losses, m = preference.dpo_loss(pw, pl, rw, rl, loss_type=loss_type, beta=beta,
                                    chosen_len_B=lw, rejected_len_B=ll, label_smoothing=eps)
    assert float(jnp.mean(losses)) == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    # TRL's names for the two that differ.
    for ours, theirs in [("rewards/chosen", "rewards/chosen"), ("rewards/rejected", "rewards/rejected"),
                         ("rewards/accuracy", "rewards/accuracies"), ("rewards/margin", "rewards/margins"),
                         ("logps/chosen", "logps/chosen"), ("logps/rejected", "logps/rejected")]:
      assert float(m[ours]) == pytest.approx(want[theirs], rel=1e-5, abs=1e-5), ours


# --- SimPO: TRL's CPOTrainer(loss_type="simpo", cpo_alpha=0) on a stand-in `self`. ---

def trl_simpo(pw, pl, lw, ll, beta, gamma, eps):
  """TRL's SimPO loss and metrics for given summed log-probs. TRL's own get_batch_logps
  length-averages per-token log-probs (logits over a two-token vocabulary that give each
  token log-prob pw / lw), and its get_batch_loss_metrics (cpo_loss, then the rewards it
  reports) runs on a stand-in trainer."""
  torch = pytest.importorskip("torch")
  cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
  lengths = np.concatenate([lw, ll]).astype(int)
  n, t, b = len(lengths), lengths.max() + 1, len(lw)
  q = np.concatenate([pw, pl]).astype(np.float64) / lengths
  # Label 1 at positions 1..length (0 is the prompt; -100 is ignored). Logits [0, a] give
  # it log-prob -softplus(-a), which a = -log(e^-q - 1) makes q.
  labels = np.where((np.arange(t)[None] >= 1) & (np.arange(t)[None] <= lengths[:, None]), 1, -100)
  a = np.broadcast_to(-np.log(np.expm1(-q))[:, None], (n, t))
  logits = torch.tensor(np.stack([np.zeros((n, t)), a], -1))
  try:
    avg = cpo.CPOTrainer.get_batch_logps(logits, torch.tensor(labels), average_log_prob=True)
    stub = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x),
        loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=eps, alpha=0.0,
        cpo_alpha=0.0, aux_loss_enabled=False)
    stub.cpo_loss = lambda w, l: cpo.CPOTrainer.cpo_loss(stub, w, l)
    stub.concatenated_forward = lambda model, batch: (avg[:b], avg[b:], logits[:b], logits[b:],
                                                      torch.tensor(0.0))
    loss, metrics = cpo.CPOTrainer.get_batch_loss_metrics(stub, None, {}, "train")
  except (AttributeError, KeyError, TypeError) as e:  # Experimental API: another TRL may differ.
    pytest.skip(f"TRL's CPOTrainer.get_batch_loss_metrics is not callable this way here: {e!r}")
  return float(loss), metrics


def test_simpo_matches_trl():
  pw, pl, _, _, lw, ll = random_logps(10, b=12)
  for beta, gamma, eps in [(2.0, 1.0, 0.0), (0.1, 0.5, 0.0), (2.5, 1.4, 0.1)]:
    want_loss, want = trl_simpo(pw, pl, lw, ll, beta, gamma, eps)
    losses, m = jax.jit(loss_fn("simpo", beta, label_smoothing=eps, simpo_gamma=gamma))(
        pw, pl, None, None, chosen_len_B=lw, rejected_len_B=ll)
    assert float(jnp.mean(losses)) == pytest.approx(want_loss, rel=1e-5, abs=1e-5)
    for ours, theirs in [("rewards/chosen", "rewards/chosen"), ("rewards/rejected", "rewards/rejected"),
                         ("rewards/accuracy", "rewards/accuracies"), ("rewards/margin", "rewards/margins")]:
      assert float(m[ours]) == pytest.approx(want[theirs], rel=1e-5, abs=1e-5), ours
    # TRL's logps/* are length-averaged for SimPO; r3jax's stay the sums for every loss.
    assert want["logps/chosen"] == pytest.approx(float(np.mean(pw / lw)), rel=1e-5)
    np.testing.assert_allclose(m["logps/chosen"], pw.mean(), rtol=1e-6)


def test_simpo_is_reference_free_with_its_target_margin():
  entry = preference.LOSSES["simpo"]
  assert not entry.needs_reference and entry.params == {"simpo_gamma": 0.5}  # TRL's default.
  pw, pl, rw, rl, lw, ll = random_logps(11)
  # Equal length-averaged log-probs: -log σ(-γ) whatever β.
  losses, _ = preference.dpo_loss(pw, pw * 2, None, None, loss_type="simpo", beta=3.0,
                                  chosen_len_B=lw, rejected_len_B=lw * 2, simpo_gamma=0.7)
  np.testing.assert_allclose(losses, np.log1p(np.exp(0.7)), rtol=1e-5)
  with pytest.raises(ValueError, match="reference-free"):
    preference.dpo_loss(pw, pl, rw, rl, loss_type="simpo", beta=2.0, chosen_len_B=lw,
                        rejected_len_B=ll, simpo_gamma=1.0)
  with pytest.raises(ValueError, match="chosen_len_B"):
    preference.dpo_loss(pw, pl, None, None, loss_type="simpo", beta=2.0, simpo_gamma=1.0)
  with pytest.raises(ValueError, match="simpo_gamma"):
    preference.dpo_loss(pw, pl, None, None, loss_type="simpo", beta=2.0, chosen_len_B=lw,
                        rejected_len_B=ll)


# --- Bradley–Terry ---

def test_bradley_terry_equal_rewards_is_log2():
  r = np.random.RandomState(0).randn(8).astype(np.float32)
  loss, m = preference.bradley_terry(r, r)
  assert float(loss) == pytest.approx(LOG2, rel=1e-6)
  assert float(m["rm/accuracy"]) == 0.0 and float(m["rm/margin"]) == 0.0
  np.testing.assert_allclose(m["rm/reward_mean"], r.mean(), rtol=1e-5)
  np.testing.assert_allclose(m["rm/reward_std"], r.std(), rtol=1e-5)


def test_bradley_terry_values_and_margin():
  rng = np.random.RandomState(1)
  rw, rl = rng.randn(10).astype(np.float32), rng.randn(10).astype(np.float32)
  loss, m = preference.bradley_terry(rw, rl)
  np.testing.assert_allclose(loss, np.mean(np.logaddexp(0, -(rw - rl))), rtol=1e-5)
  assert float(m["rm/accuracy"]) == pytest.approx(np.mean(rw > rl))
  # A margin m acts as if the chosen reward were m lower, and only makes the loss larger.
  with_margin, _ = preference.bradley_terry(rw, rl, margin=0.7)
  shifted, _ = preference.bradley_terry(rw - 0.7, rl)
  np.testing.assert_allclose(with_margin, shifted, rtol=1e-6)
  assert float(with_margin) > float(loss)
  per_example = rng.rand(10).astype(np.float32)
  loss_pe, _ = preference.bradley_terry(rw, rl, margin=per_example)
  np.testing.assert_allclose(loss_pe, np.mean(np.logaddexp(0, -(rw - rl - per_example))), rtol=1e-5)


def test_ranking_pairs():
  pairs = preference.ranking_pairs(4)
  assert pairs.shape == (6, 2) and (pairs[:, 0] < pairs[:, 1]).all()
  assert {tuple(p) for p in pairs} == set(itertools.combinations(range(4), 2))
  assert preference.ranking_pairs(1).shape == (0, 2)


def test_bradley_terry_ranked_matches_loop_and_k2():
  r = np.random.RandomState(2).randn(5, 4).astype(np.float32)
  loss, m = jax.jit(preference.bradley_terry_ranked)(r, 0.3)
  terms = [np.logaddexp(0, -(r[b, i] - r[b, j] - 0.3)) for b in range(5) for i in range(4)
           for j in range(i + 1, 4)]
  np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)
  np.testing.assert_allclose(m["rm/reward_mean"], r.mean(), rtol=1e-5)
  np.testing.assert_allclose(m["rm/reward_std"], r.std(), rtol=1e-5)
  pair_loss, _ = preference.bradley_terry(r[:, 0], r[:, 1])
  k2_loss, _ = preference.bradley_terry_ranked(r[:, :2])
  np.testing.assert_allclose(k2_loss, pair_loss, rtol=1e-6)
