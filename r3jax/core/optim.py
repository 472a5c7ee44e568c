"""AdamW with warm-up schedules, global-norm clipping and decay masked off norms/biases."""

import jax
import optax


def schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warm-up to cfg.lr, then 'constant' or 'cosine' (to cfg.min_lr_ratio * lr)."""
  warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else int(cfg.warmup_ratio * total_steps)
  warmup = min(warmup, total_steps)
  ramp = optax.linear_schedule(0.0, cfg.lr, max(warmup, 1))
  if cfg.schedule == "constant":
    after = optax.constant_schedule(cfg.lr)
  elif cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warmup, 1), cfg.min_lr_ratio)
  else:
    raise ValueError(f"optim.schedule={cfg.schedule!r}: expected 'constant' or 'cosine'")
  return optax.join_schedules([ramp, after], [warmup]) if warmup else after


def decay_mask(params):
  """True for weight matrices and embeddings; False for norm scales and biases."""
  def keep(path, _):
    # The last dict key names the parameter (a boxed leaf adds an attribute key after it).
    name = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
    return not (name.endswith("bias") or name == "scale")
  return jax.tree_util.tree_map_with_path(keep, params)


def make(cfg, total_steps: int) -> optax.GradientTransformation:
  """cfg: lr, schedule, warmup_steps (or warmup_ratio with warmup_steps=-1), min_lr_ratio,
  b1, b2, eps, weight_decay, grad_clip (0: off)."""
  parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
  parts.append(optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
