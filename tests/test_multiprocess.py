"""Two processes on localhost (jax.distributed, gloo collectives on CPU) against one process:
the same sharded SFT and DPO step, the same loss and updated params."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from r3jax import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "multiprocess_step.py")
TIMEOUT = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(trainer, out, n):
  env = {**os.environ, "PYTHONPATH": ROOT}
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, SCRIPT, trainer, str(out), str(n), str(i), port], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(n)]
  try:
    # A process that dies fails the test at once; the others are killed in `finally`.
    for p in procs:
      log, _ = p.communicate(timeout=TIMEOUT)
      assert p.returncode == 0, f"process exited {p.returncode}:\n{log[-3000:]}"
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return json.load(open(out / f"result_{n}.json")), dict(np.load(out / f"params_{n}.npz"))


@pytest.mark.parametrize("trainer", ["sft", "dpo"])
def test_two_processes_match_one(tmp_path, trainer):
  tokenizer_lib.tiny(cache_dir=str(tmp_path / "tokenizer"))  # Shared, as on a real workdir.
  one, p1 = _launch(trainer, tmp_path, 1)
  two, p2 = _launch(trainer, tmp_path, 2)
  assert (one["processes"], two["processes"], one["devices"], two["devices"]) == (1, 2, 4, 4)
  assert two["local_rows"] == 4 and one["local_rows"] == 8  # Each process built only its half.
  assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
  assert set(p1) == set(p2)
  for k in p1:
    # Adam moves every param by ~lr = 3e-3 in one step, so a misplaced shard would show.
    np.testing.assert_allclose(p2[k], p1[k], atol=2e-6, err_msg=k)
