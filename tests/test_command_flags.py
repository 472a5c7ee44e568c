"""The commands' flags are checked before any work (issue #32): a value out of range, a list
entry given twice, an output path that cannot be written, a row field of the wrong type
and a launcher name gcloud would read as an option each end in one line that names the
flag, file or path, with status 2, and nothing is loaded, generated or run before it.

The commands run in this process: their flags are parsed as from the command line, and
what each must not reach is replaced by a function that fails the test."""

import contextlib
import importlib
import importlib.util
import os
import sys

from absl import flags
from absl.testing import flagsaver
import pytest

from r3jax.core.errors import DataError
from helpers import write_jsonl

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def alone(name: str):
  """The command module `name`, imported with no other command's flags defined: they share
  names (--top_p, --out, --config), so two cannot be defined at once. Those of commands
  imported before (another test file's) are set aside and put back after, and `name` is
  forgotten again if it was imported here, with its flags."""
  aside = {m: list(fs) for m, fs in FLAGS.flags_by_module_dict().items()  # A copy: delattr edits it.
           if m.startswith("r3jax.") and m != name}
  for fs in aside.values():
    for f in fs:
      delattr(FLAGS, f.name)
  fresh, was_parsed = name not in sys.modules, FLAGS.is_parsed()
  try:
    with flagsaver.flagsaver():  # Deletes the flags defined inside, restores the others.
      yield importlib.import_module(name)
  finally:
    if fresh:
      sys.modules.pop(name, None)
      delattr(sys.modules["r3jax"], name.split(".")[-1])
    if not was_parsed:
      FLAGS.unparse_flags()
    for m, fs in aside.items():
      for f in fs:
        FLAGS[f.name] = f
        FLAGS.register_flag_by_module(m, f)


def never(what: str):
  def fail(*args, **kwargs):
    raise AssertionError(f"{what} before the flags were checked")
  return fail


def refused(module, capsys, *argv) -> str:
  """The one line `module.main` ends in, with status 2, given `argv` as flags."""
  FLAGS([module.__name__, *argv])
  with pytest.raises(SystemExit) as e:
    module.main([])
  err = capsys.readouterr().err.splitlines()
  assert e.value.code == 2 and len(err) == 1, (e.value.code, err)
  return err[0]


@pytest.fixture(name="a_file")
def fixture_a_file(tmp_path):
  (tmp_path / "a_file").write_text("x\n")
  return str(tmp_path / "a_file")


# ------------------------------------------------------------------------------- sample


@pytest.mark.parametrize("flag,line", [
    ("--max_new_tokens=-5", "error: --max_new_tokens=-5: expected an integer in [1, inf)"),
    ("--n=0", "error: --n=0: expected an integer in [1, inf)"),
    ("--temperature=0", "error: --temperature=0.0: expected a finite number in (0, inf); "
                        "for greedy decoding pass --greedy"),
    ("--temperature=-1", "error: --temperature=-1.0: expected a finite number in (0, inf)"),
    ("--temperature=nan", "error: --temperature=nan: expected a finite number in (0, inf)"),
    ("--top_p=1.5", "error: --top_p=1.5: expected a finite number in (0, 1]"),
    ("--top_p=0", "error: --top_p=0.0: expected a finite number in (0, 1]"),
    ("--top_p=inf", "error: --top_p=inf: expected a finite number in (0, 1]"),
    ("--top_k=-1", "error: --top_k=-1: expected an integer in [0, inf)"),
    (f"--seed={2**64}", f"error: --seed={2**64}: expected an integer in [-1e18, 1e18]"),
    ("--prompt= ", "error: --prompt: an empty message; give the text to continue"),
])
def test_sample_flags_are_checked_before_the_model_loads(monkeypatch, capsys, flag, line):
  with alone("r3jax.sample") as sample:
    monkeypatch.setattr(sample, "load_model", never("the model loaded"))
    assert refused(sample, capsys, flag) == line


def test_sample_greedy_takes_temperature_zero():
  with alone("r3jax.sample") as sample:
    FLAGS(["sample", "--greedy", "--temperature=0", "--top_k=0", "--top_p=1"])
    sample.check_flags()  # Greedy decoding reads no temperature: 0 is no mistake.


