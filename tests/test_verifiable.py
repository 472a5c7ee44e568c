"""Verifiable rewards: answer extraction and normalisation (rewards/verifiable.py), the math and
format rewards, GSM8K rows read as keyed prompts, `python -m r3jax.score --reward=math`, and
the embedded arithmetic task's splits."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from r3jax.core.errors import ConfigError, DataError
from r3jax.data import arithmetic, readers
from r3jax.rewards import scorers, verifiable

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


@pytest.mark.parametrize("text,want", [
    (r"so the total is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"\boxed{a} then \boxed{\{x\}_{1}}", r"\{x\}_{1}"),  # The last box, braces balanced.
    ("She pays 3 + 4.\n#### 1,234", "1,234"),
    ("So 7 + 5 = 12. The answer is 12 apples.", "12"),
    ("The final answer is: $18.00.", "$18.00"),
    ("Answer: 50%", "50"),
    ("First 3, then 7, so 10 left", "10"),  # The last number.
    ("The answer is -4.", "-4"),
    ("I do not know.", None),
    ("First 3, then 7, so 10, which is it", "10"),  # A comma after a number is not a group.
    ("The range is 10-20", "20"), ("So 10 - 5", "5"), ("Qwen2 is a model", None),  # No minus, no "2".
    ("I think the answer is 5, no, the answer is 6.", "6"),  # The last phrase on one line.
    ("The answer is 12 - 3 = 9.", "9"), ("The answer is\n\n42", "42"),
    (r"Answer: $\frac{3}{4}$.", r"\frac{3}{4}"), (r"so it is -\frac{1}{2}", r"-\frac{1}{2}"),
    ("Final Answer: The final answer is 18. I hope it is correct.", "18"),
    ("The answer is Paris.", "Paris"), (r"\boxed{} so 4", "4"),  # An empty box: the fallback.
])
def test_extract_reads_every_answer_form(text, want):
  assert verifiable.extract(text) == want


@pytest.mark.parametrize("answer,key,equal", [
    ("1,234", "1234", True), ("$18.00", "18", True), ("50%", "50", True), ("18.0", "18", True),
    (r"\frac{1}{2}", "0.5", True), ("2/4", "1/2", True), (r"\dfrac{3}{4}", "0.75", True),
    ("+7", "7", True), ("-4", "4", False), ("12", "13", False), ("Paris", "paris.", True),
    (r"5\text{ apples}", "5", True), ("1,23", "123", False),
    (r"-\frac{1}{2}", "-0.5", True), (r"\frac12", "0.5", True), (r"\frac{1.5}{3}", "1/2", True),
    ("18 dollars", "18", True), ("1,000 dollars", "$1000", True), ("€5", "£5.0", True),
    (r"90^\circ", "90", True), ("x = 5", "5", True), ("−3", "-3", True), (r"\text{Paris}", "Paris", True),
    ("2 pi", "2", False), ("1/0", "0", False), ("5 apples", "6", False),
])
def test_normalize_compares_equal_answers_equal(answer, key, equal):
  assert (verifiable.normalize(answer) == verifiable.normalize(key)) == equal
  for s in (answer, key):  # Idempotent: keys normalised once may be normalised again.
    assert verifiable.normalize(verifiable.normalize(s)) == verifiable.normalize(s)


def test_keys_and_formats():
  assert verifiable.key_of({"answer": "She has 3 <<1+2=3>>3.\n#### 72"}) == "72"
  assert verifiable.key_of({"answer": 18}) == "18" and verifiable.key_of({}) is None
  assert verifiable.format_ok(r"\boxed{3}", "boxed") and not verifiable.format_ok("3", "any")
  assert verifiable.format_ok("x\n#### 3", "hash") and not verifiable.format_ok("x\n#### 3", "answer_is")
  assert verifiable.format_ok("The answer is 3.", "any")
  assert verifiable.key_of({"answer": " "}) is None and not verifiable.format_ok(r"\boxed{ }", "boxed")
  with pytest.raises(ConfigError, match=r"reward.answer_format='boxxed': expected one of any, boxed"):
    scorers.make("format", ml_collections.ConfigDict({"answer_format": "boxxed"}))


def test_math_and_format_rewards_are_registered_scorers():
  rows = [{"prompt": "q", "answer": "12"}] * 3
  texts = ["7 + 5 = 12. The answer is 12.", "The answer is 13.", "no idea"]
  out = scorers.make("math")(rows, texts)
  np.testing.assert_array_equal(out["reward"], [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(out["parsed"], [1.0, 1.0, 0.0])
  section = ml_collections.ConfigDict({"answer_format": "answer_is"})
  np.testing.assert_array_equal(scorers.make("format", section)(rows, texts)["reward"], [1.0, 1.0, 0.0])
  mix = scorers.Mix("0.8*math+0.2*format")(rows, texts)
  np.testing.assert_allclose(mix["reward"], [1.0, 0.2, 0.0])
  with pytest.raises(DataError, match=r"p.jsonl:4: no field 'answer', which the math reward needs"):
    scorers.check_rows("0.5*math+0.5*length", [{"prompt": "q", "answer": "1"}, {"prompt": "q", "where": "p.jsonl:4"}])


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="needs ../shared/data (the data samples)")
def test_gsm8k_rows_are_prompts_with_their_key():
  rows = readers.load_prompts(os.path.join(SHARED, "gsm8k_test_sample.jsonl")).rows
  assert len(rows) == 500 and all(verifiable.key_of(r) for r in rows)
  first = rows[0]
  assert first["prompt"].startswith("Janet") and first["answer"] == "18"
  assert "####" not in first["reference"] and "<<" not in first["reference"]
  assert verifiable.is_correct(first["reference"] + "\nThe answer is $18.", first["answer"])
  with open(os.path.join(SHARED, "gsm8k_test_sample.jsonl")) as f:
    raw = [json.loads(next(f)) for _ in range(3)]
  for i, obj in enumerate(raw):
    row = readers.to_prompt(dict(obj), f"gsm8k:{i + 1}")
    assert row["prompt"] == obj["question"] and row["answer"] == obj["answer"].rsplit("####", 1)[1].strip()
    assert verifiable.key_of(obj) == row["answer"]  # The raw row's key is the same.
  solution_row = {"question": "q", "answer": "4", "solution": "2 + 2 = 4"}
  assert readers.to_prompt(solution_row, "x:1")["reference"] == "2 + 2 = 4" and "solution" in solution_row


def test_a_non_scalar_answer_key_is_a_file_line_error(tmp_path):
  bad = tmp_path / "p.jsonl"
  bad.write_text('{"prompt": "q", "answer": "1"}\n{"prompt": "q", "answer": [1]}\n')
  with pytest.raises(DataError, match=r"p.jsonl:2: the answer key should be a string or a number"):
    readers.load_prompts(str(bad))


def test_score_command_with_the_math_reward(tmp_path):
  src = tmp_path / "rows.jsonl"
  rows = [{"prompt": "q", "response": "The answer is 1,000.", "answer": "1000"},
          {"prompt": "q", "response": "So \\boxed{3}", "answer": "x\n#### 4"}]
  src.write_text("".join(json.dumps(r) + "\n" for r in rows))
  run = lambda path: subprocess.run([sys.executable, "-m", "r3jax.score", "--reward=math", f"--input={path}",
                                     f"--output={tmp_path / 'out.jsonl'}"], capture_output=True, text=True, timeout=120)
  out = run(src)
  assert out.returncode == 0, out.stderr
  scored = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [(s["reward"], s["extracted"]) for s in scored] == [(1.0, "1,000"), (0.0, "3")]
  src.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "q", "response": "2"}) + "\n")
  out = run(src)
  assert out.returncode != 0 and f"{src}:2: no field 'answer', which the math reward needs" in out.stderr


def test_arithmetic_splits_share_no_problem_and_keys_are_right():
  splits = {s: arithmetic.problems(400, seed=3, split=s) for s in ("train", "rl", "test")}
  texts = {s: {r["prompt"] for r in rows} for s, rows in splits.items()}
  assert not texts["train"] & texts["test"] and not texts["rl"] & texts["test"] and not texts["train"] & texts["rl"]
  for r in splits["test"]:
    assert verifiable.is_correct(r["reference"], r["answer"])  # The worked solution's key.
    steps = r["reference"].split(". ")[:-1]
    for step in steps:  # Every step's arithmetic holds.
      lhs, rhs = step.rstrip(".").split(" = ")
      a, op, b = lhs.split()
      assert {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op] == int(rhs), step


def test_pass_at_k_equals_enumeration_and_majority_breaks_ties_by_order():
  import itertools  # pylint: disable=g-import-not-at-top
  from r3jax.eval import accuracy  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for _ in range(20):
    n = int(rng.integers(1, 8))
    right = rng.random(n) < 0.4
    for k in range(1, n + 1):
      subsets = list(itertools.combinations(range(n), k))
      want = np.mean([right[list(s)].any() for s in subsets])  # P(some of k drawn is right).
      assert accuracy.pass_at_k(n, int(right.sum()), k) == pytest.approx(want)
  assert accuracy.majority(["3", None, "4", "3.0", "4"]) == "3"  # 3 and 4 tie: the first.
  assert accuracy.majority([None, None]) is None


def test_accuracy_stats_and_report_lines():
  from r3jax.eval import accuracy  # pylint: disable=g-import-not-at-top
  rows = [{"prompt": "q", "answer": "4"}, {"prompt": "q", "answer": "x\n#### 9"}]
  st = accuracy.stats(rows, ["The answer is 4.", "no"], [["4", "5", "4"], ["8", "8", "9"]])
  np.testing.assert_array_equal(st["greedy"], [1, 0])
  np.testing.assert_array_equal(st["pass_k"], [1, 1])
  np.testing.assert_array_equal(st["maj_k"], [1, 0])
  np.testing.assert_allclose(st["sampled"], [2 / 3, 1 / 3])
  np.testing.assert_array_equal(st["parsed"], [1, 0])
  text = "\n".join(accuracy.lines({"policy": {"accuracy": st}, "baseline": {}}, 3, 0.9))
  assert "| pass@1, greedy | 0.500 [" in text and "maj@3" in text and "| metric (95% interval over prompts) | policy |" in text
  assert not accuracy.applicable([{"prompt": "q"}]) and accuracy.applicable(rows)


def test_an_instruction_is_appended_to_every_prompt_and_eval_reads_the_arithmetic_task():
  from r3jax.data import sources  # pylint: disable=g-import-not-at-top
  from r3jax.eval import generation  # pylint: disable=g-import-not-at-top
  rows, types, _ = generation.load_rows("synthetic:arithmetic", 5, False)
  assert len(rows) == 5 and all(r["where"].startswith("synthetic:arithmetic:") for r in rows)
  assert types == ["unlabelled"] * 5 and all(verifiable.key_of(r) for r in rows)
  test = {r["prompt"] for r in arithmetic.problems(200, seed=99, split="test")}
  assert {r["prompt"] for r in rows} <= test  # The held-out split.
  out = sources.with_instruction(rows + [{"prompt": [{"role": "user", "content": "hi"}]}], "Box it.")
  # A conversation prompt takes it in its last user turn.
  assert out[0]["prompt"] == rows[0]["prompt"] + "\n\nBox it." and out[-1]["prompt"][0]["content"] == "hi\n\nBox it."
  assert sources.with_instruction(rows, "") is rows


def test_greedy_only_accuracy_has_no_sample_figures():
  from r3jax.eval import accuracy  # pylint: disable=g-import-not-at-top
  st = accuracy.stats([{"prompt": "q", "answer": "4"}], ["The answer is 4."], [[]])
  assert set(st) == {"greedy", "parsed"}
  text = "\n".join(accuracy.lines({"policy": {"accuracy": st}}, 0, 0.9))
  assert "| pass@1, greedy | 1.000 [" in text and "maj@" not in text and "pass@0" not in text


def test_answers_file_has_each_models_extracted_answer_and_grade(tmp_path):
  from r3jax.eval import accuracy, generation  # pylint: disable=g-import-not-at-top
  rows = [{"where": "p:1", "prompt": "q", "answer": "4"}, {"where": "p:2", "prompt": "r", "answer": "9"}]
  answers = ["2 + 2 = 4. The answer is 4.", "I am not sure."]
  stats = {"policy": {"answers": answers, "accuracy": accuracy.stats(rows, answers, [[], []])},
           "baseline": {"answers": ["5", "9"]}}  # No accuracy: no graded fields.
  generation.write_answers(str(tmp_path), rows, stats)
  out = [json.loads(l) for l in (tmp_path / "answers.jsonl").read_text().splitlines()]
  assert [(o["policy_extracted"], o["policy_correct"]) for o in out] == [("4", True), (None, False)]
  assert out[1]["baseline"] == "9" and "baseline_correct" not in out[1]
