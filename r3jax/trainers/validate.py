"""`validate(config)`: every option value and cross-field constraint of a config, checked
before any work. Each failure is a ConfigError (or FileNotFoundError for a missing path)
whose one-line message names the field and what it may be."""

import json
import os

from etils import epath
import jax

from r3jax.core import sharding
from r3jax.core.errors import ConfigError
from r3jax.losses import preference as pref_losses
from r3jax.models import qwen
from r3jax.rewards import scorers
from r3jax.rl import algorithms, rso
from r3jax.trainers import pipeline

DTYPES = ("float32", "bfloat16")
SCHEDULES = ("constant", "cosine")
QUERY_TYPES = ("field", "classifier", "random")
CONSTRUCTIONS = ("rso", "sft", "direct")


def one_of(field: str, value, allowed) -> None:
  if value not in allowed:
    raise ConfigError(f"config.{field}={value!r}: expected one of {', '.join(map(str, allowed))}")


def positive(field: str, value, zero_ok: bool = False) -> None:
  if not isinstance(value, int) or value < 0 or (value == 0 and not zero_ok):
    raise ConfigError(f"config.{field}={value!r}: expected a {'non-negative' if zero_ok else 'positive'} integer")


def validate(config) -> None:
  """Raises on the first problem; returns None when the config can run."""
  one_of("trainer", config.trainer, pipeline.TRAINERS)
  for stage in config.stages:
    one_of("stages", stage, pipeline.STAGES)
  check_common(config)
  {"sft": check_supervised, "rm": check_preference, "dpo": check_preference, "ppo": check_ppo,
   "rso": check_rso, "best_of_n": check_rso}[config.trainer](config)
  if "sft" in config.stages and not (config.init_from or config.model.hf_dir):
    try:  # The warm-start stage runs: its config must run too.
      validate(config.sft)
    except (ConfigError, FileNotFoundError) as e:
      raise type(e)(str(e).replace("config.", "config.sft.", 1)) from None


def check_common(config) -> None:
  sizes = sharding.mesh_shape(config.mesh, jax.device_count())
  m = config.model
  if not m.hf_dir and m.preset not in qwen.PRESETS:
    raise ConfigError(f"config.model.preset={m.preset!r}: expected one of {', '.join(sorted(qwen.PRESETS))}, "
                      "or set model.hf_dir to an HF checkpoint")
  one_of("model.param_dtype", m.param_dtype, DTYPES)
  one_of("model.dtype", m.dtype, DTYPES)
  kv_heads = qwen.preset(m.preset).num_kv_heads if not m.hf_dir else None  # HF: known at load.
  if kv_heads and kv_heads % sizes["tensor"]:
    raise ConfigError(f"config.mesh: tensor={sizes['tensor']} does not divide model.preset="
                      f"{m.preset!r}'s {kv_heads} KV heads")
  if config.init_from == "random" and not m.allow_random_init:
    raise ConfigError("config.init_from=random needs --config.model.allow_random_init=True")
  one_of("optim.schedule", config.optim.schedule, SCHEDULES)
  positive("checkpoint.every", config.checkpoint.every)
  positive("checkpoint.max_to_keep", config.checkpoint.max_to_keep)
  positive("steps", config.steps, zero_ok=True)
  check_paths(config)


def check_paths(config) -> None:
  """A user-given path that does not exist fails now, not after minutes of work."""
  init_from = "" if config.init_from == "random" else config.init_from
  data = config.data
  for field, path in (("init_from", init_from), ("model.hf_dir", config.model.hf_dir),
                      ("tokenizer", config.tokenizer), ("data.train", data.get("train", "")),
                      ("data.eval", data.get("eval", "")), ("data.prompts", data.get("prompts", ""))):
    if path and not epath.Path(path).exists():
      raise FileNotFoundError(f"config.{field}={path}: no such file or directory")


def check_batches(config, sizes_of_mesh) -> None:
  positive("batch_size", config.batch_size)
  positive("micro_batch_per_device", config.micro_batch_per_device, zero_ok=True)
  dp = sharding.data_parallel(sizes_of_mesh)
  per_device = config.micro_batch_per_device or config.batch_size // dp
  if per_device == 0:
    raise ConfigError(f"config.batch_size={config.batch_size} is smaller than the {dp} data-parallel devices")
  sharding.batch_split(config.batch_size, per_device, dp)


