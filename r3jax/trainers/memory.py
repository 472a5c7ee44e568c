"""Per-device memory of a PPO (or SFT/DPO) run on a mesh, before any device is touched.

Every figure comes from `jax.eval_shape` of the code that builds the real state (the model's
init with its logical axes, the optimizer's init, LoRA adapters, the KV cache) and the
config's sharding rules on an abstract mesh of the requested shape: the bytes one device
holds are those of each array's shard. Activations are the residuals that the policy's
forward keeps for the backward pass (the leaves of `jax.vjp`'s closure, per batch row)
for one PPO minibatch's rows on one data-parallel device; tensor
parallelism is not credited there, so they are an upper bound.

Rows (PPO): policy params (the frozen SFT weights with LoRA), policy optimizer, reference
(none with LoRA: the frozen weights are the reference), value model and its optimizer,
reward encoder (R³'s MiniLM), rollout KV cache, activations. `table` with an HBM size gives the
largest per-device minibatch that fits; `suggest` picks a mesh for a TPU type.
"""

import math

import jax
import jax.numpy as jnp

from r3jax.core import optim, sharding
from r3jax.losses import preference as pref_losses
from r3jax.models import lora, qwen
from r3jax.rl import algorithms
from r3jax.trainers import state as state_lib

# Devices (JAX devices, i.e. chips with megacore) per TensorCore count, and HBM per device.
TPUS = {"v4": (2, 32.0), "v5e": (1, 16.0), "v5litepod": (1, 16.0), "v5p": (2, 95.0), "v6e": (1, 32.0)}
GIB = 1 << 30


def tpu_devices(tpu: str) -> tuple[int, float]:
  """(devices, HBM GiB per device) of a TPU type such as v4-8 (8 TensorCores: 4 chips)."""
  gen, _, cores = tpu.partition("-")
  if gen not in TPUS or not cores.isdigit():
    raise ValueError(f"--tpu={tpu}: expected <generation>-<cores> with a generation in {sorted(TPUS)}")
  per, hbm = TPUS[gen]
  return max(1, int(cores) // per), hbm


def _bytes(tree, shardings=None) -> int:
  """Bytes one device holds: each leaf's shard under its sharding (replicated without one)."""
  leaves = jax.tree.leaves(tree)
  shards = jax.tree.leaves(shardings) if shardings is not None else [None] * len(leaves)
  total = 0
  for x, s in zip(leaves, shards):
    shape = s.shard_shape(x.shape) if s is not None else x.shape
    total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
  return total


def abstract_mesh(sizes: dict[str, int]):
  return jax.sharding.AbstractMesh(tuple(sizes[a] for a in sharding.MESH_AXES), sharding.MESH_AXES)


def abstract_state(cfg, tx, mesh, rules, scalar_head: bool = False):
  """(abstract train state, its shardings): what trainers/state.init_state builds."""
  import flax.linen as nn

  boxed = jax.eval_shape(state_lib.state_init_fn(cfg, tx, 0, scalar_head))
  return nn.meta.unbox(boxed), nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)


def activation_bytes(cfg, length: int) -> int:
  """Bytes per batch row that the policy's forward keeps for its backward pass (token
  log-probs on [rows, length] through lm.head_logprobs, so no logits): the residuals in `jax.vjp`'s closure at 2 rows minus those
  at 1, so the weights (and their compute-dtype casts) it also closes over cancel out."""
  from r3jax.losses import lm
  params = jax.eval_shape(lambda k: qwen.init_params(cfg, k), jax.random.key(0))

  def residuals(rows):
    def loss(p, t):  # As SFT and PPO compute it: the lean head keeps no [rows, T, V] logits.
      _, hidden, _ = qwen.Qwen(cfg).apply({"params": p}, t[:, :-1], kv_mask_BS=jnp.ones_like(t[:, :-1]))
      return jnp.sum(lm.head_logprobs(hidden, qwen.head_kernel(p, cfg), t[:, 1:]))
    tokens = jax.ShapeDtypeStruct((rows, length), jnp.int32)
    return _bytes(jax.eval_shape(lambda p, t: jax.vjp(lambda q: loss(q, t), p)[1], params, tokens))

  return residuals(2) - residuals(1)


