"""Training on comparisons: reward models (Bradley–Terry, SPEC §3) and offline preference
optimisation (the DPO family, SPEC §6). One loop; `config.trainer` picks the model and loss.

  rm   {backbone, head} scores each response at its last real token; the loss is
       Bradley–Terry over every pair of a K-wise ranking.
  dpo  the policy's summed response log-probs against a frozen reference's; the loss is
       `config.loss.type` in losses/preference.LOSS_TYPES.

Batches are [B, K, T] (K responses per comparison, best first). Reference log-probs are
computed per batch without gradient, or once for the whole dataset up front
(`loss.precompute_ref`), after which the reference weights are dropped.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from r3jax import checkpoint, metrics, optim, sharding
from r3jax.data import pipeline, readers, synthetic
from r3jax.losses import lm, preference
from r3jax.models import qwen
from r3jax.trainers import common, sft


def load_comparisons(dcfg, workdir: str, seed: int):
  """(train, eval, skipped) comparison rows: files, or the synthetic comparisons."""
  skipped = []
  if dcfg.train:
    loaded = readers.load_comparisons(dcfg.train, dcfg.skip_bad)
    rows, skipped = loaded.rows, loaded.skipped
  else:
    rows = [dict(where=f"synthetic:{i}", **c) for i, c in
            enumerate(synthetic.comparisons(dcfg.synthetic_examples, seed=dcfg.synthetic_seed))]
  if dcfg.eval:
    loaded = readers.load_comparisons(dcfg.eval, dcfg.skip_bad)
    return rows, loaded.rows, skipped + loaded.skipped
  order = np.random.default_rng(seed).permutation(len(rows))
  n_eval = max(1, int(len(rows) * dcfg.eval_fraction))
  return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]], skipped


def sequence_logprobs(params, cfg, batch, prompt_len: int = 0):
  """Summed log-probs of each response, [B, K], and their token counts.

  prompt_len 0: every row runs in full. prompt_len P > 0: the batch is in the
  prompt-split layout of `pipeline.ranked_batch`. The prompt then runs once per comparison,
  into a KV cache that all K responses attend to, and the LM head runs on response
  positions only. The result is the same; the FLOPs drop by (K-1)·P/(K·T) in the decoder
  and by P/T in the head: a sixth and a third for pairs whose prompts take a third of T.
  """
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


def rm_loss(params, batch, rng, *, model_cfg, margin):
  del rng
  b, k, t = batch["tokens"].shape
  r = qwen.sequence_scores(params, model_cfg, batch["tokens"].reshape(b * k, t),
                           batch["attn_mask"].reshape(b * k, t)).reshape(b, k)
  loss, m = preference.bradley_terry_ranked(r, margin)
  # Sums over the microbatch; the train step divides by the total weight.
  return loss * b, (jnp.float32(b), {n: v * b for n, v in m.items()})


def dpo_loss(params, batch, rng, *, model_cfg, lcfg, prompt_len=0):
  del rng
  lp, n_tok = sequence_logprobs(params, model_cfg, batch, prompt_len)
  ref = batch["ref_logp"]
  losses, m = preference.dpo_loss(
      lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], loss_type=lcfg.type, beta=lcfg.beta,
      label_smoothing=lcfg.label_smoothing, chosen_len_B=n_tok[:, 0], rejected_len_B=n_tok[:, 1])
  b = lp.shape[0]
  return jnp.sum(losses), (jnp.float32(b), {n: v * b for n, v in m.items()})


def save_model_dir(workdir: str, cfg, tok) -> None:
  """workdir/model: config.json and the tokenizer, so tools can load the run's model."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "model")
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(qwen.to_hf_config(cfg), f, indent=1)
  tok.save_pretrained(path)


