"""`validate(config)`: every option value and cross-field constraint of a config, checked
before any work. Each failure is a ConfigError (or FileNotFoundError for a missing path)
whose one-line message names the field and what it may be."""

import math

from etils import epath
import jax
import ml_collections

from r3jax.core import cli, paths, sharding
from r3jax.core.errors import ConfigError
from r3jax.data import readers, sources
from r3jax.losses import preference as pref_losses
from r3jax.models import hf, qwen, engines
from r3jax.rewards import scorers, verifiable
from r3jax.rl import algorithms, ops, rso
from r3jax.trainers import schema, stages as stages_lib

DTYPES = ("float32", "bfloat16")
SCHEDULES = ("constant", "cosine")
QUERY_TYPES = ("field", "classifier", "random")
CONSTRUCTIONS = ("rso", "sft", "direct")

# The interval each numeric field must lie in ("[" closed, "(" open), wherever a trainer's
# config has the field; every other number need only be finite. These are the values that
# otherwise run and train on something else: a temperature of 0 or below (1-token or
# inverted rollouts), top_p outside (0, 1] (silently off), a negative LoRA rank (silently
# full fine-tuning), eval_fraction 1 (no training rows).
RANGES = {
    "rollout.temperature": "(0, inf)", "rollout.top_p": "(0, 1]", "rollout.top_k": "[0, inf)",
    "lora.rank": "[0, inf)", "lora.alpha": "(0, inf)", "model.dropout_rate": "[0, 1)",
    "optim.lr": "[0, inf)", "optim.b1": "[0, 1)", "optim.b2": "[0, 1)", "optim.eps": "(0, inf)",
    "optim.weight_decay": "[0, inf)", "optim.grad_clip": "[0, inf)",
    "optim.warmup_steps": "[-1, inf)", "optim.warmup_ratio": "[0, 1]",
    "optim.min_lr_ratio": "[0, 1]", "value_lr": "[0, inf)", "best_of_n.lr": "[0, inf)",
    "data.eval_fraction": "[0, 1)", "data.synthetic_restate": "[0, 1]",
    "loss.beta": "(0, inf)", "loss.label_smoothing": "[0, 0.5]", "loss.margin": "[0, inf)",
    "loss.cpo_alpha": "[0, inf)", "loss.desirable_weight": "[0, inf)",
    "loss.undesirable_weight": "[0, inf)",
    "kl.beta": "[0, inf)", "kl.target": "(0, inf)", "kl.horizon": "(0, inf)",
    "ppo.value_clip": "(0, inf)", "ppo.gamma": "[0, 1]", "ppo.lam": "[0, 1]",
    "ppo.vf_coef": "[0, inf)", "ptx.coef": "[0, inf)", "ptx.batch": "(0, inf)",
    "ptx.seq_len": "(1, inf)", "reward.clip": "(0, inf)", "reward.scale": "(0, inf)",
    "reward.overlong_coef": "[0, inf)", "rso.beta": "(0, inf)",
}


def one_of(field: str, value, allowed) -> None:
  if value not in allowed:
    raise ConfigError(f"config.{field}={value!r}: expected one of {', '.join(map(str, allowed))}")


def positive(field: str, value, zero_ok: bool = False) -> None:
  if not isinstance(value, int) or value < 0 or (value == 0 and not zero_ok):
    raise ConfigError(f"config.{field}={value!r}: expected a {'non-negative' if zero_ok else 'positive'} integer")


def validate(config, stages: dict | None = None) -> None:
  """Raises on the first problem; returns None when the config can run. `stages`: the
  trainers of the stages that run before this config (what "@name" may refer to)."""
  one_of("trainer", config.trainer, stages_lib.TRAINERS)
  done = dict(stages or {})
  for i, name in enumerate(config.stages):
    check_stage(config, i, name, done)
  check_fields(config, schema.defaults(config.trainer), config.trainer)
  check_common(config, done)
  {"sft": check_supervised, "rm": check_preference, "dpo": check_preference,
   "kto": check_preference, "ppo": check_ppo,
   "rso": check_rso, "best_of_n": check_rso}[config.trainer](config, done)
  check_values(config, schema.defaults(config.trainer))  # What the checks above leave.


