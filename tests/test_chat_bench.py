"""MT-Bench and Vicuna-Bench runners (eval/chat_bench.py, #31): the second turn is asked in
the conversation with the model's own first answer; every turn is judged in both orders;
references reach the judge for math, reasoning and coding; FastChat's prompts load by path."""

import json

import pytest

from r3jax.data import readers
from r3jax.eval import chat_bench, llm_judge
from helpers import shared_file, tiny_judge

QUESTIONS = [chat_bench.Question("81", "writing", ("Write a haiku.", "Now make it rhyme.")),
             chat_bench.Question("101", "reasoning", ("Who is second?", "And if you pass the last?")),
             chat_bench.Question("130", "coding", ("Sort a list.", "Now in place."))]


@pytest.fixture(scope="module")
def judge():
  return tiny_judge(max_new_tokens=6, batch=4)


def test_the_second_turn_sees_the_first_turn_and_the_models_own_answer():
  seen = []

  def generate(rows):
    seen.append([r["prompt"] for r in rows])
    return [f"answer {len(seen)}.{i}" for i in range(len(rows))]

  answers = chat_bench.answer(generate, QUESTIONS)
  assert answers[1] == ["answer 1.1", "answer 2.1"]
  assert seen[1][1] == [{"role": "user", "content": "Who is second?"},
                        {"role": "assistant", "content": "answer 1.1"},
                        {"role": "user", "content": "And if you pass the last?"}]
  assert seen[0][0] == [{"role": "user", "content": "Write a haiku."}]


def test_every_turn_is_judged_in_both_orders_with_references_where_fastchat_gives_them(judge, monkeypatch, tmp_path):
  policy = [["p1 " + q.qid, "p2 " + q.qid] for q in QUESTIONS]
  baseline = [["b1 " + q.qid, "b2 " + q.qid] for q in QUESTIONS]
  refs = {"101": ["Second place.", "That cannot happen."], "81": ["unused: writing has no reference"]}
  shown = []

  def verdicts_of(self, ids):
    texts = [self.tok.decode(x) for x in ids]
    shown.append(texts)
    # Prefers the policy in both orders: A's answers come before B's in every prompt.
    return [1 if t.index("p1 ") < t.index("b1 ") else -1 for t in texts]

  monkeypatch.setattr(llm_judge.PairwiseJudge, "verdicts_of", verdicts_of)
  out = chat_bench.judge_bench(judge, chat_bench.templates(""), QUESTIONS, refs, policy, baseline)
  assert len(shown) == 2 and all(len(s) == 6 for s in shown)  # 3 questions x 2 turns, each order.
  assert out[("all", 1)]["wins"] == 3 and out[("all", 2)]["win_rate"] == 1.0
  assert out[("reasoning", 2)]["judgements"] == 1 and out[("all", 1)]["position_bias"] == 0.0
  assert out["verdicts"][1] == [[1, -1], [1, -1]]  # Per turn: policy first, baseline first.
  first = shown[0]
  assert "Second place." in first[2] and "That cannot happen." in first[3]  # reasoning, turns 1-2.
  assert "reference" not in first[0].lower() and "reference" not in first[4].lower()  # writing; coding without one.
  assert "p1 101" in first[3] and "b1 101" in first[3]  # Turn 2 shows both conversations.
  table = chat_bench.report(str(tmp_path), "mt_bench", "llm:J", QUESTIONS, [policy, baseline], out)
  assert "| reasoning | 1 | 100.0% [100.0%, 100.0%] | 100.0% [100.0%, 100.0%] |" in table
  assert "| all | 3 |" in table and "position bias 0.0%" in table
  rows = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
  assert rows[2]["policy"] == ["p1 130", "p2 130"] and rows[2]["verdicts"] == [[1, -1], [1, -1]]