def train(config, workdir: str) -> dict:
  is_rm = config.trainer == "rm"
  # DPO's prompt-split layout (see sequence_logprobs); reward models read whole rows.
  prompt_len = 0 if is_rm else config.prompt_len
  common.check_paths(config)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  accum = common.accumulation(config, mesh)
  policy = common.build_policy(config.model, workdir, config.tokenizer)
  cfg, tok = policy.cfg, policy.tokenizer
  batch_of = lambda rows: pipeline.ranked_batch(tok, rows, config.seq_len, prompt_len)
  train_rows, eval_rows, skipped = load_comparisons(config.data, workdir, config.seed)
  if not is_rm and any(len(r["responses"]) != 2 for r in train_rows + eval_rows):
    raise readers.DataError("DPO needs pairs: some comparison has more than 2 responses")
  steps = config.steps or config.epochs * (len(train_rows) // config.batch_size)
  tx = optim.make(config.optim, steps)
  writer = metrics.Writer(workdir, steps)
  common.log_skipped(writer, skipped)

  mngr = checkpoint.manager(workdir, config.checkpoint.every, config.checkpoint.max_to_keep,
                            config.checkpoint.async_save)
  # DPO starts from (and is regularised towards) an SFT policy, and a reward model starts
  # from one too: without init_from or an HF model the tiny SFT is trained first, as for PPO.
  init_from = config.init_from
  if not init_from and not policy.hf_dir and "sft" in config:
    init_from = sft.warm_start(config, workdir, writer.print)
  fresh = mngr.latest_step() is None
  state, shardings = common.init_state(policy, tx, mesh, rules, config.seed,
                                       init_from if fresh else "", scalar_head=is_rm)
  if is_rm:  # What scorers.RewardModel reads; a DPO policy is exported to hf/ instead.
    save_model_dir(workdir, cfg, tok)

  n_eval = common.even_rows(min(len(eval_rows), config.eval_batches * config.batch_size), mesh)
  if n_eval == 0:
    writer.print(f"no evaluation: {len(eval_rows)} held-out comparisons, fewer than the data "
                 "shards (raise data.eval_fraction or the dataset size)")
  ref_params, ref_cache = None, {}  # ref_cache: (split, row) -> [K] reference log-probs.
  if is_rm:
    loss_fn = functools.partial(rm_loss, model_cfg=cfg, margin=config.loss.margin)
  else:
    loss_fn = functools.partial(dpo_loss, model_cfg=cfg, lcfg=config.loss, prompt_len=prompt_len)
    # The reference is the starting policy: a copy of the fresh state (the train step
    # donates it), or loaded again when the run resumes.
    ref_params = (jax.tree.map(jnp.copy, state["params"]) if fresh else
                  common.load_params(init_from or policy.hf_dir, cfg, state["params"], shardings["params"]))
    ref_fn = jax.jit(lambda p, b: sequence_logprobs(p, cfg, b, prompt_len)[0])
    if config.loss.precompute_ref:
      writer.print(f"precomputing reference log-probs for {len(train_rows) + n_eval} comparisons")
      with common.mesh_rules(mesh, rules):
        for split, rows in (("train", train_rows), ("eval", eval_rows[:n_eval])):
          for i in range(0, len(rows), config.batch_size):
            idx = range(i, min(i + config.batch_size, len(rows)))
            batch, _ = batch_of([rows[j] for j in idx])
            ref_cache.update({(split, j): v for j, v in zip(idx, np.asarray(ref_fn(ref_params, batch)))})
      ref_params = None  # From here on only the numbers are needed.

  def with_ref(batch, split, idx):
    if not is_rm:
      batch["ref_logp"] = (np.stack([ref_cache[(split, int(i))] for i in idx]) if ref_cache
                           else np.asarray(ref_fn(ref_params, batch)))
    return batch

  state, order = common.resume(mngr, state, len(train_rows), config.batch_size, config.seed, writer)
  start = int(state["step"])
  step_fn = common.make_train_step(loss_fn, tx, shardings, mesh)
  eval_loss = jax.jit(functools.partial(loss_fn, rng=None))
  writer.print(f"{config.trainer}: {qwen.param_count(state['params']):,} params; mesh {dict(mesh.shape)}; "
               f"{len(train_rows)} train / {len(eval_rows)} eval comparisons; {steps} steps of "
               f"{config.batch_size}")

  def evaluate(step):
    if n_eval == 0:
      return {}
    sums, total = {}, 0.0
    for i in range(0, n_eval, config.batch_size):
      idx = pipeline.process_slice(np.arange(i, min(i + config.batch_size, n_eval)))
      batch, _ = batch_of([eval_rows[j] for j in idx])
      loss, (w, aux) = eval_loss(state["params"], sharding.put_batch(with_ref(batch, "eval", idx), mesh))
      total += float(w)
      for k, v in {"loss": loss, **aux}.items():
        sums[k] = sums.get(k, 0.0) + float(v)
    out = {f"eval/{k}": v / max(total, 1.0) for k, v in sums.items()}
    writer.scalars(step, out)
    return out

  preempt = checkpoint.Preemption()
  truncated, last_eval = 0, {}
  try:
    with common.mesh_rules(mesh, rules):
      if start == 0:
        last_eval = evaluate(0)
      for step in range(start, steps):
        idx = pipeline.process_slice(order.next())
        batch, n_trunc = batch_of([train_rows[i] for i in idx])
        truncated += n_trunc
        batch = with_ref(batch, "train", idx)
        state, m = step_fn(state, sharding.put_batch(pipeline.microbatches(batch, accum), mesh, 1))
        writer.advance()
        done = step + 1
        if done % config.log_every == 0 or done == steps:
          m = jax.device_get(m)
          acc = m.get("rm/accuracy", m.get("rewards/accuracy"))
          writer.scalars(done, {**{f"train/{k}": v for k, v in m.items()},
                                "train/lr": optim.schedule(config.optim, steps)(step),
                                "data/truncated": truncated, "data/epoch": order.epoch},
                         bar={"loss": m["loss"], "acc": acc})
        if n_eval and (done % config.eval_every == 0 or done == steps):
          last_eval = evaluate(done)
          acc = last_eval.get("eval/rm/accuracy", last_eval.get("eval/rewards/accuracy"))
          writer.print(f"step {done}: eval loss {last_eval['eval/loss']:.4f}, pairwise accuracy {acc:.3f}")
        common.save_step(mngr, done, state, {"order": order.state()}, preempt, writer,
                         last=done == steps)
    mngr.wait_until_finished()
  finally:
    preempt.restore_handler()
  if not is_rm:
    common.export_hf(workdir, state["params"], cfg, tok)
  common.finish(writer, workdir, PLOTS_RM if is_rm else PLOTS_DPO, skipped, truncated,
                f"responses (prompt_len={prompt_len})" if prompt_len else "responses", config.seq_len)
  return {"params": state["params"], "eval": last_eval, "cfg": cfg, "tokenizer": tok}


PLOTS_RM = {"rm": ["train/loss", "eval/loss", "train/rm/accuracy", "eval/rm/accuracy",
                   "train/rm/margin", "train/rm/reward_std"]}
PLOTS_DPO = {"dpo": ["train/loss", "eval/loss", "train/rewards/accuracy", "eval/rewards/accuracy",
                     "train/rewards/margin", "train/rewards/chosen", "train/rewards/rejected"]}
