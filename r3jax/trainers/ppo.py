"""RL from a reward (InstructGPT, Ouyang et al. 2022 §3.5; the Qwen report, Bai et al. 2023
§3.2.2): PPO with a value model, or any method of rl/algorithms.METHODS (GRPO, RLOO,
REINFORCE++, GSPO, ...) on the same phases, against any scorer, R³ by default (Kim & Seo
2024, "Preference-free Alignment Learning with Regularized Relevance Reward", §3).

One iteration is five phases, each a module-level function over an explicit state, passing
the typed records of rl/records.py:

  rollout          sample n responses per prompt with the jitted sampler -> Rollout
  score            the reward's components for each response (rewards/scorers) -> Scored;
                   with rollout.dynamic_sampling (DAPO) both repeat on the next prompts
                   while groups of equal rewards are dropped (sample_batch)
  reference_value  reference log-probs and values of the rollouts -> RLBatch
  advantages       (one jitted program) each reward term normalised by its running
                   moments, their weighted sum (plus DAPO's overlong penalty), per-token
                   rewards (β·KL in them when kl.placement=reward), then `ppo.advantage`
                   (algorithms.ADVANTAGES) -> the RLBatch completed
  update           `ppo.epochs` passes over minibatches of the sum of the active
                   algorithms.LOSS_TERMS (policy, entropy, KL, ptx, value), then the
                   adaptive KL coefficient

`Setup` holds what stays fixed during a run (models' configs, jitted functions, the frozen
SFT weights); `state` holds what a checkpoint saves. A value model (only for estimators
that use one) is a Qwen backbone with a scalar head, initialised from the SFT policy, or
from the reward model (value.init_from_reward, PPO-max: Zheng et al. 2023).
"""

import dataclasses
import functools
import json
from typing import Any, Callable

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from r3jax.core import optim, plots, sharding
from r3jax.core.errors import ConfigError
from r3jax.data import chat, padding, pipeline, sources, tokenizer as tokenizer_lib
from r3jax.eval import gold, text_metrics as tm
from r3jax.losses import lm
from r3jax.models import hf, lora, qwen, engines, sampling
from r3jax.rewards import query_types, r3, scorers
from r3jax.rl import algorithms, ops
from r3jax.rl.records import Forward, Iteration, RLBatch, Rollout, Scored
from r3jax.trainers import harness, state as state_lib, step as step_lib


@dataclasses.dataclass(frozen=True)
class Setup:
  """What stays fixed during a PPO run; every phase reads it."""
  config: Any
  cfg: qwen.QwenConfig
  tok: Any
  run: harness.Run
  scorer: scorers.Mix  # The reward spec's terms; raw values [N, terms] via scorer.raw.
  ptx: np.ndarray | None
  sample_cfg: sampling.SampleConfig
  frozen: Any  # The SFT params: the KL reference, and with LoRA the adapters' base.
  merged_policy: Callable  # (policy, frozen) -> full policy params
  ref_value: Callable  # (value | None, frozen, seq, mask) -> (reference log-probs, values)
  update_fn: Callable  # One jitted minibatch update.
  gold: bool = False  # The prompts are the embedded world's: the gold judge reads every rollout.
  uses_value: bool = True  # ppo.advantage needs a value model (GAE); state has one.


def response_logprobs(params, cfg, seq_BS, mask_BS, prompt_len: int):
  """Log-probs and entropies of the response tokens seq[:, prompt_len:], teacher-forced."""
  # The head runs on response positions only, through the lean head (no [B, N, V] residual).
  _, hidden_BSD, _ = qwen.Qwen(cfg).apply({"params": params}, seq_BS, kv_mask_BS=mask_BS)
  return lm.head_logprobs_entropy(hidden_BSD[:, prompt_len - 1:-1], qwen.head_kernel(params, cfg),
                                  seq_BS[:, prompt_len:])


def policy_params(config, pol, frozen):
  return lora.merge(frozen, pol, config.lora.alpha) if config.lora.rank > 0 else pol


def value_params(config, val, frozen):
  backbone = (lora.merge(frozen, val["lora"], config.lora.alpha) if config.lora.rank > 0
              else val["backbone"])
  return {"backbone": backbone, "head": val["head"]}


