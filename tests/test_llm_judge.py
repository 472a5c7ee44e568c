"""The pairwise LLM judge (eval/llm_judge.py) with a tiny random judge: both orders always
run, a flip is a tie, unreadable verdicts are counted, and the probability verdict is the
argmax of the judge's own next-token log-probs."""

import jax.numpy as jnp
import numpy as np
import pytest

from r3jax.eval import generation, llm_judge
from r3jax.models import qwen
from helpers import tiny_judge

QUESTIONS = ["What is Nivo?", "Where is Karen?", "Name a colour.", "Why is the sky blue?"]
A = ["Nivo is a city.", "Karen lies by a desert.", "Blue.", "Scattering."]
B = ["I do not know.", "Somewhere.", "Red, maybe.", "Because."]


@pytest.fixture(scope="module")
def judge():
  return tiny_judge(max_new_tokens=8, batch=3)


def test_verdicts_parse_the_last_bracketed_letter():
  assert [llm_judge.parse(t) for t in ["... so [[A]]", "[[A]] no, [[B]]", "[[C]]", "A is better", ""]] == [
      1, -1, 0, None, None]


def test_a_win_needs_both_orders_and_a_flip_is_a_tie():
  # Prompt 0: a preferred in both orders (win). 1: b in both (loss). 2: the first shown
  # always wins (position bias: tie). 3: tie then a. 4: unreadable then a (counted, a tie).
  ab = [1, -1, 1, 0, None]
  ba = [-1, 1, 1, -1, -1]
  out = llm_judge.both_orders(ab, ba)
  assert (out["wins"], out["ties"], out["losses"], out["judgements"]) == (1, 3, 1, 5)
  assert out["win_rate"] == pytest.approx((1 + 1.5) / 5)
  assert out["unreadable"] == 1 and out["position_bias"] == pytest.approx(1 / 4)


def test_both_orders_are_always_judged(judge, monkeypatch):
  calls = []
  monkeypatch.setattr(llm_judge.PairwiseJudge, "verdicts",
                      lambda self, q, first, second: calls.append((first, second)) or [1] * len(q))
  out = judge.win_rate(QUESTIONS, A, B)
  assert calls == [(A, B), (B, A)]
  assert out["ties"] == 4 and out["position_bias"] == 1.0  # "First wins" every time.


def test_the_probability_verdict_is_the_argmax_of_the_next_token_log_probs(judge):
  prob = llm_judge.PairwiseJudge(judge.cfg, judge.params, judge.tok, mode="prob", batch=3)
  got = prob.verdicts(QUESTIONS, A, B)
  letters = [judge.tok.encode(x, add_special_tokens=False)[0] for x in "ABC"]
  for ids, verdict in zip(prob.prompts(QUESTIONS, A, B), got):  # Each prompt alone, unpadded.
    logits, _, _ = qwen.Qwen(judge.cfg).apply({"params": judge.params}, jnp.asarray(ids)[None])
    assert verdict == (1, -1, 0)[int(np.argmax(np.asarray(logits[0, -1])[letters]))]


def test_generated_verdicts_that_cannot_be_read_are_counted(judge):
  out = judge.win_rate(QUESTIONS[:2], A[:2], B[:2])  # A random tiny model writes no [[X]].
  readable = 4 - out["unreadable"]
  assert out["judgements"] == 2 and out["wins"] + out["ties"] + out["losses"] == 2
  assert readable >= 0 and (readable > 0 or out["ties"] == 2)


def test_eval_gen_takes_an_llm_judge_by_path(judge, monkeypatch):
  loaded = []
  monkeypatch.setattr(llm_judge.PairwiseJudge, "load",
                      classmethod(lambda cls, path, **kw: loaded.append((path, kw)) or judge))
  judges = generation.judges("llm:/models/j,llm-prob:/models/k", [{"prompt": "q"}], 16)
  assert loaded == [("/models/j", {}), ("/models/k", {"mode": "prob"})]
  assert all(isinstance(j, llm_judge.PairwiseJudge) for j in judges.values())
  stats = {"policy": {"answers": A}, "baseline": {"answers": B}}
  monkeypatch.setattr(llm_judge.PairwiseJudge, "verdicts", lambda self, q, f, s: [1 if f is A else -1] * len(q))
  out = generation.judged_win_rate(judges["llm:/models/j"], [{"prompt": q} for q in QUESTIONS], stats)
  assert out["win_rate"] == 1.0 and out["position_bias"] == 0.0


def test_pairwise_accuracy_of_an_llm_judge_needs_both_orders(judge, monkeypatch):
  """eval_pairs' accuracy (agreement with the comparisons' labels) under an LLM judge: a
  pair counts when both orders prefer the chosen response, a half when they disagree."""
  from r3jax.eval import pairs
  rows = [{"prompt": [{"role": "user", "content": q}], "responses": [a, b]} for q, a, b in zip(QUESTIONS, A, B)]
  # Prefers the chosen answer in both orders on prompts 0-1, always the first shown on 2-3.
  monkeypatch.setattr(llm_judge.PairwiseJudge, "verdicts", lambda self, q, f, s: [
      (1 if f[i] in A else -1) if i < 2 else 1 for i in range(len(q))])
  wins, n = pairs.pair_accuracy(judge, rows)
  assert (wins, n) == (2 + 0.5 * 2, 4)


def test_human_agreement_is_both_orders_accuracy_with_a_wilson_interval(judge, monkeypatch):
  from r3jax.eval import judge_calibration, pairs
  rows = [{"prompt": [{"role": "user", "content": q}], "responses": [a, b]} for q, a, b in zip(QUESTIONS, A, B)]
  # Agrees with the label in both orders on prompt 0, disagrees on 1, first-shown on 2-3.
  monkeypatch.setattr(llm_judge.PairwiseJudge, "verdicts", lambda self, q, f, s: [
      [1 if f[0] in A else -1, 1 if f[1] in B else -1, 1, 1][i] for i in range(len(q))])
  out = judge_calibration.human_agreement(judge, rows, "hh.jsonl")
  assert out["accuracy"] == pytest.approx((1 + 0.5 * 2) / 4) and out["pairs"] == 4
  assert out["ci95"] == pytest.approx(pairs.wilson(2.0, 4)) and out["position_bias"] == pytest.approx(2 / 4)
  text = "\n".join(judge_calibration.lines("llm:J", {"turn 1": 0.25}, out, None))
  assert "`hh.jsonl`: **50.0%**" in text and "Position bias, turn 1: 25.0%" in text
  assert "only on the embedded world's questions" in text


def test_gold_agreement_counts_the_prompts_gold_decides_and_judge_ties_as_half():
  from r3jax.eval import judge_calibration
  outcomes = [1.0, 0.0, 0.5, 1.0, 0.0, 0.5]
  policy = [0.9, 0.2, 0.7, 0.1, 0.5, 0.5]  # Gold: policy, baseline, policy, baseline, tie, tie.
  baseline = [0.3, 0.8, 0.1, 0.6, 0.5, 0.5]
  out = judge_calibration.gold_agreement(outcomes, policy, baseline)
  assert (out["decided"], out["gold_ties"], out["judge_ties"]) == (4, 2, 1)
  assert out["agreement"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
