"""The jitted train step every gradient-based trainer shares: a loss function injected by
the trainer, exact gradient accumulation over microbatches, and the optimizer update."""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from r3jax.core import sharding


def accumulation(config, mesh) -> int:
  """Gradient-accumulation steps for config.batch_size and micro_batch_per_device."""
  n = sharding.data_parallel(mesh.shape)
  per_device = config.micro_batch_per_device or config.batch_size // n
  return sharding.batch_split(config.batch_size, per_device, n)


def even_rows(n: int, mesh) -> int:
  """The largest count <= n that splits evenly over the data shards and processes: how
  many held-out rows an evaluation uses (batch_size already divides the same way)."""
  shards = sharding.data_parallel(mesh.shape) * jax.process_count()
  return n - n % shards


def make_train_step(loss_fn: Callable, tx, state_shardings, mesh, donate: bool = True,
                    skip_nonfinite: bool = False):
  """Jitted (state, batch) -> (state, metrics) with gradient accumulation.

  `batch` leaves are [accum, micro, ...]. `loss_fn(params, microbatch, rng)` returns
  (loss_sum, weight_sum, aux_sums): sums over the microbatch, so that adding them up over
  microbatches and dividing once gives the exact global mean whatever the split. aux_sums
  are divided by the same weight and reported as metrics.

  skip_nonfinite (nonfinite.action=skip): a step whose loss, gradient norm or new params
  are not finite keeps the old params and optimizer state, and reports `skipped` = 1.
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
    if skip_nonfinite:
      ok = finite(metrics["loss"], metrics["grad_norm"], metrics["param_norm"])
      params, opt_state = keep_if(ok, (params, opt_state), (state["params"], state["opt_state"]))
      metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
    return {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp")))
  return jax.jit(step, in_shardings=(state_shardings, batch_sh),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=(0,) if donate else ())


def finite(*scalars):
  return jnp.all(jnp.isfinite(jnp.stack(scalars)))


def keep_if(ok, new, old):
  """`new` where ok, else `old`, leaf by leaf (a skipped update)."""
  return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