def optimizers(config):
  """(policy, value) optimizers: the same schedule, each with its own learning rate."""
  val_optim = ml_collections.ConfigDict({**config.optim.to_dict(), "lr": config.value_lr})
  return optim.make(config.optim, config.steps), optim.make(val_optim, config.steps)


# ----------------------------------------------------------------------------- set-up


def init_rl_state(config, run, cfg, tok, init_from: str):
  """(state, frozen): the policy, the value model (when ppo.advantage uses one), their
  optimizers, the per-term score moments and the KL coefficient, on the mesh. `frozen` is
  rebuilt from init_from on resume, so it is never checkpointed."""
  pol_tx, val_tx = optimizers(config)
  use_lora = config.lora.rank > 0
  # With LoRA only the adapters are optimised: no full-size Adam state is built.
  state, _ = state_lib.init_state(state_lib.Policy(cfg, tok, None),
                                  optax.set_to_zero() if use_lora else pol_tx,
                                  run.mesh, run.rules, config.seed, init_from=init_from)
  frozen = state["params"]
  lkey = jax.random.key(config.seed + 1)
  targets = tuple(config.lora.targets)
  if use_lora:
    pol = lora.init(jax.random.fold_in(lkey, 0), frozen, targets, config.lora.rank)
    pol_opt = pol_tx.init(pol)
    run.writer.print(f"LoRA rank {config.lora.rank} on {targets}: {qwen.param_count(pol):,} "
                     f"trainable policy params of {qwen.param_count(frozen):,}")
  else:
    pol, pol_opt = jax.tree.map(jnp.copy, frozen), state["opt_state"]
  terms = len(scorers.terms(config.reward.mode))
  moments = jax.tree.map(lambda x: jnp.full((terms,), x), ops.Moments.init()._asdict())
  state = {"step": state["step"], "policy": pol, "policy_opt": pol_opt, "rng": state["rng"],
           "moments": moments, "beta": jnp.float32(config.kl.beta)}
  if algorithms.uses_value(config):
    if use_lora:
      val = {"lora": lora.init(jax.random.fold_in(lkey, 1), frozen, targets, config.lora.rank),
             "head": qwen.init_scalar_head(cfg)}
    elif config.value.init_from_reward:
      val = reward_model_value(config, cfg, frozen)
    else:
      val = {"backbone": jax.tree.map(jnp.copy, frozen), "head": qwen.init_scalar_head(cfg)}
    state.update(value=val, value_opt=val_tx.init(val))
  return sharding.on_mesh(state, run.mesh), frozen


def reward_model_value(config, cfg, frozen):
  """value.init_from_reward (PPO-max): the value model starts as the reward model (backbone
  and head), laid out like the policy. The reward model must have the policy's shape."""
  (path,) = [n for _, n in scorers.terms(config.reward.mode) if n not in scorers.REWARDS]
  reward_model = scorers.RewardModel(path)
  mine, theirs = qwen.to_hf_config(cfg), qwen.to_hf_config(reward_model.cfg)
  diff = [f"{k} {theirs.get(k)} vs {mine.get(k)}" for k in sorted(mine) if theirs.get(k) != mine.get(k)
          and k not in ("torch_dtype",)]
  if diff:
    raise ConfigError(f"value.init_from_reward: the reward model {path} is not the policy's "
                      f"architecture ({'; '.join(diff[:3])})")
  backbone = jax.tree.map(lambda x, like: jax.device_put(x.astype(like.dtype), like.sharding),
                          reward_model.params["backbone"], frozen)
  return {"backbone": backbone, "head": reward_model.params["head"]}


def forward(config, cfg, trainable, frozen, mb: RLBatch, ptx_BL) -> Forward:
  """What the models being trained say of a minibatch: the policy's log-probs and entropies
  of its responses, the value model's values (if any), the LM loss on a PPO-ptx batch."""
  prompt_len = config.rollout.prompt_len
  pol = policy_params(config, trainable["policy"], frozen)  # Merged once, for the log-probs and PPO-ptx.
  logp, ent = response_logprobs(pol, cfg, mb.seq_BS, mb.mask_BS, prompt_len)
  fwd = Forward(logp, ent)
  if ptx_BL is not None:
    _, hidden, _ = qwen.Qwen(cfg).apply({"params": pol}, ptx_BL)
    nll, n = lm.masked_nll_sum(hidden[:, :-1], qwen.head_kernel(pol, cfg), ptx_BL[:, 1:],
                               jnp.ones_like(ptx_BL[:, 1:]))
    fwd = fwd.replace(ptx_nll=nll / n)
  if "value" in trainable:
    v = qwen.scalar_outputs(value_params(config, trainable["value"], frozen), cfg, mb.seq_BS,
                            mb.mask_BS)[:, prompt_len - 1:-1]
    fwd = fwd.replace(values_BT=v)
  return fwd


