r"""Generation statistics of a policy, optionally against a baseline (Kim & Seo 2024, R³ paper
("Preference-free Alignment Learning with Regularized Relevance Reward"), §2.2, §4, App. D).

  python -m r3jax.eval_gen --policy=runs/ppo_tiny --baseline=runs/ppo_tiny/sft \
      --prompts=../shared/data/vicuna_bench_questions.jsonl --out=runs/eval_gen

--policy / --baseline: a run directory (its exported hf/ is loaded) or an HF Qwen2 directory.
--prompts: {prompt}, Vicuna/MT-Bench {turns}, Alpaca {instruction, input, output} or SuperNI
{instruction, instances}, GSM8K {question, answer} rows (data/readers.to_prompt); or
"synthetic": 200 held-out questions about the embedded entities, with reference answers and
query types (another seed than training); "synthetic:arithmetic": 200 held-out word problems
of the embedded verifiable task (data/arithmetic.py).

For each model, one greedy answer per prompt gives: average tokens (the policy tokenizer's),
4-gram repetition rate, relevance to the query under the relevance encoder (cosine, MiniLM
by default), the copy-the-query rate, and, where rows have reference answers, ROUGE-L
against them (the alignment tax: compare the SFT baseline with the tuned policy). --samples
nucleus samples per prompt (top-p 0.9) give Self-BLEU by query type (the row's query_type
field; "unlabelled" without one). Distinct-2 and the most common sentence's share measure
collapse across prompts. On the synthetic questions the gold judge (eval/gold.py) checks
every answer against the embedded world's facts: precision, recall, repeats. With a
baseline, each of --judge's judges (gold, and/or rewards/scorers.make specs) gives the
adjusted win rate (wins + ties/2)/all, judged in both orders, with a 95% interval; the
report names the judge of each number, so a win rate is never only the optimised reward's.
Where every prompt has an answer key (`answer`), the exact checker (rewards/verifiable.py)
grades each model: pass@1 of the greedy answer, pass@k and maj@k over the --samples
samples, and pass@1 estimated from them, with 95% intervals over prompts (eval/accuracy.py:
Wilson for the 0/1 figures, pass@k included since k is the number drawn; a normal interval
for the estimated pass@1), and the share of greedy answers that state an answer at all.

Writes <out>/report.md (tables), answers.jsonl (on keyed prompts also each model's extracted
answer and whether it is right), and PNGs: the length histogram, relevance by sentence
position (R³ paper, Fig. 3) and Self-BLEU by query type. Prompts longer than
--max_prompt_len tokens keep their last tokens; the report counts them.

With an LLM judge in --judge (llm:DIR or llm-prob:DIR), the report also gives the judge's
calibration (eval/judge_calibration.py): its position bias on this run's verdicts, its
agreement with the human labels of --calibration's preference set, and on the embedded
world its agreement with the gold judge. --rel adds the R³ paper's relevant sentence ratio
(% Rel, by sentence position: eval/relevant_sentences.py) of each model's answers, each
sentence judged by that judge.
"""


import os

from absl import app, flags

from r3jax.core import cli
from r3jax.core.errors import ConfigError
from r3jax.data import chat, readers, sources
from r3jax.eval import chat_bench, generation, judge_calibration, pairs, relevant_sentences as rel
from r3jax.models import bert, engines, hf
from r3jax.rewards import r3

_POLICY = flags.DEFINE_string("policy", None, "Run directory or HF directory.", required=True)
_BASELINE = flags.DEFINE_string("baseline", "", "Run directory or HF directory to compare with.")
_PROMPTS = flags.DEFINE_string("prompts", None, "Prompt file.", required=True)
_OUT = flags.DEFINE_string("out", "eval_gen", "Report directory.")
_SAMPLES = flags.DEFINE_integer("samples", 10, "Nucleus samples per prompt for Self-BLEU, pass@k and "
                               "maj@k (>= 2), or 0 for greedy answers only.")
