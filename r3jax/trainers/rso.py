"""The sampling stages of RSO (Liu et al. 2024, "Statistical Rejection Sampling Improves
Preference Optimization", §3) and best-of-N fine-tuning (Touvron et al. 2023, Llama 2,
§3.2.3): they
turn a policy into training data; trainers/stages.py then trains on it.

`build_pairs` writes <workdir>/pairs.jsonl, one {prompt, chosen, rejected} row per pair,
built by `rso.construction`:
  rso     N candidates per prompt from the SFT policy, scored by `rso.reward`; statistical
          rejection sampling at temperature rso.beta keeps k; pairs by rso.pairing.
  sft     the same N candidates, k of them drawn uniformly (RSO's sft-sample-rank).
  direct  the dataset's own comparisons, unchanged.
`best_of_n_round` writes round_<r>/best_of_n.jsonl: the top-1 of N samples per prompt.
On the embedded world both also write the gold judge's figures of what they kept
(pairs_gold.json: chosen vs rejected and how often gold agrees with the pair's order;
round_<r>/best_of_n_gold.json: the best candidate vs all), so a reward that picks worse
answers shows before any DPO step.
A finished file is reused, so a restart goes straight to training.
"""

import io
import json
import os

from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from r3jax.core import sharding
from r3jax.core.errors import DataError
from r3jax.data import readers, sources
from r3jax.eval import gold
from r3jax.models import engines, sampling
from r3jax.rewards import scorers
from r3jax.rl import rso
from r3jax.trainers import harness, state as state_lib


def sample_candidates(config, init_dir, workdir, rows, log):
  """(texts [P][N], rewards [P, N], valid [P, N]): N samples per prompt from the policy
  in init_dir, scored; duplicates and empty answers are invalid (they count once)."""
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  policy = state_lib.build_policy(config.model, workdir, config.tokenizer)
  cfg, tok = policy.cfg.replace(dropout_rate=0.0), policy.tokenizer
  state, _ = state_lib.init_state(state_lib.Policy(cfg, tok, None), optax.set_to_zero(), mesh, rules,
                                  config.seed, init_from=init_dir)
  scorer = scorers.make(config.rso.reward, ml_collections.ConfigDict({"encoder": config.rso.encoder}),
                        max_len=config.rollout.max_new_tokens)
  n, ro = config.rso.n, config.rollout
  sample_cfg = sampling.sample_config(tok, max_new_tokens=ro.max_new_tokens, temperature=ro.temperature,
                                top_k=ro.top_k, top_p=ro.top_p, n=n, engine=ro.engine, slots=ro.slots)
  texts, rewards = [], []
  bs = config.rso.prompts_per_batch
  with harness.mesh_rules(mesh, rules):
    for i in range(0, len(rows), bs):
      chunk = rows[i:i + bs]
      ids = sampling.chat_ids(tok, [r["prompt"] for r in chunk])
      ids += [ids[-1]] * (bs - len(chunk))  # A fixed batch shape; the extra rows are dropped.
      ys, _ = engines.generate_text(state["params"], cfg, tok, ids, jax.random.fold_in(jax.random.key(config.seed), i),
                                     sample_cfg, length=ro.prompt_len)
      ys = [t.strip() for t in ys][:len(chunk) * n]
      r = scorer([c for c in chunk for _ in range(n)], ys)["reward"]
      texts += [ys[j * n:(j + 1) * n] for j in range(len(chunk))]
      rewards.append(np.asarray(r).reshape(len(chunk), n))
      log(f"sampled and scored {min(i + bs, len(rows))}/{len(rows)} prompts")
  valid = np.stack([rso.unique_mask(t) & np.array([bool(y) for y in t]) for t in texts])
  return texts, np.concatenate(rewards), valid


def select(config, rewards, valid):
  """[P, k] candidate indices per prompt: rejection sampling under the reward (rso), or
  uniform draws (sft)."""
  rc = config.rso
  key = jax.random.key(config.seed + 7)
  if rc.construction == "rso":
    return rso.rejection_sample_batch(key, jnp.asarray(rewards), jnp.asarray(valid), rc.k, rc.beta)[1]
  keys = jax.random.split(key, len(rewards))
  return jax.vmap(rso.sft_sample, in_axes=(0, 0, None))(keys, jnp.asarray(valid), rc.k)[1]


def candidate_gold(rows, texts) -> dict[str, np.ndarray] | None:
  """{score, precision, recall}: [P, N] gold figures of every candidate, when the prompts
  are the embedded world's questions (else None): what the sampling reward did not see."""
  if not gold.applicable(rows):
    return None
  g = gold.judge_batch([y for ys in texts for y in ys], [r for r, ys in zip(rows, texts) for _ in ys])
  return {k: g[k].reshape(len(texts), -1) for k in ("score", "precision", "recall")}


