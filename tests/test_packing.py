"""Sequence packing (data.packing): several conversations per row with segment ids. The
model confines attention to a segment and restarts positions; a packed batch trains
exactly as the same conversations unpadded."""

import functools

import pytest

import jax
import jax.numpy as jnp
import numpy as np

from r3jax.data import pipeline, synthetic, tokenizer as tokenizer_lib
from r3jax.models import qwen
from r3jax.trainers import sft


def conversations(n: int):
  return [c["messages"] for c in synthetic.generate(n, seed=3)]


def setup(n=12, seq_len=96):
  tok = tokenizer_lib.tiny()
  cfg = qwen.preset("tiny", vocab_size=len(tok))
  params = qwen.init_params(cfg, jax.random.key(0))
  convs = conversations(n)
  index, truncated = pipeline.pack(tok, convs, seq_len)
  assert truncated == 0
  return tok, cfg, params, convs, [[convs[i] for i in p] for p in index]


def test_packs_hold_every_conversation_once_in_order_within_seq_len():
  tok, _, _, convs, _ = setup()
  index, _ = pipeline.pack(tok, iter(convs), 96)  # One pass: the rows may be read lazily.
  assert len(index) < len(convs)  # Packing packed.
  assert sorted(i for p in index for i in p) == list(range(len(convs)))
  assert all(p == sorted(p) for p in index)
  assert all(sum(len(pipeline.chat.tokenize(tok, convs[i])[0]) for i in p) <= 97 for p in index)
  packs = pipeline.PackedRows(convs, index)
  assert len(packs) == len(index) and packs[0]["pack"] == [convs[i] for i in index[0]]
  assert packs.slots == max(map(len, index)) and [r["where"] for r in packs[-2:]] == [
      f"pack:{len(index) - 2}", f"pack:{len(index) - 1}"]
  packs = [r["pack"] for r in packs]
  batch = pipeline.packed_batch(tok, packs, 96)[0]
  for i, p in enumerate(packs):
    assert list(np.unique(batch["segment_ids"][i][batch["attn_mask"][i] == 1])) == list(range(1, len(p) + 1))


def test_positions_restart_at_each_segment():
  seg = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(qwen.segment_positions(seg),
                                [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))])


def test_attention_never_crosses_a_segment():
  """Perturbing one segment's tokens leaves every other segment's logits unchanged, and
  each segment's logits equal that conversation run alone."""
  tok, cfg, params, convs, packs = setup()
  i = max(range(len(packs)), key=lambda k: len(packs[k]))
  batch = pipeline.packed_batch(tok, packs[i:i + 1], 96)[0]
  run = lambda t: qwen.Qwen(cfg).apply({"params": params}, t, kv_mask_BS=batch["attn_mask"],
                                       segment_ids_BT=batch["segment_ids"])[0]
  logits = run(batch["tokens"])
  seg = batch["segment_ids"][0]
  poked = np.where(seg == 2, (batch["tokens"] + 7) % cfg.vocab_size, batch["tokens"])
  logits2 = run(poked)
  keep = (seg != 2) & (seg > 0)
  np.testing.assert_array_equal(np.asarray(logits)[0, keep], np.asarray(logits2)[0, keep])
  assert not np.allclose(np.asarray(logits)[0, seg == 2], np.asarray(logits2)[0, seg == 2])
  for j, conv in enumerate(packs[i]):
    ids, _ = pipeline.chat.tokenize(tok, conv)
    alone = qwen.Qwen(cfg).apply({"params": params}, jnp.asarray(ids)[None])[0]
    np.testing.assert_allclose(np.asarray(logits)[0, seg == j + 1], np.asarray(alone)[0], atol=1e-5)


def test_a_packed_batch_has_the_loss_and_gradients_of_the_same_conversations_unpacked():
  tok, cfg, params, convs, packs = setup()
  packed = pipeline.packed_batch(tok, packs, 96)[0]
  unpacked, _ = pipeline.sft_batch(tok, [c for p in [convs] for c in p], 96)
  loss = functools.partial(sft.loss_fn, rng=jax.random.key(0), model_cfg=cfg, deterministic=True)

  def mean_loss(p, batch):
    nll, (count, _) = loss(p, {k: jnp.asarray(v) for k, v in batch.items()})
    return nll / count  # Per token over the batch, as the train step divides.

  (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(mean_loss))(params, x) for x in (packed, unpacked))
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  assert packed["tokens"].shape[0] < unpacked["tokens"].shape[0]


# ----------------------------------------------------------------------------- comparisons
# RM and DPO rows: one prompt and its K responses per segment, each response a branch that
# sees the prompt and itself (pipeline.pack_comparisons, qwen.Qwen's branch_ids_BT).