# ----------------------------------------------------------------------------- eval_gen


@pytest.mark.parametrize("flag,line", [
    ("--top_p=0", "error: --top_p=0.0: expected a finite number in (0, 1]"),
    ("--top_p=nan", "error: --top_p=nan: expected a finite number in (0, 1]"),
    ("--samples=1", "error: --samples=1: expected at least 2 (Self-BLEU compares samples with each "
                    "other), or 0 for greedy answers only"),
    ("--samples=-3", "error: --samples=-3: expected an integer in [0, inf)"),
    ("--max_new_tokens=0", "error: --max_new_tokens=0: expected an integer in [1, inf)"),
    ("--max_prompt_len=0", "error: --max_prompt_len=0: expected an integer in [1, inf)"),
    ("--batch=0", "error: --batch=0: expected an integer in [1, inf)"),
    ("--limit=-1", "error: --limit=-1: expected an integer in [0, inf)"),
    ("--seed=-10000000000000000000", "error: --seed=-10000000000000000000: expected an integer in [-1e18, 1e18]"),
    ("--out={a_file}", "error: --out={a_file}: exists and is not a directory"),
    ("--out={a_file}/report", "error: --out={a_file}/report: {a_file} is not a directory"),
    ("--baseline={tmp}/nope", "error: --baseline={tmp}/nope: neither a run with an exported hf/ "
                              "directory nor an HF model directory (config.json + tokenizer.json)"),
    ("--engine=vllm", "error: --engine='vllm': unknown rollout engine; expected one of static, continuous"),
    ("--slots=3", "error: --slots=3: at least the 10 samples of one prompt, or 0 for all"),
    ("--bench=mt_bench", "error: --bench=mt_bench: give --baseline and one LLM judge, --judge=llm:DIR "
                         "or llm-prob:DIR (the benchmarks are judged pairwise)"),
    ("--rel", "error: --rel: give one LLM judge in --judge, llm:DIR or llm-prob:DIR"),
    ("--calibration=hh.jsonl", "error: --calibration: give one LLM judge in --judge, llm:DIR or llm-prob:DIR"),
    ("--calibration_limit=0", "error: --calibration_limit=0: expected an integer in [1, inf)"),
])
def test_eval_gen_flags_and_paths_are_checked_before_generation(tmp_path, a_file, monkeypatch, capsys,
                                                                flag, line):
  policy = tmp_path / "policy"
  policy.mkdir()
  for name in ("config.json", "tokenizer.json"):  # All that locating an HF directory reads.
    (policy / name).write_text("{}")
  fill = lambda s: s.format(a_file=a_file, tmp=tmp_path)
  with alone("r3jax.eval_gen") as eval_gen:
    for name in ("load_rows", "model_stats", "judges"):
      monkeypatch.setattr(eval_gen.generation, name, never(f"generation.{name} ran"))
    line_ = refused(eval_gen, capsys, f"--policy={policy}", "--prompts=synthetic", f"--out={tmp_path}/out",
                    fill(flag))
  assert line_ == fill(line)
  assert not (tmp_path / "out").exists()


def test_eval_gen_single_grading_needs_a_generating_llm_judge(tmp_path, capsys):
  policy = tmp_path / "policy"
  policy.mkdir()
  for name in ("config.json", "tokenizer.json"):
    (policy / name).write_text("{}")
  with alone("r3jax.eval_gen") as eval_gen:
    line = refused(eval_gen, capsys, f"--policy={policy}", "--prompts=q.jsonl", f"--out={tmp_path}/out",
                   "--bench=vicuna", "--grading=single", "--judge=llm-prob:/j")
  assert line == ("error: --grading=single: give one judge as --judge=llm:DIR (a rating is read "
                  "from the judge's text)")


# -------------------------------------------------------------------------------- score


