"""Sampler: HF greedy parity, nucleus statistics, stops, determinism, log-probs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
import torch

from r3jax.data import padding
from r3jax.models import hf, qwen, engines, sampling
from helpers import left_padded_batch, make_hf_qwen


def test_greedy_matches_hf_generate(tmp_path):
  # A wider init gives peaked logits, so the argmax is not decided by fp32 rounding.
  ref = make_hf_qwen(tmp_path, init_range=0.2)
  cfg, params = hf.load(str(tmp_path))
  ids, mask = left_padded_batch()
  with torch.no_grad():
    out = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       do_sample=False, max_new_tokens=32, min_new_tokens=32,
                       pad_token_id=0, eos_token_id=None)
  want = out[:, ids.shape[1]:].numpy()
  got = engines.generate(params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0),
                          model_cfg=cfg, cfg=sampling.SampleConfig(max_new_tokens=32, greedy=True))
  np.testing.assert_array_equal(np.asarray(got.tokens_BN), want)
  assert np.asarray(got.mask_BN).all() and not np.asarray(got.stopped_B).any()


def _draw(logits_V, scfg, n_draws):
  keys = jax.random.split(jax.random.key(123), n_draws)
  logits_NV = jnp.broadcast_to(logits_V, (n_draws, logits_V.shape[0]))
  # One draw per key, exactly as the decode loop calls it (batch of 1 per key).
  toks, logps, _ = jax.jit(jax.vmap(lambda l, k: sampling.choose(l[None], k[None], scfg)))(logits_NV, keys)
  return np.asarray(toks[:, 0]), np.asarray(logps[:, 0])


def test_top_p_stays_in_nucleus_and_matches_renormalised_distribution():
  probs = np.array([0.30, 0.20, 0.15, 0.10, 0.08, 0.07, 0.05, 0.03, 0.02])
  perm = np.random.RandomState(0).permutation(len(probs))  # Unsorted vocabulary order.
  logits = jnp.log(jnp.asarray(probs[perm], jnp.float32))
  top_p = 0.7  # Nucleus: 0.30 + 0.20 + 0.15 = 0.65 < 0.7, so 0.10 joins: 4 tokens, mass 0.75.
  nucleus = set(perm.argsort()[:4].tolist())
  n = 40_000
  toks, logps = _draw(logits, sampling.SampleConfig(top_p=top_p), n)
  assert set(np.unique(toks).tolist()) <= nucleus
  counts = np.bincount(toks, minlength=len(probs))[sorted(nucleus)]
  p_nucleus = probs[perm][sorted(nucleus)] / probs[perm][sorted(nucleus)].sum()
  assert stats.chisquare(counts, n * p_nucleus).pvalue > 1e-3
  # The same counts reject the unrenormalised probabilities: the test has power.
  wrong = probs[perm][sorted(nucleus)] + (1 - 0.75) / 4
  assert stats.chisquare(counts, n * wrong).pvalue < 1e-6
  # Sampling log-probs are those of the renormalised nucleus.
  np.testing.assert_allclose(np.exp(logps), (probs[perm] / 0.75)[toks], rtol=1e-5)


def test_top_k_and_temperature():
  logits = jnp.asarray(np.random.RandomState(1).randn(50), jnp.float32)
  toks, _ = _draw(logits, sampling.SampleConfig(top_k=5, temperature=0.5), 4000)
  assert set(np.unique(toks)) <= set(np.argsort(-np.asarray(logits))[:5].tolist())
  probs = jax.nn.softmax(logits / 0.5)
  top = np.argsort(-np.asarray(logits))[:5]
  p = np.asarray(probs, np.float64)[top]
  p = p / p.sum()
  counts = np.array([(toks == t).sum() for t in top])
  assert stats.chisquare(counts, 4000 * p).pvalue > 1e-3


def test_top_k_threshold_is_the_kth_largest_logit_ties_included():
  """The filter keeps exactly the logits >= the k-th largest (lax.top_k's last column),
  with tied logits kept together."""
  rng = np.random.RandomState(2)
  logits = rng.randn(4, 300).astype(np.float32)
  logits[1, :40] = 3.0  # A tie across the k-th place.
  for k in (1, 5, 40):
    probs = np.asarray(sampling.sampling_probs(jnp.asarray(logits), 1.0, k, 1.0))
    kth = np.sort(logits, -1)[:, -k][:, None]
    np.testing.assert_array_equal(probs > 0, logits >= kth)


@pytest.fixture(scope="module")
def tiny():
  cfg = qwen.preset("tiny", vocab_size=64)
  return cfg, qwen.init_params(cfg, jax.random.key(0))


def test_stops_masks_and_logprobs(tiny):
  cfg, params = tiny
  ids, mask = left_padded_batch(vocab=64)
  scfg = sampling.SampleConfig(max_new_tokens=20, top_p=0.9, n=2, stop_ids=(5, 7), pad_id=0)
  out = engines.generate(params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(3),
                          model_cfg=cfg, cfg=scfg)
  chex.assert_shape([out.tokens_BN, out.mask_BN, out.logprobs_BN, out.model_logprobs_BN], (6, 20))
  toks, m = np.asarray(out.tokens_BN), np.asarray(out.mask_BN)
  for row, mrow, stopped in zip(toks, m, np.asarray(out.stopped_B)):
    n_valid = int(mrow.sum())
    assert mrow[:n_valid].all() and not mrow[n_valid:].any()
    assert (row[n_valid:] == 0).all()
    hits = np.isin(row[:n_valid], [5, 7])
    assert hits.sum() == int(stopped) and (not stopped or hits[-1])
  assert np.asarray(out.stopped_B).any(), "pick a seed where some row stops"

  # Model log-probs equal teacher-forced log-probs of prompt + response in one pass.
  full = np.concatenate([np.repeat(ids, 2, 0), toks], 1)
  full_mask = np.concatenate([np.repeat(mask, 2, 0), m], 1)
  logits, _, _ = qwen.Qwen(cfg).apply({"params": params}, jnp.asarray(full), kv_mask_BS=jnp.asarray(full_mask))
  logp = jax.nn.log_softmax(logits[:, ids.shape[1] - 1:-1], -1)
  want = np.take_along_axis(np.asarray(logp), toks[..., None], -1)[..., 0] * m
  np.testing.assert_allclose(np.asarray(out.model_logprobs_BN), want, atol=2e-5)
  # Nucleus filtering only removes mass: sampling log-probs are never below the model's.
  assert (np.asarray(out.logprobs_BN) >= np.asarray(out.model_logprobs_BN) - 1e-5).all()


def test_deterministic_per_key(tiny):
  cfg, params = tiny
  ids, mask = left_padded_batch(vocab=64)
  run = lambda k: np.asarray(engines.generate(
      params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(k), model_cfg=cfg,
      cfg=sampling.SampleConfig(max_new_tokens=12, n=2)).tokens_BN)
  np.testing.assert_array_equal(run(0), run(0))
  assert (run(0) != run(1)).any()
  # The n samples of one prompt differ from each other.
  assert (run(0)[0] != run(0)[1]).any()


@pytest.mark.parametrize("sampler", [dict(top_k=8), dict(top_p=0.9), dict(greedy=True)])
def test_segmented_cache_reads_change_no_token(tiny, sampler):
  """Decoding in segments that attend over the filled cache only (#18) gives the tokens
  and log-probs of one loop over the whole cache, for a fixed key."""
  cfg, params = tiny
  ids, mask = left_padded_batch(vocab=64)
  run = lambda chunk: engines.generate(
      params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(4), model_cfg=cfg,
      cfg=sampling.SampleConfig(max_new_tokens=21, n=2, stop_ids=(5,), cache_chunk=chunk, **sampler))
  assert engines.segments(21, 8) == [8, 16, 21] and engines.segments(21, 0) == [21]
  whole, parts = run(0), run(8)
  np.testing.assert_array_equal(parts.tokens_BN, whole.tokens_BN)
  np.testing.assert_array_equal(parts.mask_BN, whole.mask_BN)
  np.testing.assert_array_equal(parts.stopped_B, whole.stopped_B)
  assert int(np.asarray(whole.mask_BN).sum(1).max()) > 8, "some row must reach segment 2"
  for a, b in ((parts.logprobs_BN, whole.logprobs_BN), (parts.model_logprobs_BN, whole.model_logprobs_BN)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_left_pad_truncates_from_the_left():
  toks, mask = padding.left_pad([[1, 2, 3], [4], []], pad_id=9, length=2)
  np.testing.assert_array_equal(toks, [[2, 3], [9, 4], [9, 9]])
  np.testing.assert_array_equal(mask, [[1, 1], [0, 1], [0, 0]])