def unpacked_index(unpacked, tok, comparison, seq_len) -> int:
  prompt, branches, _ = pipeline.comparison_tokens(tok, comparison, seq_len)
  full = [np.concatenate([prompt, ids]) for ids, _ in branches]
  return next(i for i in range(len(unpacked["tokens"]))
              if all(unpacked["attn_mask"][i, j].sum() == len(f) and
                     np.array_equal(unpacked["tokens"][i, j, :len(f)], f) for j, f in enumerate(full)))


def comparison_setup(seq_len):
  tok = tokenizer_lib.tiny()
  cfg = qwen.preset("tiny", vocab_size=len(tok), num_layers=2)
  params = qwen.init_params(cfg, jax.random.key(1))
  rows = synthetic.comparisons(10, seed=3)
  index, truncated = pipeline.pack_comparisons(tok, rows, seq_len)
  packs = [[rows[i] for i in p] for p in index]
  packed, truncated_packed = pipeline.packed_comparisons(tok, packs, seq_len, max(map(len, packs)))
  assert truncated_packed == truncated
  unpacked, truncated_unpacked = pipeline.ranked_batch(tok, rows, seq_len)
  assert truncated == truncated_unpacked
  # The unpacked comparison of each packed one, in packed order: its K rows are the prompt
  # followed by each branch, token for token (so the truncation is ranked_batch's too).
  order = [unpacked_index(unpacked, tok, c, seq_len) for pack in packs for c in pack]
  return tok, cfg, params, rows, packs, packed, unpacked, order, truncated


@pytest.mark.parametrize("seq_len", [64, 40])  # 40 cuts responses, as ranked_batch does.
def test_packed_comparisons_score_as_their_unpacked_rows(seq_len):
  """Each response's summed log-prob, token count and reward-model score from packed rows
  equal those of its own unpacked row, cut rows included; empty slots are marked."""
  from r3jax.trainers import dpo
  tok, cfg, params, rows, packs, packed, unpacked, order, truncated = comparison_setup(seq_len)
  assert len(packs) < len(rows) and sorted(order) == list(range(len(rows)))
  assert (truncated > 0) == (seq_len == 40)
  valid = packed["valid"].astype(bool)
  assert valid.sum() == len(rows) and packed["tokens"].shape[1] == 2 * seq_len
  lp, n = jax.jit(lambda p, b: dpo.sequence_logprobs(p, cfg, b))(params, packed)
  lp_ref, n_ref = jax.jit(lambda p, b: dpo.sequence_logprobs(p, cfg, b))(params, unpacked)
  np.testing.assert_array_equal(np.asarray(n)[valid], np.asarray(n_ref)[order])
  np.testing.assert_allclose(np.asarray(lp)[valid], np.asarray(lp_ref)[order], rtol=1e-5, atol=1e-5)
  rm_params = {"backbone": params, "head": {"w": jax.random.normal(jax.random.key(2), (cfg.hidden_size,)),
                                            "b": jnp.float32(0.3)}}
  s_RT = qwen.scalar_outputs(rm_params, cfg, packed["tokens"], packed["attn_mask"],
                             segment_ids_BT=packed["segment_ids"], branch_ids_BT=packed["branch_ids"])
  scores = np.take_along_axis(np.asarray(s_RT)[:, :, None], packed["ends"].reshape(len(packs), -1)[:, :, None], 1)
  b, k, t = unpacked["tokens"].shape
  want = qwen.sequence_scores(rm_params, cfg, unpacked["tokens"].reshape(b * k, t),
                              unpacked["attn_mask"].reshape(b * k, t)).reshape(b, k)
  np.testing.assert_allclose(scores.reshape(*packed["ends"].shape)[valid], np.asarray(want)[order],
                             rtol=1e-5, atol=1e-5)


def test_a_response_never_sees_another_response_or_comparison():
  """Perturbing one response's tokens leaves the logits of its prompt, of the other
  response and of every other comparison unchanged."""
  tok, cfg, params, rows, packs, packed, _, _, _ = comparison_setup(64)
  i = max(range(len(packs)), key=lambda r: len(packs[r]))
  assert len(packs[i]) > 1
  seg, branch = packed["segment_ids"][i], packed["branch_ids"][i]
  run = lambda t: np.asarray(qwen.Qwen(cfg).apply(
      {"params": params}, t[None], kv_mask_BS=packed["attn_mask"][i:i + 1],
      segment_ids_BT=seg[None], branch_ids_BT=branch[None])[0])[0]
  poke = (seg == 1) & (branch == 2)
  before, after = run(packed["tokens"][i]), run(np.where(poke, (packed["tokens"][i] + 7) % cfg.vocab_size,
                                                         packed["tokens"][i]))
  keep = ~poke & (packed["attn_mask"][i] == 1)
  np.testing.assert_array_equal(before[keep], after[keep])
  assert not np.allclose(before[poke], after[poke])