@pytest.mark.parametrize("flag,line", [
    ("--output={tmp}/missing/x.jsonl", "error: --output={tmp}/missing/x.jsonl: {tmp}/missing does not exist"),
    ("--output={tmp}", "error: --output={tmp}: exists and is not a file"),
    ("--output={a_file}/x.jsonl", "error: --output={a_file}/x.jsonl: {a_file} is not a directory"),
    ("--max_len=0", "error: --max_len=0: expected an integer in [1, inf)"),
])
def test_score_flags_and_output_are_checked_before_any_row(tmp_path, a_file, monkeypatch, capsys, flag, line):
  fill = lambda s: s.format(a_file=a_file, tmp=tmp_path)
  with alone("r3jax.score") as score:
    monkeypatch.setattr(score, "read_rows", never("rows read"))
    monkeypatch.setattr(score.scorers, "Mix", never("a reward loaded"))
    assert refused(score, capsys, "--input=rows.jsonl", f"--output={tmp_path}/ok.jsonl", fill(flag)) == fill(line)


@pytest.mark.parametrize("field,value,kind", [("reference", 3, "str"), ("reference", ["a"], "str"),
                                              ("answer", {"n": 1}, "str or int or float"),
                                              ("answer", True, "str or int or float")])
def test_score_rows_with_a_field_of_another_type_are_file_line_errors(tmp_path, monkeypatch, capsys, field,
                                                                      value, kind):
  rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "p", "response": "r", "reference": "a", "answer": 4},
                                               {"prompt": "p", "response": "r", field: value}])
  line = f"error: {rows}:2: field '{field}' should be {kind}, got {type(value).__name__}"
  with alone("r3jax.score") as score:
    with pytest.raises(DataError):
      score.read_rows(rows)
    monkeypatch.setattr(score.scorers, "Mix", never("a reward loaded"))
    assert refused(score, capsys, f"--input={rows}", f"--output={tmp_path}/out.jsonl") == line
  assert not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------------- compare, plan


@pytest.mark.parametrize("flag,line", [
    ("--modes=r3,r3", "error: --modes=r3,r3: 'r3' given twice"),
    ("--modes=r3,relevance,r3", "error: --modes=r3,relevance,r3: 'r3' given twice"),
    ("--modes=", "error: --modes: give at least one"),
    ("--algorithms=ppo,grpo,ppo", "error: --algorithms=ppo,grpo,ppo: 'ppo' given twice"),
    ("--algorithms=ppo,nope", "error: --algorithms: unknown methods ['nope']; expected methods from "),
    ("--workdir={a_file}", "error: --workdir={a_file}: exists and is not a directory"),
])
def test_compare_lists_and_workdir_are_checked_before_any_run(tmp_path, a_file, monkeypatch, capsys, flag, line):
  from r3jax.trainers import stages  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(stages, "start", never("the SFT start"))
  monkeypatch.setattr(stages, "run", never("a run"))
  with alone("r3jax.compare") as compare:
    got = refused(compare, capsys, "--config=configs/ppo_qwen.py:tiny", f"--workdir={tmp_path}/cmp",
                  flag.format(a_file=a_file))
  assert got.startswith(line.format(a_file=a_file)), got
  assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf"])
def test_plan_refuses_a_non_positive_or_non_finite_hbm_gib(monkeypatch, capsys, value):
  with alone("r3jax.plan") as plan:
    monkeypatch.setattr(plan.memory, "plan", never("a plan made"))
    monkeypatch.setattr(plan.memory, "suggest", never("a mesh suggested"))
    got = refused(plan, capsys, "--config=configs/ppo_qwen.py:tiny", f"--hbm_gib={value}", "--tpu=v5p-8")
  assert got == f"error: --hbm_gib={float(value)}: expected a finite number in (0, inf)"


# ---------------------------------------------------------------- frontier, eval_pairs


@pytest.mark.parametrize("flags_,line", [
    ((), "error: --run: give at least one"),
    (("--run=a/ppo", "--run=a/ppo"), "error: --run=a/ppo,a/ppo: 'a/ppo' given twice"),
    (("--run=a/ppo", "--run=b/ppo/"), "error: --run=a/ppo,b/ppo/: two entries named 'ppo'"),
    (("--run=a", "--window=0"), "error: --window=0: expected an integer in [1, inf)"),
    (("--run=a", "--out={a_file}"), "error: --out={a_file}: exists and is not a directory"),
])
def test_frontier_flags_are_checked_before_any_run_is_read(a_file, monkeypatch, capsys, flags_, line):
  with alone("r3jax.frontier") as frontier:
    monkeypatch.setattr(frontier.frontier, "collect", never("runs read"))
    assert refused(frontier, capsys, *(f.format(a_file=a_file) for f in flags_)) == line.format(a_file=a_file)