def make_loss(config, cfg):
  """The RL objective of one minibatch: the sum of the active algorithms.LOSS_TERMS (the
  policy-side terms gated by train_policy during the value warm-up)."""

  def loss_fn(trainable, frozen, mb: RLBatch, ptx_BL, train_policy, beta):
    fwd = forward(config, cfg, trainable, frozen, mb, ptx_BL)
    return algorithms.objective(config, fwd, mb, train_policy, beta)

  return loss_fn


MODELS = ("policy", "policy_opt", "value", "value_opt")  # What an update changes (those in state).


def make_update(config, loss_fn, lay):
  """One jitted minibatch step of the policy (and the value model, if any): {name: tree}
  for the MODELS in state -> (the same, metrics). Fixed output layouts: the state a step
  returns is laid out like the state a resume restores, so both compile the same program
  and a resumed run stays bitwise equal. With nonfinite.action=skip, a non-finite step
  keeps the old models and reports update/skipped = 1."""
  pol_tx, val_tx = optimizers(config)
  names = [k for k in MODELS if k in lay]
  skip = config.nonfinite.action == "skip"

  @functools.partial(jax.jit, donate_argnums=(0,), out_shardings=({k: lay[k] for k in names}, None))
  def update(models, frozen, batch, idx, ptx_BL, train_policy, beta):
    # The minibatch is gathered inside the step: an eager gather of sharded rows between
    # steps is a second program with collectives in flight beside the step's own, and
    # XLA:CPU's simulated devices can then deadlock (one device never joins an all-reduce).
    mb = jax.tree.map(lambda v: v[idx], batch)
    trainable = {k: models[k] for k in ("policy", "value") if k in models}
    (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, frozen, mb, ptx_BL,
                                                                  train_policy, beta)
    pol, pol_opt = models["policy"], models["policy_opt"]
    u, pol_opt2 = pol_tx.update(grads["policy"], pol_opt, pol)
    # During value warm-up the policy and its optimizer state stay untouched.
    out = step_lib.keep_if(train_policy > 0, {"policy": optax.apply_updates(pol, u), "policy_opt": pol_opt2},
                           {"policy": pol, "policy_opt": pol_opt})
    if "value" in models:
      u, val_opt = val_tx.update(grads["value"], models["value_opt"], models["value"])
      out.update(value=optax.apply_updates(models["value"], u), value_opt=val_opt)
    m["policy/grad_norm"] = step_lib.global_norm(grads["policy"])
    if skip:
      ok = step_lib.finite(loss, step_lib.global_norm(grads), step_lib.global_norm(out["policy"]))
      out = step_lib.keep_if(ok, out, {k: models[k] for k in names})
      m["update/skipped"] = 1.0 - ok.astype(jnp.float32)
    return out, m

  return update


def make_setup(config, run, cfg, tok, frozen, lay, rows) -> Setup:
  prompt_len = config.rollout.prompt_len

  @jax.jit
  def ref_value(val, frozen, seq, mask):
    """Reference log-probs and values (zeros without a value model); the behaviour
    log-probs come from the sampler."""
    ref_logp, _ = response_logprobs(frozen, cfg, seq, mask, prompt_len)
    if val is None:
      return ref_logp, jnp.zeros_like(ref_logp)
    values = qwen.scalar_outputs(value_params(config, val, frozen), cfg, seq, mask)[:, prompt_len - 1:-1]
    return ref_logp, values

  ptx = sources.ptx_rows(config.ptx, tok, run.workdir)
  scorer = scorers.Mix(config.reward.mode, config.reward, max_len=config.rollout.max_new_tokens,
                       seed=config.seed, mesh=run.mesh)
  ro = config.rollout
  sample_cfg = sampling.sample_config(tok, max_new_tokens=ro.max_new_tokens, temperature=ro.temperature,
                                top_p=ro.top_p, top_k=ro.top_k, n=ro.n, engine=ro.engine, slots=ro.slots)
  update = make_update(config, make_loss(config, cfg), lay)
  return Setup(config, cfg, tok, run, scorer, ptx, sample_cfg, frozen,
               jax.jit(functools.partial(policy_params, config)), ref_value, update,
               gold=gold.applicable(rows), uses_value=algorithms.uses_value(config))