_TOP_P = flags.DEFINE_float("top_p", 0.9, "Nucleus mass of the Self-BLEU samples.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Answer length limit.")
_MAX_PROMPT = flags.DEFINE_integer("max_prompt_len", 256, "Prompt tokens kept (the last ones).")
_BATCH = flags.DEFINE_integer("batch", 16, "Prompts per generation batch.")
_JUDGE = flags.DEFINE_string("judge", "gold,r3", "Comma-separated judges of the win rate: gold "
                             "(the embedded world's facts), scorers.make specs, and llm:DIR or "
                             "llm-prob:DIR (a checkpoint judging each pair in both orders by its "
                             "verdict text or its next-token probabilities; eval/llm_judge.py).")
_ENCODER = flags.DEFINE_string("encoder", "", "Relevance encoder dir (default: packaged MiniLM).")
_LIMIT = flags.DEFINE_integer("limit", 0, "First N prompts only (0: all).")
_SKIP_BAD = flags.DEFINE_bool("skip_bad", False, "Skip (and count) malformed prompt rows.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_ENGINE = flags.DEFINE_string("engine", "continuous", "Generation engine (models/engines.py): static or continuous.")
_SLOTS = flags.DEFINE_integer("slots", 0, "Sequences decoding at once with --engine (0: all of a batch).")
_BENCH = flags.DEFINE_enum("bench", "", ["", *chat_bench.BENCHES], "Run MT-Bench or Vicuna-Bench on "
                           "--prompts (FastChat's question file): each turn judged by --judge's "
                           "llm judge in both orders, by category (eval/chat_bench.py).")
_REFERENCES = flags.DEFINE_string("references", "", "With --bench: FastChat's reference answers, "
                                  "shown to the judge for math, reasoning and coding questions.")
_GRADING = flags.DEFINE_enum("grading", "pairwise", ["pairwise", "single"], "With --bench: "
                             "pairwise (policy against --baseline, both orders) or single (each "
                             "model's answers rated 1-10; --baseline optional).")
_JUDGE_PROMPTS = flags.DEFINE_string("judge_prompts", "", "With --bench: a FastChat judge prompt "
                                     "file (their pair-v2 and pair-math-v1 prompts) instead of r3jax's.")
_REL = flags.DEFINE_bool("rel", False, "Also % Rel of each model's answers: each sentence judged "
                         "relevant or not by --judge's LLM judge (eval/relevant_sentences.py).")
_CALIBRATION = flags.DEFINE_string("calibration", "", "A preference set (a comparisons file, or "
                                   "synthetic) on which --judge's LLM judge's agreement with the "
                                   "labels is measured and reported.")
_CALIBRATION_LIMIT = flags.DEFINE_integer("calibration_limit", 100, "First N rows of --calibration.")
_INSTRUCTION = flags.DEFINE_string("instruction", "", "Appended to every prompt after a blank line "
                                   "(as a config's data.instruction), e.g. the answer form asked for.")
# Outside these, generation fails midway (a seed past 2**63: jax.random.key's OverflowError)
# or samples from another distribution than asked.
RANGES = {"samples": "[0, inf)", "top_p": "(0, 1]", "max_new_tokens": "[1, inf)",
          "max_prompt_len": "[1, inf)", "batch": "[1, inf)", "limit": "[0, inf)",
          "seed": "[-1e18, 1e18]", "calibration_limit": "[1, inf)"}


def check_flags() -> None:
  """A ConfigError naming the first bad flag, before any model loads: a bad --out or
  --baseline would otherwise fail only after every answer was generated."""
  cli.check_numbers(RANGES)
  engines.check(_ENGINE.value, _SLOTS.value, max(1, _SAMPLES.value), ("--engine", "--slots"))
  if _SAMPLES.value == 1:
    raise ConfigError("--samples=1: expected at least 2 (Self-BLEU compares samples with each "
                      "other), or 0 for greedy answers only")
  cli.check_output("out", is_dir=True)
  if _BENCH.value:
    check_bench_flags()
  if (_REL.value or _CALIBRATION.value) and len(_llm_judges()) != 1:
    raise ConfigError(f"--{'rel' if _REL.value else 'calibration'}: give one LLM judge in --judge, "
                      "llm:DIR or llm-prob:DIR")
  for flag in (_POLICY, _BASELINE) if _BASELINE.value else (_POLICY,):
    try:
      hf.model_dir(flag.value)
    except FileNotFoundError as e:
      raise ConfigError(f"--{flag.name}={e}") from None


def _llm_judges() -> list[str]:
  return [j.strip() for j in _JUDGE.value.split(",") if j.strip().startswith(("llm:", "llm-prob:"))]


def check_bench_flags() -> None:
  llm = _llm_judges()
  if _GRADING.value == "single":
    if len(llm) != 1 or not llm[0].startswith("llm:"):
      raise ConfigError("--grading=single: give one judge as --judge=llm:DIR (a rating is "
                        "read from the judge's text)")
  elif not _BASELINE.value or len(llm) != 1:
    raise ConfigError(f"--bench={_BENCH.value}: give --baseline and one LLM judge, --judge=llm:DIR "
                      "or llm-prob:DIR (the benchmarks are judged pairwise)")
  if _JUDGE_PROMPTS.value and llm[0].startswith("llm-prob:"):
    raise ConfigError("--judge_prompts: FastChat's prompts ask for an explanation before the "
                      "verdict; read them with --judge=llm:DIR, not llm-prob:DIR")
  for flag in (_REFERENCES, _JUDGE_PROMPTS):
    if flag.value and not os.path.isfile(flag.value):
      raise ConfigError(f"--{flag.name}={flag.value}: no such file")


def judge_report(spec: str, judge, calibration, questions, answers: dict, bias: dict, gold=None) -> list[str]:
  """--rel's % Rel of each model's answers ({model: [answer]} to `questions`) and the judge's
  calibration, as report lines; writes <out>/relevant_sentences.png."""
  lines = []
  if _REL.value:
    summaries = {n: rel.summary(rel.label(judge, questions, a)) for n, a in answers.items()}
    os.makedirs(_OUT.value, exist_ok=True)
    rel.plot(os.path.join(_OUT.value, "relevant_sentences.png"), summaries)
    lines += rel.lines(summaries, spec) + ["", "![% Rel by position](relevant_sentences.png)"]
  human = (judge_calibration.human_agreement(judge, calibration, os.path.basename(_CALIBRATION.value))
           if calibration else None)
  return lines + judge_calibration.lines(spec, bias, human, gold)


def calibration_rows() -> list:
  """--calibration's comparison rows, read before any model answers."""
  return pairs.load_set(_CALIBRATION.value, _CALIBRATION_LIMIT.value, _SKIP_BAD.value) if _CALIBRATION.value else []


def run_bench(opts: generation.Options) -> None:
  """--bench: both models answer every turn; the LLM judge compares them turn by turn."""
  questions = chat_bench.load_questions(_PROMPTS.value, _BENCH.value, _LIMIT.value)
  refs = chat_bench.load_references(_REFERENCES.value) if _REFERENCES.value else {}
  tmpl = chat_bench.templates(_JUDGE_PROMPTS.value)
  calibration = calibration_rows()
  for path in filter(None, (_POLICY.value, _BASELINE.value)):  # Before either model answers.
    generation.check_context(hf.load_config(hf.model_dir(path)), opts, path)
  judge_spec = _llm_judges()[0]
  judge = generation.judges(judge_spec, [], opts.max_new_tokens)[judge_spec]
  models = {"policy": _POLICY.value, **({"baseline": _BASELINE.value} if _BASELINE.value else {})}
  answers = {name: chat_bench.answer(generation.greedy_answers(path, opts), questions)
             for name, path in models.items()}
  turns = [(i, k) for i, q in enumerate(questions) for k in range(len(q.turns))]
  extra = lambda bias: judge_report(judge_spec, judge, calibration, [questions[i].turns[k] for i, k in turns],
                                    {n: [a[i][k] for i, k in turns] for n, a in answers.items()}, bias)
  if _GRADING.value == "single":
    grades = {n: chat_bench.grade_bench(judge, tmpl, questions, refs, a) for n, a in answers.items()}
    print(chat_bench.report_single(_OUT.value, _BENCH.value, judge_spec, questions, answers, grades,
                                   extra({})))
    return
  results = chat_bench.judge_bench(judge, tmpl, questions, refs, answers["policy"], answers["baseline"])
  bias = {f"turn {k}": results[("all", k)]["position_bias"] for k in range(1, chat_bench.BENCHES[_BENCH.value] + 1)}
  print(chat_bench.report(_OUT.value, _BENCH.value, judge_spec, questions,
                          [answers["policy"], answers["baseline"]], results, extra(bias)))


def main(argv):
  del argv
  with cli.user_errors():
    check_flags()
  opts = generation.Options(prompts=_PROMPTS.value, samples=_SAMPLES.value, top_p=_TOP_P.value,
                            max_new_tokens=_MAX_NEW.value, max_prompt_len=_MAX_PROMPT.value,
                            batch=_BATCH.value, judge=_JUDGE.value, seed=_SEED.value,
                            engine=_ENGINE.value, slots=_SLOTS.value)
  if _BENCH.value:
    try:
      return run_bench(opts)
    except (readers.DataError, FileNotFoundError, ValueError) as e:
      cli.fail(str(e))
  try:
    rows, types, skipped = generation.load_rows(_PROMPTS.value, _LIMIT.value, _SKIP_BAD.value)
    rows = sources.with_instruction(rows, _INSTRUCTION.value)
    encoder = bert.Encoder.from_dir(_ENCODER.value or bert.minilm_dir(), normalize=True)
    reward = r3.R3(encoder, max_len=opts.max_new_tokens, mode="r3")
    calibration = calibration_rows()
    # The judges before any answer: a bad --judge spec stops the command before generation.
    judges = (generation.judges(opts.judge, rows, opts.max_new_tokens)
              if _BASELINE.value or _REL.value or calibration else {})
    models = {"policy": _POLICY.value, **({"baseline": _BASELINE.value} if _BASELINE.value else {})}
    stats = {name: generation.model_stats(name, path, rows, encoder, reward, opts)
             for name, path in models.items()}
  except (readers.DataError, FileNotFoundError, ValueError) as e:
    cli.fail(str(e))
  win = ({name: generation.judged_win_rate(j, rows, stats) for name, j in judges.items()}
         if _BASELINE.value else {})
  generation.write_answers(_OUT.value, rows, stats)
  generation.write_plots(_OUT.value, stats, types)
  print(generation.report(_OUT.value, rows, stats, win, types, skipped, opts,
                          llm_judge_lines(judges, calibration, rows, stats, win)))


def llm_judge_lines(judges, calibration, rows, stats, win) -> list[str]:
  """The first LLM judge's report lines (judge_report); none without an LLM judge."""
  spec = next((s for s in _llm_judges() if s in judges), None)
  if spec is None:
    return []
  w = win.get(spec)
  gold = (judge_calibration.gold_agreement(w["outcomes"], stats["policy"]["gold"]["score"],
                                           stats["baseline"]["gold"]["score"])
          if w and "gold" in stats["policy"] else None)
  answers = {n: [r3.truncate_response(a) for a in s["answers"]] for n, s in stats.items()}
  return judge_report(spec, judges[spec], calibration, [chat.as_text(r["prompt"]) for r in rows],
                      answers, {"this run's prompts": w["position_bias"]} if w else {}, gold)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