def check_stage(config, i: int, name: str, done: dict) -> None:
  """Stage `name` of config.stages: its section, trainer and config (when it will run);
  adds it to `done`, the stages that "@name" may refer to."""
  if name in config.stages[:i]:
    raise ConfigError(f"config.stages={tuple(config.stages)}: {name!r} appears twice")
  if name not in config or "trainer" not in config[name]:
    raise ConfigError(f"config.stages: {name!r} has no config.{name} section with a trainer")
  sub_config = config[name]
  if name != "sft":
    one_of(f"{name}.trainer", sub_config.trainer, stages_lib.STAGE_TRAINERS)
    positive(f"{name}.steps", sub_config.steps)  # How a finished stage is recognised.
  if name != "sft" or not (config.init_from or config.model.hf_dir):
    try:  # The stage runs: its config must run too.
      validate(sub_config, done)
    except (ConfigError, FileNotFoundError) as e:
      raise type(e)(str(e).replace("config.", f"config.{name}.", 1)) from None
  done[name] = sub_config.trainer


def check_fields(config, defaults, trainer: str, prefix: str = "") -> None:
  """Every field of `config` is one its trainer reads (the stage sections are configs of
  their own, checked by check_stage)."""
  for key in config.keys():
    if not prefix and key in config.stages:
      continue
    field = f"{prefix}{key}"
    if key not in defaults:
      raise ConfigError(f"config.{field}: no {trainer} trainer reads this field (a typo, or another "
                        "trainer's); every field and its default is in r3jax/trainers/schema.py")
    if isinstance(config[key], ml_collections.ConfigDict) and isinstance(defaults[key], ml_collections.ConfigDict):
      check_fields(config[key], defaults[key], trainer, f"{field}.")


def in_range(field: str, value, interval: str) -> None:
  """value in `interval`, written as in RANGES: "(0, 1]"."""
  if not cli.in_interval(value, interval):
    raise ConfigError(f"config.{field}={value!r}: expected a finite number in {interval}")


def check_values(config, defaults, prefix: str = "") -> None:
  """Every number finite (nan and inf parse as floats from the command line), each field
  of RANGES in its interval, and an integer whose default is non-negative (a count, a
  length, a seed) not negative. Stage sections are configs of their own (check_stage)."""
  for key, value in config.items():
    if not prefix and key in config.stages:
      continue
    field, default = f"{prefix}{key}", defaults[key]
    if isinstance(value, ml_collections.ConfigDict):
      check_values(value, default, f"{field}.")
    elif field in RANGES:
      in_range(field, value, RANGES[field])
    elif isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"config.{field}={value!r}: expected a finite number")
    elif (isinstance(value, int) and isinstance(default, int) and not isinstance(value, bool)
          and default >= 0 > value):
      raise ConfigError(f"config.{field}={value!r}: expected a non-negative integer")


def check_common(config, stages: dict) -> None:
  one_of("nonfinite.action", config.nonfinite.action, ("stop", "skip"))
  if "control_text" in config.data:
    one_of("data.control_text", config.data.control_text, ("refuse", "plain"))
  if "format" in config.data:
    one_of("data.format", config.data.format, readers.FORMATS)
  positive("nonfinite.max_in_a_row", config.nonfinite.max_in_a_row, zero_ok=True)
  sizes = sharding.mesh_shape(config.mesh, jax.device_count())
  m = config.model
  if not m.hf_dir and m.preset not in qwen.PRESETS:
    raise ConfigError(f"config.model.preset={m.preset!r}: expected one of {', '.join(sorted(qwen.PRESETS))}, "
                      "or set model.hf_dir to an HF checkpoint")
  one_of("model.param_dtype", m.param_dtype, DTYPES)
  one_of("model.dtype", m.dtype, DTYPES)
  if m.hf_dir and epath.Path(m.hf_dir).exists() and not paths.is_uri(m.hf_dir):
    hf.check(m.hf_dir)  # Its config and safetensors headers: milliseconds, before any work.
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
  check_paths(config, stages)