def check_supervised(config) -> None:
  check_batches(config, sharding.mesh_shape(config.mesh, jax.device_count()))
  positive("seq_len", config.seq_len)
  positive("epochs", config.epochs, zero_ok=True)
  if not config.steps and not config.epochs:
    raise ConfigError("config.steps=0 and config.epochs=0: set one of them")
  for field in ("log_every", "eval_every", "eval_batches"):
    positive(field, config[field])


def check_preference(config) -> None:
  check_supervised(config)
  if config.trainer == "dpo":
    one_of("loss.type", config.loss.type, pref_losses.LOSS_TYPES)
    if not 0 <= config.prompt_len < config.seq_len:
      raise ConfigError(f"config.prompt_len={config.prompt_len}: expected 0 (whole rows) or less "
                        f"than seq_len={config.seq_len}")


def check_reward(field: str, spec: str) -> None:
  try:
    scorers.check(spec)
  except FileNotFoundError as e:
    raise ConfigError(f"config.{field}={spec!r}: expected one of {', '.join(scorers.NAMES)} or a "
                      "reward-model run directory") from e


def check_ppo(config) -> None:
  check_reward("reward.mode", config.reward.mode)
  one_of("reward.query_types", config.reward.query_types, QUERY_TYPES)
  one_of("kl.estimator", config.kl.estimator, algorithms.KL_ESTIMATORS)
  one_of("ppo.advantage", config.ppo.advantage, sorted(algorithms.ADVANTAGES))
  one_of("ppo.policy_loss", config.ppo.policy_loss, sorted(algorithms.POLICY_LOSSES))
  for field in ("steps", "prompts_per_step", "rollout.n", "rollout.max_new_tokens",
                "rollout.prompt_len", "ppo.minibatch", "ppo.epochs", "log_samples_every"):
    positive(field, _get(config, field), zero_ok=field == "steps")
  if config.prompts_per_step % jax.process_count():
    raise ConfigError(f"config.prompts_per_step={config.prompts_per_step} does not divide over "
                      f"{jax.process_count()} processes")
  n_rollouts = config.prompts_per_step * config.rollout.n
  if n_rollouts % config.ppo.minibatch:
    raise ConfigError(f"config.prompts_per_step x rollout.n = {n_rollouts} is not a multiple "
                      f"of ppo.minibatch={config.ppo.minibatch}")
  check_context(config)
  sizes = sharding.mesh_shape(config.mesh, jax.device_count())
  if config.prompts_per_step % sharding.data_parallel(sizes):
    raise ConfigError(f"config.prompts_per_step={config.prompts_per_step} does not split over the "
                      f"{sizes['data'] * sizes['fsdp']} data-parallel devices")


def check_context(config) -> None:
  """Prompt plus response within the model's context (its config.json, or the preset's)."""
  if config.model.hf_dir:
    path = os.path.join(config.model.hf_dir, "config.json")
    context = json.load(open(path)).get("max_position_embeddings") if os.path.exists(path) else None
  else:
    context = qwen.preset(config.model.preset).max_position_embeddings
  total = config.rollout.prompt_len + config.rollout.max_new_tokens
  if context and total > context:
    raise ConfigError(f"config.rollout.prompt_len + rollout.max_new_tokens = {total} exceeds the "
                      f"model's context of {context} positions")


def check_rso(config) -> None:
  one_of("rso.construction", config.rso.construction, CONSTRUCTIONS)
  one_of("rso.pairing", config.rso.pairing, rso.PAIRINGS)
  check_reward("rso.reward", config.rso.reward)
  positive("rso.n", config.rso.n)
  positive("rso.prompts_per_batch", config.rso.prompts_per_batch)
  if config.trainer == "rso":
    if not 0 < config.rso.k <= config.rso.n:
      raise ConfigError(f"config.rso.k={config.rso.k}: expected 1..rso.n={config.rso.n}")
    check_preference(_as_dpo(config))
  else:
    positive("best_of_n.rounds", config.best_of_n.rounds)
    positive("best_of_n.sft_steps", config.best_of_n.sft_steps)
    check_supervised(config.sft)


def _as_dpo(config):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.trainer = "dpo"
  return c


def _get(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config
