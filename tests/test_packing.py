"""Sequence packing (data.packing): several conversations per row with segment ids. The
model confines attention to a segment and restarts positions; a packed batch trains
exactly as the same conversations unpadded."""

import functools

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
  packs, truncated = pipeline.pack(tok, convs, seq_len)
  assert truncated == 0
  return tok, cfg, params, convs, packs


def test_packs_hold_every_conversation_once_in_order_within_seq_len():
  tok, _, _, convs, packs = setup()
  assert len(packs) < len(convs)  # Packing packed.
  flat = [ids for p in packs for ids, _ in p]
  assert sorted(map(len, flat)) == sorted(len(pipeline.chat.tokenize(tok, c)[0]) for c in convs)
  assert all(sum(len(i) for i, _ in p) <= 97 for p in packs)
  batch = pipeline.packed_batch(packs, 96, tok.pad_token_id)
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
  batch = pipeline.packed_batch(packs[i:i + 1], 96, tok.pad_token_id)
  run = lambda t: qwen.Qwen(cfg).apply({"params": params}, t, kv_mask_BS=batch["attn_mask"],
                                       segment_ids_BT=batch["segment_ids"])[0]
  logits = run(batch["tokens"])
  seg = batch["segment_ids"][0]
  poked = np.where(seg == 2, (batch["tokens"] + 7) % cfg.vocab_size, batch["tokens"])
  logits2 = run(poked)
  keep = (seg != 2) & (seg > 0)
  np.testing.assert_array_equal(np.asarray(logits)[0, keep], np.asarray(logits2)[0, keep])
  assert not np.allclose(np.asarray(logits)[0, seg == 2], np.asarray(logits2)[0, seg == 2])
  for j, (ids, _) in enumerate(packs[i]):
    alone = qwen.Qwen(cfg).apply({"params": params}, jnp.asarray(ids)[None])[0]
    np.testing.assert_allclose(np.asarray(logits)[0, seg == j + 1], np.asarray(alone)[0], atol=1e-5)


def test_a_packed_batch_has_the_loss_and_gradients_of_the_same_conversations_unpacked():
  tok, cfg, params, convs, packs = setup()
  packed = pipeline.packed_batch(packs, 96, tok.pad_token_id)
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
