"""Faults that must not lose or hide work: a diverging run, a second run in the same
workdir, replayed metrics after a resume, and user mistakes on the command line."""

import json
import os
import re
import runpy
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r3jax.core import checkpoint, metrics, workdir_lock
from r3jax.core.errors import ConfigError, TrainingError
from r3jax.trainers import stages, step as step_lib
from helpers import why

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, module="r3jax.train"):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_a_diverging_run_stops_and_never_saves_non_finite_params(tmp_path):
  c = tiny_sft(40)
  c.optim.update(lr=1e4, warmup_steps=0, grad_clip=0.0)
  c.checkpoint.max_to_keep = 2
  with pytest.raises(TrainingError, match=r"non-finite train/\S+ at step \d+; stopped without saving it \(the newest checkpoint is step \d+\)"):
    stages.run(c, str(tmp_path))
  latest = checkpoint.manager(str(tmp_path), 2, 2, False).latest_step()
  assert latest is not None
  for x in jax.tree.leaves(checkpoint.load_host(str(tmp_path), latest)["params"]):
    assert np.isfinite(x).all()  # What was saved can be resumed from.
  assert not (tmp_path / "hf").exists()  # Nothing exported.


def test_one_run_per_workdir_and_stale_locks_are_taken_over(tmp_path):
  path = workdir_lock.acquire(str(tmp_path))
  assert workdir_lock.acquire(str(tmp_path)) == path  # Re-entrant within a process.
  workdir_lock.release(path)
  other = tmp_path / "other"
  other.mkdir()
  (other / workdir_lock.NAME).write_text(f"{socket.gethostname()} {os.getppid()}\n")  # Alive.
  with pytest.raises(ConfigError, match=f"is in use by process {os.getppid()}"):
    workdir_lock.acquire(str(other))
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (other / workdir_lock.NAME).write_text(f"{socket.gethostname()} {dead.pid}\n")  # Killed run.
  assert workdir_lock.acquire(str(other))
  assert (other / workdir_lock.NAME).read_text().split()[1] == str(os.getpid())


def test_rows_after_the_restored_step_are_dropped(tmp_path):
  w = metrics.Writer(str(tmp_path), 5, enabled=True)
  for step in range(1, 6):
    w.scalars(step, {"train/loss": float(step)})
    w.texts(step, "eval_samples", [{"answer": "x"}])
  w.close()
  w = metrics.Writer(str(tmp_path), 5, enabled=True)
  w.drop_after(3)
  w.scalars(4, {"train/loss": 40.0})
  w.close()
  rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
  assert [r["step"] for r in metrics.read_jsonl(tmp_path / "samples.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("args,line", [
    (["--config=configs/nope.py"], "error: --config=configs/nope.py: no such config file"),
    (["--config=configs/sft_qwen.py:nope"],
     "error: --config=configs/sft_qwen.py:nope: unknown preset 'nope'; see the docstring of configs/sft_qwen.py"),
    (["--config=configs/sft_qwen.py", "--config.mesh=abc"], "error: mesh=('abc',): expected"),
    (["--config=configs/ppo_qwen.py", "--config.rso.pairing=x"],
     "error: unknown config field 'rso' in --config.rso.pairing=x"),
])
def test_command_line_mistakes_are_one_line_with_status_2(tmp_path, args, line):
  out = run_cli(*args, f"--workdir={tmp_path / 'run'}")
  assert out.returncode == 2 and "Traceback" not in out.stderr, why(out)
  assert out.stderr.splitlines()[0].startswith(line), out.stderr


def test_plan_never_evaluates_the_mesh_as_code(tmp_path):
  marker = tmp_path / "pwned"
  out = run_cli("--config=configs/ppo_qwen.py:qwen-7b", f"--mesh=__import__('os').system('touch {marker}')",
                module="r3jax.plan")
  assert out.returncode == 2 and "error: mesh=" in out.stderr and "Traceback" not in out.stderr
  assert not marker.exists()


