"""Deterministic, resumable batching on Grain.

`Order` is a Grain `MapDataset` of example indices: shuffled by the seed, a new
permutation each epoch, batched into global batches (an epoch's remainder dropped) and
repeated. Its iterator's state (Grain's own, the next batch's index) is saved with each
checkpoint, so a restarted run continues with exactly the batches an uninterrupted run
would have seen.

Each process takes its contiguous slice of every global batch (`process_slice`), rather
than Grain's per-process sharding of the examples (`ShardByJaxProcess`): with the global
batch fixed whatever the process count, a checkpoint restores exactly onto another number
of processes, which sharded examples would not allow.
"""

import grain
import jax
import numpy as np

from r3jax.core.errors import DataError
from r3jax.data import chat, readers


class Order:
  """Global batches of example indices, reshuffled every epoch (drop-remainder)."""

  def __init__(self, n_examples: int, batch_size: int, seed: int, state: dict | None = None):
    if n_examples < batch_size:
      raise ValueError(f"{n_examples} examples cannot fill one batch of {batch_size}")
    self.per_epoch = n_examples // batch_size
    # Shuffle before batching and repeat after: each epoch is its own permutation, and no
    # batch straddles two epochs.
    ds = (grain.MapDataset.range(n_examples).shuffle(seed=seed)
          .batch(batch_size, drop_remainder=True).repeat(None))
    # Read in this thread: an index batch costs microseconds, and no prefetch thread runs
    # ahead of the state a checkpoint saves or outlives a SIGTERM.
    self._it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
    if state and "epoch" in state:  # Written before Grain: (epoch, batch in epoch).
      state = {"next_index": state["epoch"] * self.per_epoch + state["index"]}
    if state:
      self._it.set_state(state)

  def state(self) -> dict:
    return dict(self._it.get_state())

  @property
  def epoch(self) -> int:
    return self.state()["next_index"] // self.per_epoch

  @property
  def index(self) -> int:
    return self.state()["next_index"] % self.per_epoch

  def next(self) -> np.ndarray:
    return np.asarray(next(self._it))


def process_slice(indices: np.ndarray) -> np.ndarray:
  """This process's contiguous share of a global batch."""
  per = len(indices) // jax.process_count()
  return indices[jax.process_index() * per:(jax.process_index() + 1) * per]


def sft_batch(tokenizer, conversations, seq_len: int):
  """Right-padded next-token batch: tokens [B, seq_len + 1], loss_mask on targets.

  Returns (batch, n_truncated). loss_mask[:, t] says whether tokens[:, t] is trained, so
  the loss at input position t uses target tokens[:, t + 1] and weight loss_mask[:, t + 1].
  """
  tokens = np.full((len(conversations), seq_len + 1), tokenizer.pad_token_id, np.int32)
  loss_mask = np.zeros((len(conversations), seq_len + 1), np.int32)
  attn_mask = np.zeros((len(conversations), seq_len + 1), np.int32)
  truncated = 0
  for i, conv in enumerate(conversations):
    ids, mask = chat.tokenize(tokenizer, conv)
    if len(ids) > seq_len + 1:
      truncated += 1
      ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
    tokens[i, :len(ids)] = ids
    loss_mask[i, :len(ids)] = mask
    attn_mask[i, :len(ids)] = 1
  return {"tokens": tokens, "loss_mask": loss_mask, "attn_mask": attn_mask}, truncated


def first_fit(lengths, capacity: int, window: int = 64) -> list[list[int]]:
  """Items of `lengths` (each at most `capacity`) in rows of `capacity`: each goes into the
  first of the last `window` open rows with room, in data order, so the packing is
  deterministic and linear in the data. Returns each row's item indices."""
  rows, room = [], []
  for i, n in enumerate(lengths):
    lo = max(0, len(rows) - window)
    fits = next((r for r in range(lo, len(rows)) if room[r] >= n), None)
    if fits is None:
      rows.append([])
      room.append(capacity)
      fits = len(rows) - 1
    rows[fits].append(i)
    room[fits] -= n
  return rows


class PackedRows(readers.LazyRows):
  """Packs (index lists from `pack` or `pack_comparisons`) as rows {where, pack, slots}: a
  pack's rows are read from `rows` (a list, or a readers.RowStore) when it is indexed, and
  tokenized again when batched, so no pack holds token ids. `slots`: the most rows a pack
  holds, a static shape for the batches."""

  def __init__(self, rows, packs: list[list[int]]):
    self.rows, self.packs, self.slots = rows, packs, max(map(len, packs))

  def __len__(self) -> int:
    return len(self.packs)

  def row(self, i: int) -> dict:
    return {"where": f"pack:{i}", "pack": [self.rows[j] for j in self.packs[i]], "slots": self.slots}


