"""The relevance encoder matches transformers' BertModel + mean pooling on MiniLM."""

import dataclasses

import numpy as np
import pytest
import torch

from r3jax.models import bert

SENTENCES = ["Please tell me about Nivo.", "Nivo is a small city that lies in a chain of islands.",
             "The weather is nice today, and the long sentence keeps going with more words.",
             "", "A"]


def test_minilm_parity_with_transformers():
  path = bert.minilm_dir()
  enc = bert.Encoder.from_dir(path, normalize=False)
  ours = enc.encode(SENTENCES)
  from transformers import AutoTokenizer, BertModel
  tok = AutoTokenizer.from_pretrained(path)
  model = BertModel.from_pretrained(path).eval()
  batch = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  m = batch["attention_mask"][..., None].float()
  want = ((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()
  assert np.abs(ours - want).max() <= 1e-4
  # Texts are encoded in groups of one padded width (the third sentence pads to 32 word
  # pieces, the rest to 16) and in chunks of batch_size: neither changes an embedding or
  # its place in the output.
  chunked = dataclasses.replace(enc, batch_size=2).encode(SENTENCES[::-1])[::-1]
  assert np.abs(chunked - ours).max() <= 1e-5
  normed = bert.Encoder.from_dir(path, normalize=True).encode(SENTENCES)
  np.testing.assert_allclose(np.linalg.norm(normed, axis=-1), 1.0, rtol=1e-5)
  # Relevance ranks the on-topic answer first.
  s = normed @ normed.T
  assert s[0, 1] > s[0, 2]
  # bf16 compute (reward.encoder_dtype) keeps each embedding's direction and the ranking.
  b16 = bert.Encoder.from_dir(path, normalize=True, dtype="bfloat16").encode(SENTENCES)
  assert np.sum(b16 * normed, -1).min() > 0.995
  assert (b16 @ b16.T)[0, 1] > (b16 @ b16.T)[0, 2]


def test_missing_dir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json: not found"):
    bert.load(str(tmp_path))
