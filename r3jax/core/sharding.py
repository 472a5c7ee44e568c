"""Device mesh, logical-axis rules, sharded state creation and batch placement.

The model names each array dimension logically (`embed`, `heads`, `act_batch`, ...); a
config's `sharding.rules` maps those names onto the mesh axes `data`, `fsdp` and
`tensor`. Nothing here knows about a particular model.
"""

import ast
import math
from typing import Any, Callable

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
import numpy as np

from r3jax.core.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# Weights: `embed` over fsdp (ZeRO-3 style), heads/mlp/vocab over tensor (Megatron style).
# Activations: batch over data and fsdp, features over tensor where the weight is.
DEFAULT_RULES = (
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
)


def parse_mesh(text: str):
  """A mesh spec from the command line, e.g. "(('data',1),('fsdp',8),('tensor',1))": a
  Python literal, never evaluated as code."""
  try:
    spec = ast.literal_eval(text)
    return tuple((str(name), int(size)) for name, size in spec)
  except (ValueError, TypeError, SyntaxError):
    raise ConfigError(f"mesh={text!r}: expected ((\"data\", d), (\"fsdp\", f), (\"tensor\", t))") from None


def mesh_shape(spec, n_devices: int) -> dict[str, int]:
  """{'data': d, 'fsdp': f, 'tensor': t} from (('data', -1), ('fsdp', 1), ...).

  At most one axis may be -1 (it takes the remaining devices).
  """
  try:
    spec = [(str(n), int(s)) for n, s in spec]
  except (TypeError, ValueError):
    raise ConfigError(f"mesh={spec!r}: expected (('data', d), ('fsdp', f), ('tensor', t))") from None
  names = [n for n, _ in spec]
  if sorted(names) != sorted(MESH_AXES):
    raise ConfigError(f"mesh={spec}: needs exactly the axes {MESH_AXES}")
  sizes = dict(spec)
  free = [n for n, s in sizes.items() if s == -1]
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise ConfigError(f"mesh={spec}: sizes must be positive, with at most one -1")
  if free:
    if n_devices % fixed:
      raise ConfigError(f"mesh={spec}: {n_devices} devices are not divisible by {fixed}")
    sizes[free[0]] = n_devices // fixed
  if math.prod(sizes.values()) != n_devices:
    raise ConfigError(f"mesh={spec}: uses {math.prod(sizes.values())} devices, "
                      f"but {n_devices} are available")
  return {n: sizes[n] for n in MESH_AXES}


def make_mesh(spec, devices=None) -> jax.sharding.Mesh:
  devices = devices if devices is not None else jax.devices()
  sizes = mesh_shape(spec, len(devices))
  shape = tuple(sizes[n] for n in MESH_AXES)
  try:  # Topology-aware on TPU; plain reshape elsewhere.
    grid = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(shape)
  return jax.sharding.Mesh(grid, MESH_AXES)


def rules_from_config(rules) -> tuple[tuple[str, Any], ...]:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def create_sharded(init_fn: Callable[[], Any], mesh, rules):
  """Runs `init_fn` (which returns LogicallyPartitioned leaves) directly into shardings.

  jit with out_shardings materialises each shard on its device, so no device ever holds
  the whole state. Returns (unboxed state, its shardings).
  """
  abstract = jax.eval_shape(init_fn)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
  with mesh, nn.logical_axis_rules(rules):
    state = jax.jit(lambda: nn.meta.unbox(init_fn()), out_shardings=shardings)()
  return state, shardings


def batch_sharding(mesh, ndim: int, batch_axis: int = 0) -> jax.sharding.NamedSharding:
  spec = [None] * ndim
  spec[batch_axis] = ("data", "fsdp")
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


def replicated(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def on_mesh(tree, mesh):
  """Leaves already laid out on `mesh` keep their sharding; the others (small state made
  outside `create_sharded`, e.g. LoRA adapters) are replicated on it, so that jit sees
  one device set and a restore puts them back the same way."""
  rep = replicated(mesh)

  def place(x):
    s = getattr(x, "sharding", None)
    if isinstance(s, jax.sharding.NamedSharding) and s.mesh == mesh:
      return x
    return jax.device_put(x, rep)

  return jax.tree.map(place, tree)


def put_batch(local_batch: dict[str, np.ndarray], mesh, batch_axis: int = 0):
  """Assembles global arrays from each process's rows (its slice of the global batch)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim, batch_axis), v)
          for k, v in local_batch.items()}


def local_rows(x: jax.Array, mesh) -> np.ndarray:
  """This process's rows of a global batch array, as put_batch takes them: the inverse of
  put_batch. With one process, the whole array."""
  if jax.process_count() == 1:
    return np.asarray(x)
  x = jax.jit(lambda a: a, out_shardings=batch_sharding(mesh, x.ndim))(x)
  rows = {s.index[0].start or 0: s.data for s in x.addressable_shards}  # Replicas collapse.
  return np.concatenate([np.asarray(rows[k]) for k in sorted(rows)])


def fetch(x) -> np.ndarray:
  """The whole value of a global array on every process (an all-gather across processes
  when it is not fully addressable); every process must call it."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def replicate(x: np.ndarray, mesh) -> jax.Array:
  """A host array, the same on every process, as a global array replicated on `mesh`."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, replicated(mesh), lambda i: x[i])


def host_gather(x) -> np.ndarray:
  """Every process's rows of a per-process host array, concatenated (for logging)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


def data_parallel(sizes) -> int:
  """The devices a batch is split over: data × fsdp of a mesh's shape (or a sizes dict)."""
  return sizes["data"] * sizes["fsdp"]


def batch_split(global_batch: int, micro_per_device: int, n: int) -> int:
  """Gradient-accumulation steps for a global batch over n data-parallel devices; a
  ConfigError when it does not divide."""
  per_step = micro_per_device * n
  if global_batch % per_step:
    raise ConfigError(
        f"batch_size={global_batch} is not a multiple of micro_batch_per_device "
        f"({micro_per_device}) x data-parallel devices ({n}) = {per_step}")
  if global_batch % jax.process_count():
    raise ConfigError(f"batch_size={global_batch} does not divide over "
                      f"{jax.process_count()} processes")
  return global_batch // per_step
