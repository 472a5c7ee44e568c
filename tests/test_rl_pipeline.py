"""The Qwen report's pipeline (Bai et al. 2023, §3) at toy size, in-process: SFT -> RM (PMP,
then fine-tuning) -> PPO on that RM through "@rm", with a weighted mix and the value model
started from the RM."""

import os
import runpy

import jax
import numpy as np
import pytest

from r3jax.core import checkpoint
from r3jax.trainers import stages, ppo, validate
from helpers import metric_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_pipeline():
  c = runpy.run_path(os.path.join(ROOT, "configs", "ppo_qwen.py"))["get_config"]("tiny-rm")
  c.sft.update(steps=6, batch_size=8, seq_len=48, eval_every=1000, eval_prompts=0)
  c.sft.data.synthetic_examples = 200
  for stage in (c.rm_pmp, c.rm):
    stage.update(steps=4, batch_size=8, seq_len=64, eval_every=1000, log_every=2)
    stage.data.synthetic_examples = 200
  for section in (c.sft, c.rm_pmp, c.rm, c):
    section.checkpoint.update(every=2, async_save=False)
  c.steps, c.prompts_per_step, c.eval_prompts, c.log_samples_every = 2, 4, 1, 2
  c.rollout.update(max_new_tokens=6, prompt_len=24)
  c.ppo.update(minibatch=8, value_warmup_steps=1)
  c.data.synthetic_examples = 16
  c.reward.mode = "1*@rm+0*length"  # length, not R³, beside it: no encoder to load here.
  c.value.init_from_reward = True
  return c


@pytest.mark.slow
def test_ppo_on_the_pipelines_own_reward_model(tmp_path):
  c = toy_pipeline()
  validate.validate(c)
  stages.run(c, str(tmp_path))
  for stage, steps in (("sft", 6), ("rm_pmp", 4), ("rm", 4)):
    assert stages.finished(str(tmp_path / stage), steps), stage  # Reused by a rerun.
  rows = metric_rows(tmp_path, "reward/reward")
  assert sorted(rows) == [1, 2]
  for k in ("reward/rm/reward", "reward/length/reward", "value/loss", "gold/recall"):
    assert np.isfinite(rows[2][k]), k  # Each term's raw value is logged.
  assert rows[1]["reward/reward"] == rows[1]["reward/rm/reward"]  # 1·rm + 0·length, raw.
  assert (tmp_path / "rm" / "model" / "config.json").exists()
  # The value model started as the fine-tuned RM (PPO-max), not as the policy.
  resolved = stages.with_fields(c, init_from=str(tmp_path / "sft"))
  with resolved.unlocked():
    resolved.reward.mode = stages.resolve(c.reward.mode, {"rm": str(tmp_path / "rm")})
  s, state, _, _ = ppo.prepare(resolved, str(tmp_path / "fresh"))
  rm_params = checkpoint.load_host(str(tmp_path / "rm"))["params"]
  for x, y in zip(jax.tree.leaves(rm_params), jax.tree.leaves(state["value"])):
    np.testing.assert_array_equal(x, np.asarray(y))
  assert s.scorer.labels == ("rm", "length") and s.scorer.weights == (1.0, 0.0)
  s.run.writer.close()