def check_stage_ref(field: str, ref: str, stages: dict, trainer: str = "") -> None:
  """"@name" must name a stage that runs earlier (of `trainer`, if given)."""
  name = ref[1:]
  if name not in stages or (trainer and stages[name] != trainer):
    which = [k for k, v in stages.items() if not trainer or v == trainer]
    raise ConfigError(f"config.{field}={ref!r}: no earlier {trainer + ' ' if trainer else ''}stage "
                      f"{name!r} (earlier: {', '.join(which) or 'none'})")


def check_paths(config, stages: dict) -> None:
  """A user-given path that does not exist fails now, not after minutes of work."""
  init_from = "" if config.init_from == "random" else config.init_from
  if init_from.startswith("@"):
    check_stage_ref("init_from", init_from, stages)
    init_from = ""
  data = config.data
  for field, path in (("init_from", init_from), ("model.hf_dir", config.model.hf_dir),
                      ("tokenizer", config.tokenizer), ("data.train", data.get("train", "")),
                      ("data.eval", data.get("eval", "")), ("data.prompts", data.get("prompts", ""))):
    if path.startswith("tfds:"):  # A prepared TFDS dataset: its directory must exist.
      field, path = "data.tfds_dir", data.get("tfds_dir", "")
      if not path:
        raise ConfigError(f"config.{field}: empty, but a data path names a TFDS dataset; set it "
                          "to the directory holding the prepared dataset (nothing is downloaded)")
    try:
      exists = not path or epath.Path(path).exists()
    except ImportError as e:  # A gs:// path without gcsfs installed.
      raise ConfigError(f"config.{field}={path}: {e}") from None
    if not exists:
      raise FileNotFoundError(f"config.{field}={path}: no such file or directory")


def check_batches(config, sizes_of_mesh) -> None:
  positive("batch_size", config.batch_size)
  positive("micro_batch_per_device", config.micro_batch_per_device, zero_ok=True)
  dp = sharding.data_parallel(sizes_of_mesh)
  per_device = config.micro_batch_per_device or config.batch_size // dp
  if per_device == 0:
    raise ConfigError(f"config.batch_size={config.batch_size} is smaller than the {dp} data-parallel devices")
  sharding.batch_split(config.batch_size, per_device, dp)


def check_supervised(config, stages=None) -> None:
  del stages
  check_batches(config, sharding.mesh_shape(config.mesh, jax.device_count()))
  positive("seq_len", config.seq_len)
  positive("epochs", config.epochs, zero_ok=True)
  if not config.steps and not config.epochs:
    raise ConfigError("config.steps=0 and config.epochs=0: set one of them")
  for field in ("log_every", "eval_every", "eval_batches"):
    positive(field, config[field])
  if "synthetic_task" in config.data:
    sources.TASKS.get(config.data.synthetic_task, "data.synthetic_task")
  if config.data.get("stream") and config.data.get("use_tfds"):
    raise ConfigError("config.data.stream=True with data.use_tfds=True: the TFDS data source already "
                      "reads records from disk; set one of them")


