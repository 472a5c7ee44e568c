"""Rollout engines (#34): `continuous` gives `static`'s samples, token for token.

Each test runs ragged left-padded prompts whose sequences stop at different steps (stop
ids that the model emits, and per-sequence limits), with fewer slots than sequences, so
slots are refilled mid-run.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3jax.models import engines, qwen, sampling
from helpers import left_padded_batch


@pytest.fixture(scope="module")
def tiny():
  # A wider init gives peaked logits, so a greedy argmax is not decided by fp32 rounding.
  cfg = qwen.preset("tiny", vocab_size=64, initializer_range=0.2)
  return cfg, qwen.init_params(cfg, jax.random.key(0))


def _prompts():
  ids, mask = left_padded_batch(vocab=64, seed=1)
  ids2, mask2 = left_padded_batch(vocab=64, seed=2)
  return np.concatenate([ids, ids2]), np.concatenate([mask, mask2])  # 6 prompts.


def _run(tiny, engine, slots, key=0, limits=None, **kw):
  cfg, params = tiny
  ids, mask = _prompts()
  scfg = sampling.SampleConfig(max_new_tokens=16, n=2, pad_id=0, engine=engine, slots=slots,
                               sync_steps=5, **kw)
  return engines.generate(params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(key),
                          model_cfg=cfg, cfg=scfg, max_new_N=limits)


def _stop_ids(tiny):
  """Two tokens the greedy answers emit at different steps, so rows stop at different steps."""
  toks = np.asarray(_run(tiny, "static", 0, greedy=True).tokens_BN)
  first = {}
  for row in toks:
    for j, t in enumerate(row):
      first.setdefault(int(t), set()).add(j)
  ids = sorted(first, key=lambda t: -len(first[t]))[:2]
  return tuple(ids)


def _assert_same(a: sampling.Samples, b: sampling.Samples):
  np.testing.assert_array_equal(a.tokens_BN, b.tokens_BN)
  np.testing.assert_array_equal(a.mask_BN, b.mask_BN)
  np.testing.assert_array_equal(a.stopped_B, b.stopped_B)
  np.testing.assert_allclose(a.model_logprobs_BN, b.model_logprobs_BN, atol=1e-5)
  np.testing.assert_allclose(a.logprobs_BN, b.logprobs_BN, atol=1e-5)


@pytest.mark.parametrize("sampler", [dict(greedy=True), dict(top_p=0.9), dict(top_k=8, temperature=0.7)])
def test_continuous_gives_static_samples(tiny, sampler):
  stops = _stop_ids(tiny)
  limits = np.array([16, 3, 9, 16, 1, 12, 7, 16, 5, 2, 16, 11])
  want = _run(tiny, "static", 0, stop_ids=stops, limits=limits, **sampler)
  lengths = np.asarray(want.mask_BN).sum(1)
  assert len(set(lengths.tolist())) >= 5 and np.asarray(want.stopped_B).any()
  assert (lengths <= limits).all() and (lengths[limits == 1] == 1).all()
  for engine, slots in (("static", 4), ("continuous", 3), ("continuous", 12), ("continuous", 5)):
    _assert_same(_run(tiny, engine, slots, stop_ids=stops, limits=limits, **sampler), want)
  chex.assert_shape(want.tokens_BN, (12, 16))


def test_same_seed_same_samples_other_seed_other_samples(tiny):
  a, b = _run(tiny, "continuous", 3, key=7), _run(tiny, "continuous", 4, key=7)
  np.testing.assert_array_equal(a.tokens_BN, b.tokens_BN)
  assert (np.asarray(_run(tiny, "continuous", 3, key=8).tokens_BN) != np.asarray(a.tokens_BN)).any()


@pytest.mark.parametrize("engine,slots", [("static", 0), ("static", 4), ("continuous", 3)])
def test_each_prompt_is_prefilled_once(tiny, engine, slots, monkeypatch):
  rows = []
  real = engines.prefill

  def counting(params, model_cfg, prompt_BT, mask_BT, cache_len):
    rows.append(prompt_BT.shape[0])
    return real(params, model_cfg, prompt_BT, mask_BT, cache_len)

  monkeypatch.setattr(engines, "prefill", counting)
  with jax.disable_jit():  # Every call runs, so every prefill is counted.
    out = _run(tiny, engine, slots)
  assert sum(rows) == 6, rows  # 6 prompts x n = 2 sequences, 6 prompt rows prefilled.
  assert out.tokens_BN.shape[0] == 12


def test_a_refilled_slot_attends_only_to_its_own_sequence(tiny, monkeypatch):
  """Poison every cache slot past the prompt before a slot is refilled: the new occupant
  reads none of what the previous one left there."""
  want = _run(tiny, "continuous", 1, greedy=True)
  real = engines._admit

  def poisoned(slots, staged, slot_R, row_R, seq_R):
    t = staged.mask_GT.shape[1]
    cache = [{k: c[k].at[:, :, t:].set(1e4) for k in c} for c in slots.cache]
    return real(slots._replace(cache=cache), staged, slot_R, row_R, seq_R)

  monkeypatch.setattr(engines, "_admit", poisoned)
  _assert_same(_run(tiny, "continuous", 1, greedy=True), want)


def test_engine_and_slots_mistakes_are_one_line():
  from r3jax.core.errors import ConfigError
  from r3jax.trainers import schema, validate
  with pytest.raises(ConfigError, match=r"^config.rollout.engine='vllm': unknown rollout engine; expected one of static, continuous$"):
    engines.check("vllm", 0, 2)
  with pytest.raises(ConfigError, match=r"^--slots=3: at least the 4 samples of one prompt, or 0 for all$"):
    engines.check("continuous", 3, 4, ("--engine", "--slots"))
  config = schema.defaults("ppo")
  config.rollout.update(engine="continuous", slots=1, n=2)
  with pytest.raises(ConfigError, match=r"config.rollout.slots=1"):
    validate.check_ppo(config, {})