def test_fastchat_prompts_load_by_path_and_fill_their_placeholders(judge):
  path = shared_file("fastchat_judge_prompts.jsonl")
  tmpl = chat_bench.templates(path)
  assert set(tmpl) == set(chat_bench.FASTCHAT_NAMES) == set(chat_bench.templates(""))
  ids = chat_bench.judge_prompts(judge, tmpl, QUESTIONS[1:2], {"101": ["R1", "R2"]},
                                 [["a1", "a2"]], [["b1", "b2"]])
  turn2 = judge.tok.decode(ids[1])
  assert all(x in turn2 for x in ("R2", "a1", "a2", "b1", "b2", "And if you pass the last?"))
  single = judge.tok.decode(chat_bench.judge_prompts(judge, tmpl, QUESTIONS[1:2], {"101": ["R1", "R2"]},
                                                     [["a1", "a2"]], [["a1", "a2"]], "single")[1])
  assert all(x in single for x in ("R2", "a1", "a2", "[[rating]]")) and "b1" not in single


def test_question_files_read_with_file_line_errors(tmp_path):
  qs = chat_bench.load_questions(shared_file("mt_bench_questions.jsonl"), "mt_bench", limit=5)
  assert len(qs) == 5 and all(len(q.turns) == 2 for q in qs)
  assert len(chat_bench.load_questions(shared_file("vicuna_bench_questions.jsonl"), "vicuna")) == 80
  refs = chat_bench.load_references(shared_file("mt_bench_reference_gpt4.jsonl"))
  assert len(refs) == 30 and all(len(t) == 2 for t in refs.values())
  bad = tmp_path / "q.jsonl"
  bad.write_text(json.dumps({"question_id": 1, "category": "x", "turns": ["only one"]}) + "\n"
                 + json.dumps({"question_id": 2, "turns": []}) + "\n")
  with pytest.raises(readers.DataError, match=r"q.jsonl:2: field 'turns' should be a list of non-empty strings"):
    chat_bench.load_questions(str(bad), "vicuna")
  bad.write_text(json.dumps({"question_id": 1, "category": "x", "turns": ["only one"]}) + "\n")
  with pytest.raises(readers.DataError, match=r"q.jsonl:1: --bench=mt_bench asks 2 turns"):
    chat_bench.load_questions(str(bad), "mt_bench")


def test_ratings_parse_as_fastchat_reads_them():
  assert [llm_judge.parse_rating(t) for t in ["... [[7]]", "[[3]] then [[8.5]]", "Rating: [6]", "[[11]]", "none"]] == [
      7.0, 8.5, 6.0, None, None]


def test_single_grading_rates_each_turn_and_counts_unreadable_ratings(judge, monkeypatch, tmp_path):
  answers = [["p1 " + q.qid, "p2 " + q.qid] for q in QUESTIONS]
  shown = []

  def judgements(self, ids):
    texts = [self.tok.decode(x) for x in ids]
    shown.extend(texts)
    # Rates a first answer 8 and a second one 4; the coding question's second turn unreadable.
    return ["no verdict" if "p2 130" in t else "[[4]]" if "p2 " in t else "[[8]]" for t in texts]

  monkeypatch.setattr(llm_judge.PairwiseJudge, "judgements", judgements)
  g = chat_bench.grade_bench(judge, chat_bench.templates(""), QUESTIONS, {"101": ["R1", "R2"]}, answers)
  assert len(shown) == 6 and "R2" in shown[3] and "p1 101" in shown[3]  # Turn 2 sees turn 1.
  assert g[("all", 1)]["mean"] == 8.0 and g[("all", 2)]["mean"] == 4.0
  assert g[("all", 2)]["unreadable"] == 1 and g[("all", 2)]["graded"] == 3
  assert g["ratings"][2] == [8.0, None]
  table = chat_bench.report_single(str(tmp_path), "mt_bench", "llm:J", QUESTIONS, {"policy": answers},
                                   {"policy": g})
  assert "| coding | 8.00 [8.00, 8.00] | - (1 of 1 unreadable) |" in table
  assert "| all | 8.00 [8.00, 8.00] | 4.00 [4.00, 4.00] (1 of 3 unreadable) |" in table
