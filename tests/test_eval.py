"""The evaluation suite: text metrics on hand-made inputs, SynRel, eval_pairs, eval_gen, frontier."""

import csv
import itertools
import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from r3jax.data import tokenizer as tokenizer_lib
from r3jax.eval import frontier, text_metrics as tm
from r3jax.data import readers, synrel
from r3jax.models import hf, qwen
from helpers import shared_file, write_jsonl, why

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, ok=True, timeout=900):
  out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert (out.returncode == 0) == ok, why(out)
  return out


# ----------------------------------------------------------------------------- metrics


def test_self_bleu_is_100_for_identical_samples_and_low_for_unrelated_ones():
  same = ["The river runs past the old mill and into the sea."] * 5
  assert tm.self_bleu(same) == pytest.approx(100.0)
  unrelated = ["alpha beta gamma delta", "one two three four five", "red green blue cyan magenta"]
  assert tm.self_bleu(unrelated) < 5.0
  with pytest.raises(ValueError):
    tm.self_bleu(["only one"])


def test_bleu_by_hand():
  # 4 tokens, 3 matched unigrams, 1 matched bigram, no trigram or 4-gram (smoothed to 0.1).
  hyp, ref = "a b c d".split(), "a b x c".split()
  want = math.exp((math.log(3 / 4) + math.log(1 / 3) + math.log(0.1 / 2) + math.log(0.1 / 1)) / 4)
  assert tm.bleu(hyp, [ref]) == pytest.approx(want)
  # Brevity: a 2-token hypothesis against a 4-token reference loses exp(1 - 4/2).
  assert tm.bleu("a b".split(), [ref], max_n=2) == pytest.approx(math.exp(1 - 2) * 1.0)


def test_four_gram_repetition_of_a_repeated_sentence_is_the_exact_fraction():
  # 12 tokens, 9 four-grams; the second copy's first 3 repeat earlier ones.
  assert tm.ngram_repetition("a b c d e. a b c d e.") == pytest.approx(3 / 9)
  assert tm.ngram_repetition("one two three four five six") == 0.0
  assert tm.ngram_repetition("too short") == 0.0
  text = " ".join(["the cat sat on the mat."] * 4)  # 28 tokens, 25 four-grams, 7 distinct.
  assert tm.ngram_repetition(text) == pytest.approx(1 - 7 / 25)


def test_rouge_l_by_hand():
  # LCS "the cat on the mat" = 5 of 6 words on each side.
  assert tm.rouge_l("the cat sat on the mat", "The cat is on the mat.") == pytest.approx(5 / 6)
  assert tm.rouge_l("same words", "same words") == 1.0
  assert tm.rouge_l("nothing shared", "at all") == 0.0
  assert tm.rouge_l("", "x") == 0.0


def test_win_rate_is_symmetric_under_swapping_the_arguments():
  rng = np.random.default_rng(0)
  prompts = [f"q{i}" for i in range(50)]
  a, b = list(rng.integers(0, 5, 50)), list(rng.integers(0, 5, 50))  # Answers: ints, with ties.
  pointwise = lambda p, x, y: np.array(x, float) - np.array(y, float)
  biased = lambda p, x, y: np.array(x, float) - np.array(y, float) + 0.5  # Favours the first slot.
  for judge in (pointwise, biased):
    ab, ba = tm.win_rate(judge, prompts, a, b), tm.win_rate(judge, prompts, b, a)
    assert ab["win_rate"] + ba["win_rate"] == pytest.approx(1.0)
    assert ab["judgements"] == 100 and ab["wins"] == ba["losses"]
  assert tm.win_rate(pointwise, prompts, a, a)["win_rate"] == 0.5
  # By hand: answers 3 vs 1 and 1 vs 1 -> one win and one tie per order.
  r = tm.win_rate(pointwise, ["x", "y"], [3, 1], [1, 1])
  assert (r["wins"], r["ties"], r["losses"], r["win_rate"]) == (2, 2, 0, 0.75)


def test_copies_query_and_sentences():
  assert tm.copies_query("What is Kalo?", "what is kalo ?")
  assert tm.copies_query("Describe Dorzarlo.", "Describe Banzar.")  # A copy with the name garbled.
  assert tm.copies_query("I would like to learn about Moryaqu. Can you explain?",
                         "I would like to learn about Banwenzar.")
  assert not tm.copies_query("What is Kalo?", "What is Kalo? Kalo is a small city on a hill.")
  assert not tm.copies_query("What is Kalo?", "Kalo is a city.")
  assert not tm.copies_query("", "")
  assert tm.sentences("One. Two!  Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
  # A list's numbers open their item's sentence (an answer's "1." is not a sentence to judge).
  assert tm.sentences("Tips:\n\n1. **Plan**: Start early. It helps.\n2. Rest.\n-\nEnd 3.") == [
      "Tips:", "1. **Plan**: Start early.", "It helps.", "2. Rest.", "- End 3."]


def test_expected_best_of_n_matches_brute_force_and_kl_closed_form():
  r = np.random.default_rng(1).normal(size=8)
  for n in (1, 2, 5, 8):
    brute = np.mean([max(c) for c in itertools.combinations(r, n)])
    assert frontier.expected_best_of(r, n) == pytest.approx(brute)
  assert frontier.expected_best_of(r, 1) == pytest.approx(r.mean())
  assert frontier.best_of_n_kl(1) == 0.0
  assert frontier.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)