def label_query_types(config, rows, policy_params_, cfg, tok, writer) -> None:
  """reward.query_types: "field" (the data's own labels), "classifier" (zero-shot, with
  reward.classifier = an HF chat model dir, or the SFT policy when empty), or "random"
  (the ablation; drawn per rollout in `score`)."""
  if config.reward.query_types != "classifier":
    return
  if config.reward.classifier:
    classifier_cfg, qparams = hf.load(config.reward.classifier)
    qtok = tokenizer_lib.load(config.reward.classifier)
  else:
    classifier_cfg, qparams, qtok = cfg, policy_params_, tok
  labels, _ = query_types.classify(qparams, classifier_cfg, qtok, [chat.as_text(r["prompt"]) for r in rows])
  for r, label in zip(rows, labels):
    r["query_type"] = label
  writer.print(f"query types from the classifier: {labels.count('open_ended')} open-ended, "
               f"{labels.count('closed_ended')} closed-ended")


# ----------------------------------------------------------------------------- phases


def rollout(s: Setup, state, batch_rows, it: int, rnd: int = 0) -> Rollout:
  """This process's prompts, left-padded to rollout.prompt_len, and n sampled responses
  each (this process's rows, host arrays). `rnd` > 0: a dynamic-sampling round's own key."""
  prompt_ids = [chat.tokenize(s.tok, chat.as_messages(r["prompt"]), True)[0] for r in batch_rows]
  # Longer prompts keep their last prompt_len tokens (the question and the assistant header).
  truncated = sum(len(x) > s.config.rollout.prompt_len for x in prompt_ids)
  p_tok, p_mask = padding.left_pad(prompt_ids, s.tok.pad_token_id, s.config.rollout.prompt_len)
  prompts = sharding.put_batch({"tok": p_tok, "mask": p_mask}, s.run.mesh)
  key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), it)
  key = jax.random.fold_in(key, rnd) if rnd else key
  out = engines.generate(s.merged_policy(state["policy"], s.frozen), prompts["tok"], prompts["mask"],
                         key, model_cfg=s.cfg, cfg=s.sample_cfg)
  out_local = sampling.Samples(*(sharding.local_rows(x, s.run.mesh) for x in out))
  return Rollout(batch_rows, p_tok, p_mask, out_local, truncated)


def repeat(n: int, values) -> list:
  """One value per prompt -> one per response: n each, prompt-major like the sampler's rows."""
  return [v for v in values for _ in range(n)]


def score(s: Setup, ro: Rollout, it: int, rnd: int = 0) -> Scored:
  """The decoded responses, the scorer's components (reward, and R³'s terms), and what the
  optimised reward does not see: the gold judge's figures (on the embedded world) and the
  batch's diversity. With reward.query_types=random, each response's type is drawn afresh."""
  texts = sampling.decode(s.tok, ro.samples)
  rows = repeat(s.config.rollout.n, ro.rows)
  if s.config.reward.query_types == "random":
    rng = np.random.default_rng([s.config.seed, it] + ([rnd] if rnd else []))  # Resumes exactly.
    qtypes = rng.choice(["open_ended", "closed_ended"], len(rows))
    rows = [{**r, "query_type": str(t)} for r, t in zip(rows, qtypes)]
  comps = s.scorer(rows, texts)
  return Scored(texts, comps, s.scorer.raw(comps), judged(s, ro.rows, texts))


def judged(s: Setup, rows, texts) -> dict[str, np.ndarray]:
  """Per-response figures beside the reward: gold precision / recall / score (embedded
  world only), 4-gram repetition, and this process's batch distinct-2 and most common
  sentence share (one value, repeated per row so that every entry gathers alike)."""
  cut = [r3.truncate_response(t) for t in texts]
  per_row = repeat(s.config.rollout.n, rows)
  out = {}
  if s.gold:
    g = gold.judge_batch(cut, per_row)
    out = {f"gold/{k}": g[k] for k in ("score", "precision", "recall", "repeats", "names_entity")}
  names = [r.get("entity") for r in per_row]
  batch = lambda v: np.full(len(texts), v, np.float64)
  return {**out, "diversity/rep4": np.array([tm.ngram_repetition(t, 4) for t in cut]),
          "diversity/distinct2": batch(tm.distinct_n(cut, 2)),
          "diversity/distinct_answers": batch(tm.distinct_answers(cut, names)),
          "diversity/top_sentence_share": batch(tm.top_sentence_share(cut, names))}


