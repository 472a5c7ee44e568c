"""PPO for RLHF with the R³ reward (SPEC §4–5): policy, value, frozen reference, reward.

One iteration: sample n responses per prompt with the jitted sampler; score them with
R³; compute reference log-probs and values; shape per-token rewards with a KL penalty;
run masked GAE; then several epochs of clipped policy and value updates over minibatches.
The value model is a Qwen backbone (initialised from the SFT policy) with a scalar head.
"""

import functools

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from r3jax import chat, checkpoint, lora, metrics, optim, sampling, sharding
from r3jax.data import pipeline, readers, synthetic
from r3jax.losses import lm, ppo
from r3jax import tokenizer as tokenizer_lib
from r3jax.models import bert, hf, qwen
from r3jax.rewards import query_types, r3
from r3jax.trainers import common, sft


# ----------------------------------------------------------------------------- models


def response_logprobs(params, cfg, seq_BS, mask_BS, prompt_len: int):
  """Log-probs and entropies of the response tokens seq[:, prompt_len:], teacher-forced."""
  logits_BSV, _, _ = qwen.Qwen(cfg).apply({"params": params}, seq_BS, kv_mask_BS=mask_BS)
  logits_BNV = logits_BSV[:, prompt_len - 1:-1]
  return lm.token_logprobs(logits_BNV, seq_BS[:, prompt_len:]), lm.token_entropy(logits_BNV)


# ----------------------------------------------------------------------------- data


def prompt_rows(config, workdir: str):
  """Prompts with references and query types: the synthetic set, or data.prompts in any of
  readers.to_prompt's forms ({prompt, reference?, query_type?}, Vicuna, Alpaca, SuperNI)."""
  if config.data.prompts:
    rows = []
    for r in readers.load_prompts(config.data.prompts).rows:
      try:
        qtype = r3.query_type(r.get("query_type"))
      except ValueError as e:
        raise readers.DataError(f"{r['where']}: field 'query_type': {e}") from None
      rows.append({"prompt": r["prompt"], "reference": r.get("reference"), "query_type": qtype})
    return rows
  return synthetic.questions(config.data.synthetic_examples, seed=config.data.prompt_seed)


def label_query_types(config, rows, policy_params, cfg, tok, writer) -> None:
  """reward.query_types: "field" (the data's own labels), "classifier" (zero-shot, with
  reward.classifier = an HF chat model dir, or the SFT policy when empty), or "random"
  (the ablation; drawn per rollout)."""
  how = config.reward.query_types
  if how not in ("field", "classifier", "random"):
    raise sharding.ConfigError(f"reward.query_types={how!r}; expected field, classifier or random")
  if how != "classifier":
    return
  if config.reward.classifier:
    qcfg, qparams = hf.load(config.reward.classifier)
    qtok = tokenizer_lib.load(config.reward.classifier)
  else:
    qcfg, qparams, qtok = cfg, policy_params, tok
  labels, _ = query_types.classify(qparams, qcfg, qtok, [r["prompt"] for r in rows])
  for r, label in zip(rows, labels):
    r["query_type"] = label
  writer.print(f"query types from the classifier: {labels.count('open_ended')} open-ended, "
               f"{labels.count('closed_ended')} closed-ended")


# ----------------------------------------------------------------------------- trainer


def ptx_rows(config, tok) -> np.ndarray | None:
  """PPO-ptx text packed into [rows, ptx.seq_len] token ids: ptx.data ({"text"} JSONL or
  .txt), else documents about the embedded synthetic entities."""
  if config.ptx.coef <= 0:
    return None
  if config.ptx.data:
    texts = [r["text"] for r in readers.load_texts(config.ptx.data).rows]
  else:
    texts = [" ".join(synthetic.facts(e)) for e in synthetic.entities(config.ptx.synthetic_docs, seed=7)]
  ids = np.concatenate([np.asarray(tok(t)["input_ids"] + [tok.eos_token_id], np.int32) for t in texts])
  n = len(ids) // config.ptx.seq_len
  if n < 1:
    raise readers.DataError(f"ptx.data={config.ptx.data}: fewer than ptx.seq_len={config.ptx.seq_len} tokens")
  return ids[:n * config.ptx.seq_len].reshape(n, config.ptx.seq_len)


