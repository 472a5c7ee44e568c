"""One SFT step under several meshes; run by test_harness.py with 8 simulated devices.

Prints a JSON summary: per-mesh loss and max |param difference| against one device, and
the per-device shard shapes of a few parameters.
"""

import functools
import json
import runpy
import sys

import jax
import numpy as np

from r3jax.core import optim, sharding
from r3jax.data import pipeline
from r3jax.data import sources
from r3jax.trainers import harness, sft, state as state_lib, step as step_lib

MESHES = {
    "single": ((("data", 1), ("fsdp", 1), ("tensor", 1)), 1),
    "data=8": ((("data", 8), ("fsdp", 1), ("tensor", 1)), 8),
    "fsdp=8": ((("data", 1), ("fsdp", 8), ("tensor", 1)), 8),
    "data=2,fsdp=2,tensor=2": ((("data", 2), ("fsdp", 2), ("tensor", 2)), 8),
}


def one_step(config, spec, n_devices, workdir, rows):
  mesh = sharding.make_mesh(spec, jax.devices()[:n_devices])
  rules = sharding.rules_from_config(config.sharding.rules)
  policy = state_lib.build_policy(config.model, workdir)
  tx = optim.make(config.optim, 10)
  state, shardings = state_lib.init_state(policy, tx, mesh, rules, seed=0)
  accum = sharding.batch_split(config.batch_size, config.micro_batch_per_device,
                               sharding.data_parallel(mesh.shape))
  step_fn = step_lib.make_train_step(functools.partial(sft.loss_fn, model_cfg=policy.cfg),
                                   tx, shardings, mesh)
  batch, _ = pipeline.sft_batch(policy.tokenizer, rows, config.seq_len)
  with harness.mesh_rules(mesh, rules):
    state, m = step_fn(state, sharding.put_batch(pipeline.microbatches(batch, accum), mesh, 1))
  shards = {name: list(state["params"][name].addressable_shards[0].data.shape)
            for name in ("embed", "lm_head")}
  shards["q_kernel"] = list(state["params"]["layers_0"]["attn"]["q_kernel"].addressable_shards[0].data.shape)
  return float(m["loss"]), jax.device_get(state["params"]), shards


def main(workdir):
  config = runpy.run_path("configs/sft_qwen.py")["get_config"]("tiny")
  config.batch_size, config.seq_len, config.micro_batch_per_device = 16, 48, 1
  config.optim.update(warmup_steps=0, eps=1e-6)
  rows = [r["messages"] for r in sources.conversations(config.data, workdir, 0)[0][:16]]
  out, ref = {}, None
  for name, (spec, n) in MESHES.items():
    loss, params, shards = one_step(config, spec, n, workdir, rows)
    ref = ref or params
    diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)))
    changed = max(float(np.abs(a).max()) for a in jax.tree.leaves(params))
    out[name] = {"loss": loss, "max_param_diff": diff, "shards": shards, "max_abs_param": changed}
  print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1])
