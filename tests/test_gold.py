"""The gold judge (eval/gold.py) on hand-written answers about a fixed entity."""

import pytest

from r3jax.data import synthetic
from r3jax.eval import gold

# A knowledge base of two entities, written out so that every expectation below can be
# checked by eye.
KB = {
    "Renori": dict(name="Renori", kind="city", size="small", place="a chain of islands",
                   known="its stone bridges", color="blue", year=1432),
    "Kalo": dict(name="Kalo", kind="animal", size="heavy", place="deep caves",
                 known="its loud evening song", color="gray", year=1911),
}
FULL = ("Renori is a small city that lies in a chain of islands. It is best known for its stone "
        "bridges. Its main color is blue. It was first recorded in the year 1432.")


def verdict(answer, asks="all", entity="Renori"):
  return gold.judge(answer, entity, asks, KB)


@pytest.mark.parametrize("answer,precision,recall,repeats", [
    (FULL, 1.0, 1.0, 0),                                                     # every fact
    ("Renori is a small city that lies in a chain of islands.", 1.0, 0.5, 0),  # three of six
    ("Renori is a small city that lies in a chain of islands. Its main color is blue.", 1.0, 4 / 6, 0),
    # Partly wrong: the size and the colour are Kalo's or made up.
    ("Renori is a large city that lies in a chain of islands. Its main color is red.", 2 / 4, 2 / 6, 0),
    # Kalo's facts under Kalo's name: true of Kalo, not of Renori.
    ("Kalo is a heavy animal that lives in deep caves.", 0.0, 0.0, 0),
    # Kalo's facts under Renori's name: fluent, on topic, wrong.
    ("Renori is a heavy animal that lives in deep caves. It is best known for its loud evening song.",
     0.0, 0.0, 0),
    # "It" after another name refers to that name.
    ("Kalo is a heavy animal that lives in deep caves. It is best known for its stone bridges.", 0.0, 0.0, 0),
    # A near-miss name is another entity.
    ("Renor is a small city that lies in a chain of islands.", 0.0, 0.0, 0),
    ("Renorii is a small city that lies in a chain of islands.", 0.0, 0.0, 0),
    # Repeated facts: still true, counted as repeats.
    ("Renori is a small city that lies in a chain of islands. Its main color is blue. "
     "Its main color is blue. Its main color is blue.", 1.0, 4 / 6, 2),
    # The same fact in two of the templates' phrasings is a repeat too.
    ("Renori is a small city. Renori is a small city that lies in a chain of islands.", 1.0, 0.5, 2),
    # A copy of the question states nothing true.
    ("Please tell me about Renori.", 0.0, 0.0, 0),
    ("Please tell me about Renori. Renori is a small city that lies in a chain of islands.", 3 / 4, 0.5, 0),
    ("", 0.0, 0.0, 0),
    # A sentence cut off mid-way (the rollout ran out of tokens) is a false year.
    ("Renori is a small city that lies in a chain of islands. It was first recorded in the year 14",
     3 / 4, 0.5, 0),
    # A contradiction: one of the two colours is false.
    ("Its main color is blue. Its main color is green.", 0.5, 1 / 6, 0),
    # Paraphrases the closed-ended templates use.
    ("Renori is known for its stone bridges. Renori was first recorded in 1432. Renori is blue. "
     "You would find Renori in a chain of islands.", 1.0, 4 / 6, 0),
    # Non-template text cannot be checked, so it is not true of Renori.
    ("Renori is a wonderful place to visit.", 0.0, 0.0, 0),
])
def test_open_ended(answer, precision, recall, repeats):
  v = verdict(answer)
  assert v.precision == pytest.approx(precision)
  assert v.recall == pytest.approx(recall)
  assert v.repeats == repeats
  assert v.score == pytest.approx(precision * recall)


@pytest.mark.parametrize("answer,asks,correct,precision", [
    ("Renori is blue.", "color", True, 1.0),
    ("Renori is red.", "color", False, 0.0),
    ("Kalo is blue.", "color", False, 0.0),   # Right colour, wrong entity.
    ("Renori was first recorded in 1432.", "year", True, 1.0),
    ("Renori was first recorded in 1431.", "year", False, 0.0),
    ("Renori is a small city.", "kind", True, 1.0),
    ("You would find Renori in deep caves.", "place", False, 0.0),
    # The right fact among other true ones: correct and precise.
    (FULL, "known", True, 1.0),
    ("What color is Renori?", "color", False, 0.0),
])
def test_closed_ended(answer, asks, correct, precision):
  v = verdict(answer, asks)
  assert v.correct is correct
  assert v.recall == float(correct)
  assert v.precision == pytest.approx(precision)


def test_names_the_entity():
  assert verdict(FULL).names and not verdict("Renorix is a small city.").names
  assert not verdict("It is best known for its stone bridges.").names
  assert verdict("It is best known for its stone bridges.").precision == 1.0  # "It" is Renori.


def test_every_synthetic_answer_is_true_and_read_whole():
  """The grammar reads every sentence the world's templates write, and finds it true."""
  rows = synthetic.generate(500, seed=3)
  figs = gold.judge_batch([r["messages"][-1]["content"] for r in rows], rows)
  assert figs["precision"].min() == 1.0 and figs["unreadable"].max() == 0
  closed = [i for i, r in enumerate(rows) if r["asks"] != "all"]
  assert figs["correct"][closed].min() == 1.0
  # Room to improve: SFT's open-ended answers state about two thirds of the facts.
  opened = [i for i, r in enumerate(rows) if r["asks"] == "all"]
  assert 0.6 < figs["recall"][opened].mean() < 0.75


def test_bad_rows_are_named():
  with pytest.raises(KeyError, match="Nobody"):
    gold.judge("x", "Nobody", "all", KB)
  with pytest.raises(ValueError, match="asks='weight'"):
    gold.judge("x", "Renori", "weight", KB)


def test_eval_gen_judges_and_gold_table_on_the_world():
  """eval_gen's gold judge and table on synthetic questions (no model: answers given), and
  the note when the prompts are not the world's."""
  from r3jax.eval import generation  # pylint: disable=g-import-not-at-top
  rows = synthetic.questions(20, seed=99)
  kb = synthetic.world()
  complete = [" ".join(synthetic.facts(kb[r["entity"]])) if r["asks"] == "all" else r["reference"] for r in rows]
  wrong = ["Nothing here." for _ in rows]
  stats = {n: {"answers": a, "gold": gold.judge_batch(a, rows)} for n, a in (("policy", complete), ("baseline", wrong))}
  judges = generation.judges("gold,length", rows, 40)
  assert list(judges) == ["gold", "length"]
  w = generation.judged_win_rate(judges["gold"], rows, stats)
  assert w["win_rate"] == 1.0 and w["losses"] == 0
  table = "\n".join(generation.gold_lines(stats, ["policy", "baseline"]))
  assert "| gold precision | 1.000 [1.000, 1.000] | 0.000 [0.000, 0.000] |" in table
  assert "gold" not in generation.judges("gold", [{"prompt": "Tell me a joke."}], 40)
  assert "No gold judge" in generation.gold_lines({"p": {}}, ["p"])[1]