def sample_batch(s: Setup, state, rows, order, it: int, timer) -> tuple[Rollout, Scored, dict]:
  """The rollout and score phases. With rollout.dynamic_sampling (DAPO, Yu et al. 2025 §3.2),
  a group whose rewards are all equal has zero advantage under a group baseline and carries
  no signal: it is dropped and the next prompts are sampled, up to rollout.max_extra_rounds
  more rounds. If the batch is still short then, dropped groups fill it (the shapes stay
  fixed) and rollout/groups_refilled counts them; rollout/groups_dropped counts every
  dropped group. Every process runs the same number of rounds (the sampler is one program
  over the mesh)."""
  c, n = s.config, s.config.rollout.n
  rounds = 1 + (c.rollout.max_extra_rounds if c.rollout.dynamic_sampling else 0)
  parts, kept, dropped = [], [], []
  for rnd in range(rounds):
    with timer("time/rollout"), harness.mesh_rules(s.run.mesh, s.run.rules):
      ro = rollout(s, state, [rows[i] for i in pipeline.process_slice(order.next())], it, rnd)
    with timer("time/reward"):
      scored = score(s, ro, it, rnd)
    if not c.rollout.dynamic_sampling:
      return ro, scored, overlong_metrics(c, ro)
    spread_G = np.ptp(np.asarray(scored.components["reward"]).reshape(-1, n), axis=1)
    kept += [(rnd, p) for p in np.flatnonzero(spread_G > 0)]
    dropped += [(rnd, p) for p in np.flatnonzero(spread_G == 0)]
    parts.append((ro, scored))
    want = len(ro.rows)
    if sharding.host_gather(np.array([want - len(kept)])).max() <= 0:
      break
  refill = dropped[:max(want - len(kept), 0)]
  ro, scored = take_groups(parts, sorted(kept[:want] + refill), n)
  count = lambda x: float(sharding.host_gather(np.array([len(x)])).sum())
  return ro, scored, {"rollout/groups_dropped": count(dropped), "rollout/groups_refilled": count(refill),
                      "rollout/rounds": float(len(parts)), **overlong_metrics(c, ro)}


def overlong_metrics(c, ro: Rollout) -> dict:
  """reward/overlong: the mean overlong penalty of the batch (reward.overlong_cache > 0)."""
  if not c.reward.overlong_cache:
    return {}
  lengths_B = sharding.host_gather(np.asarray(ro.samples.mask_BN).sum(1))
  return {"reward/overlong": float(np.mean(ops.overlong_penalty(
      lengths_B, c.rollout.max_new_tokens, c.reward.overlong_cache)))}


def take_groups(parts, picks, n: int) -> tuple[Rollout, Scored]:
  """The (round, prompt) groups `picks` of several rounds' (Rollout, Scored), as one batch."""
  resp = lambda p: slice(p * n, (p + 1) * n)
  ros = [parts[r][0] for r, _ in picks]
  sc = [parts[r][1] for r, _ in picks]
  cat = lambda arrays: np.concatenate([np.asarray(a) for a in arrays])
  samples = sampling.Samples(*(cat([getattr(ro.samples, f)[resp(p)] for ro, (_, p) in zip(ros, picks)])
                               for f in sampling.Samples._fields))
  ro = Rollout([ro.rows[p] for ro, (_, p) in zip(ros, picks)],
               np.stack([ro.prompt_tok[p] for ro, (_, p) in zip(ros, picks)]),
               np.stack([ro.prompt_mask[p] for ro, (_, p) in zip(ros, picks)]),
               samples, sum(part[0].truncated for part in parts))
  field = lambda get: cat([get(x)[resp(p)] for x, (_, p) in zip(sc, picks)])
  scored = Scored([t for x, (_, p) in zip(sc, picks) for t in x.texts[resp(p)]],
                  {k: field(lambda x, k=k: x.components[k]) for k in sc[0].components},
                  field(lambda x: x.terms),
                  {k: field(lambda x, k=k: x.judged[k]) for k in sc[0].judged})
  return ro, scored


