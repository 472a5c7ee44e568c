"""KTO (Ethayarajh et al. 2024 §4) as a task of the supervised loop: unpaired rows, each a
completion labelled desirable or undesirable, against a frozen reference; the loss is
losses/preference.kto_loss.

Rows come from unpaired feedback files (readers.load_feedback: {prompt, completion, label},
kto_en_demo.json's {messages, label}), or from comparisons taken apart: a pair's chosen
response becomes a desirable row and its rejected one an undesirable row (a K-wise
ranking gives its best and its worst), so DPO's data, files or the embedded world's, train
KTO too. Comparisons are held out before they are taken apart, so both halves of one stay
in the same split, and the embedded world's split is DPO's.

Each batch pairs every row's prompt with the completion of the row before it (cyclically,
within the batch: TRL's KTOTrainer does the same in its data preparation): the mismatched
pairs whose policy-to-reference log-ratio estimates the reference point z₀. The batch is
pipeline.ranked_batch's [B, 2, T] layout, the row's own completion first, so the prompt
is shared as in DPO and the reference scores both in one forward.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from r3jax.data import pipeline, readers, sources
from r3jax.losses import preference as losses
from r3jax.trainers import dpo, preference, supervised


def unpaired(rows) -> list[dict]:
  """Feedback rows as they are; each comparison as two rows, its best response desirable
  and its worst undesirable (the ones between carry no label of their own)."""
  out = []
  for r in rows:
    if "label" in r:
      out.append(r)
      continue
    rest = {k: v for k, v in r.items() if k != "responses"}
    out += [{**rest, "responses": [r["responses"][0]], "label": True},
            {**rest, "responses": [r["responses"][-1]], "label": False}]
  return out


def balance_note(config, rows) -> list[str]:
  """A note when λ_D n_D / (λ_U n_U) leaves [1, 4/3], the range the KTO paper recommends
  and TRL warns outside of."""
  n_d = sum(r["label"] for r in rows)
  n_u = len(rows) - n_d
  ratio = config.loss.desirable_weight * n_d / max(config.loss.undesirable_weight * n_u, 1e-9)
  if 1.0 <= ratio <= 4 / 3:
    return []
  return [f"KTO: {n_d} desirable and {n_u} undesirable training rows; desirable_weight x "
          f"{n_d} / (undesirable_weight x {n_u}) = {ratio:.2f}, outside the [1, 4/3] the KTO "
          "paper recommends (set loss.desirable_weight / loss.undesirable_weight)"]


def load(config, workdir: str):
  """Task.load: (train rows, eval rows, skipped, notes)."""
  del workdir
  train, eval_, skipped = sources.comparisons(config.data, config.seed, read=readers.load_feedback)
  (train, eval_), ties = preference.drop_ties(config.data, train, eval_)
  train, eval_ = unpaired(train), unpaired(eval_)
  notes = [f"dropped {ties} comparisons whose responses are identical (up to whitespace): taken "
           "apart they would label one completion both ways (data.keep_ties=True keeps them)"] if ties else []
  return train, eval_, skipped, notes + balance_note(config, train)


def batch(config, tok, rows):
  """(batch, truncated count): ranked_batch of [own completion, the previous row's] per row,
  and "label" [B], 1 for desirable. A batch of one row pairs it with itself: z₀ is then its
  own log-ratio (validation asks for at least 2 rows per process's batch)."""
  previous = rows[-1:] + rows[:-1]
  pairs = [{"prompt": r["prompt"], "responses": [r["responses"][0], p["responses"][0]]}
           for r, p in zip(rows, previous)]
  out, truncated = pipeline.ranked_batch(tok, pairs, config.seq_len, config.prompt_len)
  out["label"] = np.array([r["label"] for r in rows], np.int32)
  return out, truncated


def _column(batch, k: int) -> dict:
  return {n: v[:, k:k + 1] for n, v in batch.items() if v.ndim == 3}


def kto_loss(params, batch, rng, *, model_cfg, loss_config, prompt_len=0):
  """(sum of the rows' losses, (rows, metric sums)) for one microbatch."""
  del rng
  logp_B1, _ = dpo.sequence_logprobs(params, model_cfg, _column(batch, 0), prompt_len)
  # z₀ takes no gradient, so the mismatched completions run in a forward of their own on
  # stopped weights: it keeps no activations for the backward pass (TRL runs it under
  # no_grad too). Their prompt then runs twice, cheaper than keeping it for both.
  kl_B1, _ = dpo.sequence_logprobs(jax.lax.stop_gradient(params), model_cfg, _column(batch, 1),
                                   prompt_len)
  ref_B2 = batch["ref_logp"]
  losses_B, m = losses.kto_loss(
      logp_B1[:, 0], ref_B2[:, 0], kl_B1[:, 0], ref_B2[:, 1], batch["label"],
      beta=loss_config.beta, desirable_weight=loss_config.desirable_weight,
      undesirable_weight=loss_config.undesirable_weight)
  b = logp_B1.shape[0]
  # The loop divides every metric by the rows of the step (or of the evaluation): sums and
  # counts become shares of them, means stay means. The side means are those of each
  # microbatch (exact for a step without accumulation; TRL averages its accumulation
  # steps' means the same way); eval_metrics makes the held-out ones exact.
  sums = {n: v for n, v in m.items() if n.endswith("_sum") or n.startswith("count/")}
  return jnp.sum(losses_B), (jnp.float32(b), {**sums, **{n: v * b for n, v in m.items()
                                                         if n not in sums}})


def eval_metrics(ctx, out: dict) -> dict:
  """The held-out side means over every evaluated row, from the summed shares."""
  del ctx
  shares = {k[len("eval/"):]: v for k, v in out.items() if k.endswith("_sum") or "/count/" in k}
  return {f"eval/{k}": float(v) for k, v in losses.kto_means(shares).items()}


TASK = supervised.Task(
    name="kto", rows="feedback rows", load=load, batch=batch,
    make_loss=lambda config, cfg, deterministic: functools.partial(
        kto_loss, model_cfg=cfg, loss_config=config.loss, prompt_len=config.prompt_len),
    prepare=lambda ctx: dpo.reference(ctx, precompute=False),  # KL pairs change every batch.
    eval_metrics=eval_metrics,
    eval_line=lambda step, out: (
        f"step {step}: eval loss {out['eval/loss']:.4f}, KL {out['eval/kl']:.3f}, rewards "
        f"desirable {out['eval/rewards/chosen']:.3f} / undesirable {out['eval/rewards/rejected']:.3f}, "
        f"label accuracy {out['eval/rewards/label_accuracy']:.3f}"),
    truncated=lambda config: (f"responses (KL pairs' included, prompt_len={config.prompt_len})"
                              if config.prompt_len else "responses (KL pairs' included)"),
    export=supervised.export_hf,
    accuracy="rewards/label_accuracy",
    plots={"kto": ["train/loss", "eval/loss", "train/kl", "eval/rewards/label_accuracy",
                   "train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins"]})
