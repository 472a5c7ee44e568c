"""Reward models (the Qwen report, Bai et al. 2023 §3.2.1) as a task of the supervised loop on
comparisons: {backbone, head} scores each response at its last real token; the loss is
Bradley–Terry over every pair of a K-wise ranking (InstructGPT, Ouyang et al. 2022 §3.5)."""

import functools
import json
import os

import jax
import jax.numpy as jnp

from r3jax.losses import preference as losses
from r3jax.models import qwen
from r3jax.trainers import preference


def rm_loss(params, batch, rng, *, model_cfg, margin):
  del rng
  if "branch_ids" in batch:  # Packed comparisons: each response scored at its last token.
    r, c, k = batch["ends"].shape
    s_RT = qwen.scalar_outputs(params, model_cfg, batch["tokens"], batch["attn_mask"],
                               segment_ids_BT=batch["segment_ids"], branch_ids_BT=batch["branch_ids"])
    scores = jnp.take_along_axis(s_RT, batch["ends"].reshape(r, c * k), axis=1).reshape(r * c, k)
    weight = batch["valid"].reshape(-1).astype(jnp.float32)  # Empty slots weigh nothing.
  else:
    b, k, t = batch["tokens"].shape
    scores = qwen.sequence_scores(params, model_cfg, batch["tokens"].reshape(b * k, t),
                                  batch["attn_mask"].reshape(b * k, t)).reshape(b, k)
    weight = jnp.ones(b, jnp.float32)
  loss, m = losses.bradley_terry_ranked(scores, margin, weight)
  # Sums over the microbatch's comparisons; the train step divides by the total weight.
  n = jnp.sum(weight)
  return loss * n, (n, {name: v * n for name, v in m.items()})


def save_model_dir(run, params, cfg, tok, start: bool) -> None:
  """workdir/model: config.json and the tokenizer, what scorers.RewardModel reads with the
  checkpoints. Written at the start, so a run that is still training can be scored."""
  del params
  if not start or jax.process_index() != 0:
    return
  path = os.path.join(run.workdir, "model")
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(qwen.to_hf_config(cfg), f, indent=1)
  tok.save_pretrained(path)


TASK = preference.task(
    name="rm", scalar_head=True,
    prompt_len=lambda config: 0,  # Reward models read whole rows.
    check=lambda train_rows, eval_rows: None,
    make_loss=lambda config, cfg, deterministic: functools.partial(rm_loss, model_cfg=cfg,
                                                                   margin=config.loss.margin),
    export=save_model_dir,
    accuracy="rm/accuracy",
    plots={"rm": ["train/loss", "eval/loss", "train/rm/accuracy", "eval/rm/accuracy",
                  "train/rm/margin", "train/rm/reward_std"]})
