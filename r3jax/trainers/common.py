"""What every trainer shares: model and tokenizer set-up, sharded state, the jitted
train step with gradient accumulation, data loading with the embedded default, and
the checkpoint / preemption plumbing. Each trainer keeps its own loop."""

import collections
import contextlib
import dataclasses
import os
import sys
import time
from typing import Any, Callable

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from r3jax import checkpoint, paths, plot, sharding, tokenizer as tokenizer_lib
from r3jax.data import pipeline, readers, synthetic
from r3jax.models import hf, qwen


@dataclasses.dataclass
class Policy:
  """A decoder's config and tokenizer, and where its initial weights come from."""
  cfg: qwen.QwenConfig
  tokenizer: Any
  hf_dir: str | None  # Initial weights from an HF dir; None: random init.


def build_policy(mcfg, workdir: str, tokenizer_dir: str = "") -> Policy:
  """model.hf_dir: an HF Qwen2 checkpoint; else model.preset with the tiny tokenizer."""
  overrides = dict(param_dtype=mcfg.param_dtype, dtype=mcfg.dtype,
                   dropout_rate=mcfg.dropout_rate, remat=mcfg.remat)
  if mcfg.hf_dir:
    cfg = hf.load_config(mcfg.hf_dir, **overrides)
    return Policy(cfg, tokenizer_lib.load(tokenizer_dir or mcfg.hf_dir), mcfg.hf_dir)
  if mcfg.preset not in ("tiny", "bench") and not mcfg.get("allow_random_init", False):
    raise sharding.ConfigError(
        f"model.preset={mcfg.preset!r} is a full-size model: set --config.model.hf_dir=/path "
        "to an HF checkpoint (or --config.model.allow_random_init=True)")
  tok = (tokenizer_lib.load(tokenizer_dir) if tokenizer_dir else
         tokenizer_lib.tiny(cache_dir=os.path.join(workdir, "tokenizer")))
  cfg = qwen.preset(mcfg.preset, vocab_size=len(tok), **overrides)
  return Policy(cfg, tok, None)


def accumulation(config, mesh) -> int:
  """Gradient-accumulation steps for config.batch_size and micro_batch_per_device."""
  per_device = config.micro_batch_per_device or config.batch_size // (mesh.shape["data"] * mesh.shape["fsdp"])
  return sharding.batch_split(config.batch_size, per_device, mesh)


def even_rows(n: int, mesh) -> int:
  """The largest count <= n that splits evenly over the data shards and processes: how
  many held-out rows an evaluation uses (batch_size already divides the same way)."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"] * jax.process_count()
  return n - n % shards


def log_skipped(writer, skipped) -> None:
  for msg in skipped[:20]:
    writer.print(f"skipped: {msg}")
  if skipped:
    writer.print(f"skipped {len(skipped)} bad rows (data.skip_bad=True)")


def finish(writer, workdir: str, plots=None, skipped=(), truncated: int = 0, what: str = "rows",
           seq_len: int = 0) -> None:
  """End of a run: the data summary, closed logs and the PNG curves (written once)."""
  if skipped or truncated:
    writer.print(f"data: {len(skipped)} bad rows skipped, {truncated} {what} truncated "
                 f"to seq_len={seq_len}")
  writer.close()
  if jax.process_index() == 0:
    plot.plot_workdir(workdir, plots)


def export_hf(workdir: str, params, cfg, tok) -> str:
  """The final policy as an HF Qwen2 directory, workdir/hf: what eval_gen, sample and
  transformers load. Parameters are gathered to host, so this is for the end of a run."""
  path = os.path.join(workdir, "hf")
  params = jax.tree.map(sharding.fetch, params)  # Collective: every process takes part.
  if jax.process_index() == 0:
    with paths.local_dir(path) as local:
      hf.export(params, cfg, local, tokenizer=tok)
  return path


def check_paths(config) -> None:
  """Fails fast, before any work, on a user-given path that does not exist."""
  init_from = config.get("init_from", "")
  for field, path in (("init_from", "" if init_from == "random" else init_from),
                      ("model.hf_dir", config.model.hf_dir), ("tokenizer", config.get("tokenizer", "")),
                      ("data.train", config.data.get("train", "")), ("data.eval", config.data.get("eval", ""))):
    if path and not epath.Path(path).exists():
      raise FileNotFoundError(f"{field}={path}: no such file or directory")


def state_init_fn(cfg, tx, seed: int, scalar_head: bool = False):
  """A function building the train state with logical-axis metadata on every param and
  optimizer leaf: jit it into shardings (init_state), or eval_shape it (plan.py)."""
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
  else random. With `scalar_head` the params are a reward model's {backbone, head}: a
  source with a head (a reward-model run) fills both, a plain decoder only the backbone.
  """
  state, shardings = sharding.create_sharded(state_init_fn(policy.cfg, tx, seed, scalar_head),
                                             mesh, rules)
  source = init_from or policy.hf_dir
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


def load_params(source: str, cfg, like, param_shardings):
  if os.path.exists(os.path.join(source, "config.json")):
    return hf.load_params(source, cfg, shardings=param_shardings)
  return checkpoint.restore_params_from(source, checkpoint.abstract_like(like, param_shardings))


