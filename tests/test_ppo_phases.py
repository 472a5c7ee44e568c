"""The PPO trainer's phases in-process, on a tiny random policy: rollout, score,
reference_value, advantages, update and next_state, and the registries they draw from."""

import json
import os
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3jax.data import chat, sources
from r3jax.eval import gold
from r3jax.rl import ops as ppo_losses
from r3jax.rl import algorithms
from r3jax.rl.records import RLBatch
from r3jax.trainers import harness, ppo
from helpers import shared_file, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, NEW, PROMPTS = 2, 6, 4


def tiny_config():
  c = runpy.run_path(os.path.join(ROOT, "configs", "ppo_qwen.py"))["get_config"]("tiny")
  c.unlock()
  c.model.allow_random_init = True
  c.steps, c.prompts_per_step, c.eval_prompts = 2, PROMPTS, 1
  c.rollout.update(n=N, max_new_tokens=NEW, prompt_len=24)
  c.ppo.update(minibatch=4, epochs=1, value_warmup_steps=1)
  c.data.synthetic_examples = 16
  c.checkpoint.async_save = False
  return c


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  s, state, order, rows = ppo.prepare(tiny_config(), str(tmp_path_factory.mktemp("ppo")))
  return s, state, [rows[i] for i in order.next()]


@pytest.fixture(scope="module")
def phases(prepared):
  """Every phase of iteration 0, in order, on a copy of the state (the update donates it)."""
  s, state, batch_rows = prepared
  state = jax.tree.map(jnp.copy, state)
  with harness.mesh_rules(s.run.mesh, s.run.rules):
    ro = ppo.rollout(s, state, batch_rows, 0)
    scored = ppo.score(s, ro, 0)
    data = ppo.reference_value(s, state, ro, scored)
    batch, moments = ppo.advantages(s, state, data)
  return dict(s=s, state=state, ro=ro, scored=scored, data=data, batch=batch, moments=moments)


def test_rollout_shapes_masks_and_logprobs(phases):
  ro = phases["ro"]
  out = ro.samples
  assert ro.prompt_tok.shape == (PROMPTS, 24) and out.tokens_BN.shape == (PROMPTS * N, NEW)
  mask = np.asarray(out.mask_BN)
  assert set(np.unique(mask)) <= {0, 1}
  assert (np.diff(mask, axis=1) <= 0).all()  # Response tokens first, then padding.
  assert (np.asarray(out.model_logprobs_BN)[mask == 0] == 0).all()
  assert (np.asarray(out.model_logprobs_BN) <= 0).all()


def test_score_gives_every_component_per_response(phases):
  comps = phases["scored"].components
  assert len(phases["scored"].texts) == PROMPTS * N
  for k in ("reward", "relevance", "length_incentive", "repetition_penalty", "copies_query"):
    assert np.asarray(comps[k]).shape == (PROMPTS * N,), k
  assert np.isfinite(comps["reward"]).all()


def test_score_judges_every_rollout_by_gold_and_diversity(phases):
  """The embedded prompts carry their entity, so each rollout gets gold figures that the
  reward never saw; they are the gold judge's own verdicts on the decoded texts."""
  s, scored, ro = phases["s"], phases["scored"], phases["ro"]
  assert s.gold
  judged = scored.judged
  for k in ("gold/score", "gold/precision", "gold/recall", "diversity/rep4", "diversity/distinct2",
            "diversity/distinct_answers",
            "diversity/top_sentence_share"):
    assert judged[k].shape == (PROMPTS * N,), k
  rows = ppo.repeat(N, ro.rows)
  for i, (t, r) in enumerate(zip(scored.texts, rows)):
    v = gold.judge(ppo.r3.truncate_response(t), r["entity"], r["asks"])
    assert judged["gold/precision"][i] == v.precision and judged["gold/recall"][i] == v.recall
  itr = ppo.Iteration(ro, scored, phases["batch"], [{"policy/loss": 0.0}], 0.0)
  metrics = ppo.iteration_metrics(phases["state"], itr, {})
  assert metrics["gold/recall"] == pytest.approx(float(np.mean(judged["gold/recall"])))


def test_random_query_types_are_drawn_per_iteration(prepared, phases):
  s = phases["s"]
  s2 = ppo.Setup(**{**vars(s), "config": s.config.copy_and_resolve_references()})
  with s2.config.unlocked():
    s2.config.reward.query_types = "random"
  a, b = ppo.score(s2, phases["ro"], 3), ppo.score(s2, phases["ro"], 3)
  np.testing.assert_array_equal(a.components["reward"], b.components["reward"])  # Resumable.