def tiny_sft(steps: int):
  c = runpy.run_path(os.path.join(ROOT, "configs", "sft_qwen.py"))["get_config"]("tiny")
  c.unlock()
  c.steps, c.batch_size, c.seq_len, c.eval_every, c.eval_prompts = steps, 8, 48, 1000, 0
  c.data.synthetic_examples = 200
  c.checkpoint.update(every=2, max_to_keep=5, async_save=False)
  return c


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_set_aside_and_a_changed_config_refused(tmp_path, capsys):
  stages.run(tiny_sft(6), str(tmp_path))
  files = sorted((p for p in (tmp_path / "checkpoints" / "6").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  with open(files[-1], "r+b") as f:  # Truncate the largest file of the newest checkpoint.
    f.truncate(files[-1].stat().st_size // 2)
  capsys.readouterr()
  stages.run(tiny_sft(8), str(tmp_path))  # More steps: a safe change.
  err = capsys.readouterr().err
  assert "checkpoint 6 does not restore (" in err and "resuming from checkpoint 4 instead" in err
  assert "resuming with changed settings: steps: 6 -> 8" in err
  assert (tmp_path / "checkpoints_corrupt" / "6").is_dir()  # Kept, not deleted.
  assert checkpoint.manager(str(tmp_path), 2, 5, False).latest_step() == 8
  c = tiny_sft(10)
  c.optim.lr, c.seq_len = 1.0, 64
  with pytest.raises(ConfigError, match=r"holds a run with another config \(optim.lr: 0.003 -> 1.0; "
                                        r"seq_len: 48 -> 64\); resume with its values or use a new workdir"):
    stages.run(c, str(tmp_path))


def test_a_full_disk_is_one_line(tmp_path, monkeypatch):
  import errno
  from r3jax.trainers import harness

  def full(*args, **kwargs):
    raise RuntimeError("write failed") from OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(harness.checkpoint, "save", full)
  with pytest.raises(TrainingError, match=r"^no space left on device while writing .*checkpoints/1$"):
    stages.run(tiny_sft(2), str(tmp_path))


def test_wrong_types_inside_rows_are_file_line_errors(tmp_path):
  from r3jax.data import readers
  bad = {"messages": [1, 2]}, {"conversations": ["hi", "there"]}, {"conversations": [{"from": ["h"], "value": "x"}]}
  for row, message in zip(bad, ("field 'messages' item 0 should be an object", "turn 0 should be an object",
                                "turn 0 has unknown speaker ['h']")):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    with pytest.raises(readers.DataError, match=f"rows.jsonl:1: {re.escape(message)}"):
      readers.load_conversations(str(path))
    assert len(readers.load_conversations(str(path), skip_bad=True).rows) == 1
  path.write_text(json.dumps({"prompt": [1, 2], "chosen": "a", "rejected": "b"}) + "\n" +
                  json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
  loaded = readers.load_comparisons(str(path), skip_bad=True)
  assert len(loaded.rows) == 1 and "field 'prompt' item 0 should be an object" in loaded.skipped[0]


def test_comparisons_with_identical_responses_are_dropped_unless_kept():
  from ml_collections import ConfigDict
  from r3jax.trainers import preference
  rows = [{"responses": ["a", "b"]}, {"responses": ["a", "a"]}, {"responses": ["x", "y", "x"]}]
  (kept,), dropped = preference.drop_ties(ConfigDict({"keep_ties": False}), rows)
  assert kept == rows[:1] and dropped == 2
  assert preference.drop_ties(ConfigDict({"keep_ties": True}), rows) == ((rows,), 0)


def test_a_checkpoint_of_another_architecture_is_named_not_a_traceback(tmp_path):
  from helpers import make_hf_qwen
  from r3jax.models import bert, qwen
  from r3jax.trainers import state
  cfg = qwen.preset("tiny", vocab_size=2048)
  with pytest.raises(ConfigError, match="a 'bert' checkpoint, not a Qwen2 decoder"):
    state.check_architecture(bert.minilm_dir(), cfg)
  make_hf_qwen(tmp_path / "qwen")  # hidden 64 like tiny, but vocab 128 and MLP 96.
  with pytest.raises(ConfigError, match=r"architecture does not match the config's model \(vocab_size 128 "
                                        r"vs 2048; intermediate_size 96 vs 176, checkpoint vs config\); "
                                        r"set --config.model.hf_dir="):
    state.check_architecture(str(tmp_path / "qwen"), cfg)
  state.check_architecture(str(tmp_path / "qwen"), hf_cfg := qwen.config_from_hf(str(tmp_path / "qwen" / "config.json")))
  assert hf_cfg.vocab_size == 128


def test_a_skipped_update_keeps_the_state_and_the_next_one_applies():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  tx = optax.sgd(0.1)
  params = {"w": jnp.ones(3)}
  state = {"step": jnp.int32(0), "params": params, "opt_state": tx.init(params),
           "rng": jax.random.key_data(jax.random.key(0))}
  shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), state)

  def loss_fn(p, mb, rng):  # NaN where the batch says so.
    del rng
    loss = jnp.sum(p["w"] * mb["x"]).sum() + jnp.where(mb["bad"].any(), jnp.nan, 0.0)
    return loss, (jnp.float32(1), {})

  step = step_lib.make_train_step(loss_fn, tx, shardings, mesh, donate=False, skip_nonfinite=True)
  batch = lambda bad: {"x": jnp.ones((1, 2, 3)), "bad": jnp.full((1, 2), bad)}
  s1, m1 = step(state, batch(True))
  assert float(m1["skipped"]) == 1.0 and int(s1["step"]) == 1
  np.testing.assert_array_equal(s1["params"]["w"], params["w"])  # Old params kept.
  s2, m2 = step(s1, batch(False))
  assert float(m2["skipped"]) == 0.0
  np.testing.assert_allclose(s2["params"]["w"], 1.0 - 0.1 * 2.0)  # d/dw of sum over 2 rows.


def test_skipping_non_finite_updates_stops_after_too_many_in_a_row(tmp_path):
  c = tiny_sft(40)
  c.optim.update(lr=1e4, warmup_steps=0, grad_clip=0.0)
  c.nonfinite.update(action="skip", max_in_a_row=2)
  with pytest.raises(TrainingError, match=r"3 non-finite updates in a row at step \d+ \(nonfinite.max_in_a_row=2\)"):
    stages.run(c, str(tmp_path))
  for step in checkpoint.manager(str(tmp_path), 2, 2, False).all_steps():
    for x in jax.tree.leaves(checkpoint.load_host(str(tmp_path), step)["params"]):
      assert np.isfinite(x).all()  # Skipped updates never reach a checkpoint.


def test_help_exits_0_and_commands_print_no_backend_probe(tmp_path):
  assert run_cli("--help", module="r3jax.score").returncode == 0  # Required flags unset.
  rows = tmp_path / "rows.jsonl"
  rows.write_text(json.dumps({"prompt": "What is Renor?", "response": "Renor is a city."}) + "\n")
  out = run_cli(f"--input={rows}", f"--output={tmp_path / 'out.jsonl'}", module="r3jax.score")
  assert out.returncode == 0, out.stderr
  assert "Unable to initialize backend" not in out.stderr and not re.search(r"^[IW]\d{4} ", out.stderr, re.M), out.stderr