def write_gold(path: str, figures: dict, log) -> None:
  """Logs and writes (JSON, process 0) the gold judge's figures of a sampling stage."""
  log("gold judge: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
  if jax.process_index() == 0:
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(path).write_text(json.dumps(figures, indent=1) + "\n")


def pair_gold(g, pairs, valid) -> dict:
  """The gold figures of pairs [(prompt, chosen, rejected)] against all valid candidates,
  and how often the gold score agrees with the pair's order (ties: equal gold scores)."""
  p, a, b = (np.array(x) for x in zip(*pairs))
  out = {"candidates_score": float(g["score"][valid].mean())}
  for k in ("score", "precision", "recall"):
    out[f"chosen_{k}"], out[f"rejected_{k}"] = float(g[k][p, a].mean()), float(g[k][p, b].mean())
  out["gold_agrees"] = float(np.mean(g["score"][p, a] > g["score"][p, b]))
  out["gold_ties"] = float(np.mean(g["score"][p, a] == g["score"][p, b]))
  return out


def build_pairs(config, init_dir, workdir, log) -> str:
  path = os.path.join(workdir, "pairs.jsonl")
  if epath.Path(path).exists():
    log(f"reusing {path}")
    return path
  rc = config.rso
  rows = sources.sampling_prompts(config.data, rc.num_prompts)
  out = []
  if rc.construction == "direct":
    out = [{"prompt": r["prompt"], "chosen": r["responses"][0], "rejected": r["responses"][1]} for r in rows]
  else:
    texts, rewards, valid = sample_candidates(config, init_dir, workdir, rows, log)
    index = []
    for p, (r, ys, rw, o) in enumerate(zip(rows, texts, rewards, np.asarray(select(config, rewards, valid)))):
      for c, j in rso.make_pairs(o, rw, rc.pairing):
        out.append({"prompt": r["prompt"], "chosen": ys[c], "rejected": ys[j],
                    "chosen_reward": float(rw[c]), "rejected_reward": float(rw[j])})
        index.append((p, c, j))
    log(f"{rc.construction}: {len(out)} pairs from {len(rows)} prompts "
        f"(mean reward {rewards[valid].mean():.4f} over all valid candidates)")
    g = candidate_gold(rows, texts)
    if g is not None and index:
      write_gold(os.path.join(workdir, "pairs_gold.json"), pair_gold(g, index, valid), log)
  if not out:
    raise DataError(f"{path}: no pairs (every candidate tied or was invalid)")
  if jax.process_index() == 0:
    readers.write_jsonl(path, out)  # Atomic: only a finished file is ever reused.
  barrier("pairs")  # The other processes read the file process 0 wrote.
  return path


def best_of_n_round(config, current, workdir, rnd, log) -> str:
  """round_<rnd>/best_of_n.jsonl: the best of N samples from `current` for each prompt,
  as SFT conversations; candidates.npz keeps every candidate's reward (for frontier)."""
  rdir = os.path.join(workdir, f"round_{rnd}")
  data = os.path.join(rdir, "best_of_n.jsonl")
  if epath.Path(data).exists():
    return data
  rows = sources.sampling_prompts(config.data, config.rso.num_prompts)
  texts, rewards, valid = sample_candidates(config, current, workdir, rows, log)
  best = np.asarray(rso.best_of_n(jnp.asarray(rewards), jnp.asarray(valid)))
  if jax.process_index() == 0:
    buf = io.BytesIO()
    np.savez(buf, rewards=rewards, valid=valid)
    epath.Path(rdir).mkdir(parents=True, exist_ok=True)
    (epath.Path(rdir) / "candidates.npz").write_bytes(buf.getvalue())
  kept = [{"messages": r["prompt"] + [{"role": "assistant", "content": ys[b]}], "reward": float(rw[b])}
          for r, ys, rw, b in zip(rows, texts, rewards, best) if b >= 0]
  log(f"round {rnd}: best-of-{config.rso.n} mean reward {np.mean([k['reward'] for k in kept]):.4f} "
      f"vs {rewards[valid].mean():.4f} for a random sample")
  g = candidate_gold(rows, texts)
  if g is not None:
    chosen = [(p, b) for p, b in enumerate(best) if b >= 0]
    write_gold(os.path.join(rdir, "best_of_n_gold.json"), {
        "candidates_score": float(g["score"][valid].mean()),
        "best_score": float(np.mean([g["score"][p, b] for p, b in chosen])),
        "best_precision": float(np.mean([g["precision"][p, b] for p, b in chosen])),
        "best_recall": float(np.mean([g["recall"][p, b] for p, b in chosen]))}, log)
  if jax.process_index() == 0:
    readers.write_jsonl(data, [{"messages": k["messages"]} for k in kept])
  barrier(f"best_of_n_{rnd}")
  return data


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