def reference_value(s: Setup, state, ro: Rollout, scored: Scored) -> RLBatch:
  """The rollout batch on the mesh: full sequences and masks, the behaviour log-probs, the
  raw scores ([B, terms]), and the reference log-probs and values (0 without a value
  model) of every response token."""
  n, out = s.config.rollout.n, ro.samples
  resp, resp_mask = out.tokens_BN, out.mask_BN
  data = sharding.put_batch(dict(
      seq=np.concatenate([np.repeat(ro.prompt_tok, n, 0), resp], 1),
      mask=np.concatenate([np.repeat(ro.prompt_mask, n, 0), resp_mask], 1),
      resp_mask=resp_mask.astype(np.float32),
      old_logp=out.model_logprobs_BN * resp_mask,
      score=np.asarray(scored.terms, np.float32) * s.config.reward.scale), s.run.mesh)
  ref_logp, values = s.ref_value(state.get("value"), s.frozen, data["seq"], data["mask"])
  return RLBatch(seq_BS=data["seq"], mask_BS=data["mask"], resp_mask_BT=data["resp_mask"],
                 old_logp_BT=data["old_logp"], ref_logp_BT=ref_logp, values_BT=values,
                 scores_BK=data["score"])


def advantages(s: Setup, state, batch: RLBatch):
  """(the batch with its KL, score, rewards, advantages and returns, the moments): each
  reward term normalised by its own running moments (reward.normalize_score), their
  weighted sum, per-token rewards with the KL penalty (kl.placement=reward) and the score
  at the last token, and the configured estimator's advantages and returns. One jitted
  program: as eager ops, each reduction over the sharded batch was a program of its own
  with an all-reduce, and several in flight at once can deadlock XLA:CPU's simulated
  devices (one never joins the rendezvous)."""
  program = advantages_program(s.config.to_json(), tuple(s.scorer.weights))
  return program(batch, ops.Moments(**state["moments"]), state["beta"])


@functools.lru_cache(maxsize=16)
def advantages_program(config_json: str, weights: tuple[float, ...]):
  """The jitted advantages phase of one config (a JSON string, to be hashable)."""
  c = ml_collections.ConfigDict(json.loads(config_json))

  @jax.jit
  def program(batch: RLBatch, moments, beta):
    mask = batch.resp_mask_BT
    kl = algorithms.kl_estimate(batch.old_logp_BT, batch.ref_logp_BT, c.kl.estimator) * mask
    terms_BK = batch.scores_BK
    if c.reward.normalize_score:
      moments = jax.vmap(ops.update_moments, in_axes=(0, 1))(moments, terms_BK)
      terms_BK = jax.vmap(functools.partial(ops.normalize_score, clip=c.reward.clip),
                          in_axes=(1, 0), out_axes=1)(terms_BK, moments)
    score = jnp.sum(terms_BK * jnp.asarray(weights, jnp.float32), -1)
    if c.reward.overlong_cache:  # DAPO's soft overlong punishment, added unnormalised.
      score = score + c.reward.overlong_coef * ops.overlong_penalty(
          batch.lengths_B, c.rollout.max_new_tokens, c.reward.overlong_cache)
    rewards = ops.token_rewards(score, kl, mask, 0.0 if algorithms.kl_in_loss(c) else beta)
    batch = batch.replace(kl_BT=kl, score_B=score, rewards_BT=rewards)
    adv, returns = algorithms.ADVANTAGES[c.ppo.advantage].fn(batch, c.ppo, c.rollout.n)
    return batch.replace(adv_BT=adv, returns_BT=returns), moments

  return program


def update(s: Setup, state, batch: RLBatch, it: int):
  """(the MODELS after ppo.epochs passes over shuffled minibatches, the minibatches'
  metrics)."""
  c = s.config
  # The advantages program's collectives finish before the first update step starts its
  # own: two programs with collectives in flight at once can deadlock XLA:CPU's simulated
  # devices (one never joins an all-reduce).
  batch = jax.block_until_ready(batch)
  n_rollouts = batch.seq_BS.shape[0]
  train_policy = jnp.float32(it >= c.ppo.value_warmup_steps)
  models = {k: state[k] for k in MODELS if k in state}
  ms = []
  for epoch in range(c.ppo.epochs):
    perm_rng = np.random.default_rng([c.seed, it, epoch])
    perm = perm_rng.permutation(n_rollouts)
    for j in range(0, n_rollouts, c.ppo.minibatch):
      ptx_BL = None
      if s.ptx is not None:
        ptx_BL = jnp.asarray(s.ptx[perm_rng.integers(0, len(s.ptx), c.ptx.batch)].astype(np.int32))
      models, m = s.update_fn(models, s.frozen, batch, jnp.asarray(perm[j:j + c.ppo.minibatch]),
                              ptx_BL, train_policy, state["beta"])
      ms.append(m)
  return models, ms


