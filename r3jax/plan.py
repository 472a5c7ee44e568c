r"""Per-device memory of a PPO (or SFT/DPO) run on a mesh, before any device is touched
(r3jax/trainers/memory.py says how each row is computed).

  python -m r3jax.plan --config=configs/ppo_qwen.py:qwen-7b --mesh="(('data',1),('fsdp',8),('tensor',1))"
  python -m r3jax.plan --config=configs/ppo_qwen.py:qwen-7b --tpu=v5e-16

--hbm_gib gives the largest per-device minibatch that fits; --tpu suggests a mesh for a
TPU type.
"""

import math
import sys

from absl import app, flags
from ml_collections import config_flags

from r3jax.core import cli, sharding
from r3jax.core.errors import ConfigError
from r3jax.trainers import memory

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py[:preset]).")
_MESH = flags.DEFINE_string("mesh", "", "Mesh as in the config, e.g. \"(('data',1),('fsdp',8),('tensor',1))\".")
_HBM = flags.DEFINE_float("hbm_gib", 0.0, "Per-device memory in GiB (default: the TPU type's).")
_TPU = flags.DEFINE_string("tpu", "", "TPU type (v4-8, v5e-16, v5p-64, ...): suggests a mesh.")
_REMAT = flags.DEFINE_bool("remat", None, "Override model.remat for the activation row.")


def suggest_mesh(config) -> None:
  devices, hbm = memory.tpu_devices(_TPU.value)
  hbm = _HBM.value or hbm
  sizes, p = memory.suggest(config, devices, hbm, _REMAT.value)
  if sizes is None:
    sys.exit(f"{config.model.preset}: no data/fsdp/tensor mesh of {devices} devices fits "
             f"{hbm:g} GiB per device; use LoRA, remat or a larger slice")
  print(f"{_TPU.value}: {devices} devices x {hbm:g} GiB; suggested mesh "
        f"(('data', {sizes['data']}), ('fsdp', {sizes['fsdp']}), ('tensor', {sizes['tensor']}))\n")
  print(memory.table(p, hbm))


def check_flags(config) -> None:
  """A ConfigError naming the first bad flag, before any planning: a negative or nan
  --hbm_gib would otherwise print a table that fits nothing, or everything."""
  if config is None:
    raise ConfigError("--config=configs/<recipe>.py[:preset] is required")
  if _HBM.present:  # Its default, 0, stands for the TPU type's memory.
    cli.check_numbers({"hbm_gib": "(0, inf)"})


def main(argv):
  del argv
  config = _CONFIG.value
  with cli.user_errors():
    check_flags(config)
    try:
      if _TPU.value:
        return suggest_mesh(config)
      spec = sharding.parse_mesh(_MESH.value) if _MESH.value else tuple(config.mesh)
      if any(s == -1 for _, s in spec):
        raise ConfigError(f"--mesh={spec}: give every axis its size (no -1) to plan for it")
      sizes = sharding.mesh_shape(spec, math.prod(s for _, s in spec))
      print(memory.table(memory.plan(config, sizes, _REMAT.value), _HBM.value))
    except ValueError as e:  # memory.tpu_devices: a malformed --tpu.
      raise ConfigError(str(e)) from None


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
