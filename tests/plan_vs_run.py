"""A tiny PPO run on 8 simulated devices against the planner; run by test_plan.py.

Prints one JSON line per LoRA rank given: the planner's per-device bytes for the state
rows, and the bytes one device actually holds for the same arrays after the run. Both
ranks run in one process, so the JAX start-up and the tokenizer are paid once.
"""

import json
import os
import runpy
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # pylint: disable=g-import-not-at-top

from r3jax.trainers import memory, ppo  # pylint: disable=g-import-not-at-top


def device0_bytes(tree) -> int:
  """Bytes of device 0's shards (a replicated leaf counts whole)."""
  dev = jax.devices()[0]
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev)


def main(workdir, *lora_ranks):
  for rank in lora_ranks:
    one_rank(os.path.join(workdir, f"lora{rank}"), rank)


def one_rank(workdir, lora_rank):
  config = runpy.run_path("configs/ppo_qwen.py")["get_config"]("tiny")
  config.mesh = (("data", 2), ("fsdp", 4), ("tensor", 1))
  config.init_from, config.model.allow_random_init = "random", True
  config.steps, config.prompts_per_step, config.ppo.minibatch = 1, 8, 8
  config.rollout.max_new_tokens, config.eval_prompts = 8, 1
  config.lora.rank = int(lora_rank)
  planned = memory.plan(config, {"data": 2, "fsdp": 4, "tensor": 1})["rows"]
  out = ppo.train(config, workdir)
  state, frozen = out["state"], out["frozen"]
  measured = {"policy": device0_bytes(state["policy"]) + (device0_bytes(frozen) if lora_rank != "0" else 0),
              "policy_opt": device0_bytes(state["policy_opt"]),
              "reference": 0 if lora_rank != "0" else device0_bytes(frozen),
              "value": device0_bytes(state["value"]) + device0_bytes(state["value_opt"])}
  by_prefix = lambda prefix: next(v for k, v in planned.items() if k.startswith(prefix))
  names = {"policy": "policy params", "policy_opt": "policy optimizer", "reference": "reference",
           "value": "value model"}
  print(f"PLAN_VS_RUN {lora_rank} " + json.dumps({"planned": {k: by_prefix(p) for k, p in names.items()},
                                                 "measured": measured}), flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])