def make_train_step(loss_fn: Callable, tx, state_shardings, mesh, donate: bool = True):
  """Jitted (state, batch) -> (state, metrics) with gradient accumulation.

  `batch` leaves are [accum, micro, ...]. `loss_fn(params, microbatch, rng)` returns
  (loss_sum, weight_sum, aux_sums): sums over the microbatch, so that adding them up over
  microbatches and dividing once gives the exact global mean whatever the split. aux_sums
  are divided by the same weight and reported as metrics.
  """

  def step(state, batch):
    accum = jax.tree.leaves(batch)[0].shape[0]
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(carry, xs):
      mb, i = xs
      (loss, (weight, aux)), grads = grad_fn(state["params"], mb, jax.random.fold_in(step_key, i))
      return jax.tree.map(jnp.add, carry, (grads, loss, weight, aux)), None

    first = jax.tree.map(lambda x: x[0], batch)
    (_, (_, aux_shapes)), _ = jax.eval_shape(grad_fn, state["params"], first, step_key)
    init = (jax.tree.map(jnp.zeros_like, state["params"]), jnp.float32(0), jnp.float32(0),
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shapes))
    (grads, loss, weight, aux), _ = jax.lax.scan(micro, init, (batch, jnp.arange(accum)))
    weight = jnp.maximum(weight, 1e-9)
    grads = jax.tree.map(lambda g: g / weight, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss / weight, "grad_norm": global_norm(grads),
               "param_norm": global_norm(params), "weight": weight,
               **{k: v / weight for k, v in aux.items()}}
    return {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp")))
  return jax.jit(step, in_shardings=(state_shardings, batch_sh),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=(0,) if donate else ())


def global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def conversations(dcfg, workdir: str, seed: int):
  """(train_rows, eval_rows, skipped) from data.train / data.eval, or the embedded default.

  The embedded default generates the synthetic Q/A set (also written to workdir/data for
  inspection). Without data.eval, a data.eval_fraction of the train rows is held out.
  """
  skipped = []

  def load(path):
    if dcfg.get("use_tfds", False):
      from r3jax.data import tfds_local  # Local: TFDS is slow to import.
      name = os.path.splitext(os.path.basename(path))[0]
      return tfds_local.load_conversations(path, os.path.join(workdir, "tfds", name),
                                           dcfg.format, dcfg.skip_bad)
    return readers.load_conversations(path, dcfg.format, dcfg.skip_bad)

  if dcfg.train:
    loaded = load(dcfg.train)
    rows, skipped = loaded.rows, loaded.skipped
  else:
    examples = synthetic.generate(dcfg.synthetic_examples, seed=0,
                                  restate=dcfg.get("synthetic_restate", 0.0))
    rows = [dict(where=f"synthetic:{i}", **ex) for i, ex in enumerate(examples)]
    if jax.process_index() == 0:
      readers.write_jsonl(os.path.join(workdir, "data", "synthetic.jsonl"),
                          [{k: v for k, v in r.items() if k != "where"} for r in rows])
  if dcfg.eval:
    loaded = load(dcfg.eval)
    return rows, loaded.rows, skipped + loaded.skipped
  order = np.random.default_rng(seed).permutation(len(rows))
  n_eval = max(1, int(len(rows) * dcfg.eval_fraction))
  return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]], skipped


def resume(mngr, state, n_rows: int, batch_size: int, seed: int, writer):
  """(state, data order): from the latest checkpoint if there is one, else as given.

  The restore target takes each leaf's current sharding, so state comes back laid out
  as the fresh one was.
  """
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = checkpoint.restore(mngr, abstract)
  if restored is None:
    return state, pipeline.Order(n_rows, batch_size, seed)
  state, data_state, _ = restored
  order = pipeline.Order(n_rows, batch_size, seed, data_state["order"])
  writer.print(f"resumed from step {int(state['step'])} (data epoch {order.epoch}, batch {order.index})")
  return state, order


def save_step(mngr, step: int, state, data_state: dict, preempt, writer, last: bool) -> None:
  """Checkpoints on the manager's interval, on the last step, and on SIGTERM; after a
  SIGTERM it waits for the save and exits with status 143."""
  if checkpoint.save(mngr, step, state, data_state, force=preempt.requested or last):
    writer.flush()  # The logs reach the workdir (a URI may lag) at least as far as a checkpoint.
  if preempt.requested:
    mngr.wait_until_finished()
    writer.print(f"SIGTERM: saved a checkpoint at step {step}; exiting")
    writer.close()
    sys.exit(143)


class Timer:
  """Wall time per named phase; `read` returns the totals and resets them."""

  def __init__(self):
    self.totals = collections.defaultdict(float)

  @contextlib.contextmanager
  def __call__(self, name: str):
    t0 = time.perf_counter()
    yield
    self.totals[name] += time.perf_counter() - t0

  def read(self) -> dict[str, float]:
    out, self.totals = dict(self.totals), collections.defaultdict(float)
    return out


def unigram_loss(tokenizer, rows, limit: int = 2000) -> float:
  """Cross-entropy (nats) of the best context-free model of the trained tokens."""
  from r3jax import chat
  counts: dict[int, int] = {}
  for r in rows[:limit]:
    ids, mask = chat.tokenize(tokenizer, r["messages"])
    for i in ids[mask.astype(bool)]:
      counts[int(i)] = counts.get(int(i), 0) + 1
  p = np.array(list(counts.values()), np.float64)
  p /= p.sum()
  return float(-(p * np.log(p)).sum())


@contextlib.contextmanager
def mesh_rules(mesh, rules):
  """Context for tracing model code: the mesh plus the logical-axis rules."""
  with mesh, nn.logical_axis_rules(rules):
    yield
