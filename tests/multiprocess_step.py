"""One sharded SFT step and one DPO step, run by test_multiprocess.py as 1 process or as 2
processes (one launch does both: process start-up and jax.distributed dominate the cost).

  python tests/multiprocess_step.py OUT_DIR NUM_PROCESSES PROCESS_ID PORT

Each process has 2 CPU devices; the mesh is data=2 x fsdp=2 over all 4 devices either way
(1 process: 4 local devices). Each process builds only its slice of the batch
(pipeline.process_slice). Process 0 writes each loss and the gathered params to OUT_DIR.
"""

import functools
import json
import os
import runpy
import sys

out_dir, n_proc, proc_id, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // n_proc}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # pylint: disable=g-import-not-at-top

if n_proc > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=n_proc,
                             process_id=proc_id, initialization_timeout=120)

import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

from r3jax.core import optim, sharding  # pylint: disable=g-import-not-at-top
from r3jax.data import pipeline, synthetic  # pylint: disable=g-import-not-at-top
from r3jax.trainers import dpo, harness, sft, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top


def step(trainer):
  config = runpy.run_path("configs/sft_qwen.py")["get_config"]("tiny")
  config.batch_size, config.seq_len = 8, 48
  config.optim.update(warmup_steps=0, eps=1e-6, lr=3e-3)
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 1)))
  rules = sharding.rules_from_config(config.sharding.rules)
  policy = state_lib.build_policy(config.model, out_dir)  # The tiny tokenizer, cached in out_dir.
  tx = optim.make(config.optim, 10)
  state, shardings = state_lib.init_state(policy, tx, mesh, rules, seed=0)
  idx = pipeline.process_slice(np.arange(config.batch_size))
  if trainer == "sft":
    rows = [ex["messages"] for ex in synthetic.generate(config.batch_size, seed=5)]
    batch, _ = pipeline.sft_batch(policy.tokenizer, [rows[i] for i in idx], config.seq_len)
    loss_fn = functools.partial(sft.loss_fn, model_cfg=policy.cfg)
  else:  # dpo: the reference is the initial policy, its log-probs computed on the mesh.
    rows, p_len = synthetic.comparisons(config.batch_size, seed=5), 24  # The shared-prompt path.
    batch, _ = pipeline.ranked_batch(policy.tokenizer, [rows[i] for i in idx], config.seq_len, p_len)
    ref = jax.jit(lambda p, b: dpo.sequence_logprobs(p, policy.cfg, b, p_len)[0])
    with harness.mesh_rules(mesh, rules):
      ref_logp = ref(state["params"], sharding.put_batch(batch, mesh))
    batch["ref_logp"] = np.asarray(multihost_utils.process_allgather(ref_logp, tiled=True))[idx]
    loss_config = ml_collections.ConfigDict(dict(type="sigmoid", beta=0.1, label_smoothing=0.0))
    loss_fn = functools.partial(dpo.dpo_loss, model_cfg=policy.cfg, loss_config=loss_config, prompt_len=p_len)
  step_fn = step_lib.make_train_step(loss_fn, tx, shardings, mesh)
  with harness.mesh_rules(mesh, rules):
    state, m = step_fn(state, sharding.put_batch(pipeline.microbatches(batch, 1), mesh, 1))
  params = multihost_utils.process_allgather(state["params"], tiled=True)
  loss = float(m["loss"].addressable_shards[0].data)  # Replicated: every process has it.
  if jax.process_index() == 0:
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(os.path.join(out_dir, f"params_{trainer}_{n_proc}.npz"), **flat)
    with open(os.path.join(out_dir, f"result_{trainer}_{n_proc}.json"), "w") as f:
      json.dump({"loss": loss, "processes": jax.process_count(), "devices": jax.device_count(),
                 "local_rows": len(idx)}, f)


if __name__ == "__main__":
  step("sft")
  step("dpo")