def train(config, workdir: str) -> dict:
  common.check_paths(config)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  writer = metrics.Writer(workdir, config.steps)
  init_dir = sft.warm_start(config, workdir, writer.print)
  policy = common.build_policy(config.model, workdir, config.tokenizer)
  cfg = policy.cfg.replace(dropout_rate=0.0)
  tok = policy.tokenizer
  rows = prompt_rows(config, workdir)
  encoder = bert.Encoder.from_dir(config.reward.encoder or bert.minilm_dir(),
                                  normalize=config.reward.normalize)
  reward_fn = r3.R3(encoder, max_len=config.rollout.max_new_tokens, mode=config.reward.mode)
  ptx = ptx_rows(config, tok)
  n_rollouts = config.prompts_per_step * config.rollout.n
  if config.prompts_per_step % jax.process_count():
    raise sharding.ConfigError(f"prompts_per_step={config.prompts_per_step} does not divide over "
                               f"{jax.process_count()} processes")
  if n_rollouts % config.ppo.minibatch:
    raise sharding.ConfigError(f"prompts_per_step x rollout.n = {n_rollouts} is not a multiple "
                               f"of ppo.minibatch={config.ppo.minibatch}")

  # `frozen` is the SFT policy: the KL reference, and with LoRA also the base that both
  # the policy's and the value's adapters are added to. It is rebuilt from init_dir on
  # resume, so it is never checkpointed.
  pol_tx = optim.make(config.optim, config.steps)
  val_tx = optim.make(ml_collections.ConfigDict({**config.optim.to_dict(), "lr": config.value_lr}),
                      config.steps)
  use_lora = config.lora.rank > 0
  # With LoRA only the adapters are optimised: no full-size Adam state is built.
  state, _ = common.init_state(common.Policy(cfg, tok, None), optax.set_to_zero() if use_lora else pol_tx,
                               mesh, rules, config.seed, init_from=init_dir)
  frozen = state["params"]
  label_query_types(config, rows, frozen, cfg, tok, writer)
  head = qwen.init_scalar_head(cfg)
  if use_lora:
    lkey = jax.random.key(config.seed + 1)
    targets = tuple(config.lora.targets)
    pol = lora.init(jax.random.fold_in(lkey, 0), frozen, targets, config.lora.rank)
    val = {"lora": lora.init(jax.random.fold_in(lkey, 1), frozen, targets, config.lora.rank),
           "head": head}
    pol_opt = pol_tx.init(pol)
    writer.print(f"LoRA rank {config.lora.rank} on {targets}: {qwen.param_count(pol):,} trainable "
                 f"policy params of {qwen.param_count(frozen):,}")
  else:
    pol, pol_opt = jax.tree.map(jnp.copy, frozen), state["opt_state"]
    val = {"backbone": jax.tree.map(jnp.copy, frozen), "head": head}
  state = {"step": state["step"], "policy": pol, "policy_opt": pol_opt,
           "value": val, "value_opt": val_tx.init(val), "rng": state["rng"],
           "moments": ppo.Moments.init()._asdict(), "beta": jnp.float32(config.kl.beta)}
  state = sharding.on_mesh(state, mesh)

  def policy_params(pol, frozen):
    return lora.merge(frozen, pol, config.lora.alpha) if use_lora else pol

  def value_params(val, frozen):
    backbone = lora.merge(frozen, val["lora"], config.lora.alpha) if use_lora else val["backbone"]
    return {"backbone": backbone, "head": val["head"]}

  mngr = checkpoint.manager(workdir, config.checkpoint.every, config.checkpoint.max_to_keep,
                            config.checkpoint.async_save)
  state, order = common.resume(mngr, state, len(rows), config.prompts_per_step, config.seed, writer)
  start = int(state["step"])

  scfg = sampling.SampleConfig(
      max_new_tokens=config.rollout.max_new_tokens, temperature=config.rollout.temperature,
      top_p=config.rollout.top_p, top_k=config.rollout.top_k, n=config.rollout.n,
      stop_ids=(tok.convert_tokens_to_ids(chat.IM_END),), pad_id=tok.pad_token_id)
  prompt_len = config.rollout.prompt_len
  merged_policy = jax.jit(policy_params)

  @jax.jit
  def score_rollout(val, frozen, seq, mask):
    """Reference log-probs and values; the behaviour log-probs come from the sampler."""
    ref_logp, _ = response_logprobs(frozen, cfg, seq, mask, prompt_len)
    values = qwen.scalar_outputs(value_params(val, frozen), cfg, seq, mask)[:, prompt_len - 1:-1]
    return ref_logp, values

  def loss_fn(both, frozen, mb, train_policy):
    pol, val = both
    pol = policy_params(pol, frozen)  # Merged once, for the rollout log-probs and PPO-ptx.
    logp, ent = response_logprobs(pol, cfg, mb["seq"], mb["mask"], prompt_len)
    resp_mask = mb["resp_mask"]
    pl, pm = ppo.policy_loss(logp, mb["old_logp"], mb["adv"], resp_mask, config.ppo.clip_eps)
    v = qwen.scalar_outputs(value_params(val, frozen), cfg, mb["seq"], mb["mask"])[:, prompt_len - 1:-1]
    vl, vm = ppo.value_loss(v, mb["old_values"], mb["returns"], resp_mask, config.ppo.value_clip)
    entropy = ppo.masked_mean(ent, resp_mask)
    aux = {"policy/loss": pl, "value/loss": vl, "policy/entropy": entropy, **pm, **vm}
    pol_loss = pl - config.ppo.entropy_coef * entropy
    if ptx is not None:
      logits, _, _ = qwen.Qwen(cfg).apply({"params": pol}, mb["ptx"])
      nll, n = lm.masked_nll_sum(logits[:, :-1], mb["ptx"][:, 1:], jnp.ones_like(mb["ptx"][:, 1:]))
      aux["ptx/loss"] = nll / n
      pol_loss = pol_loss + config.ptx.coef * aux["ptx/loss"]
    return train_policy * pol_loss + config.ppo.vf_coef * vl, aux

  # Fixed output layouts: the state a step returns is laid out like the state a resume
  # restores, so both compile the same program and a resumed run stays bitwise equal.
  lay = jax.tree.map(lambda x: x.sharding, state)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3), out_shardings=(
      lay["policy"], lay["policy_opt"], lay["value"], lay["value_opt"], None))
  def update(pol, pol_opt, val, val_opt, frozen, mb, train_policy):
    (_, m), (g_pol, g_val) = jax.value_and_grad(loss_fn, has_aux=True)(
        (pol, val), frozen, mb, train_policy)
    u, pol_opt2 = pol_tx.update(g_pol, pol_opt, pol)
    pol2 = optax.apply_updates(pol, u)
    # During value warm-up the policy and its optimizer state stay untouched.
    pol = jax.tree.map(lambda a, b: jnp.where(train_policy > 0, a, b), pol2, pol)
    pol_opt = jax.tree.map(lambda a, b: jnp.where(train_policy > 0, a, b), pol_opt2, pol_opt)
    u, val_opt = val_tx.update(g_val, val_opt, val)
    m["policy/grad_norm"] = common.global_norm(g_pol)
    return pol, pol_opt, optax.apply_updates(val, u), val_opt, m

  fixed = [{"role": "user", "content": r["prompt"]} for r in rows[:config.eval_prompts]]
  with common.mesh_rules(mesh, rules):
    before = sft.generate_samples(policy, frozen, [[m] for m in fixed], config.rollout.max_new_tokens, mesh)
  timer = common.Timer()
  preempt = checkpoint.Preemption()
  rng = np.random.default_rng(config.seed)
  try:
    for it in range(start, config.steps):
      with timer("time/rollout"), common.mesh_rules(mesh, rules):
        idx = pipeline.process_slice(order.next())  # This process's prompts only.
        batch_rows = [rows[i] for i in idx]
        prompt_ids = [chat.tokenize(tok, chat.prompt_messages(r["prompt"]), True)[0] for r in batch_rows]
        p_tok, p_mask = sampling.left_pad(prompt_ids, tok.pad_token_id, prompt_len)
        prompts = sharding.put_batch({"tok": p_tok, "mask": p_mask}, mesh)
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), it)
        out = sampling.generate(merged_policy(state["policy"], frozen), prompts["tok"], prompts["mask"],
                                key, model_cfg=cfg, cfg=scfg)
        out_local = sampling.Samples(*(sharding.local_rows(x, mesh) for x in out))
        resp, resp_mask = out_local.tokens_BN, out_local.mask_BN
      with timer("time/reward"):
        texts = sampling.decode(tok, out_local)
        rep = lambda xs: [x for x in xs for _ in range(config.rollout.n)]
        qtypes = rep([r["query_type"] for r in batch_rows])
        if config.reward.query_types == "random":
          qtypes = list(rng.choice(["open_ended", "closed_ended"], len(qtypes)))
        comps = reward_fn(rep([r["prompt"] for r in batch_rows]), texts,
                          rep([r["reference"] for r in batch_rows]), qtypes)
      with timer("time/reference_value"), common.mesh_rules(mesh, rules):
        data = sharding.put_batch(dict(
            seq=np.concatenate([np.repeat(p_tok, config.rollout.n, 0), resp], 1),
            mask=np.concatenate([np.repeat(p_mask, config.rollout.n, 0), resp_mask], 1),
            resp_mask=resp_mask.astype(np.float32),
            old_logp=out_local.model_logprobs_BN * resp_mask,
            score=np.asarray(comps["reward"], np.float32) * config.reward.scale), mesh)
        ref_logp, values = score_rollout(state["value"], frozen, data["seq"], data["mask"])
        rm = data["resp_mask"]
        kl = ppo.kl_estimate(data["old_logp"], ref_logp, config.kl.estimator) * rm
        score = data.pop("score")
        moments = ppo.Moments(**state["moments"])
        if config.reward.normalize_score:
          moments = ppo.update_moments(moments, score)
          score = ppo.normalize_score(score, moments, clip=config.reward.clip)
        rewards = ppo.token_rewards(score, kl, rm, state["beta"])
        adv, returns = ppo.gae(rewards, values * rm, rm, config.ppo.gamma, config.ppo.lam)
        data.update(adv=ppo.masked_whiten(adv, rm) if config.ppo.whiten else adv,
                    returns=returns, old_values=values)
      with timer("time/update"), common.mesh_rules(mesh, rules):
        train_policy = jnp.float32(it >= config.ppo.value_warmup_steps)
        ms = []
        pol, pol_opt, val, val_opt = state["policy"], state["policy_opt"], state["value"], state["value_opt"]
        mbs = config.ppo.minibatch
        for epoch in range(config.ppo.epochs):
          perm_rng = np.random.default_rng([config.seed, it, epoch])
          perm = perm_rng.permutation(n_rollouts)
          for j in range(0, n_rollouts, mbs):
            mb = {k: v[perm[j:j + mbs]] for k, v in data.items()}
            if ptx is not None:
              mb["ptx"] = jnp.asarray(ptx[perm_rng.integers(0, len(ptx), config.ptx.batch)])
            pol, pol_opt, val, val_opt, m = update(pol, pol_opt, val, val_opt, frozen, mb, train_policy)
            ms.append(m)
        kl_seq = float(jnp.mean(jnp.sum(kl, -1)))
        beta = state["beta"]
        if config.kl.adaptive:
          beta = ppo.adaptive_kl(beta, kl_seq, config.kl.target, config.kl.horizon, n_rollouts)
        state = {**state, "step": state["step"] + 1, "policy": pol, "policy_opt": pol_opt,
                 "value": val, "value_opt": val_opt,
                 **sharding.on_mesh({"moments": moments._asdict(), "beta": beta}, mesh)}
      done = it + 1
      upd = {k: float(np.mean([float(m[k]) for m in ms])) for k in ms[0]}
      lengths = sharding.host_gather(resp_mask.sum(1))
      vals = {**{f"reward/{k}": float(np.mean(sharding.host_gather(v))) for k, v in comps.items()},
              "reward/score_normalized": float(jnp.mean(score)), "kl/seq_kl": kl_seq,
              "kl/beta": float(state["beta"]), "rollout/length": float(lengths.mean()),
              "rollout/truncated": float(1.0 - sharding.host_gather(out_local.stopped_B).mean()),
              "value/explained_variance": float(ppo.explained_variance(values, returns, rm)),
              **upd, **timer.read()}
      writer.scalars(done, vals, bar={"reward": vals["reward/reward"], "kl": kl_seq,
                                      "len": vals["rollout/length"]})
      writer.advance()
      if done % config.log_samples_every == 0:
        writer.texts(done, "rollouts", [{"prompt": p, "response": t, "reward": float(r)} for p, t, r in
                                        zip(rep([r["prompt"] for r in batch_rows])[:4], texts[:4], comps["reward"][:4])])
      common.save_step(mngr, done, state, {"order": order.state()}, preempt, writer,
                       last=done == config.steps)
    mngr.wait_until_finished()
  finally:
    preempt.restore_handler()
  final = merged_policy(state["policy"], frozen)
  with common.mesh_rules(mesh, rules):
    after = sft.generate_samples(policy, final, [[m] for m in fixed], config.rollout.max_new_tokens, mesh)
  write_before_after(workdir, fixed, before, after, reward_fn, rows[:config.eval_prompts])
  common.export_hf(workdir, final, cfg, tok)
  common.finish(writer, workdir, PLOTS)
  return {"state": state, "frozen": frozen}