def conversation_tokens(tokenizer, conversation, seq_len: int):
  """(ids, loss_mask) of a conversation cut to seq_len + 1 tokens, sft_batch's row, and
  whether it was cut."""
  ids, mask = chat.tokenize(tokenizer, conversation)
  return ids[:seq_len + 1], mask[:seq_len + 1], len(ids) > seq_len + 1


def pack(tokenizer, conversations, seq_len: int, window: int = 64):
  """Conversations packed (first_fit) into rows of at most seq_len + 1 tokens (the
  next-token layout of sft_batch), a longer one cut to seq_len + 1 tokens (its own row).
  Reads each conversation once, so `conversations` may be read lazily. Returns (packs,
  n_truncated); a pack is the indices of its conversations."""
  lengths, truncated = [], 0
  for conv in conversations:
    ids, _, cut = conversation_tokens(tokenizer, conv, seq_len)
    lengths.append(len(ids))
    truncated += cut
  return first_fit(lengths, seq_len + 1, window), truncated


def packed_batch(tokenizer, packs, seq_len: int):
  """Packs (each a list of conversations) as a right-padded batch like sft_batch's, plus
  segment_ids: 1, 2, ... for each conversation of a row, 0 on padding. The model confines
  attention to a segment and restarts positions at each (qwen.Qwen's segment_ids_BT); the
  loss mask is each conversation's own, so a segment's first token (never trained) is no
  target. Returns (batch, n_truncated), as sft_batch."""
  shape = (len(packs), seq_len + 1)
  truncated = 0
  out = {"tokens": np.full(shape, tokenizer.pad_token_id, np.int32), "loss_mask": np.zeros(shape, np.int32),
         "attn_mask": np.zeros(shape, np.int32), "segment_ids": np.zeros(shape, np.int32)}
  for i, p in enumerate(packs):
    at = 0
    for j, conv in enumerate(p):
      ids, mask, cut = conversation_tokens(tokenizer, conv, seq_len)
      truncated += cut
      out["tokens"][i, at:at + len(ids)] = ids
      out["loss_mask"][i, at:at + len(ids)] = mask
      out["segment_ids"][i, at:at + len(ids)] = j + 1
      at += len(ids)
    out["attn_mask"][i, :at] = 1
  return out, truncated


def comparison_tokens(tokenizer, comparison, seq_len: int):
  """A comparison's packed layout (see pack_comparisons): (the prompt but its last token,
  one (ids, loss_mask) branch per response), and whether any response was cut."""
  rows = chat.tokenize_responses(tokenizer, comparison["prompt"], comparison["responses"])
  n_prompt = int(np.argmax(rows[0][1]))  # The first response token: the prompt is shared.
  prompt = rows[0][0][:min(n_prompt, seq_len)]
  branches = [(np.concatenate([prompt[-1:], ids[n_prompt:seq_len]]),
               np.concatenate([[0], mask[n_prompt:seq_len]]).astype(np.int32)) for ids, mask in rows]
  return prompt[:-1], branches, sum(len(ids) > seq_len for ids, _ in rows)


def pack_comparisons(tokenizer, comparisons, seq_len: int, window: int = 64):
  """Comparisons of K responses packed (first_fit) into rows of K·seq_len tokens, as many
  as an unpacked comparison's K rows hold. A comparison is one segment holding its prompt
  once and each response as a branch (qwen.Qwen's branch_ids_BT): the prompt but its last
  token, then per response the prompt's last token (which predicts the response's first)
  and the response. A response sees the prompt and itself only, and its positions continue
  from the prompt, so it scores as its own row of ranked_batch(prompt_len=0) does,
  truncation included: a prompt + response over seq_len tokens keeps its first seq_len.
  Reads each comparison once. Returns (packs, n_truncated responses); a pack is the
  indices of its comparisons."""
  lengths, truncated, k = [], 0, None
  for c in comparisons:
    k = k or len(c["responses"])
    if len(c["responses"]) != k:
      raise DataError(f"{c.get('where', 'a comparison')}: {len(c['responses'])} responses where the "
                      f"first comparison has {k}; data.packing needs the same number in every one")
    prompt, branches, cut = comparison_tokens(tokenizer, c, seq_len)
    lengths.append(len(prompt) + sum(len(ids) for ids, _ in branches))
    truncated += cut
  return first_fit(lengths, k * seq_len, window), truncated