def plan(config, sizes: dict[str, int], remat: bool | None = None) -> dict:
  """Per-device bytes by component, and the per-row costs that scale with the batch.
  `remat` overrides config.model.remat."""
  mesh = abstract_mesh(sizes)
  rules = sharding.rules_from_config(config.sharding.rules)
  model_config = config.model
  cfg = qwen.preset(model_config.preset, param_dtype=model_config.param_dtype, dtype=model_config.dtype,
                    remat=model_config.remat if remat is None else remat)
  if model_config.hf_dir:
    from r3jax.models import hf
    cfg = hf.load_config(model_config.hf_dir, param_dtype=model_config.param_dtype, dtype=model_config.dtype, remat=cfg.remat)
  steps = max(config.steps, 1)
  tx = optim.make(config.optim, steps)
  ppo = config.trainer == "ppo"
  state, shard = abstract_state(cfg, tx, mesh, rules, scalar_head=config.trainer == "rm")
  params, p_shard = state["params"], shard["params"]
  policy_bytes = _bytes(params, p_shard)
  n = qwen.param_count(params)
  out = {"model": f"{model_config.preset} ({n / 1e9:.2f}B params)" if n > 1e8 else f"{model_config.preset} ({n / 1e6:.2f}M params)",
         "mesh": sizes}
  rows = {}
  if ppo and config.lora.rank > 0:
    # Adapters (and the value head) are replicated, as trainers/ppo.py places them.
    ad = jax.eval_shape(lambda p: lora.init(jax.random.key(0), p, tuple(config.lora.targets),
                                            config.lora.rank), params)
    val = {"lora": ad, "head": qwen.init_scalar_head(cfg)}
    rows["policy params (frozen base + adapters)"] = policy_bytes + _bytes(ad)
    rows["policy optimizer"] = _bytes(jax.eval_shape(tx.init, ad))
    rows["reference"] = 0  # The frozen base with the adapters off.
    value_bytes = _bytes(val) + _bytes(jax.eval_shape(tx.init, val))
  else:
    rows["policy params"] = policy_bytes
    rows["policy optimizer"] = _bytes(state["opt_state"], shard["opt_state"])
    if ppo or config.trainer == "kto" or (config.trainer == "dpo" and
                                           pref_losses.LOSSES[config.loss.type].needs_reference):
      rows["reference"] = policy_bytes
    elif config.trainer == "dpo":  # A reference-free loss (SimPO) builds no reference.
      rows[f"reference (none with loss.type={config.loss.type})"] = 0
      out["reference_saved"] = policy_bytes
    if ppo:  # A {backbone, head} model, sharded like the policy.
      v_state, v_shard = abstract_state(cfg, tx, mesh, rules, scalar_head=True)
      value_bytes = (_bytes(v_state["params"], v_shard["params"]) +
                     _bytes(v_state["opt_state"], v_shard["opt_state"]))
  uses_value = ppo and algorithms.ADVANTAGES[config.ppo.advantage].uses_value
  if uses_value:
    rows["value model and optimizer"] = value_bytes
  elif ppo:  # A group baseline or REINFORCE++: no value model is built.
    rows[f"value model (none with ppo.advantage={config.ppo.advantage})"] = 0
    out["value_saved"] = value_bytes
  if ppo:
    rows["reward encoder (replicated)"] = _encoder_bytes(config.reward.encoder)
  dp = sharding.data_parallel(sizes)
  if ppo:
    n_roll = config.prompts_per_step * config.rollout.n
    length = config.rollout.prompt_len + config.rollout.max_new_tokens
    cache = jax.eval_shape(lambda: qwen.init_cache(cfg, n_roll, length))
    kv_spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), "tensor"))
    rows["rollout KV cache"] = _bytes(cache, [kv_spec] * len(jax.tree.leaves(cache)))
    mb_rows = max(config.ppo.minibatch // dp, 1)
  else:
    length, mb_rows = config.seq_len, max((config.micro_batch_per_device or config.batch_size // dp), 1)
  per_row = activation_bytes(cfg, length)
  # PPO backpropagates through the policy and the value model; DPO and RM through (at
  # least) two responses per row; KTO through one (its KL completions run without
  # gradient); the reference forward keeps nothing.
  act_scale = 1 if config.trainer in ("sft", "kto") or (ppo and not uses_value) else 2
  rows[f"activations ({mb_rows} rows x {length} tokens{', remat' if cfg.remat else ''})"] = act_scale * per_row * mb_rows
  out["rows"] = rows
  out["total"] = sum(rows.values())
  out["fixed"] = out["total"] - act_scale * per_row * mb_rows
  out["per_row"] = act_scale * per_row
  return out


def _encoder_bytes(encoder_dir: str) -> int:
  """The encoder's safetensors payload (it is loaded whole, replicated)."""
  import json
  import os
  import struct
  from r3jax.models import bert
  path = os.path.join(encoder_dir or bert.minilm_dir(), "model.safetensors")
  with open(path, "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
  return sum(math.prod(v["shape"]) * 4 for k, v in header.items() if k != "__metadata__")


def _fmt(b: float) -> str:
  return f"{b / GIB:,.2f} GiB" if b >= GIB / 10 else f"{b / (1 << 20):,.1f} MiB"


def table(p: dict, hbm_gib: float) -> str:
  lines = [f"{p['model']} on mesh {p['mesh']}", "", "| per device | bytes |", "|---|---|"]
  lines += [f"| {k} | {_fmt(v)} |" for k, v in p["rows"].items()]
  lines.append(f"| **total** | **{_fmt(p['total'])}** |")
  if p.get("value_saved"):
    lines.append(f"\nNo value model: {_fmt(p['value_saved'])} per device of value weights and optimizer "
                 "state saved, and its backward pass (activations counted once, not twice).")
  if p.get("reference_saved"):
    lines.append(f"\nNo reference model: {_fmt(p['reference_saved'])} per device of reference weights "
                 "saved, and its forward pass.")
  if hbm_gib:
    room = hbm_gib * GIB - p["fixed"]
    fits = int(room // p["per_row"]) if room > 0 else 0
    lines.append(f"\nWith {hbm_gib:g} GiB per device: the fixed state takes {_fmt(p['fixed'])}; "
                 f"at most {fits} minibatch rows per device fit ({_fmt(p['per_row'])} each).")
  return "\n".join(lines)


def suggest(config, devices: int, hbm_gib: float, remat: bool | None = None):
  """The mesh with the least tensor parallelism whose fixed state fits with room for a
  minibatch row: fsdp over everything first, tensor only when the weights need it."""
  t = 1
  while t <= devices and devices % t == 0:
    sizes = {"data": 1, "fsdp": devices // t, "tensor": t}
    p = plan(config, sizes, remat)
    if p["fixed"] + p["per_row"] <= hbm_gib * GIB:
      return sizes, p
    t *= 2
  return None, None