def test_packed_dpo_and_rm_losses_and_gradients_equal_unpacked():
  """Per comparison over the batch, as unpacked: the DPO loss (with reference log-probs)
  and ORPO's and CPO's (whose NLL pools the chosen tokens over the batch), their metrics
  and gradients, and the reward model's Bradley–Terry loss and gradients."""
  import ml_collections
  from r3jax.trainers import dpo, rm
  tok, cfg, params, rows, packs, packed, unpacked, order, _ = comparison_setup(64)
  ref_BK = np.asarray(jax.random.normal(jax.random.key(3), (len(rows), 2))) - 20.0
  valid = packed["valid"].astype(bool)
  ref_RCK = np.zeros((*valid.shape, 2), np.float32)
  ref_RCK[valid] = ref_BK[order]
  configs = [ml_collections.ConfigDict(dict(type=t, beta=0.1, label_smoothing=0.0, **extra))
             for t, extra in (("sigmoid", {}), ("orpo", {}), ("cpo", {"cpo_alpha": 1.0}))]
  dpo_fns = [functools.partial(dpo.dpo_loss, rng=None, model_cfg=cfg, loss_config=c) for c in configs]
  rm_params = {"backbone": params, "head": {"w": jax.random.normal(jax.random.key(2), (cfg.hidden_size,)),
                                            "b": jnp.float32(0.0)}}
  rm_fn = lambda p, b: rm.rm_loss(p, b, None, model_cfg=cfg, margin=0.0)
  # ORPO's and CPO's chosen NLL is TRL's mean over every chosen token of the batch.
  lp, n = dpo.sequence_logprobs(params, cfg, unpacked)
  nll = float(-jnp.sum(lp[:, 0]) / jnp.sum(n[:, 0]))
  cases = [(fn, params, {**packed, "ref_logp": ref_RCK}, {**unpacked, "ref_logp": ref_BK}) for fn in dpo_fns]
  for fn, p, a, b in cases + [(rm_fn, rm_params, packed, unpacked)]:
    def mean(p, batch, fn=fn):
      total, (count, m) = fn(p, {name: jnp.asarray(v) for name, v in batch.items()})
      return total / count, (count, {name: v / count for name, v in m.items()})
    (la, (ca, ma)), ga = jax.jit(jax.value_and_grad(mean, has_aux=True))(p, a)
    (lb, (cb, mb)), gb = jax.jit(jax.value_and_grad(mean, has_aux=True))(p, b)
    assert float(ca) == float(cb) == len(rows)
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for name in mb:
      np.testing.assert_allclose(ma[name], mb[name], rtol=1e-4, atol=1e-5, err_msg=name)
    if "nll_loss" in mb:
      np.testing.assert_allclose(mb["nll_loss"], nll, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):  # (The head's bias gets 0: BT ignores it.)
      np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5 * float(jnp.max(jnp.abs(y))) + 1e-7)


@pytest.mark.parametrize("recipe", ["dpo_qwen.py", "rm_qwen.py"])
def test_dpo_and_rm_train_on_packed_rows(tmp_path, capsys, recipe):
  """A few steps on packed comparisons: the first step's loss is log 2 exactly (the DPO
  policy is its reference, slot for slot, through the precomputed cache; the reward
  model's head starts at 0), held-out rows are evaluated unpacked, and packing with the
  prompt split, or for KTO, is a one-line config error."""
  from r3jax.core.errors import ConfigError
  from r3jax.trainers import stages, validate
  from helpers import metric_rows, tiny_recipe
  c = tiny_recipe(recipe)
  c.data.update(synthetic_examples=60, eval_fraction=0.2, packing=True)
  if "prompt_len" in c:
    with pytest.raises(ConfigError, match=r"config.data.packing=True with config.prompt_len=\d+: .*set prompt_len=0"):
      validate.validate(c)
    c.prompt_len, c.loss.precompute_ref = 0, True
  stages.run(c, str(tmp_path))
  err = capsys.readouterr().err
  assert "data.packing: 48 comparisons in" in err and "(train: packed rows)" in err
  train = metric_rows(tmp_path, "train/loss")
  assert set(train) == {1, 2, 3} and train[1]["train/loss"] == pytest.approx(np.log(2), abs=1e-5)
  assert all(np.isfinite(r["train/loss"]) for r in train.values())
  assert set(metric_rows(tmp_path, "eval/loss")) == {0, 3}
  kto = tiny_recipe("dpo_qwen.py", "tiny-kto")
  kto.data.packing = True
  with pytest.raises(ConfigError, match="config.data.packing: no kto trainer reads this field"):
    validate.validate(kto)
