"""Offline preference optimisation (DPO, Rafailov et al. 2023 §4, and its family) as a task
of the supervised loop on comparisons (trainers/preference.py): the policy's summed
response log-probs against a frozen reference's; the loss is the entry `config.loss.type` of
losses/preference.LOSSES.

Reference log-probs are computed per batch without gradient, or once for the whole
dataset up front (`loss.precompute_ref`), after which the reference weights are dropped.
A reference-free loss (needs_reference=False: SimPO, ORPO, CPO) builds no reference at
all. KTO (trainers/kto.py) shares the log-probs and the reference.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from r3jax.core.errors import DataError
from r3jax.losses import lm, preference as losses
from r3jax.models import qwen
from r3jax.trainers import harness, preference, state as state_lib, supervised


def sequence_logprobs(params, cfg, batch, prompt_len: int = 0):
  """Summed log-probs of each response, [B, K], and their token counts.

  prompt_len 0: every row runs in full. prompt_len P > 0: the batch is in the
  prompt-split layout of `pipeline.ranked_batch`. The prompt then runs once per comparison,
  into a KV cache that all K responses attend to, and the LM head runs on response
  positions only. The result is the same; the FLOPs drop by (K-1)·P/(K·T) in the decoder
  and by P/T in the head: a sixth and a third for pairs whose prompts take a third of T.
  Packed rows (data.packing, pipeline.packed_comparisons) give [R, C, K] (packed_logprobs).
  """
  if "branch_ids" in batch:
    return packed_logprobs(params, cfg, batch)
  b, k, t = batch["tokens"].shape
  flat = {n: v.reshape(b * k, t) for n, v in batch.items() if v.ndim == 3}
  model = qwen.Qwen(cfg)
  if not prompt_len:
    _, hidden_NRD, _ = model.apply({"params": params}, flat["tokens"][:, :-1],
                                   kv_mask_BS=flat["attn_mask"][:, :-1])
    start = 1  # Position t predicts token t + 1.
  else:
    start = p = prompt_len
    positions_NT = qwen.positions_from_mask(flat["attn_mask"])
    # The prompt columns of row 0 stand for all K; slots past P are hidden by causality.
    _, last_B1D, cache = model.apply(
        {"params": params}, batch["tokens"][:, 0, :p], positions_BT=positions_NT[::k, :p],
        kv_mask_BS=batch["attn_mask"][:, 0], cache=qwen.init_cache(cfg, b, t), last_only=True)
    cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), cache)
    _, hidden_NRD, _ = model.apply(
        {"params": params}, flat["tokens"][:, p:-1], positions_BT=positions_NT[:, p:-1],
        kv_mask_BS=flat["attn_mask"], cache=cache, cache_index=p)
    # The prompt's last position predicts the first response token; the rest follow.
    hidden_NRD = jnp.concatenate([jnp.repeat(last_B1D, k, axis=0), hidden_NRD], axis=1)
  # The model's logits go unused (and XLA drops them): lm.head_logprobs is cheaper to train.
  w_NR = flat["loss_mask"][:, start:].astype(jnp.float32)
  lp_NR = lm.head_logprobs(hidden_NRD, qwen.head_kernel(params, cfg), flat["tokens"][:, start:])
  return jnp.sum(lp_NR * w_NR, -1).reshape(b, k), jnp.sum(w_NR, -1).reshape(b, k)


def packed_logprobs(params, cfg, batch):
  """sequence_logprobs of packed comparisons (pipeline.packed_comparisons): [R, C, K] each,
  C the comparison slots of a row (0 in an empty one)."""
  r, c, k = batch["ends"].shape
  _, hidden_RTD, _ = qwen.Qwen(cfg).apply(
      {"params": params}, batch["tokens"][:, :-1], kv_mask_BS=batch["attn_mask"][:, :-1],
      segment_ids_BT=batch["segment_ids"][:, :-1], branch_ids_BT=batch["branch_ids"][:, :-1])
  w_RT = batch["loss_mask"][:, 1:].astype(jnp.float32)
  lp_RT = lm.head_logprobs(hidden_RTD, qwen.head_kernel(params, cfg), batch["tokens"][:, 1:]) * w_RT
  # Each trained target's response, c·K + k; every other token goes to one spare slot.
  slot_RT = jnp.where(w_RT > 0, (batch["segment_ids"][:, 1:] - 1) * k + batch["branch_ids"][:, 1:] - 1,
                      c * k)
  total = jax.vmap(lambda v_T, s_T: jax.ops.segment_sum(v_T, s_T, num_segments=c * k + 1)[:-1])
  return total(lp_RT, slot_RT).reshape(r, c, k), total(w_RT, slot_RT).reshape(r, c, k)


def dpo_loss(params, batch, rng, *, model_cfg, loss_config, prompt_len=0):
  """(sum of the comparisons' losses, their number, metric sums) for one microbatch; a
  packed row's empty slots (valid 0) weigh nothing."""
  del rng
  lp, n_tok = sequence_logprobs(params, model_cfg, batch, prompt_len)
  if lp.shape[-1] != 2:
    raise ValueError(f"DPO takes pairs, not {lp.shape[-1]} responses per comparison")
  lp, n_tok = lp.reshape(-1, 2), n_tok.reshape(-1, 2)
  w_N = (batch["valid"].reshape(-1) if "valid" in batch else jnp.ones(len(lp))).astype(jnp.float32)
  entry = losses.LOSSES[loss_config.type]
  ref = batch["ref_logp"].reshape(-1, 2) if entry.needs_reference else None
  losses_N, m = losses.dpo_loss(
      lp[:, 0], lp[:, 1], None if ref is None else ref[:, 0], None if ref is None else ref[:, 1],
      loss_type=loss_config.type, beta=loss_config.beta, label_smoothing=loss_config.label_smoothing,
      chosen_len_B=n_tok[:, 0], rejected_len_B=n_tok[:, 1], weight_B=w_N,
      **{name: loss_config[name] for name in entry.params})
  n = jnp.sum(w_N)  # The train step divides the sums by the total over microbatches.
  return jnp.sum(jnp.where(w_N > 0, losses_N, 0.0)), (n, {name: v * n for name, v in m.items()})


def check_pairs(train_rows, eval_rows) -> None:
  if any(len(r["responses"]) != 2 for r in itertools.chain(train_rows, eval_rows)):
    raise DataError("DPO needs pairs: some comparison has more than 2 responses")


def with_reference(ctx: supervised.Context):
  """fn(batch, split, idx) adding the reference's log-probs, [B, 2] (`reference`); a
  reference-free loss gets the batch as it is, and no reference is built."""
  config = ctx.run.config
  if not losses.LOSSES[config.loss.type].needs_reference:
    ctx.run.writer.print(f"loss.type={config.loss.type} is reference-free: no reference model")
    return lambda batch, split, idx: batch
  return reference(ctx, config.loss.precompute_ref)


def reference(ctx: supervised.Context, precompute: bool):
  """fn(batch, split, idx) adding "ref_logp", the reference's summed log-probs of each
  response, [B, K]. The reference is the starting policy: a copy of the fresh state (the
  train step donates it), or loaded again when the run resumes. `precompute`: computed
  once for every row up front, after which the reference weights are dropped (the rows'
  responses must not change from batch to batch)."""
  config, cfg = ctx.run.config, ctx.policy.cfg
  prompt_len = config.prompt_len
  run = ctx.run
  ref_params = (jax.tree.map(jnp.copy, ctx.state["params"]) if ctx.fresh else
                state_lib.initial_params(ctx.policy, config.init_from, ctx.state["params"],
                                         ctx.shardings["params"], run.mesh, run.rules, config.seed))
  ref_fn = jax.jit(lambda p, b: sequence_logprobs(p, cfg, b, prompt_len)[0])
  if not precompute:
    return lambda batch, split, idx: {**batch, "ref_logp": np.asarray(ref_fn(ref_params, batch))}
  cache = {}  # (split, row) -> [K] reference log-probs; the weights are dropped after.
  ctx.run.writer.print(f"precomputing reference log-probs for {len(ctx.train_rows) + ctx.n_eval} "
                       "rows of comparisons")
  with harness.mesh_rules(ctx.run.mesh, ctx.run.rules):
    for split, rows in (("train", ctx.train_rows), ("eval", ctx.eval_rows[:ctx.n_eval])):
      for i in range(0, len(rows), config.batch_size):
        idx = range(i, min(i + config.batch_size, len(rows)))
        batch, _ = ctx.batch_of([rows[j] for j in idx])
        cache.update({(split, j): v for j, v in zip(idx, np.asarray(ref_fn(ref_params, batch)))})
  return lambda batch, split, idx: {**batch,
                                    "ref_logp": np.stack([cache[(split, int(i))] for i in idx])}


TASK = preference.task(
    name="dpo",
    prompt_len=lambda config: config.prompt_len,  # The prompt-split layout (sequence_logprobs).
    check=check_pairs,
    make_loss=lambda config, cfg, deterministic: functools.partial(
        dpo_loss, model_cfg=cfg, loss_config=config.loss, prompt_len=config.prompt_len),
    prepare=with_reference,
    export=supervised.export_hf,
    accuracy="rewards/accuracy",
    plots={"dpo": ["train/loss", "eval/loss", "train/rewards/accuracy", "eval/rewards/accuracy",
                   "train/rewards/margin", "train/rewards/chosen", "train/rewards/rejected"]})
