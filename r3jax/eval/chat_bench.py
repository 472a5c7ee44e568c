"""MT-Bench and Vicuna-Bench runners (Zheng et al. 2023, "Judging LLM-as-a-Judge", §3-4;
the R³ paper's win rates, §5), judged by an LLM judge pairwise in both orders, or by
single-answer grading (1-10).

Each model answers every question turn by turn: turn k+1 is asked in the conversation of
the earlier turns with the model's own answers (MT-Bench's second turn sees its own first
answer). Answers are greedy. Each turn is judged by `llm_judge.PairwiseJudge` with the
policy shown first and then second; a win needs both orders (the adjusted win rate
(W + T/2) / N, by category and turn, with 95% intervals). Single grading rates each model's
answers alone; an unreadable rating is counted and left out of the mean. For the categories where
FastChat gives the judge a reference answer (math, reasoning, coding), the reference of
`--references` is shown to the judge when it has one for the question.

Judge prompts are this project's wording, or FastChat's from a prompt file
(`--judge_prompts`, their JSONL of {name, system_prompt, prompt_template}): the pair-* and
single-* prompts of FASTCHAT_NAMES, filled with FastChat's placeholders ({question_1},
{answer_a_1}, {ref_answer_1}, ...).
"""

import collections
import dataclasses
import json
import os

import numpy as np

from r3jax.data import readers
from r3jax.eval import llm_judge, text_metrics as tm

BENCHES = {"mt_bench": 2, "vicuna": 1}  # Turns per question.
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")  # FastChat's NEED_REF_CATS.
FASTCHAT_NAMES = {"pair": "pair-v2", "pair-multi": "pair-v2-multi-turn",
                  "pair-ref": "pair-math-v1", "pair-multi-ref": "pair-math-v1-multi-turn",
                  "single": "single-v1", "single-multi": "single-v1-multi-turn",
                  "single-ref": "single-math-v1", "single-multi-ref": "single-math-v1-multi-turn"}
SINGLE_SYSTEM = ("You grade an assistant's answer to a user's question for helpfulness, relevance, "
                 "accuracy and detail, and ignore its length as such.")
_RATE = "Explain briefly, then rate the answer from 1 to 10 in the form [[rating]], e.g. [[5]]."
_ANSWER = ("[Question]\n{question}\n\n[The Start of the Assistant's Answer]\n{answer}\n"
           "[The End of the Assistant's Answer]\n\n")
_DIALOGUE = ("[Conversation]\nUser: {question_1}\nAssistant: {answer_1}\nUser: {question_2}\n"
             "Assistant: {answer_2}\n\n")
SINGLE = {  # Single-answer grading (MT-Bench's default), in this project's wording.
    "single": _ANSWER + _RATE,
    "single-ref": "[Reference answer]\n{ref_answer_1}\n\n" + _ANSWER + "Grade against the reference. " + _RATE,
    "single-multi": _DIALOGUE + "Grade the assistant's answer to the second question only. " + _RATE,
    "single-multi-ref": "[Reference answer to the second question]\n{ref_answer_2}\n\n" + _DIALOGUE
                        + "Grade the answer to the second question only, against the reference. " + _RATE,
}
_REF = "[Reference answer]\n{ref_answer_1}\n\n"
_SECOND = ("[Conversation of Assistant A]\nUser: {question_1}\nAssistant A: {answer_a_1}\nUser: "
           "{question_2}\nAssistant A: {answer_a_2}\n\n[Conversation of Assistant B]\nUser: "
           "{question_1}\nAssistant B: {answer_b_1}\nUser: {question_2}\nAssistant B: {answer_b_2}\n\n")
OWN = {  # This project's wording: the single-turn pair of llm_judge, plus turn 2 and references.
    "pair": llm_judge.PAIR + "{ask}",
    "pair-ref": _REF + llm_judge.PAIR + "Judge against the reference answer. {ask}",
    "pair-multi": _SECOND + "Judge the two assistants' answers to the second question only. {ask}",
    "pair-multi-ref": "[Reference answer to the second question]\n{ref_answer_2}\n\n" + _SECOND
                      + "Judge the answers to the second question only, against the reference. {ask}",
}


@dataclasses.dataclass(frozen=True)
class Question:
  qid: str
  category: str
  turns: tuple[str, ...]


def _question(obj, where: str) -> dict:
  turns = readers.field(obj, "turns", where, list)
  if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
    raise readers.DataError(f"{where}: field 'turns' should be a list of non-empty strings")
  qid = obj.get("question_id")
  if not isinstance(qid, (int, str)) or isinstance(qid, bool):
    raise readers.DataError(f"{where}: field 'question_id' should be an integer or a string")
  return {"qid": str(qid), "category": str(obj.get("category", "all")), "turns": tuple(turns)}