@pytest.mark.parametrize("flag,line", [
    ("--reward=r3,length,r3", "error: --reward=r3,length,r3: 'r3' given twice"),
    ("--reward=", "error: --reward: give at least one"),
    ("--data=synthetic,synthetic", "error: --data=synthetic,synthetic: 'synthetic' given twice"),
    ("--data=a/x.jsonl,b/x.jsonl", "error: --data=a/x.jsonl,b/x.jsonl: two entries named 'x.jsonl'"),
    ("--max_len=-1", "error: --max_len=-1: expected an integer in [1, inf)"),
    ("--limit=-2", "error: --limit=-2: expected an integer in [0, inf)"),
    ("--out={a_file}", "error: --out={a_file}: exists and is not a directory"),
])
def test_eval_pairs_flags_are_checked_before_any_set_loads(a_file, monkeypatch, capsys, flag, line):
  with alone("r3jax.eval_pairs") as eval_pairs:
    monkeypatch.setattr(eval_pairs.pairs, "load_set", never("a set loaded"))
    monkeypatch.setattr(eval_pairs.scorers, "make", never("a reward loaded"))
    assert refused(eval_pairs, capsys, flag.format(a_file=a_file)) == line.format(a_file=a_file)


# ------------------------------------------------------------------------------- launch


def _tpu_vm():
  spec = importlib.util.spec_from_file_location("tpu_vm", os.path.join(ROOT, "launch", "tpu_vm.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


NAME_RULE = ("a TPU name (a lowercase letter, then lowercase letters, digits or hyphens; at most 63, "
             "not ending in a hyphen)")


@pytest.mark.parametrize("flag,line", [
    ("--name=--flags-file=/tmp/x.yaml", f"--name '--flags-file=/tmp/x.yaml' is not {NAME_RULE}"),
    ("--name=root@vm", f"--name 'root@vm' is not {NAME_RULE}"),
    ("--name=R3", f"--name 'R3' is not {NAME_RULE}"),
    ("--name=3r", f"--name '3r' is not {NAME_RULE}"),
    ("--name=r3-", f"--name 'r3-' is not {NAME_RULE}"),
    ("--name=" + "r" * 64, f"--name '{'r' * 64}' is not {NAME_RULE}"),
    ("--zone=--project=x", "--zone '--project=x' is not a zone (e.g. us-central2-b)"),
    ("--zone=us-central2-b;x", "--zone 'us-central2-b;x' is not a zone (e.g. us-central2-b)"),
    ("--project=root@p", "--project 'root@p' is not a project ID (6-30 lowercase letters, digits or "
                         "hyphens, a letter first)"),
    ("--runtime=--x", "--runtime '--x' is not a TPU software version (e.g. tpu-ubuntu2204-base)"),
])
def test_launcher_refuses_what_gcp_would_not_name_before_any_command(monkeypatch, capsys, flag, line):
  tpu_vm = _tpu_vm()
  monkeypatch.setattr(tpu_vm.subprocess, "run", never("gcloud ran"))
  with pytest.raises(SystemExit) as e:  # Not a dry run: a command would run if the check were late.
    tpu_vm.main(["--name=r3", "--zone=us-central2-b", "--accelerator=v4-8", flag, "--", "--config=x.py"])
  out = capsys.readouterr()
  assert e.value.code == 2 and out.out == ""
  assert out.err.splitlines() == [f"tpu_vm.py: error: {line}"]


def test_launcher_takes_real_gcp_names(capsys):
  tpu_vm = _tpu_vm()
  for name, zone, project in [("r" + "3" * 62, "europe-west4-a", "my-project-123"),
                              ("r3-v4-32", "northamerica-northeast1-b", "example.com:my-project")]:
    assert tpu_vm.main([f"--name={name}", f"--zone={zone}", f"--project={project}", "--accelerator=v4-8",
                        "--runtime=v2-alpha-tpuv5-lite", "--dry_run", "--", "--config=x.py"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[5:] == [name, f"--zone={zone}", f"--project={project}"]