def next_state(s: Setup, state, models, moments, kl):
  """The state after an iteration: new params, moments, step, and the KL coefficient
  adapted to the observed sequence KL (kl.adaptive)."""
  c = s.config
  kl_seq = float(jnp.mean(jnp.sum(kl, -1)))
  beta = state["beta"]
  if c.kl.adaptive:
    beta = ops.adaptive_kl(beta, kl_seq, c.kl.target, c.kl.horizon, c.prompts_per_step * c.rollout.n)
  return {**state, "step": state["step"] + 1, **models,
          **sharding.on_mesh({"moments": moments._asdict(), "beta": beta}, s.run.mesh)}, kl_seq


def iteration_metrics(state, itr: Iteration, times) -> dict:
  ms, out, batch = itr.update_metrics, itr.rollout.samples, itr.batch
  upd = {k: float(np.mean([float(m[k]) for m in ms])) for k in ms[0]}
  lengths = sharding.host_gather(out.mask_BN.sum(1))
  gathered = {**{f"reward/{k}": v for k, v in itr.scored.components.items()}, **itr.scored.judged}
  explained = ops.explained_variance(batch.values_BT, batch.returns_BT, batch.resp_mask_BT)
  return {**{k: float(np.mean(sharding.host_gather(v))) for k, v in gathered.items()},
          "reward/score_normalized": float(jnp.mean(batch.score_B)), "kl/seq_kl": itr.kl_seq,
          "kl/beta": float(state["beta"]), "rollout/length": float(lengths.mean()),
          "rollout/truncated": float(1.0 - sharding.host_gather(out.stopped_B).mean()),
          "rollout/prompts_truncated": float(sharding.host_gather(np.array([itr.rollout.truncated])).sum()),
          **({"value/explained_variance": float(explained)} if "value" in state else {}),
          **itr.sampling, **upd, **times}


# ----------------------------------------------------------------------------- loop


def prepare(config, workdir: str):
  """(setup, state, data order, prompt rows): everything before the first iteration, the
  state resumed from the latest checkpoint if there is one."""
  run = harness.open_run(config, workdir, config.steps)
  policy = state_lib.build_policy(config.model, workdir, config.tokenizer)
  cfg, tok = policy.cfg.replace(dropout_rate=0.0), policy.tokenizer
  rows = sources.prompts(config.data)
  scorers.check_rows(config.reward.mode, rows)
  if len(rows) < config.prompts_per_step:
    raise ConfigError(f"config.prompts_per_step={config.prompts_per_step} is larger than the "
                      f"{len(rows)} prompts of data.prompts={config.data.prompts or '(synthetic)'}")
  state, frozen = init_rl_state(config, run, cfg, tok, config.init_from or config.model.hf_dir)
  label_query_types(config, rows, frozen, cfg, tok, run.writer)
  state, order = harness.resume(run, state, len(rows), config.prompts_per_step)
  lay = jax.tree.map(lambda x: x.sharding, state)
  return make_setup(config, run, cfg, tok, frozen, lay, rows), state, order, rows


