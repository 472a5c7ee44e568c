"""RSO (seed 004, SPEC §6 and §8): pairs from statistical rejection sampling, then DPO-style
training with sigmoid-norm or hinge-norm. Also best-of-N rejection-sampling fine-tuning.

Stage 1 writes <workdir>/pairs.jsonl, one {prompt, chosen, rejected} row per pair, built
by `rso.construction`:
  rso     N candidates per prompt from the SFT policy, scored by `rso.reward`; statistical
          rejection sampling at temperature rso.beta keeps k; pairs by rso.pairing.
  sft     the same N candidates, k of them drawn uniformly (seed 004's sft-sample-rank).
  direct  the dataset's own comparisons, unchanged.
Stage 2 is the preference trainer on those pairs (loss.type sigmoid_norm: β is RSO's γ).
A restart reuses a finished pairs file and resumes stage 2 from its checkpoints.

Best-of-N (`train_best_of_n`, trainer "best_of_n"): each round samples N per prompt,
keeps the top-1 by reward and runs SFT on the kept answers, starting from the last round.
"""

import copy
import io
import os

from etils import epath
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import optax

from r3jax import chat, rso, sampling, sharding
from r3jax.data import readers, synthetic
from r3jax.rewards import scorers
from r3jax.trainers import common, preference, sft


def prompt_rows(config):
  """{prompt (messages), reference, query_type, responses?} rows for sampling."""
  if config.data.prompts:
    from r3jax.trainers import ppo  # Same prompt-file format as PPO.
    rows = ppo.prompt_rows(config, "")
    return [dict(r, prompt=chat.prompt_messages(r["prompt"])) for r in rows][:config.rso.num_prompts]
  return synthetic.comparisons(config.rso.num_prompts, seed=config.data.synthetic_seed + 10)


def sample_candidates(config, init_dir, workdir, rows, log):
  """(texts [P][N], rewards [P, N], valid [P, N]): N samples per prompt from the policy
  in init_dir, scored; duplicates and empty answers are invalid (they count once)."""
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  policy = common.build_policy(config.model, workdir, config.tokenizer)
  cfg, tok = policy.cfg.replace(dropout_rate=0.0), policy.tokenizer
  state, _ = common.init_state(common.Policy(cfg, tok, None), optax.set_to_zero(), mesh, rules,
                               config.seed, init_from=init_dir)
  scorer = scorers.make(config.rso.reward, max_len=config.rollout.max_new_tokens,
                        encoder=config.rso.get("encoder", ""))
  n = config.rso.n
  scfg = sampling.SampleConfig(max_new_tokens=config.rollout.max_new_tokens,
                               temperature=config.rollout.temperature, top_k=config.rollout.top_k,
                               top_p=config.rollout.top_p, n=n, pad_id=tok.pad_token_id,
                               stop_ids=(tok.convert_tokens_to_ids(chat.IM_END),))
  texts, rewards = [], []
  bs = config.rso.prompts_per_batch
  with common.mesh_rules(mesh, rules):
    for i in range(0, len(rows), bs):
      chunk = rows[i:i + bs]
      ids = [chat.tokenize(tok, r["prompt"], add_generation_prompt=True)[0] for r in chunk]
      ids += [ids[-1]] * (bs - len(chunk))  # A fixed batch shape; the extra rows are dropped.
      p_tok, p_mask = sampling.left_pad(ids, tok.pad_token_id, config.rollout.prompt_len)
      out = sampling.generate(state["params"], jnp.asarray(p_tok), jnp.asarray(p_mask),
                              jax.random.fold_in(jax.random.key(config.seed), i), model_cfg=cfg, cfg=scfg)
      ys = [t.strip() for t in sampling.decode(tok, out)][:len(chunk) * n]
      rep = lambda xs: [x for x in xs for _ in range(n)]
      r = scorer(rep([c["prompt"] for c in chunk]), ys, rep([c.get("reference") for c in chunk]),
                 rep([c.get("query_type") for c in chunk]))
      texts += [ys[j * n:(j + 1) * n] for j in range(len(chunk))]
      rewards.append(np.asarray(r).reshape(len(chunk), n))
      log(f"sampled and scored {min(i + bs, len(rows))}/{len(rows)} prompts")
  valid = np.stack([rso.unique_mask(t) & np.array([bool(y) for y in t]) for t in texts])
  return texts, np.concatenate(rewards), valid


