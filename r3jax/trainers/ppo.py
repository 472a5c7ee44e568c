"""PPO for RLHF with the R³ reward (SPEC §4–5): policy, value, frozen reference, reward.

One iteration: sample n responses per prompt with the jitted sampler; score them with
R³; compute reference log-probs and values; shape per-token rewards with a KL penalty;
run masked GAE; then several epochs of clipped policy and value updates over minibatches.
The value model is a Qwen backbone (initialised from the SFT policy) with a scalar head.
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from r3jax import chat, checkpoint, metrics, optim, plot, sampling, sharding
from r3jax.data import readers, synthetic
from r3jax.losses import lm, ppo
from r3jax.models import bert, qwen
from r3jax.rewards import r3
from r3jax.trainers import common, sft


# ----------------------------------------------------------------------------- models


def value_init(cfg: qwen.QwenConfig, backbone):
  """Value params: a copy of a backbone and a zero-initialised scalar head."""
  return {"backbone": backbone,
          "head": {"w": jnp.zeros((cfg.hidden_size,), jnp.float32), "b": jnp.zeros((), jnp.float32)}}


def values_fn(vparams, cfg, tokens_BT, mask_BT):
  _, hidden_BTD, _ = qwen.Qwen(cfg).apply({"params": vparams["backbone"]}, tokens_BT, kv_mask_BS=mask_BT)
  return hidden_BTD.astype(jnp.float32) @ vparams["head"]["w"] + vparams["head"]["b"]


def response_logprobs(params, cfg, seq_BS, mask_BS, prompt_len: int):
  """Log-probs and entropies of the response tokens seq[:, prompt_len:], teacher-forced."""
  logits_BSV, _, _ = qwen.Qwen(cfg).apply({"params": params}, seq_BS, kv_mask_BS=mask_BS)
  logits_BNV = logits_BSV[:, prompt_len - 1:-1]
  return lm.token_logprobs(logits_BNV, seq_BS[:, prompt_len:]), lm.token_entropy(logits_BNV)


# ----------------------------------------------------------------------------- data


def prompt_rows(config, workdir: str):
  """Prompts with references and query types: the synthetic set, or a JSONL file of
  {prompt, reference?, query_type?} rows."""
  if config.data.prompts:
    rows = []
    for where, obj in readers.iter_records(config.data.prompts):
      if isinstance(obj, readers.DataError):
        raise obj
      if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
        raise readers.DataError(f"{where}: missing or empty field 'prompt'")
      rows.append({"prompt": obj["prompt"], "reference": obj.get("reference"),
                   "query_type": r3.query_type(obj.get("query_type"))})
    return rows
  return [{"prompt": ex["prompt"], "reference": ex["reference"], "query_type": ex["query_type"]}
          for ex in synthetic.generate(config.data.synthetic_examples, seed=config.data.prompt_seed)]


# ----------------------------------------------------------------------------- trainer


def warm_start(config, workdir: str, writer) -> str:
  """A directory with SFT params: config.init_from, or an SFT run in workdir/sft."""
  if config.init_from:
    return config.init_from
  sft_dir = os.path.join(workdir, "sft")
  sft_cfg = config.sft
  if not (checkpoint.exists(sft_dir) and
          checkpoint.manager(sft_dir, 1, 1, False).latest_step() == sft_cfg.steps):
    writer.print(f"SFT warm start: training the tiny SFT policy in {sft_dir}")
    sft.train(sft_cfg, sft_dir)
  else:
    writer.print(f"SFT warm start: reusing {sft_dir}")
  return sft_dir


def train(config, workdir: str) -> dict:
  common.check_paths(config)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  writer = metrics.Writer(workdir, config.steps)
  init_dir = warm_start(config, workdir, writer)
  policy = common.build_policy(config.model, workdir, config.tokenizer)
  cfg = policy.cfg.replace(dropout_rate=0.0)
  tok = policy.tokenizer
  rows = prompt_rows(config, workdir)
  encoder = bert.Encoder.from_dir(config.reward.encoder or bert.minilm_dir(),
                                  normalize=config.reward.normalize)
  reward_fn = r3.R3(encoder, max_len=config.rollout.max_new_tokens, mode=config.reward.mode)

  # Params: policy and reference from the SFT run, value backbone from it too.
  pol_tx = optim.make(config.optim, config.steps)
  val_tx = optim.make(ml_collections.ConfigDict({**config.optim.to_dict(), "lr": config.value_lr}),
                      config.steps)
  state, shardings = common.init_state(common.Policy(cfg, tok, None), pol_tx, mesh, rules, config.seed,
                                       init_from=init_dir)
  ref_params = jax.tree.map(jnp.copy, state["params"])
  vparams = value_init(cfg, jax.tree.map(jnp.copy, state["params"]))
  state = {"step": state["step"], "policy": state["params"], "policy_opt": state["opt_state"],
           "value": vparams, "value_opt": val_tx.init(vparams), "rng": state["rng"],
           "moments": ppo.Moments.init()._asdict(), "beta": jnp.float32(config.kl.beta)}

  mngr = checkpoint.manager(workdir, config.checkpoint.every, config.checkpoint.max_to_keep,
                            config.checkpoint.async_save)
  state, order = common.resume(mngr, state, len(rows), config.prompts_per_step, config.seed, writer)
  start = int(state["step"])

  scfg = sampling.SampleConfig(
      max_new_tokens=config.rollout.max_new_tokens, temperature=config.rollout.temperature,
      top_p=config.rollout.top_p, top_k=config.rollout.top_k, n=config.rollout.n,
      stop_ids=(tok.convert_tokens_to_ids(chat.IM_END),), pad_id=tok.pad_token_id)
  prompt_len = config.rollout.prompt_len

  @jax.jit
  def score_rollout(policy_params, value_params, ref, seq, mask):
    logp, ent = response_logprobs(policy_params, cfg, seq, mask, prompt_len)
    ref_logp, _ = response_logprobs(ref, cfg, seq, mask, prompt_len)
    values = values_fn(value_params, cfg, seq, mask)[:, prompt_len - 1:-1]
    return logp, ref_logp, values, ent

  def loss_fn(both, mb, train_policy):
    pol, val = both
    logp, ent = response_logprobs(pol, cfg, mb["seq"], mb["mask"], prompt_len)
    resp_mask = mb["resp_mask"]
    pl, pm = ppo.policy_loss(logp, mb["old_logp"], mb["adv"], resp_mask, config.ppo.clip_eps)
    v = values_fn(val, cfg, mb["seq"], mb["mask"])[:, prompt_len - 1:-1]
    vl, vm = ppo.value_loss(v, mb["old_values"], mb["returns"], resp_mask, config.ppo.value_clip)
    entropy = ppo.masked_mean(ent, resp_mask)
    total = (train_policy * (pl - config.ppo.entropy_coef * entropy) + config.ppo.vf_coef * vl)
    return total, {"policy/loss": pl, "value/loss": vl, "policy/entropy": entropy, **pm, **vm}

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3))
  def update(pol, pol_opt, val, val_opt, mb, train_policy):
    (_, m), (g_pol, g_val) = jax.value_and_grad(loss_fn, has_aux=True)((pol, val), mb, train_policy)
    u, pol_opt2 = pol_tx.update(g_pol, pol_opt, pol)
    pol2 = optax.apply_updates(pol, u)
    # During value warm-up the policy and its optimizer state stay untouched.
    pol = jax.tree.map(lambda a, b: jnp.where(train_policy > 0, a, b), pol2, pol)
    pol_opt = jax.tree.map(lambda a, b: jnp.where(train_policy > 0, a, b), pol_opt2, pol_opt)
    u, val_opt = val_tx.update(g_val, val_opt, val)
    return pol, pol_opt, optax.apply_updates(val, u), val_opt, m

  fixed = [{"role": "user", "content": r["prompt"]} for r in rows[:config.eval_prompts]]
  before = sft.generate_samples(policy, state["policy"], [[m] for m in fixed], config.rollout.max_new_tokens)
  timer = common.Timer()
  preempt = checkpoint.Preemption()
  rng = np.random.default_rng(config.seed)
  try:
    for it in range(start, config.steps):
      with timer("time/rollout"):
        idx = order.next()
        batch_rows = [rows[i] for i in idx]
        prompt_ids = [chat.tokenize(tok, chat.prompt_messages(r["prompt"]), True)[0] for r in batch_rows]
        p_tok, p_mask = sampling.left_pad(prompt_ids, tok.pad_token_id, prompt_len)
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), it)
        out = sampling.generate(state["policy"], jnp.asarray(p_tok), jnp.asarray(p_mask), key,
                                model_cfg=cfg, cfg=scfg)
        resp, resp_mask = np.asarray(out.tokens_BN), np.asarray(out.mask_BN)
      with timer("time/reward"):
        texts = sampling.decode(tok, out)
        rep = lambda xs: [x for x in xs for _ in range(config.rollout.n)]
        qtypes = rep([r["query_type"] for r in batch_rows])
        if config.reward.query_types == "random":
          qtypes = list(rng.choice(["open_ended", "closed_ended"], len(qtypes)))
        comps = reward_fn(rep([r["prompt"] for r in batch_rows]), texts,
                          rep([r["reference"] for r in batch_rows]), qtypes)
      with timer("time/reference_value"):
        seq = np.concatenate([np.repeat(p_tok, config.rollout.n, 0), resp], 1)
        mask = np.concatenate([np.repeat(p_mask, config.rollout.n, 0), resp_mask], 1)
        logp, ref_logp, values, ent = score_rollout(state["policy"], state["value"], ref_params, seq, mask)
        rm = jnp.asarray(resp_mask, jnp.float32)
        kl = ppo.kl_estimate(logp, ref_logp, config.kl.estimator) * rm
        score = jnp.asarray(comps["reward"], jnp.float32) * config.reward.scale
        moments = ppo.Moments(**state["moments"])
        if config.reward.normalize_score:
          moments = ppo.update_moments(moments, score)
          score = ppo.normalize_score(score, moments, clip=config.reward.clip)
        rewards = ppo.token_rewards(score, kl, rm, state["beta"])
        adv, returns = ppo.gae(rewards, values * rm, rm, config.ppo.gamma, config.ppo.lam)
        adv = ppo.masked_whiten(adv, rm) if config.ppo.whiten else adv
      with timer("time/update"):
        train_policy = jnp.float32(it >= config.ppo.value_warmup_steps)
        data = {k: jnp.asarray(v) for k, v in dict(
            seq=seq, mask=mask, resp_mask=rm, old_logp=logp, adv=adv, returns=returns,
            old_values=values).items()}
        n_rows = seq.shape[0]
        ms = []
        pol, pol_opt, val, val_opt = state["policy"], state["policy_opt"], state["value"], state["value_opt"]
        for epoch in range(config.ppo.epochs):
          perm = np.random.default_rng([config.seed, it, epoch]).permutation(n_rows)
          for j in range(0, n_rows, config.ppo.minibatch):
            mb = {k: v[perm[j:j + config.ppo.minibatch]] for k, v in data.items()}
            pol, pol_opt, val, val_opt, m = update(pol, pol_opt, val, val_opt, mb, train_policy)
            ms.append(m)
        kl_seq = float(jnp.mean(jnp.sum(kl, -1)))
        beta = state["beta"]
        if config.kl.adaptive:
          beta = ppo.adaptive_kl(beta, kl_seq, config.kl.target, config.kl.horizon,
                                 config.prompts_per_step * config.rollout.n)
        state = {**state, "step": state["step"] + 1, "policy": pol, "policy_opt": pol_opt,
                 "value": val, "value_opt": val_opt, "moments": moments._asdict(), "beta": beta}
      done = it + 1
      upd = {k: float(np.mean([float(m[k]) for m in ms])) for k in ms[0]}
      lengths = resp_mask.sum(1)
      vals = {**{f"reward/{k}": float(np.mean(v)) for k, v in comps.items()},
              "reward/score_normalized": float(jnp.mean(score)), "kl/seq_kl": kl_seq,
              "kl/beta": float(state["beta"]), "rollout/length": float(lengths.mean()),
              "rollout/truncated": float(1.0 - np.asarray(out.stopped_B).mean()),
              "rollout/entropy": float(ppo.masked_mean(ent, rm)),
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
  after = sft.generate_samples(policy, state["policy"], [[m] for m in fixed], config.rollout.max_new_tokens)
  write_before_after(workdir, fixed, before, after, reward_fn, rows[:config.eval_prompts])
  writer.close()
  if jax.process_index() == 0:
    plot.plot_workdir(workdir, PLOTS)
  return {"state": state}


PLOTS = {
    "reward": ["reward/reward", "reward/relevance", "reward/length_incentive",
               "reward/repetition_penalty", "reward/copies_query"],
    "kl_length": ["kl/seq_kl", "kl/beta", "rollout/length", "rollout/entropy"],
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
  with open(os.path.join(workdir, "before_after.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