def load_questions(path: str, bench: str, limit: int = 0) -> list[Question]:
  """The questions of a FastChat question file; MT-Bench's must have its two turns."""
  loaded = readers.load_rows(path, _question, skip_bad=False, what="questions")
  rows = loaded.rows[:limit] if limit else loaded.rows
  for r in rows:
    if len(r["turns"]) < BENCHES[bench]:
      raise readers.DataError(f"{r['where']}: --bench={bench} asks {BENCHES[bench]} turns; this "
                              f"question has {len(r['turns'])}")
  return [Question(r["qid"], r["category"], r["turns"][:BENCHES[bench]]) for r in rows]


def load_references(path: str) -> dict[str, list[str]]:
  """{question id: its reference answer per turn} from FastChat's reference answer file."""
  def parse(obj, where):
    choices = readers.field(obj, "choices", where, list)
    turns = choices[0].get("turns") if choices and isinstance(choices[0], dict) else None
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
      raise readers.DataError(f"{where}: expected 'choices': [{{'turns': [...]}}]")
    return {"qid": str(obj.get("question_id")), "turns": turns}
  return {r["qid"]: r["turns"] for r in readers.load_rows(path, parse, False, "references").rows}


def templates(judge_prompts: str) -> dict[str, tuple[str, str]]:
  """{kind: (system, user template)}: FastChat's from a prompt file, else this project's."""
  if not judge_prompts:
    return ({k: (llm_judge.SYSTEM, t) for k, t in OWN.items()}
            | {k: (SINGLE_SYSTEM, t) for k, t in SINGLE.items()})
  return {k: llm_judge.load_template(judge_prompts, name) for k, name in FASTCHAT_NAMES.items()}


def conversation(turns, answers) -> list[dict]:
  """The user turns with the model's own answers between them, ending with a user turn."""
  msgs = []
  for k, q in enumerate(turns):
    msgs.append({"role": "user", "content": q})
    if k < len(turns) - 1:
      msgs.append({"role": "assistant", "content": answers[k]})
  return msgs


def answer(generate, questions: list[Question]) -> list[list[str]]:
  """Each question's answers, turn by turn; `generate(rows) -> [texts]` answers rows whose
  prompt is a conversation ending with a user turn."""
  answers = [[] for _ in questions]
  for k in range(max(len(q.turns) for q in questions)):
    todo = [i for i, q in enumerate(questions) if len(q.turns) > k]
    texts = generate([{"prompt": conversation(questions[i].turns[:k + 1], answers[i])} for i in todo])
    for i, text in zip(todo, texts):
      answers[i].append(text)
  return answers


def _fields(q: Question, k: int, first, second, ref) -> dict:
  f = {"question": q.turns[0], "question_1": q.turns[0], "answer_a": first[k], "answer_b": second[k],
       "answer_a_1": first[0], "answer_b_1": second[0], "answer": first[k], "answer_1": first[0]}
  if k == 1:
    f.update(question_2=q.turns[1], answer_a_2=first[1], answer_b_2=second[1], answer_2=first[1])
  for j, r in enumerate(ref or []):
    f[f"ref_answer_{j + 1}"] = r
  return f


def judge_prompts(judge, tmpl, questions, refs, first, second, grading: str = "pair") -> list:
  """Judge prompt ids per (question, turn), in question-major order: first shown as A (with
  grading="single", the first model's answers alone)."""
  ids = []
  for i, q in enumerate(questions):
    ref = refs.get(q.qid) if q.category in REFERENCE_CATEGORIES else None
    for k in range(len(q.turns)):
      kind = grading + ("-multi" if k else "") + ("-ref" if ref and len(ref) > k else "")
      system, user = tmpl[kind]
      ids += judge.chat_ids([user.format(**_fields(q, k, first[i], second[i], ref),
                                         ask=llm_judge.ASK[judge.mode])], system)
  return ids


def _groups(questions) -> dict[tuple[str, int], list[int]]:
  """{(category, turn): indices into the question-major (question, turn) list}, with
  ("all", turn) over every question."""
  groups, j = collections.defaultdict(list), 0
  for q in questions:
    for k in range(len(q.turns)):
      for cat in (q.category, "all"):
        groups[(cat, k + 1)].append(j + k)
    j += len(q.turns)
  return groups


