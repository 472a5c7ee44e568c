"""The PPO trainer runs end to end on the embedded default at toy size."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_ppo_smoke(tmp_path):
  cmd = [sys.executable, "-m", "r3jax.train", "--config=configs/ppo_qwen.py", f"--workdir={tmp_path}",
         "--config.steps=3", "--config.prompts_per_step=4", "--config.rollout.max_new_tokens=8",
         "--config.rollout.prompt_len=32", "--config.ppo.value_warmup_steps=1", "--config.ppo.minibatch=4",
         "--config.eval_prompts=2", "--config.log_samples_every=1",
         "--config.sft.steps=4", "--config.sft.batch_size=8", "--config.sft.seq_len=48",
         "--config.sft.eval_every=1000", "--config.sft.data.synthetic_examples=200",
         "--config.data.synthetic_examples=40"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl") if "reward/reward" in l]
  assert [r["step"] for r in rows] == [1, 2, 3]
  for key in ("reward/relevance", "reward/length_incentive", "reward/repetition_penalty",
              "reward/copies_query", "kl/seq_kl", "kl/beta", "policy/clipfrac",
              "value/explained_variance", "rollout/length", "time/rollout", "time/update"):
    assert key in rows[-1], key
  assert rows[0]["kl/seq_kl"] == 0.0  # The first rollout comes from the reference policy itself.
  assert (tmp_path / "before_after.md").exists() and (tmp_path / "plots" / "reward.png").exists()
  assert (tmp_path / "sft" / "checkpoints").exists()
  # A second run with the same workdir reuses the SFT warm start and resumes PPO (done).
  again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and "reusing" in again.stderr