# ----------------------------------------------------------------------------- data


def test_prompt_formats_and_errors(tmp_path):
  rows = readers.load_prompts(write_jsonl(tmp_path / "p.jsonl", [
      {"prompt": "Hi", "reference": "Hello", "query_type": "CONSTRAINED"},
      {"question_id": 1, "category": "generic", "turns": ["How are you?", "And then?"]},
      {"instruction": "Add", "input": "1 and 2", "output": "3"},
      {"instruction": "Name a fruit", "instances": [{"input": "", "output": "apple"}]}])).rows
  assert [r["prompt"] for r in rows] == ["Hi", "How are you?", "Add\n\n1 and 2", "Name a fruit"]
  assert [r.get("reference") for r in rows] == ["Hello", None, "3", "apple"]
  assert rows[1]["where"].endswith("p.jsonl:2") and rows[1]["category"] == "generic"
  empty = write_jsonl(tmp_path / "empty.jsonl", [])
  with pytest.raises(readers.DataError, match="empty.jsonl: no usable prompts"):
    readers.load_prompts(empty)
  bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"query": "no field"}])
  with pytest.raises(readers.DataError, match=r"bad.jsonl:2: not a prompt"):
    readers.load_prompts(bad)
  assert len(readers.load_prompts(bad, skip_bad=True).skipped) == 1


def test_shared_prompt_files_parse():
  assert len(readers.load_prompts(shared_file("vicuna_bench_questions.jsonl")).rows) == 80
  seed_tasks = readers.load_prompts(shared_file("alpaca_seed_tasks.jsonl")).rows
  assert all(r.get("reference") for r in seed_tasks)


def test_synrel_triplets(tmp_path):
  items = synrel.triplets()
  assert len(items) == 530  # The paper's size.
  for it in items[:50]:
    entity = it["prompt"][0]["content"][len("Please tell me about "):-1]
    chosen, rejected = it["responses"]
    assert chosen.startswith(entity) and entity not in rejected
  path = write_jsonl(tmp_path / "ents.jsonl", [{"entity": "Paris", "facts": ["Paris is in France."]},
                                          {"entity": "Oslo", "facts": ["Oslo is in Norway."]}])
  pair = synrel.triplets(synrel.load_entities(path))
  assert pair[0]["responses"] == ["Paris is in France.", "Oslo is in Norway."]
  bad = write_jsonl(tmp_path / "bad.jsonl", [{"entity": "Paris", "facts": ["x"]}, {"entity": "Oslo"}])
  with pytest.raises(readers.DataError, match=r"bad.jsonl:2: missing field 'facts'"):
    synrel.load_entities(bad)


@pytest.mark.slow
def test_eval_pairs_table_on_synrel_with_csv_and_png(tmp_path):
  out = _run(["r3jax.eval_pairs", "--reward=r3,relevance,length,random", "--data=synrel,synthetic",
              "--limit=120", f"--out={tmp_path}"])
  acc = {(r["reward"], r["set"]): float(r["accuracy"])
         for r in csv.DictReader(open(tmp_path / "pairs_accuracy.csv"))}
  # The R³ paper's Table 1 (Kim & Seo 2024, §2.1) at small scale: the relevance encoder
  # separates SynRel almost perfectly.
  assert acc[("r3", "synrel")] >= 0.95 and acc[("relevance", "synrel")] >= 0.95
  assert 0.3 < acc[("random", "synrel")] < 0.7
  assert os.path.getsize(tmp_path / "pairs_accuracy.png") > 5000
  assert "| r3 |" in out.stdout and "synrel" in out.stdout
  empty = write_jsonl(tmp_path / "empty.jsonl", [])
  err = _run(["r3jax.eval_pairs", "--reward=length", f"--data={empty}"], ok=False)
  assert "empty.jsonl: no usable comparisons" in err.stderr


# ----------------------------------------------------------------------------- eval_gen


@pytest.fixture(scope="module")
def two_policies(tmp_path_factory):
  """Two random tiny policies, exported as HF directories the way trainers export them."""
  root = tmp_path_factory.mktemp("policies")
  tok = tokenizer_lib.tiny()
  dirs = []
  for seed in (0, 1):
    cfg = qwen.preset("tiny", vocab_size=len(tok))
    path = str(root / f"p{seed}")
    hf.export(qwen.init_params(cfg, jax.random.key(seed)), cfg, os.path.join(path, "hf"), tokenizer=tok)
    dirs.append(path)
  return dirs


