"""% Rel (eval/relevant_sentences.py): labels read by sentence number, the ratio per answer
and by position, and the probability labels equal to the judge's own next-token argmax."""

import jax.numpy as jnp
import numpy as np
import pytest

from r3jax.eval import llm_judge, relevant_sentences as rel
from r3jax.models import qwen
from helpers import tiny_judge

QUESTIONS = ["What is Nivo?", "Name a colour."]
ANSWERS = ["Nivo is a city. It lies by a desert! I like trains.", "Blue."]


@pytest.fixture(scope="module")
def judge():
  return tiny_judge(max_new_tokens=8, batch=3)


def test_labels_are_read_by_sentence_number_and_a_missing_one_is_none():
  text = ('- "Sentence 2" : (Irrelevant)\nSentence 1: Relevant\nsentence 4 - relevant\n'
          'Sentence 1: Irrelevant\nSentence 3: not sure')
  assert rel.parse(text, 4) == [True, False, None, True]  # The first label of sentence 1 counts.
  assert rel.parse("", 2) == [None, None]


def test_the_ratio_is_a_mean_over_answers_of_judged_sentences_and_by_position():
  labels = [[True, False, None, True], [False], [], [None]]
  s = rel.summary(labels)
  # Answer 0: 2 of its 3 read sentences; answer 1: 0 of 1; answer 2 is empty; answer 3 unread.
  assert s["rel"] == pytest.approx(np.mean([2 / 3, 0.0]))
  assert (s["answers"], s["sentences"], s["empty"], s["unreadable"]) == (2, 6, 1, 2)
  assert s["by_position"][1][0] == pytest.approx(0.5) and s["by_position"][1][3] == 2
  assert s["by_position"][2][0] == 0.0 and 3 not in s["by_position"]
  assert s["by_position"][4][0] == 1.0
  table = "\n".join(rel.lines({"policy": s}, "llm:J"))
  assert "| policy | 33.3% [" in table and "| 1 | 50.0% (2) |" in table and "| 3 | - |" in table


def test_generated_labels_come_from_one_numbered_prompt_per_answer(judge, monkeypatch):
  seen = []

  def judgements(self, ids):
    seen.extend(self.tok.decode(x) for x in ids)
    return ["Sentence 1: Relevant\nSentence 2: Relevant\nSentence 3: Irrelevant"][:len(ids)]

  monkeypatch.setattr(llm_judge.PairwiseJudge, "judgements", judgements)
  got = rel.label(judge, QUESTIONS[:1] + ["Say nothing."], ANSWERS[:1] + [""])
  assert got == [[True, True, False], []]  # The empty answer is not sent to the judge.
  assert len(seen) == 1 and "Sentence 3: I like trains." in seen[0] and "What is Nivo?" in seen[0]


def test_probability_labels_are_the_argmax_of_the_judges_next_token(judge):
  prob = llm_judge.PairwiseJudge(judge.cfg, judge.params, judge.tok, mode="prob", batch=3)
  got = rel.label(prob, QUESTIONS, ANSWERS)
  assert [len(x) for x in got] == [3, 1]
  first = [judge.tok.encode(w, add_special_tokens=False)[0] for w in rel.LABELS]
  k = 0
  for q, a, labels in zip(QUESTIONS, ANSWERS, got):
    sents = rel.tm.sentences(a)
    for j, label in enumerate(labels):
      user = rel.PROMPT.format(question=q, numbered=rel.numbered(sents)) + rel.ASK["prob"].format(k=j + 1)
      ids = prob.chat_ids([user], rel.SYSTEM)[0]  # Each prompt alone, unpadded.
      logits, _, _ = qwen.Qwen(judge.cfg).apply({"params": judge.params}, jnp.asarray(ids)[None])
      assert label == bool(np.asarray(logits[0, -1])[first[0]] >= np.asarray(logits[0, -1])[first[1]])
      k += 1
  assert k == 4


def test_the_plot_has_labelled_axes(tmp_path):
  path = rel.plot(str(tmp_path / "rel.png"), {"policy": rel.summary([[True, False], [True]]),
                                              "baseline": rel.summary([[False], [True, True]])})
  assert (tmp_path / "rel.png").stat().st_size > 5000 and path.endswith("rel.png")