def build_pairs(config, init_dir, workdir, log) -> str:
  path = os.path.join(workdir, "pairs.jsonl")
  if epath.Path(path).exists():
    log(f"reusing {path}")
    return path
  rc = config.rso
  rows = prompt_rows(config)
  out = []
  if rc.construction == "direct":
    out = [{"prompt": r["prompt"], "chosen": r["responses"][0], "rejected": r["responses"][1]} for r in rows]
  elif rc.construction in ("rso", "sft"):
    texts, rewards, valid = sample_candidates(config, init_dir, workdir, rows, log)
    key = jax.random.key(config.seed + 7)
    if rc.construction == "rso":
      _, order = rso.rejection_sample_batch(key, jnp.asarray(rewards), jnp.asarray(valid), rc.k, rc.beta)
    else:
      keys = jax.random.split(key, len(rows))
      _, order = jax.vmap(rso.sft_sample, in_axes=(0, 0, None))(keys, jnp.asarray(valid), rc.k)
    for r, ys, rw, o in zip(rows, texts, rewards, np.asarray(order)):
      for c, j in rso.make_pairs(o, rw, rc.pairing):
        out.append({"prompt": r["prompt"], "chosen": ys[c], "rejected": ys[j],
                    "chosen_reward": float(rw[c]), "rejected_reward": float(rw[j])})
    log(f"{rc.construction}: {len(out)} pairs from {len(rows)} prompts "
        f"(mean reward {rewards[valid].mean():.4f} over all valid candidates)")
  else:
    raise sharding.ConfigError(f"rso.construction={rc.construction!r}; expected rso, sft or direct")
  if not out:
    raise readers.DataError(f"{path}: no pairs (every candidate tied or was invalid)")
  if jax.process_index() == 0:
    readers.write_jsonl(path, out)  # Atomic: only a finished file is ever reused.
  _barrier("pairs")  # The other processes read the file process 0 wrote.
  return path


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def train(config, workdir: str) -> dict:
  common.check_paths(config)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  log = lambda m: print(m, flush=True)
  init_dir = sft.warm_start(config, workdir, log)
  pairs = build_pairs(config, init_dir, workdir, log)
  c = copy.deepcopy(config)
  with c.unlocked():
    c.trainer, c.init_from, c.data.train = "dpo", init_dir or config.init_from, pairs
  return preference.train(c, workdir)


def train_best_of_n(config, workdir: str) -> dict:
  common.check_paths(config)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  log = lambda m: print(m, flush=True)
  current = sft.warm_start(config, workdir, log)
  rows = prompt_rows(config)
  result = {}
  for rnd in range(1, config.best_of_n.rounds + 1):
    rdir = os.path.join(workdir, f"round_{rnd}")
    data = os.path.join(rdir, "best_of_n.jsonl")
    if not epath.Path(data).exists():
      texts, rewards, valid = sample_candidates(config, current, workdir, rows, log)
      best = np.asarray(rso.best_of_n(jnp.asarray(rewards), jnp.asarray(valid)))
      if jax.process_index() == 0:  # Every candidate's reward: the frontier command reads them.
        buf = io.BytesIO()
        np.savez(buf, rewards=rewards, valid=valid)
        epath.Path(rdir).mkdir(parents=True, exist_ok=True)
        (epath.Path(rdir) / "candidates.npz").write_bytes(buf.getvalue())
      kept = [{"messages": r["prompt"] + [{"role": "assistant", "content": ys[b]}], "reward": float(rw[b])}
              for r, ys, rw, b in zip(rows, texts, rewards, best) if b >= 0]
      log(f"round {rnd}: best-of-{config.rso.n} mean reward {np.mean([k['reward'] for k in kept]):.4f} "
          f"vs {rewards[valid].mean():.4f} for a random sample")
      if jax.process_index() == 0:
        readers.write_jsonl(data, [{"messages": k["messages"]} for k in kept])
      _barrier(f"best_of_n_{rnd}")
    c = copy.deepcopy(config.sft)
    with c.unlocked():
      c.init_from, c.data.train, c.steps = current, data, config.best_of_n.sft_steps
      c.tokenizer = config.tokenizer or os.path.join(workdir, "tokenizer")
      c.optim.update(lr=config.best_of_n.lr, warmup_steps=0, schedule="constant")
    result = sft.train(c, rdir)
    current = rdir
  return result
