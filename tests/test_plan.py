"""The memory planner: its state rows against a real tiny PPO run's arrays, and its CLI."""

import json
import os
import subprocess
import sys

import pytest

from helpers import why


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_planned_state_bytes_match_a_real_run(tmp_path):
  """Full fine-tuning and LoRA rank 4, each a real tiny PPO run on 8 simulated devices."""
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "plan_vs_run.py"), str(tmp_path), "0", "4"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, why(out)
  results = dict(line.split(" ", 2)[1:] for line in out.stdout.splitlines() if line.startswith("PLAN_VS_RUN "))
  assert sorted(results) == ["0", "4"]
  for lora_rank, text in results.items():
    res = json.loads(text)
    planned, measured = res["planned"], res["measured"]
    for k in ("policy", "policy_opt", "value"):
      assert measured[k] > 0
      # The acceptance allows 10%; both come from the same shapes and shardings, so exact.
      assert planned[k] == measured[k], (lora_rank, k, planned, measured)
    assert planned["reference"] == measured["reference"] == (0 if lora_rank != "0" else measured["policy"])


@pytest.mark.slow
def test_plan_cli_for_qwen_7b_and_a_tpu_type():
  run = lambda *a: subprocess.run([sys.executable, "-m", "r3jax.plan", "--config=configs/ppo_qwen.py:qwen-7b", *a],
                                  cwd=ROOT, capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "JAX_PLATFORMS": "cpu"})
  out = run("--mesh=(('data',1),('fsdp',8),('tensor',1))", "--hbm_gib=95")
  assert out.returncode == 0, why(out)
  assert "qwen-7b (7." in out.stdout and "| **total** |" in out.stdout and "minibatch rows per device fit" in out.stdout
  out = run("--tpu=v5p-64")
  assert out.returncode == 0, why(out)
  assert "suggested mesh" in out.stdout
  bad = run("--mesh=(('data',-1),('fsdp',8),('tensor',1))")
  assert bad.returncode != 0 and "no -1" in bad.stderr


def test_reference_free_preference_loss_plans_no_reference():
  """SimPO (needs_reference=False) holds no reference weights: the plan's reference row is
  0, its total lower by the policy's params, and the table says what was saved."""
  import runpy
  from r3jax.trainers import memory
  get_config = runpy.run_path(os.path.join(ROOT, "configs", "dpo_qwen.py"))["get_config"]
  sizes = {"data": 1, "fsdp": 2, "tensor": 1}
  dpo, simpo = (memory.plan(get_config(p), sizes) for p in ("tiny", "tiny-simpo"))
  policy = dpo["rows"]["policy params"]
  assert policy > 0 and dpo["rows"]["reference"] == policy and "reference_saved" not in dpo
  assert simpo["rows"]["reference (none with loss.type=simpo)"] == 0
  assert simpo["reference_saved"] == policy and simpo["total"] == dpo["total"] - policy
  assert "No reference model" in memory.table(simpo, 16.0)
  assert "No reference model" not in memory.table(dpo, 16.0)