def packed_comparisons(tokenizer, packs, seq_len: int, slots: int):
  """Packs (each a list of comparisons) as rows of K·seq_len tokens: tokens, attn_mask and
  loss_mask (on each response, as ranked_batch's), segment_ids (1, 2, ... per comparison, 0
  on padding), branch_ids (0 on a prompt, k on its k-th response), and per comparison slot
  of a row, `slots` of them (a static shape: the most any pack holds): ends [R, slots, K],
  the column of each response's last token (where a reward model scores it), and valid
  [R, slots], 1 where a comparison fills the slot. Returns (batch, n_truncated responses),
  as ranked_batch."""
  k = len(packs[0][0]["responses"])
  shape, slot_shape = (len(packs), k * seq_len), (len(packs), slots)
  out = {name: np.zeros(shape, np.int32) for name in ("attn_mask", "loss_mask", "segment_ids", "branch_ids")}
  out.update(tokens=np.full(shape, tokenizer.pad_token_id, np.int32),
             ends=np.zeros((*slot_shape, k), np.int32), valid=np.zeros(slot_shape, np.int32))
  truncated = 0
  for i, pack_ in enumerate(packs):
    at = 0
    for j, comparison in enumerate(pack_):
      prompt, branches, cut = comparison_tokens(tokenizer, comparison, seq_len)
      truncated += cut
      for b, (ids, mask) in enumerate([(prompt, np.zeros(len(prompt), np.int32))] + branches):
        cols = slice(at, at + len(ids))
        out["tokens"][i, cols], out["loss_mask"][i, cols] = ids, mask
        out["segment_ids"][i, cols], out["branch_ids"][i, cols] = j + 1, b
        at += len(ids)
        if b:
          out["ends"][i, j, b - 1] = at - 1
      out["valid"][i, j] = 1
    out["attn_mask"][i, :at] = 1
  return out, truncated


def ranked_batch(tokenizer, comparisons, seq_len: int, prompt_len: int = 0):
  """Comparisons of K responses (best first) as [B, K, seq_len] arrays: tokens, attn_mask,
  and loss_mask on each response (its content and `<|im_end|>`).

  prompt_len 0: each row is prompt + response, right-padded. A truncated row keeps its
  start, and its response is scored on what remains.
  prompt_len P > 0: the prompt-split layout that `trainers.preference.sequence_logprobs`
  shares between the responses. Columns [0, P) hold the prompt, left-padded, identical
  in all K rows; columns [P, seq_len) hold the response, right-padded. A longer prompt
  keeps its last P tokens (the latest turns and the assistant header), and a longer
  response is cut at its end.

  Returns (batch, n_truncated): the number of truncated rows.
  """
  k = len(comparisons[0]["responses"])
  if any(len(c["responses"]) != k for c in comparisons):
    raise ValueError("every comparison in a batch needs the same number of responses")
  if not 0 <= prompt_len < seq_len:
    raise ValueError(f"prompt_len={prompt_len} must be in [0, seq_len={seq_len})")
  shape = (len(comparisons), k, seq_len)
  out = {"tokens": np.full(shape, tokenizer.pad_token_id, np.int32),
         "attn_mask": np.zeros(shape, np.int32), "loss_mask": np.zeros(shape, np.int32)}
  truncated = 0
  for i, c in enumerate(comparisons):
    for j, (ids, mask) in enumerate(chat.tokenize_responses(tokenizer, c["prompt"], c["responses"])):
      if prompt_len:
        n_prompt = int(np.argmax(mask))  # The response starts at its first loss token.
        cut = len(ids) - n_prompt > seq_len - prompt_len or n_prompt > prompt_len
        p_ids, r_ids = ids[:n_prompt][-prompt_len:], ids[n_prompt:][:seq_len - prompt_len]
        ids = np.concatenate([p_ids, r_ids])
        mask = np.concatenate([np.zeros(len(p_ids), np.int32), mask[n_prompt:][:len(r_ids)]])
        start = prompt_len - len(p_ids)
      else:
        cut, start = len(ids) > seq_len, 0
        ids, mask = ids[:seq_len], mask[:seq_len]
      truncated += int(cut)
      out["tokens"][i, j, start:start + len(ids)] = ids
      out["loss_mask"][i, j, start:start + len(ids)] = mask
      out["attn_mask"][i, j, start:start + len(ids)] = 1
  return out, truncated


def microbatches(batch: dict[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
  """[B, ...] -> [accum, B / accum, ...]; microbatch a takes rows a, a + accum, ...

  Strided so each microbatch holds rows from every process and device.
  """
  return {k: v.reshape(v.shape[0] // accum, accum, *v.shape[1:]).swapaxes(0, 1)
          for k, v in batch.items()}