def test_reference_equals_behaviour_before_any_update(phases):
  data, mask = phases["data"], np.asarray(phases["data"].resp_mask_BT)
  # The policy is the reference at iteration 0: teacher-forced and sampled log-probs agree.
  np.testing.assert_allclose(np.asarray(data.ref_logp_BT) * mask, np.asarray(data.old_logp_BT), atol=2e-4)
  assert data.values_BT.shape == (PROMPTS * N, NEW)


def test_advantages_are_the_registered_estimator(phases):
  s, state, data, batch = phases["s"], phases["state"], phases["data"], phases["batch"]
  rm = data.resp_mask_BT
  kl = algorithms.kl_estimate(data.old_logp_BT, data.ref_logp_BT, "k1") * rm
  assert data.scores_BK.shape == (PROMPTS * N, 1)  # One reward term.
  one = lambda m: ppo_losses.Moments(*(x[0] for x in m))
  m = ppo_losses.update_moments(one(ppo_losses.Moments(**state["moments"])), data.scores_BK[:, 0])
  score = ppo_losses.normalize_score(data.scores_BK[:, 0], m, clip=s.config.reward.clip)
  rewards = ppo_losses.token_rewards(score, kl, rm, state["beta"])
  adv, ret = ppo_losses.gae(rewards, data.values_BT * rm, rm, s.config.ppo.gamma, s.config.ppo.lam)
  np.testing.assert_allclose(batch.adv_BT, ppo_losses.masked_whiten(adv, rm), atol=1e-6)
  np.testing.assert_allclose(batch.returns_BT, ret, atol=1e-6)
  np.testing.assert_allclose(one(phases["moments"]), m, rtol=1e-6)  # One jitted program: fused.
  assert float(one(phases["moments"]).count) == PROMPTS * N
  assert abs(float(ppo_losses.masked_mean(batch.adv_BT, rm))) < 1e-5  # Whitened.
  # The phase fills the batch's derived fields and keeps what reference_value gave.
  np.testing.assert_allclose(batch.kl_BT, kl, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(batch.seq_BS, data.seq_BS)
  assert data.adv_BT is None and batch.rewards_BT.shape == (PROMPTS * N, NEW)


def test_update_warmup_trains_only_the_value_then_both(phases):
  s, state, batch = phases["s"], phases["state"], phases["batch"]
  before = jax.tree.map(np.asarray, (state["policy"], state["value"]))
  models, ms = ppo.update(s, jax.tree.map(jnp.copy, state), batch, it=0)  # it < value_warmup_steps
  assert len(ms) == PROMPTS * N // 4 and all(np.isfinite(float(m["value/loss"])) for m in ms)
  for x, y in zip(jax.tree.leaves(before[0]), jax.tree.leaves(models["policy"])):
    np.testing.assert_array_equal(x, y)  # Policy untouched during the warm-up.
  assert any((x != np.asarray(y)).any() for x, y in zip(jax.tree.leaves(before[1]), jax.tree.leaves(models["value"])))
  models, _ = ppo.update(s, jax.tree.map(jnp.copy, state), batch, it=1)
  assert any((x != np.asarray(y)).any() for x, y in zip(jax.tree.leaves(before[0]), jax.tree.leaves(models["policy"])))
  new, kl_seq = ppo.next_state(s, state, models, phases["moments"], batch.kl_BT)
  assert int(new["step"]) == int(state["step"]) + 1 and np.isfinite(kl_seq)
  assert float(new["beta"]) != float(state["beta"])  # kl.adaptive in the tiny preset.


def test_registry_entries_are_consistent():
  """Each method names a registered estimator and policy loss; today's value-free
  estimators build no value model. Adding an entry never breaks this test."""
  assert {"gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"} <= set(algorithms.ADVANTAGES)
  assert algorithms.ADVANTAGES["gae"].uses_value and not algorithms.ADVANTAGES["grpo"].uses_value
  for name, m in algorithms.METHODS.items():
    assert m.advantage in algorithms.ADVANTAGES and m.policy_loss in algorithms.POLICY_LOSSES, name
  rng = np.random.default_rng(0)
  logp, old, adv = (jnp.asarray(rng.normal(size=(3, 5)), jnp.float32) for _ in range(3))
  mask = jnp.ones((3, 5))
  cfg = tiny_config()
  batch = RLBatch(seq_BS=None, mask_BS=None, resp_mask_BT=mask, old_logp_BT=old, ref_logp_BT=old,
                  values_BT=None, scores_BK=None, adv_BT=adv)
  got = algorithms.policy_loss(cfg, logp, batch)
  clip = cfg.ppo.loss_params.ppo_clip
  want = ppo_losses.policy_loss(logp, old, adv, mask, clip.eps_low, clip.eps_high, clip.dual_clip)
  np.testing.assert_allclose(got[0], want[0])


def test_long_prompts_keep_their_end_and_are_counted(prepared):
  s, state, batch_rows = prepared
  rows = [dict(r) for r in batch_rows]
  rows[0]["prompt"] = "Tell me everything. " * 40 + rows[0]["prompt"]
  with harness.mesh_rules(s.run.mesh, s.run.rules):
    ro = ppo.rollout(s, state, rows, 0)
  assert ro.truncated == 1 and ro.prompt_tok.shape == (PROMPTS, 24)
  assert ro.prompt_mask[0].all()  # The kept end fills the row.


@pytest.mark.parametrize("source", ["sharegpt", "hh"])
def test_conversation_prompts_roll_out_as_their_rendered_prefix(prepared, tmp_path, source):
  """A prompt row may be a conversation prefix: ShareGPT turns (dpo_en_demo's two-turn
  dialogues) or an HH dialogue without its last answer; the policy continues it."""
  s, state, _ = prepared
  if source == "sharegpt":
    rows = [r for r in json.load(open(shared_file("dpo_en_demo.json"))) if len(r["conversations"]) == 3]
    path = write_jsonl(tmp_path / "sharegpt.jsonl", rows[:PROMPTS])
  else:
    path = shared_file("hh_harmless_base_sample.jsonl")
  c = tiny_config()
  c.data.prompts = path
  rows = sources.prompts(c.data)[:PROMPTS]
  assert all(r["prompt"][-1]["role"] == "user" for r in rows)
  assert source == "hh" or all(len(r["prompt"]) == 3 for r in rows)  # User, assistant, user.
  with harness.mesh_rules(s.run.mesh, s.run.rules):
    ro = ppo.rollout(s, state, rows, 0)
  for i, r in enumerate(rows):
    ids = chat.tokenize(s.tok, r["prompt"], add_generation_prompt=True)[0][-24:]
    np.testing.assert_array_equal(np.asarray(ro.prompt_tok)[i, -len(ids):], ids)


def test_before_after_has_gold_columns_on_the_embedded_world(tmp_path):
  from r3jax.data import synthetic  # pylint: disable=g-import-not-at-top
  rows = synthetic.questions(2, seed=99)
  prompts = [{"role": "user", "content": r["prompt"]} for r in rows]
  scorer = lambda rows, y: {"reward": np.arange(len(y), dtype=float)}
  ppo.write_before_after(str(tmp_path), prompts, ["x", "y"], [r["reference"] for r in rows], scorer, rows)
  lines = (tmp_path / "before_after.md").read_text().splitlines()
  assert lines[0] == "| prompt | before (SFT) | R3 | gold P / R | after (PPO) | R3 | gold P / R |"
  # The first row is open-ended; its reference states five of the six facts.
  assert lines[2].endswith("| 0.00 / 0.00 | " + rows[0]["reference"] + " | 0.000 | 1.00 / 0.83 |")
  assert lines[3].endswith("| 1.000 | 1.00 / 1.00 |")  # Closed-ended: the asked fact.
  other = [{"prompt": "hi", "reference": None, "query_type": None}]
  ppo.write_before_after(str(tmp_path), prompts[:1], ["x"], ["y"], scorer, other)
  assert (tmp_path / "before_after.md").read_text().splitlines()[0] == "| prompt | before (SFT) | R3 | after (PPO) | R3 |"


@pytest.fixture(scope="module")
def grpo_phases(tmp_path_factory):
  """Iteration 0 of GRPO (2 samples per prompt, k3 KL in the loss): no value model."""
  c = algorithms.use_method(tiny_config(), "grpo", group_n=N)
  s, state, order, rows = ppo.prepare(c, str(tmp_path_factory.mktemp("grpo")))
  with harness.mesh_rules(s.run.mesh, s.run.rules):
    ro = ppo.rollout(s, state, [rows[i] for i in order.next()], 0)
    data = ppo.reference_value(s, state, ro, ppo.score(s, ro, 0))
    batch, moments = ppo.advantages(s, state, data)
  return dict(s=s, state=state, data=data, batch=batch, moments=moments)


def test_grpo_builds_no_value_model_and_puts_the_kl_in_the_loss(grpo_phases):
  s, state, data, batch = (grpo_phases[k] for k in ("s", "state", "data", "batch"))
  assert not s.uses_value and "value" not in state and "value_opt" not in state
  np.testing.assert_array_equal(data.values_BT, 0.0)
  rm = np.asarray(data.resp_mask_BT)
  want = ppo_losses.group_advantages(batch.score_B, N, scale=True)
  np.testing.assert_allclose(batch.adv_BT, np.asarray(want)[:, None] * rm, rtol=1e-6)
  # The KL is the loss's term, not the reward's: the rewards hold the score alone.
  np.testing.assert_allclose(np.asarray(batch.rewards_BT).sum(1), batch.score_B, rtol=1e-6)
  models, ms = ppo.update(s, jax.tree.map(jnp.copy, state), batch, it=0)
  assert set(models) == {"policy", "policy_opt"} and "value/loss" not in ms[0]
  assert abs(float(ms[0]["policy/kl_loss"])) < 1e-5  # The policy starts as the reference.
  assert any((np.asarray(x) != np.asarray(y)).any()
             for x, y in zip(jax.tree.leaves(state["policy"]), jax.tree.leaves(models["policy"])))
  new, _ = ppo.next_state(s, state, models, grpo_phases["moments"], batch.kl_BT)
  assert "value" not in new and int(new["step"]) == 1


@pytest.mark.parametrize("loss", algorithms.POLICY_LOSSES.names())
def test_a_registered_policy_loss_runs_by_name_in_the_update(grpo_phases, loss):
  """ppo.policy_loss=<name>: the same update step, with the loss looked up by name."""
  s, state, batch = grpo_phases["s"], grpo_phases["state"], grpo_phases["batch"]
  c = s.config.copy_and_resolve_references()
  with c.unlocked():
    c.ppo.policy_loss = loss
  lay = jax.tree.map(lambda x: x.sharding, state)
  s2 = ppo.Setup(**{**vars(s), "config": c, "update_fn": ppo.make_update(c, ppo.make_loss(c, s.cfg), lay)})
  models, ms = ppo.update(s2, jax.tree.map(jnp.copy, state), batch, it=0)
  # At iteration 0 the policy is the behaviour policy: every ratio is 1.
  assert float(ms[0]["policy/ratio"]) == pytest.approx(1.0, abs=1e-4)
  assert all(np.isfinite(float(m["policy/loss"])) for m in ms)
  assert any((np.asarray(x) != np.asarray(y)).any()
             for x, y in zip(jax.tree.leaves(state["policy"]), jax.tree.leaves(models["policy"])))


class HalfFlat:
  """A scorer whose groups are flat (all rewards equal) for prompts whose text has an even
  length, and spread otherwise: what dynamic sampling must tell apart."""
  weights, labels = (1.0,), ("half_flat",)

  def __call__(self, rows, texts):
    return {"reward": np.array([0.5 if len(r["prompt"]) % 2 == 0 else float(len(t) % 7)
                                for r, t in zip(rows, texts)])}

  def raw(self, comps):
    return comps["reward"][:, None]


@pytest.mark.parametrize("extra_rounds", [0, 5])
def test_dynamic_sampling_drops_flat_groups_and_keeps_the_batch_whole(grpo_phases, extra_rounds):
  """DAPO's dynamic sampling: flat groups are dropped and more prompts sampled; with no
  extra rounds the dropped groups refill the batch, and every count is logged."""
  from r3jax.data import pipeline, synthetic  # pylint: disable=g-import-not-at-top
  s, state = grpo_phases["s"], grpo_phases["state"]
  c = s.config.copy_and_resolve_references()
  with c.unlocked():
    c.rollout.update(dynamic_sampling=True, max_extra_rounds=extra_rounds)
  s2 = ppo.Setup(**{**vars(s), "config": c, "scorer": HalfFlat()})
  rows = synthetic.questions(64, seed=5)
  order = pipeline.Order(len(rows), PROMPTS, seed=0)
  ro, scored, stats = ppo.sample_batch(s2, state, rows, order, 0, harness.Timer())
  assert ro.prompt_tok.shape == (PROMPTS, 24) and ro.samples.tokens_BN.shape == (PROMPTS * N, NEW)
  assert len(ro.rows) == PROMPTS and len(scored.texts) == PROMPTS * N == scored.terms.shape[0]
  # Each kept group's texts are its own samples, decoded.
  np.testing.assert_array_equal(scored.texts, ppo.sampling.decode(s.tok, ro.samples))
  flat = np.ptp(scored.components["reward"].reshape(-1, N), 1) == 0
  assert stats["rollout/groups_dropped"] >= stats["rollout/groups_refilled"] == flat.sum()
  even = np.array([len(r["prompt"]) % 2 == 0 for r in ro.rows])
  assert flat[even].all()  # The rows travel with their groups' scores.
  if extra_rounds:
    assert not flat.any() and not even.any() and stats["rollout/rounds"] > 1
  else:
    assert stats["rollout/rounds"] == 1 and stats["rollout/groups_dropped"] == flat.sum()


def test_overlong_penalty_is_dapos_ramp():
  lengths = jnp.array([10, 32, 33, 36, 40])
  np.testing.assert_allclose(ppo_losses.overlong_penalty(lengths, 40, 8), [0, 0, -0.125, -0.5, -1])