@pytest.mark.slow
def test_eval_gen_report_tables_and_plots(tmp_path, two_policies):
  prompts = shared_file("vicuna_bench_questions.jsonl")
  out = tmp_path / "report"
  res = _run(["r3jax.eval_gen", f"--policy={two_policies[0]}", f"--baseline={two_policies[1]}",
              f"--prompts={prompts}", f"--out={out}", "--limit=6", "--samples=3",
              "--max_new_tokens=12", "--max_prompt_len=12", "--batch=4", "--judge=length"])
  report = open(out / "report.md").read()
  for row in ("average tokens", "4-gram repetition", "relevance", "copies the query", "Self-BLEU",
              "ROUGE-L", "prompts truncated", "Self-BLEU by query type", "Win rate"):
    assert row in report, row
  # Vicuna questions run past 12 tokens of chat template: the truncation is counted, not hidden.
  assert "| prompts truncated | 6 | 6 |" in report
  for png in ("length_hist.png", "relevance_by_position.png", "self_bleu_by_type.png"):
    assert os.path.getsize(out / png) > 5000, png
  answers = [json.loads(line) for line in open(out / "answers.jsonl")]
  assert len(answers) == 6 and set(answers[0]) >= {"where", "prompt", "policy", "baseline"}
  assert "Win rate" in res.stdout


@pytest.mark.slow
def test_eval_gen_reports_an_llm_judges_rel_and_calibration(tmp_path, two_policies):
  """On the embedded world: the LLM judge's % Rel of both models' answers, and its agreement
  with gold and with a comparison set's labels, beside its win rate."""
  out = tmp_path / "report"
  _run(["r3jax.eval_gen", f"--policy={two_policies[0]}", f"--baseline={two_policies[1]}",
        "--prompts=synthetic", f"--out={out}", "--limit=4", "--samples=0", "--max_new_tokens=12",
        "--max_prompt_len=48", "--batch=4", f"--judge=gold,llm-prob:{two_policies[1]}/hf", "--rel",
        "--calibration=synthetic", "--calibration_limit=2"])
  report = open(out / "report.md").read()
  assert "## Relevant sentence ratio (% Rel), each sentence judged by `llm-prob:" in report
  assert re.search(r"Agreement with the labels of `synthetic`: \*\*[\d.]+%\*\* .* over \d+ pairs", report)
  assert re.search(r"Agreement with the gold judge( on the \d+ prompts whose gold scores differ|: gold "
                   r"scored both answers equal)", report)
  assert "Position bias, this run's prompts:" in report
  assert os.path.getsize(out / "relevant_sentences.png") > 5000


@pytest.mark.slow
def test_eval_gen_rejects_bad_input_with_file_and_line(tmp_path, two_policies):
  bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, {"text": "no prompt"}])
  err = _run(["r3jax.eval_gen", f"--policy={two_policies[0]}", f"--prompts={bad}"], ok=False)
  assert "bad.jsonl:2: not a prompt" in err.stderr
  empty = write_jsonl(tmp_path / "empty.jsonl", [])
  err = _run(["r3jax.eval_gen", f"--policy={two_policies[0]}", f"--prompts={empty}"], ok=False)
  assert "empty.jsonl: no usable prompts" in err.stderr
  qt = write_jsonl(tmp_path / "qt.jsonl", [{"prompt": "a", "query_type": "sideways"}])
  err = _run(["r3jax.eval_gen", f"--policy={two_policies[0]}", f"--prompts={qt}"], ok=False)
  assert "qt.jsonl:1: field 'query_type'" in err.stderr
  good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "a"}])
  err = _run(["r3jax.eval_gen", f"--policy={tmp_path}", f"--prompts={good}"], ok=False)
  assert "exported hf/" in err.stderr


def test_frontier_from_ppo_metrics_and_best_of_n_candidates(tmp_path):
  ppo = tmp_path / "ppo"
  ppo.mkdir()
  write_jsonl(ppo / "metrics.jsonl", [{"step": s, "reward/reward": 0.1 + 0.01 * s, "kl/seq_kl": 0.2 * s}
                                 for s in range(1, 21)])
  bon = tmp_path / "bon" / "round_1"
  bon.mkdir(parents=True)
  rng = np.random.default_rng(0)
  np.savez(bon / "candidates.npz", rewards=rng.normal(size=(10, 8)), valid=np.ones((10, 8), bool))
  out = _run(["r3jax.frontier", f"--run={ppo}", f"--run={tmp_path / 'bon'}", f"--out={tmp_path}",
              "--window=5"])
  rows = list(csv.DictReader(open(tmp_path / "frontier.csv")))
  bo = [r for r in rows if "best-of-n" in r["curve"]]
  assert [r["x"] for r in bo] == ["1", "2", "4", "8"]
  assert float(bo[0]["sqrt_kl"]) == 0.0 and np.all(np.diff([float(r["reward"]) for r in bo]) > 0)
  assert len([r for r in rows if "PPO" in r["curve"]]) == 16  # 20 iterations, window 5.
  assert os.path.getsize(tmp_path / "frontier.png") > 5000 and "wrote" in out.stdout