def train(config, workdir: str) -> dict:
  """PPO from config.init_from (the pipeline's SFT stage, an HF dir, or "random"/"" for
  random weights)."""
  s, state, order, rows = prepare(config, workdir)
  run, frozen = s.run, s.frozen
  fixed = [chat.as_messages(r["prompt"]) for r in rows[:config.eval_prompts]]
  before = greedy_answers(s, frozen, fixed)
  timer, truncated = harness.Timer(), 0
  with harness.training(run):
    for it in range(int(state["step"]), config.steps):
      ro, scored, sampled = sample_batch(s, state, rows, order, it, timer)
      with timer("time/reference_value"), harness.mesh_rules(run.mesh, run.rules):
        batch = reference_value(s, state, ro, scored)
      with timer("time/advantages"), harness.mesh_rules(run.mesh, run.rules):
        batch, moments = advantages(s, state, batch)
      with timer("time/update"), harness.mesh_rules(run.mesh, run.rules):
        models, ms = update(s, state, batch, it)
        state, kl_seq = next_state(s, state, models, moments, batch.kl_BT)
      vals = log_iteration(s, it + 1, state, Iteration(ro, scored, batch, ms, kl_seq, sampled), timer.read())
      truncated += int(vals["rollout/prompts_truncated"])
      harness.check_finite(run, it + 1, {k: vals[k] for k in FINITE if k in vals},
                           sum(float(m["update/skipped"]) for m in ms) if harness.skipping(run) else None)
      harness.save(run, it + 1, state, order)
  final = s.merged_policy(state["policy"], frozen)
  after = greedy_answers(s, final, fixed)
  write_before_after(workdir, [m[0] for m in fixed], before, after, s.scorer, rows[:config.eval_prompts],
                     "R3" if s.scorer.labels == ("r3",) else "reward")
  harness.export_hf(workdir, final, s.cfg, s.tok)
  harness.finish(run, PLOTS, truncated=truncated, what="prompts",
                 limit=f"their last rollout.prompt_len={config.rollout.prompt_len} tokens")
  return {"state": state, "frozen": frozen}


FINITE = ("policy/loss", "value/loss", "policy/grad_norm", "kl/seq_kl")  # Checked every iteration.


def log_iteration(s: Setup, done: int, state, itr: Iteration, times) -> dict:
  vals = iteration_metrics(state, itr, times)
  writer = s.run.writer
  writer.scalars(done, vals, bar={"reward": vals["reward/reward"], "kl": itr.kl_seq,
                                  "len": vals["rollout/length"]})
  writer.advance()
  if done % s.config.log_samples_every == 0:
    prompts = repeat(s.config.rollout.n, [chat.as_text(r["prompt"]) for r in itr.rollout.rows])
    rewards = itr.scored.components["reward"]
    writer.texts(done, "rollouts", [{"prompt": p, "response": t, "reward": float(r)} for p, t, r in
                                    zip(prompts[:4], itr.scored.texts[:4], rewards[:4])])
  return vals


def greedy_answers(s: Setup, params, conversations) -> list[str]:
  """Greedy answers to fixed prompts (before_after.md), replicated on the mesh."""
  sample_cfg = sampling.sample_config(s.tok, max_new_tokens=s.config.rollout.max_new_tokens, greedy=True)
  with harness.mesh_rules(s.run.mesh, s.run.rules):
    texts, _ = engines.generate_text(params, s.cfg, s.tok, sampling.chat_ids(s.tok, conversations),
                                      jax.random.key(0), sample_cfg,
                                      put=lambda x: sharding.replicate(x, s.run.mesh))
  return texts


PLOTS = plots.GROUPS["ppo"]  # One list: `python -m r3jax.plot` re-draws the same PNGs.


def write_before_after(workdir, prompts, before, after, scorer, rows, reward: str = "R3"):
  """before_after.md: each fixed prompt's greedy answer before and after PPO, with its
  reward (R³ in the main job; a mix's unnormalised weighted sum) and, on the embedded world, the gold judge's precision / recall (not the reward)."""
  if jax.process_index() != 0:
    return
  q = [p["content"] for p in prompts]
  judged = gold.applicable(rows)
  cell = lambda x: x.replace("|", "\\|").replace("\n", " ")
  columns = []  # Per answer set: [answer, R³, gold?] cells for each prompt.
  for texts in (before, after):
    cols = [[cell(t) for t in texts], [f"{x:.3f}" for x in scorer(rows, texts)["reward"]]]
    if judged:
      g = gold.judge_batch([r3.truncate_response(t) for t in texts], rows)
      cols.append([f"{p:.2f} / {r:.2f}" for p, r in zip(g["precision"], g["recall"])])
    columns += cols
  names = ["before (SFT)", reward] + (["gold P / R"] if judged else [])
  names += ["after (PPO)", reward] + (["gold P / R"] if judged else [])
  lines = ["| prompt | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for i, p in enumerate(q):
    lines.append(f"| {cell(p)} | " + " | ".join(c[i] for c in columns) + " |")
  (epath.Path(workdir) / "before_after.md").write_text("\n".join(lines) + "\n")