def _per_question(flat: list, questions) -> list[list]:
  """A question-major (question, turn) list split into each question's turns."""
  bounds = np.cumsum([0] + [len(q.turns) for q in questions])
  return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def judge_bench(judge, tmpl, questions, refs, policy, baseline) -> dict:
  """{(category, turn): both_orders(...)}, with ("all", turn) over every question, and
  "verdicts": each question's per-turn verdicts [policy first, baseline first] (+1: the
  first shown is better, -1: the second, 0: tie, None: unreadable)."""
  ab = judge.verdicts_of(judge_prompts(judge, tmpl, questions, refs, policy, baseline))
  ba = judge.verdicts_of(judge_prompts(judge, tmpl, questions, refs, baseline, policy))
  out = {g: llm_judge.both_orders([ab[x] for x in idx], [ba[x] for x in idx]) | {"index": idx}
         for g, idx in _groups(questions).items()}
  return out | {"verdicts": _per_question([list(v) for v in zip(ab, ba)], questions)}


def grade_bench(judge, tmpl, questions, refs, answers) -> dict:
  """Single-answer grading of one model: {(category, turn): mean rating with its 95%
  interval, graded and unreadable counts}, and "ratings" per question and turn (None where
  unreadable: counted, and left out of the mean)."""
  texts = judge.judgements(judge_prompts(judge, tmpl, questions, refs, answers, answers, "single"))
  flat = [llm_judge.parse_rating(t) for t in texts]
  out = {}
  for g, idx in _groups(questions).items():
    read = [flat[x] for x in idx if flat[x] is not None]
    mean, lo, hi = tm.mean_ci(read)
    out[g] = {"mean": mean, "ci95": (lo, hi), "graded": len(idx), "unreadable": len(idx) - len(read)}
  return out | {"ratings": _per_question(flat, questions)}


def report_single(out: str, bench: str, judge_name: str, questions, answers: dict, grades: dict,
                  extra=()) -> str:
  """report.md (each model's mean rating by category and turn) and answers.jsonl."""
  turns = BENCHES[bench]
  lines = [f"{bench}: single-answer grading (1-10) by {judge_name}; mean [95% CI] over the "
           "readable ratings, unreadable ones counted.", ""]
  for name, g in grades.items():
    lines += [f"### {name}", "", "| category | " + " | ".join(f"turn {k}" for k in range(1, turns + 1))
              + " |", "|---" * (turns + 1) + "|"]
    for c in sorted({q.category for q in questions}) + ["all"]:
      lines.append(f"| {c} | " + " | ".join(_rating_cell(g[(c, k)]) for k in range(1, turns + 1)) + " |")
    lines.append("")
  text = "\n".join(lines + list(extra)) + "\n"
  _write(out, text, questions, [{**{n: answers[n][i] for n in grades},
                                 **{f"{n}_ratings": grades[n]["ratings"][i] for n in grades}}
                                for i in range(len(questions))])
  return text


def _write(out: str, text: str, questions, extras: list[dict]) -> None:
  """<out>/report.md, and <out>/answers.jsonl: each question with its `extras`."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(text)
  with open(os.path.join(out, "answers.jsonl"), "w") as f:
    for q, extra in zip(questions, extras):
      f.write(json.dumps({"question_id": q.qid, "category": q.category, "turns": q.turns, **extra}) + "\n")


def _rating_cell(r: dict) -> str:
  lo, hi = r["ci95"]
  body = f"{r['mean']:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(r["mean"]) else "-"
  return body + (f" ({r['unreadable']} of {r['graded']} unreadable)" if r["unreadable"] else "")


def report(out: str, bench: str, judge_name: str, questions, answers, results, extra=()) -> str:
  """report.md (a table by category and turn) and answers.jsonl; returns the table."""
  turns = BENCHES[bench]
  cats = sorted({q.category for q in questions}) + ["all"]
  head = "| category | questions | " + " | ".join(f"turn {k} win rate [95% CI]" for k in range(1, turns + 1))
  lines = [f"{bench}: the policy against the baseline, judged by {judge_name} in both orders "
           "(a win needs both; (W + T/2) / N).", "", head + " |", "|---" * (turns + 2) + "|"]
  for c in cats:
    cells = [_cell(results[(c, k)]) for k in range(1, turns + 1)]
    lines.append(f"| {c} | {len(results[(c, 1)]['index'])} | " + " | ".join(cells) + " |")
  for k in range(1, turns + 1):
    r = results[("all", k)]
    lines.append(f"\nTurn {k}: {r['wins']} wins, {r['ties']} ties, {r['losses']} losses; position "
                 f"bias {r['position_bias']:.1%} (verdicts that flip with the order); "
                 f"{r['unreadable']} unreadable verdicts (scored as ties).")
  text = "\n".join(lines + list(extra)) + "\n"
  _write(out, text, questions, [{"policy": p, "baseline": b, "verdicts": v}
                                for p, b, v in zip(*answers, results["verdicts"])])
  return text


def _cell(r: dict) -> str:
  lo, hi = r["ci95"]
  return f"{r['win_rate']:.1%} [{lo:.1%}, {hi:.1%}]" if np.isfinite(lo) else f"{r['win_rate']:.1%}"
