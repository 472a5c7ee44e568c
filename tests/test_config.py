"""The config schema and validate(config), in-process: every preset is valid, and each bad
option value fails with one line that names the field and what it may be."""

import os
import runpy
import subprocess
import sys

import pytest

from r3jax.core.errors import ConfigError
from r3jax.losses import preference as pref_losses
from r3jax.trainers import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {"sft_qwen": ["tiny", "qwen-7b", "r3"], "rm_qwen": ["tiny", "pmp"],
           "dpo_qwen": ["tiny", "tiny-simpo", "tiny-orpo", "tiny-cpo", "tiny-kto", "r3"],
           "rso_qwen": ["tiny", "tiny-sft-rank", "tiny-direct", "tiny-best-of-n", "paper"],
           "ppo_qwen": ["tiny", "tiny-relevance", "tiny-hacking", "qwen", "qwen-7b", "r3"]}


def config(name, preset=None):
  c = runpy.run_path(os.path.join(ROOT, "configs", f"{name}.py"))["get_config"](preset)
  c.unlock()
  return c


@pytest.mark.parametrize("name,preset", [(n, p) for n, ps in PRESETS.items() for p in ps])
def test_every_preset_validates(name, preset):
  c = config(name, preset)
  if c.model.preset.startswith("qwen"):
    c.model.allow_random_init = True  # Full sizes validate; running them needs hf_dir.
  if (name, preset) in (("ppo_qwen", "qwen"), ("ppo_qwen", "r3")):  # 256 + 512 tokens on the tiny model.
    with pytest.raises(ConfigError, match="= 768 exceeds the model's context of 512 positions"):
      validate.validate(c)
    return
  validate.validate(c)


