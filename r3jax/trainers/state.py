"""The policy a run trains and its sharded train state: model config and tokenizer, where
the initial weights come from, and the state {step, params, opt_state, rng} created
directly into its shardings."""

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from r3jax.core import checkpoint, host_memory, sharding
from r3jax.core.errors import ConfigError
from r3jax.data import tokenizer as tokenizer_lib
from r3jax.models import hf, qwen


@dataclasses.dataclass
class Policy:
  """A decoder's config and tokenizer, and where its initial weights come from."""
  cfg: qwen.QwenConfig
  tokenizer: Any
  hf_dir: str | None  # Initial weights from an HF dir; None: random init.


def build_policy(model_config, workdir: str, tokenizer_dir: str = "") -> Policy:
  """model.hf_dir: an HF Qwen2 checkpoint; else model.preset with the tiny tokenizer."""
  overrides = dict(param_dtype=model_config.param_dtype, dtype=model_config.dtype,
                   dropout_rate=model_config.dropout_rate, remat=model_config.remat)
  if model_config.hf_dir:
    cfg = hf.load_config(model_config.hf_dir, **overrides)
    hf.check(model_config.hf_dir, cfg)  # Before the state of cfg's size is allocated.
    tok = tokenizer_lib.load(tokenizer_dir or model_config.hf_dir)
    tokenizer_lib.check_fits(tok, tokenizer_dir or model_config.hf_dir, cfg.vocab_size, model_config.hf_dir)
    return Policy(cfg, tok, model_config.hf_dir)
  if model_config.preset not in ("tiny", "bench") and not model_config.allow_random_init:
    raise ConfigError(
        f"model.preset={model_config.preset!r} is a full-size model: set --config.model.hf_dir=/path "
        "to an HF checkpoint (or --config.model.allow_random_init=True)")
  tok = (tokenizer_lib.load(tokenizer_dir) if tokenizer_dir else
         tokenizer_lib.tiny(cache_dir=os.path.join(workdir, "tokenizer")))
  cfg = qwen.preset(model_config.preset, vocab_size=len(tok), **overrides)
  return Policy(cfg, tok, None)


def state_init_fn(cfg, tx, seed: int, scalar_head: bool = False):
  """A function building the train state with logical-axis metadata on every param and
  optimizer leaf: jit it into shardings (init_state), or eval_shape it (trainers/memory)."""
  key = jax.random.key(seed)

  def init_fn():
    params = qwen.Qwen(cfg).init(key, jnp.zeros((1, 8), jnp.int32))["params"]
    if scalar_head:
      params = {"backbone": params, "head": qwen.init_scalar_head(cfg)}
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "rng": jax.random.key_data(jax.random.fold_in(key, 1))}

  return init_fn


def init_state(policy: Policy, tx, mesh, rules, seed: int, init_from: str = "",
               scalar_head: bool = False):
  """Train state {step, params, opt_state, rng}, created directly into its shardings.

  Initial params: `init_from` (an HF dir or another run's workdir), else policy.hf_dir,
  else random; init_from="random" is random whatever policy.hf_dir says. With `scalar_head` the params are a reward model's {backbone, head}: a
  source with a head (a reward-model run) fills both, a plain decoder only the backbone.
  """
  state, shardings = sharding.create_sharded(state_init_fn(policy.cfg, tx, seed, scalar_head),
                                             mesh, rules)
  source = weights_source(policy, init_from)
  if source and scalar_head and checkpoint.param_keys(source) == {"backbone", "head"}:
    state["params"] = load_params(source, policy.cfg, state["params"], shardings["params"])
  elif source and scalar_head:
    state["params"]["backbone"] = load_params(source, policy.cfg, state["params"]["backbone"],
                                              shardings["params"]["backbone"])
  elif source:
    state["params"] = load_params(source, policy.cfg, state["params"], shardings["params"])
    with mesh:
      state["opt_state"] = jax.jit(tx.init, out_shardings=shardings["opt_state"])(state["params"])
  return state, shardings


def weights_source(policy: Policy, init_from: str) -> str:
  """The directory the initial weights come from; "" for random ones."""
  return "" if init_from == "random" else (init_from or policy.hf_dir or "")


def initial_params(policy: Policy, init_from: str, like, param_shardings, mesh, rules, seed: int):
  """The params a fresh run starts from, rebuilt (e.g. DPO's reference on a resume): loaded
  from their source, or the same seeded random init."""
  source = weights_source(policy, init_from)
  if source:
    return load_params(source, policy.cfg, like, param_shardings)
  state, _ = sharding.create_sharded(state_init_fn(policy.cfg, optax.set_to_zero(), seed), mesh, rules)
  return state["params"]


def check_architecture(source: str, cfg) -> None:
  """hf.check: the one architecture and tensor-shape check, for init_from as for model.hf_dir."""
  hf.check(source, cfg)


def load_params(source: str, cfg, like, param_shardings):
  if os.path.exists(os.path.join(source, "config.json")):
    params = hf.load_params(source, cfg, shardings=param_shardings)  # It runs hf.check first.
  else:
    params = checkpoint.restore_params_from(source, checkpoint.abstract_like(like, param_shardings))
  host_memory.release(params)
  return params