PLOTS = {
    "reward": ["reward/reward", "reward/relevance", "reward/length_incentive",
               "reward/repetition_penalty", "reward/copies_query"],
    "kl_length": ["kl/seq_kl", "kl/beta", "rollout/length", "policy/entropy"],
    "losses": ["policy/loss", "value/loss", "policy/clipfrac", "value/explained_variance"],
    "time": ["time/rollout", "time/reward", "time/reference_value", "time/update"],
}


def write_before_after(workdir, prompts, before, after, reward_fn, rows):
  if jax.process_index() != 0:
    return
  q = [p["content"] for p in prompts]
  refs = [r["reference"] for r in rows]
  types = [r["query_type"] for r in rows]
  rb, ra = reward_fn(q, before, refs, types)["reward"], reward_fn(q, after, refs, types)["reward"]
  lines = ["| prompt | before (SFT) | R3 | after (PPO) | R3 |", "|---|---|---|---|---|"]
  cell = lambda s: s.replace("|", "\\|").replace("\n", " ")
  for p, b, a, x, y in zip(q, before, after, rb, ra):
    lines.append(f"| {cell(p)} | {cell(b)} | {x:.3f} | {cell(a)} | {y:.3f} |")
  (epath.Path(workdir) / "before_after.md").write_text("\n".join(lines) + "\n")