def check_preference(config, stages=None) -> None:
  check_supervised(config)
  if config.trainer == "kto":
    check_kto(config)
  if config.trainer == "dpo":
    loss = pref_losses.LOSSES.get(config.loss.type, "loss.type")
    if config.loss.label_smoothing and not loss.smoothing:
      raise ConfigError(f"config.loss.label_smoothing={config.loss.label_smoothing}: only the losses "
                        f"{', '.join(pref_losses.LOSSES.names(smoothing=True))} take it, not "
                        f"loss.type={config.loss.type}")
    for name in loss.params:  # The loss's own parameters (schema.preference sets them).
      if name not in config.loss:
        raise ConfigError(f"config.loss.type={config.loss.type} needs config.loss.{name}")
    if not 0 <= config.prompt_len < config.seq_len:
      raise ConfigError(f"config.prompt_len={config.prompt_len}: expected 0 (whole rows) or less "
                        f"than seq_len={config.seq_len}")
    if config.data.packing and config.prompt_len:
      raise ConfigError(f"config.data.packing=True with config.prompt_len={config.prompt_len}: a packed "
                        "row already runs each prompt once for its responses; set prompt_len=0")


def check_kto(config) -> None:
  """KTO's weights (not both 0), a batch in which each row's prompt can meet another row's
  completion (its KL estimate), and the prompt split."""
  if not config.loss.desirable_weight and not config.loss.undesirable_weight:
    raise ConfigError("config.loss.desirable_weight and loss.undesirable_weight are both 0: "
                      "no row would train")
  if config.batch_size // jax.process_count() < 2:
    raise ConfigError(f"config.batch_size={config.batch_size}: KTO needs at least 2 rows per "
                      "process's batch, since each row's prompt is paired with another row's "
                      "completion to estimate the KL reference point")
  if not 0 <= config.prompt_len < config.seq_len:
    raise ConfigError(f"config.prompt_len={config.prompt_len}: expected 0 (whole rows) or less "
                      f"than seq_len={config.seq_len}")


def check_reward(field: str, spec: str, stages: dict, mix: bool = True) -> list:
  """Each term of a reward spec names a scorer, a reward-model run or an earlier rm stage
  ("@name"); returns the terms. `mix=False`: one unweighted scorer only."""
  try:
    terms = scorers.terms(spec)
    scorers.Mix.check_labels(spec)
  except ValueError as e:
    raise ConfigError(f"config.{field}: {e}") from None
  if not mix and (len(terms) > 1 or "*" in spec):
    raise ConfigError(f"config.{field}={spec!r}: a weighted mix is for PPO only; name one scorer")
  for _, name in terms:
    if name.startswith("@"):
      check_stage_ref(field, name, stages, trainer="rm")
      continue
    try:
      scorers.check(name)
    except FileNotFoundError as e:
      term = f" (its term {name!r})" if len(terms) > 1 else ""
      raise ConfigError(f"config.{field}={spec!r}{term}: expected one of {', '.join(scorers.REWARDS)}, a "
                        "reward-model run directory or an earlier rm stage (@name)") from e
  return terms


def check_ppo(config, stages=None) -> None:
  terms = check_reward("reward.mode", config.reward.mode, stages or {})
  one_of("reward.query_types", config.reward.query_types, QUERY_TYPES)
  one_of("reward.encoder_side", config.reward.encoder_side, ("", "left", "right"))
  one_of("reward.encoder_dtype", config.reward.encoder_dtype, ("float32", "bfloat16"))
  one_of("reward.answer_format", config.reward.answer_format, verifiable.FORMS)
  if not 0 <= config.reward.encoder_len <= 512:
    raise ConfigError(f"config.reward.encoder_len={config.reward.encoder_len}: word pieces "
                      "kept by R³'s encoder, in [1, 512] (BERT's positions), or 0 for the default")
  engines.check(config.rollout.engine, config.rollout.slots, config.rollout.n)
  sources.TASKS.get(config.data.synthetic_task, "data.synthetic_task")
  algorithms.KL_ESTIMATORS.get(config.kl.estimator, "kl.estimator")
  one_of("kl.placement", config.kl.placement, ("reward", "loss"))
  algorithms.ADVANTAGES.get(config.ppo.advantage, "ppo.advantage")
  algorithms.POLICY_LOSSES.get(config.ppo.policy_loss, "ppo.policy_loss")
  for name, loss in algorithms.POLICY_LOSSES.items():
    if loss.params and (wrong := loss.check(config.ppo.loss_params[name])):
      raise ConfigError(f"config.ppo.loss_params.{name}.{wrong}")
  one_of("ppo.loss_agg", config.ppo.loss_agg, ops.AGGREGATIONS)
  check_lora(config.lora)
  check_estimator(config, terms)
  if not 0 <= config.reward.overlong_cache <= config.rollout.max_new_tokens:
    raise ConfigError(f"config.reward.overlong_cache={config.reward.overlong_cache}: tokens before "
                      f"rollout.max_new_tokens={config.rollout.max_new_tokens} where the overlong "
                      "penalty ramps, in [0, max_new_tokens]")
  if config.rollout.max_extra_rounds < 0:
    raise ConfigError(f"config.rollout.max_extra_rounds={config.rollout.max_extra_rounds} must be >= 0")
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


