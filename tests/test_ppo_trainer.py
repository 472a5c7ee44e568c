"""The PPO trainer runs end to end on the embedded default at toy size."""

import os
import subprocess
import sys

import pytest

from r3jax.core import checkpoint
from helpers import metric_rows, start_until_step, why

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The tiny PPO command end to end (metrics, SFT warm start and its reuse, before/after,
# plots, HF export) is tests/test_multiprocess.py's one-process reference run.


pytestmark = pytest.mark.slow  # Three 8-device PPO runs per variant.

ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("sft")
  sft = subprocess.run([sys.executable, "-m", "r3jax.train", "--config=configs/sft_qwen.py:tiny",
                        f"--workdir={path}", "--config.steps=4", "--config.batch_size=8",
                        "--config.seq_len=48", "--config.eval_every=1000", "--config.eval_prompts=1",
                        "--config.sample_tokens=4", "--config.data.synthetic_examples=200"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert sft.returncode == 0, why(sft)
  return path


# LoRA + PPO-ptx; and GRPO (no value model, k3 KL in the loss, groups of 4 per prompt).
VARIANTS = {
    "ppo_lora_ptx": ["--config=configs/ppo_qwen.py", "--config.prompts_per_step=8",
                     "--config.ppo.value_warmup_steps=1", "--config.ppo.minibatch=8",
                     "--config.lora.rank=4", "--config.ptx.coef=0.1", "--config.ptx.seq_len=32",
                     "--config.ptx.synthetic_docs=50"],
    # GRPO's rollouts by the continuous engine with fewer slots than sequences (refills).
    "grpo": ["--config=configs/grpo_qwen.py", "--config.prompts_per_step=8", "--config.ppo.minibatch=16",
             "--config.rollout.engine=continuous", "--config.rollout.slots=12"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rl_on_8_devices_resumes_exactly_after_sigkill(tmp_path, sft_dir, variant):
  """On a data=2 x fsdp=4 mesh of simulated devices: a run killed between checkpoints and
  restarted ends bitwise equal to an uninterrupted one."""
  import jax
  import numpy as np

  def cmd(workdir):
    return [sys.executable, "-m", "r3jax.train", *VARIANTS[variant], f"--workdir={workdir}",
            f"--config.init_from={sft_dir}", f"--config.tokenizer={sft_dir / 'tokenizer'}",
            "--config.mesh=(('data', 2), ('fsdp', 4), ('tensor', 1))",
            "--config.steps=6", "--config.checkpoint.every=2", "--config.checkpoint.async_save=False",
            "--config.rollout.max_new_tokens=8", "--config.rollout.prompt_len=32",
            "--config.eval_prompts=2", "--config.data.synthetic_examples=64"]

  ref = subprocess.run(cmd(tmp_path / "ref"), cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
  assert ref.returncode == 0, why(ref)
  ref_rows = metric_rows(tmp_path / "ref", "reward/reward")
  assert sorted(ref_rows) == list(range(1, 7))

  kill_dir = tmp_path / "killed"
  proc = start_until_step(cmd(kill_dir), kill_dir, "reward/reward", 3, env=ENV)
  proc.kill()
  proc.wait(timeout=30)
  resumed = subprocess.run(cmd(kill_dir), cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
  assert resumed.returncode == 0, why(resumed)
  assert "resumed from step" in resumed.stderr

  a, b = checkpoint.load_host(tmp_path / "ref", 6), checkpoint.load_host(kill_dir, 6)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  if variant == "grpo":
    assert "value" not in a and "policy/kl_loss" in ref_rows[6] and "value/loss" not in ref_rows[6]
  else:
    assert "LoRA rank 4" in ref.stderr and "ptx/loss" in ref_rows[6]
    assert "lora" in a["value"] and "backbone" not in a["value"]  # No second copy of the model.
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # Bitwise.
  kill_rows = metric_rows(kill_dir, "reward/reward")
  for s in range(1, 7):
    assert kill_rows[s]["reward/reward"] == ref_rows[s]["reward/reward"], s
