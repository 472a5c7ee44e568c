"""Padding token rows to fixed shapes: left padding for prompts, and power-of-two buckets
so that a run compiles a handful of shapes instead of one per batch."""

import numpy as np


def bucket(n: int, minimum: int, maximum: int | None = None) -> int:
  """The smallest power of two >= n, at least `minimum` and at most `maximum`."""
  width = max(minimum, 1 << max(n - 1, 0).bit_length())
  return min(width, maximum) if maximum else width


def left_pad(sequences, pad_id: int, length: int | None = None):
  """Left-pads token lists into (tokens_BT, mask_BT) int32 numpy arrays.

  Longer sequences keep their last `length` tokens (the end of a prompt matters most).
  """
  length = length or max(len(s) for s in sequences)
  tokens = np.full((len(sequences), length), pad_id, np.int32)
  mask = np.zeros((len(sequences), length), np.int32)
  for i, s in enumerate(sequences):
    s = list(s)[-length:]
    if s:
      tokens[i, length - len(s):] = s
      mask[i, length - len(s):] = 1
  return tokens, mask