def check_lora(lora_config) -> None:
  """LoRA's targets name kernels of the decoder (lora.init would fail only after loading)."""
  if lora_config.rank <= 0:
    return
  shapes = jax.eval_shape(lambda k: qwen.init_params(qwen.preset("tiny"), k), jax.random.key(0))
  kernels = sorted({str(p[-1].key) for p, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]
                    if str(p[-1].key).endswith("_kernel")})
  targets = tuple(lora_config.targets)
  if not targets or any(t not in kernels for t in targets):
    raise ConfigError(f"config.lora.targets={targets}: expected a non-empty tuple of the "
                      f"decoder's kernels {', '.join(kernels)}")


def check_estimator(config, terms) -> None:
  """What the advantage estimator needs: groups of n >= 2 samples; a value model for value
  warm-up and value.init_from_reward."""
  est = algorithms.ADVANTAGES[config.ppo.advantage]
  if config.rollout.dynamic_sampling and not est.group:
    raise ConfigError(f"config.rollout.dynamic_sampling=True: ppo.advantage={config.ppo.advantage} has "
                      "no group baseline, so an equal-reward group still carries signal; use a group "
                      "method (grpo, ...)")
  if est.group and config.rollout.n < 2:
    raise ConfigError(f"config.rollout.n={config.rollout.n}: ppo.advantage={config.ppo.advantage} "
                      "needs at least 2 samples per prompt (its baseline is the prompt's group)")
  if not est.uses_value and config.ppo.value_warmup_steps:
    raise ConfigError(f"config.ppo.value_warmup_steps={config.ppo.value_warmup_steps}: ppo.advantage="
                      f"{config.ppo.advantage} has no value model to warm up; set it to 0")
  if config.value.init_from_reward:
    models = [n for _, n in terms if n not in scorers.REWARDS]
    if not est.uses_value or config.lora.rank > 0 or len(models) != 1:
      raise ConfigError("config.value.init_from_reward=True needs a value model (ppo.advantage=gae), "
                        f"no LoRA and exactly one reward-model term in reward.mode (it has {len(models)})")


def check_context(config) -> None:
  """Prompt plus response within the model's context (its config.json, or the preset's)."""
  if config.model.hf_dir:
    context = hf.read_config(config.model.hf_dir).get("max_position_embeddings")
  else:
    context = qwen.preset(config.model.preset).max_position_embeddings
  total = config.rollout.prompt_len + config.rollout.max_new_tokens
  if context and total > context:
    raise ConfigError(f"config.rollout.prompt_len + rollout.max_new_tokens = {total} exceeds the "
                      f"model's context of {context} positions")


def check_rso(config, stages=None) -> None:
  engines.check(config.rollout.engine, config.rollout.slots, config.rso.n)
  one_of("rso.construction", config.rso.construction, CONSTRUCTIONS)
  one_of("rso.pairing", config.rso.pairing, rso.PAIRINGS)
  check_reward("rso.reward", config.rso.reward, {}, mix=False)
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