@pytest.mark.parametrize("name,field,value,message", [
    ("ppo_qwen", "reward.query_types", "labels", "config.reward.query_types='labels': expected one of field, classifier, random"),
    ("ppo_qwen", "reward.mode", "rouge", "config.reward.mode='rouge': expected one of r3, relevance, li_s"),
    ("ppo_qwen", "ppo.advantage", "a2c", "config.ppo.advantage='a2c': unknown advantage estimator; expected one of gae, grpo, dr_grpo"),
    ("ppo_qwen", "ppo.policy_loss", "clip", "config.ppo.policy_loss='clip': unknown policy loss; expected one of ppo_clip, cispo, gspo"),
    ("ppo_qwen", "ppo.loss_params.ppo_clip.dual_clip", 0.5, "config.ppo.loss_params.ppo_clip.dual_clip=0.5: a lower bound c > 1"),
    ("ppo_qwen", "ppo.loss_params.cispo.eps_high", -1.0, "config.ppo.loss_params.cispo.eps_high=-1.0 must be >= 0"),
    ("ppo_qwen", "kl.estimator", "k4", "config.kl.estimator='k4': unknown KL estimator; expected one of k1, k2, k3"),
    ("ppo_qwen", "ppo.minibatch", 48, "is not a multiple of ppo.minibatch=48"),
    ("rso_qwen", "rso.construction", "best", "config.rso.construction='best': expected one of rso, sft, direct"),
    ("rso_qwen", "rso.pairing", "all", "config.rso.pairing='all': expected one of first_round, tournament"),
    ("rso_qwen", "rso.reward", "/no/rm", "config.rso.reward='/no/rm': expected one of r3"),
    ("rso_qwen", "rso.k", 32, "config.rso.k=32: expected 1..rso.n=16"),
    ("dpo_qwen", "loss.type", "kto", "config.loss.type='kto': unknown preference loss; expected one of sigmoid, ipo, hinge"),
    ("dpo_qwen", "prompt_len", 96, "config.prompt_len=96: expected 0 (whole rows) or less than seq_len=96"),
    ("ppo_qwen", "rollout.max_new_tokens", 480, "= 528 exceeds the model's context of 512 positions"),
    ("sft_qwen", "trainer", "ppo2", "config.trainer='ppo2': expected one of sft, ppo"),
    ("sft_qwen", "model.preset", "qwen-3b", "config.model.preset='qwen-3b': expected one of"),
    ("sft_qwen", "batch_size", 0, "config.batch_size=0: expected a positive integer"),
    ("sft_qwen", "batch_size", -8, "config.batch_size=-8: expected a positive integer"),
    ("sft_qwen", "steps", -5, "config.steps=-5: expected a non-negative integer"),
    ("sft_qwen", "optim.schedule", "linear", "config.optim.schedule='linear': expected one of constant, cosine"),
    ("sft_qwen", "mesh", (("data", 1), ("fsdp", 1), ("tensor", 2)), "uses 2 devices, but 1 are available"),
    ("sft_qwen", "micro_batch_per_device", 7, "batch_size=32 is not a multiple of micro_batch_per_device (7)"),
    ("sft_qwen", "init_from", "random", "init_from=random needs --config.model.allow_random_init=True"),
    ("rm_qwen", "sft.optim.schedule", "step", "config.sft.optim.schedule='step'"),  # The warm-start stage's.
    ("ppo_qwen", "rollout.dynamic_sampling", True, "config.rollout.dynamic_sampling=True: ppo.advantage=gae has no group baseline"),
    ("ppo_qwen", "reward.overlong_cache", 99, "config.reward.overlong_cache=99: tokens before rollout.max_new_tokens=40"),
    ("ppo_qwen", "reward.answer_format", "latex", "config.reward.answer_format='latex': expected one of any, boxed, hash, answer_is"),
    ("ppo_qwen", "data.synthetic_task", "chess", "config.data.synthetic_task='chess': unknown embedded task; expected one of world, arithmetic"),
    ("sft_qwen", "data.synthetic_task", "chess", "config.data.synthetic_task='chess': unknown embedded task"),
    # A field no trainer reads: a typo, or another trainer's (PPO logs every iteration).
    ("ppo_qwen", "log_every", 1, "config.log_every: no ppo trainer reads this field"),
    ("sft_qwen", "optim.lr_decay", 0.5, "config.optim.lr_decay: no sft trainer reads this field"),
    ("ppo_qwen", "sft.rollout", 1, "config.sft.rollout: no sft trainer reads this field"),
])
def test_bad_values_fail_in_validation_naming_the_field(name, field, value, message):
  c = config(name)
  *parents, last = field.split(".")
  node = c
  for p in parents:
    node = node[p]
  node[last] = value
  with pytest.raises(ConfigError) as e:
    validate.validate(c)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_preference_loss_fields_are_checked_against_its_registry_entry():
  c = config("dpo_qwen")
  c.loss.update(type="hinge", label_smoothing=0.1)
  smoothed = ", ".join(pref_losses.LOSSES.names(smoothing=True))  # The registry's, in order.
  with pytest.raises(ConfigError, match=f"label_smoothing=0.1: only the losses {smoothed} take it, "
                                        "not loss.type=hinge"):
    validate.validate(c)
  c = config("dpo_qwen", "tiny-simpo")
  validate.validate(c)
  del c.loss["simpo_gamma"]
  with pytest.raises(ConfigError, match="loss.type=simpo needs config.loss.simpo_gamma"):
    validate.validate(c)


def test_missing_paths_fail_before_any_work(tmp_path):
  c = config("ppo_qwen")
  c.data.prompts = str(tmp_path / "nope.jsonl")
  with pytest.raises(FileNotFoundError, match="config.data.prompts=.*nope.jsonl: no such file"):
    validate.validate(c)
  c = config("sft_qwen")
  c.tokenizer = str(tmp_path / "tok")
  with pytest.raises(FileNotFoundError, match="config.tokenizer="):
    validate.validate(c)


def test_stage_is_validated_only_when_it_runs(tmp_path):
  c = config("ppo_qwen")
  c.sft.batch_size = 0
  with pytest.raises(ConfigError, match="batch_size=0"):
    validate.validate(c)
  c.init_from = str(tmp_path)  # A given start: the SFT stage does not run.
  validate.validate(c)


def test_cli_fails_before_any_work_with_one_line_and_status_2(tmp_path):
  out = subprocess.run([sys.executable, "-m", "r3jax.train", "--config=configs/rso_qwen.py",
                        "--config.rso.pairing=all", f"--workdir={tmp_path / 'run'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "error: config.rso.pairing='all': expected one of first_round, tournament"]
  assert not (tmp_path / "run").exists()  # Nothing was started.
