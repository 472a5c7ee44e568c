"""Training harness: sharding equivalence, exact resume, SIGTERM, bad input, config errors."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from r3jax.core import optim
from r3jax.data import pipeline, readers
from helpers import metric_rows, shared_file, start_until_step, why

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small SFT run: 12 steps of 8 conversations, a checkpoint every 4 steps, a log line
# (with the batch fingerprint) every step.
SMALL = ["--config.steps=12", "--config.batch_size=8", "--config.seq_len=48",
         "--config.log_every=1", "--config.eval_every=1000", "--config.checkpoint.every=4",
         "--config.eval_prompts=1", "--config.sample_tokens=4",
         "--config.data.synthetic_examples=400", "--config.optim.warmup_steps=2"]


def train_cmd(workdir, *extra):
  return [sys.executable, "-m", "r3jax.train", "--config=configs/sft_qwen.py:tiny",
          f"--workdir={workdir}", *SMALL, *extra]


def run(cmd, timeout=300, env=None):
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})})


def last_metrics(workdir):
  return metric_rows(workdir, "train/loss")


def final_params(workdir, step):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "data"),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return jax.device_get(out["state"]["params"])


@pytest.mark.slow
def test_sharding_equivalence_on_8_devices(tmp_path):
  out = run([sys.executable, "tests/sharded_step.py", str(tmp_path)], timeout=600,
            env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONPATH": ROOT})
  assert out.returncode == 0, why(out)
  res = json.loads(out.stdout.strip().splitlines()[-1])
  single = res["single"]
  for name in ("data=8", "fsdp=8", "data=2,fsdp=2,tensor=2"):
    assert abs(res[name]["loss"] - single["loss"]) < 1e-5, (name, res[name])
    # One AdamW step at lr 3e-3 moves each param by ~3e-3; the meshes agree to ~1e-6.
    assert res[name]["max_param_diff"] < 1e-5, (name, res[name])
  assert res["fsdp=8"]["shards"] == {"embed": [2048, 8], "lm_head": [8, 2048], "q_kernel": [8, 4, 16]}
  assert res["data=2,fsdp=2,tensor=2"]["shards"] == {"embed": [1024, 32], "lm_head": [32, 1024],
                                                     "q_kernel": [32, 2, 16]}
  assert res["data=8"]["shards"] == single["shards"]


@pytest.mark.slow
def test_exact_resume_after_sigkill_and_sigterm_checkpoint(tmp_path):
  ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
  packed = "--config.data.packing=True"  # Packed rows (#30) through the same Grain order.
  ref = run(train_cmd(ref_dir, packed))
  assert ref.returncode == 0, why(ref)
  assert "(train: packed rows)" in ref.stderr and "data.packing: 380 conversations in" in ref.stderr

  # SIGKILL between checkpoints (after step 5 or 6; checkpoints at 4, 8, 12).
  proc = start_until_step(train_cmd(kill_dir, packed), kill_dir, "train/loss", 5, timeout=240)
  killed_at = max(last_metrics(kill_dir))
  proc.kill()
  proc.wait(timeout=30)
  assert killed_at < 12
  resumed = run(train_cmd(kill_dir, packed))
  assert resumed.returncode == 0, why(resumed)
  assert "resumed from step" in resumed.stderr + resumed.stdout

  a, b = final_params(ref_dir, 12), final_params(kill_dir, 12)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # Bitwise.
  ma, mb = last_metrics(ref_dir), last_metrics(kill_dir)
  assert sorted(ma) == sorted(mb) == list(range(1, 13))
  for s in ma:
    assert ma[s]["data/batch_checksum"] == mb[s]["data/batch_checksum"], s
    assert ma[s]["train/loss"] == mb[s]["train/loss"], s

  # init_from another run's workdir starts from its params: the first loss is already low.
  warm = run(train_cmd(tmp_path / "warm", f"--config.init_from={ref_dir}", "--config.steps=1"))
  assert warm.returncode == 0, why(warm)
  assert last_metrics(tmp_path / "warm")[1]["train/loss"] < ma[12]["train/loss"] + 0.5 < ma[1]["train/loss"]

  # SIGTERM: a checkpoint at the current step, then exit 143.
  term_dir = tmp_path / "term"
  proc = start_until_step(train_cmd(term_dir, "--config.steps=400", "--config.checkpoint.every=1000"),
                          term_dir, "train/loss", 3, timeout=240, stderr=subprocess.PIPE)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-2000:]
  saved = sorted(int(d) for d in os.listdir(term_dir / "checkpoints") if d.isdigit())
  logged = max(last_metrics(term_dir))
  assert saved and saved[-1] >= logged >= 3 and saved[-1] < 400
  assert f"saved a checkpoint at step {saved[-1]}" in err

  # Ctrl-C (SIGINT) saves like SIGTERM and exits 130 with one line. A torn last line in
  # metrics.jsonl (a kill mid-append) is then dropped with a note, and the run resumes.
  int_dir = tmp_path / "int"
  proc = start_until_step(train_cmd(int_dir, "--config.steps=400", "--config.checkpoint.every=1000"),
                          int_dir, "train/loss", 2, timeout=240, stderr=subprocess.PIPE)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
  saved = max(int(d) for d in os.listdir(int_dir / "checkpoints") if d.isdigit())
  assert err.strip().splitlines()[-1].startswith(f"SIGINT: saved a checkpoint at step {saved} in ")
  with open(int_dir / "metrics.jsonl", "a") as f:
    f.write('{"step": 99, "train/lo')
  resumed = run(train_cmd(int_dir, f"--config.steps={saved + 1}", "--config.checkpoint.every=1000"))
  assert resumed.returncode == 0, why(resumed)
  assert "metrics.jsonl: dropped 1 unreadable line(s)" in resumed.stderr
  assert max(last_metrics(int_dir)) == saved + 1  # Every line parses again.


BAD_ROWS = {
    "malformed": (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                  b'{"messages": [oops\n', ":2: malformed JSON"),
    "missing": (b'{"instruction": "Say hi"}\n', ":1: missing field 'output'"),
    "empty": (b'{"instruction": "Say hi", "output": "  "}\n', ":1: empty response"),
    "utf8": (b'{"instruction": "Say hi", "output": "ok"}\n{"instruction": "\xff\xfe", "output": "x"}\n',
             ":2: invalid UTF-8"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_bad_rows_name_file_line_and_problem(tmp_path, kind):
  data, expected = BAD_ROWS[kind]
  path = tmp_path / f"{kind}.jsonl"
  path.write_bytes(data)
  with pytest.raises(readers.DataError) as e:
    readers.load_conversations(str(path))
  assert str(e.value).startswith(str(path)) and expected in str(e.value)


@pytest.mark.slow
def test_skip_bad_counts_and_cli_messages(tmp_path):
  good = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(40)]
  lines = [json.dumps(g).encode() for g in good] + [b'{"instruction": "x"}', b'not json']
  path = tmp_path / "train.jsonl"
  path.write_bytes(b"\n".join(lines) + b"\n")
  loaded = readers.load_conversations(str(path), skip_bad=True)
  assert len(loaded.rows) == 40 and len(loaded.skipped) == 2

  bad = run(train_cmd(tmp_path / "w1", f"--config.data.train={path}"))
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert f"{path}:41: missing field 'output'" in bad.stderr
  ok = run(train_cmd(tmp_path / "w2", f"--config.data.train={path}", "--config.data.skip_bad=True",
                     "--config.steps=2", "--config.batch_size=4"))
  assert ok.returncode == 0, why(ok)
  assert "skipped 2 bad rows" in ok.stderr and "2 bad rows skipped" in ok.stderr


@pytest.mark.parametrize("override,message", [
    ("--config.optim.nope=1", "unknown config field"),
    ("--config.init_from=/no/such/run", "init_from=/no/such/run: no such file or directory"),
])  # Every other bad value is checked in-process: tests/test_config.py.
def test_config_errors_are_one_clear_line(tmp_path, override, message):
  out = run(train_cmd(tmp_path) + [override])
  assert out.returncode != 0 and message in out.stderr, why(out)
  assert "Traceback" not in out.stderr


def test_order_is_deterministic_resumable_and_covers_epochs():
  a = pipeline.Order(10, 3, seed=1)
  seq = [a.next() for _ in range(7)]  # 3 batches per epoch: crosses two epoch boundaries.
  for epoch in range(2):
    assert set(np.concatenate(seq[3 * epoch:3 * epoch + 3]).tolist()) < set(range(10))  # drop-remainder
    assert len(set(np.concatenate(seq[3 * epoch:3 * epoch + 3]).tolist())) == 9
  b = pipeline.Order(10, 3, seed=1)
  for _ in range(4):
    b.next()
  c = pipeline.Order(10, 3, seed=1, state=b.state())
  for want in seq[4:]:
    np.testing.assert_array_equal(c.next(), want)
  assert not all((x == y).all() for x, y in zip(seq[:3], seq[3:6]))  # Reshuffled per epoch.
  assert b.state() == {"next_index": 4} and (c.epoch, c.index) == (2, 1)  # Grain's iterator state.
  old = pipeline.Order(10, 3, seed=1, state={"epoch": 1, "index": 1})  # A pre-Grain checkpoint's.
  np.testing.assert_array_equal(old.next(), seq[4])


def test_microbatches_and_decay_mask():
  batch = {"x": np.arange(8)[:, None]}
  mb = pipeline.microbatches(batch, 2)["x"][..., 0]
  np.testing.assert_array_equal(mb, [[0, 2, 4, 6], [1, 3, 5, 7]])
  params = {"embed": np.zeros((4, 2)), "layers_0": {"attn": {"q_bias": np.zeros((2, 2)), "q_kernel": np.zeros((2, 2, 2))},
                                                    "input_norm": {"scale": np.zeros(2)}}}
  mask = optim.decay_mask(params)
  assert mask["embed"] and mask["layers_0"]["attn"]["q_kernel"]
  assert not mask["layers_0"]["attn"]["q_bias"] and not mask["layers_0"]["input_norm"]["scale"]


def test_readers_on_shared_samples():
  for name, n in (("alpaca_en_demo.json", 999), ("dpo_en_demo.json", 300)):
    loaded = readers.load_conversations(shared_file(name))
    assert len(loaded.rows) == n and not loaded.skipped
    assert all(r["messages"][-1]["role"] == "assistant" for r in loaded.rows)
  # The real HH sample has one chosen conversation whose last assistant turn is empty.
  hh = shared_file("hh_harmless_base_sample.jsonl")
  with pytest.raises(readers.DataError, match=f"{hh}:87: empty response"):
    readers.load_conversations(hh)
  loaded = readers.load_conversations(hh, skip_bad=True)
  assert len(loaded.rows) == 299 and loaded.skipped == [
      f"{hh}:87: empty response (the last assistant turn has no text)"]
  assert len(readers.load_texts(shared_file("c4_demo.jsonl")).rows) == 300


def test_tfds_source_matches_direct_reader(tmp_path):
  from r3jax.data import tfds_local
  path = shared_file("alpaca_en_demo.json")
  via_tfds = tfds_local.load_conversations(path, str(tmp_path))
  direct = readers.load_conversations(path)
  assert [r["messages"] for r in via_tfds.rows] == [r["messages"] for r in direct.rows]
  assert [r["where"] for r in via_tfds.rows] == [r["where"] for r in direct.rows]
  bad = tmp_path / "bad.jsonl"
  bad.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
  with pytest.raises(readers.DataError, match=f"{bad}:2: missing field 'output'"):
    tfds_local.load_conversations(str(bad), str(tmp_path / "t2"))


def test_relative_workdir(tmp_path):
  # Orbax wants absolute paths; users type relative ones.
  cmd = [sys.executable, "-m", "r3jax.train", f"--config={ROOT}/configs/sft_qwen.py:tiny",
         "--workdir=runs/rel", *SMALL, "--config.steps=2"]
  out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, why(out)
  assert (tmp_path / "runs" / "rel" / "checkpoints" / "2").exists()
