"""Shared fixtures: tiny random HF Qwen2 checkpoints written to temp dirs."""

import os

import jax
import numpy as np
import pytest

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")

# Parity tests compare against PyTorch's fp32 matmuls; XLA's CPU default is fp32 too,
# "highest" only makes that explicit for backends that would use bf16 passes.
jax.config.update("jax_default_matmul_precision", "highest")


def shared_file(name: str) -> str:
  path = os.path.join(SHARED_DATA, name)
  if not os.path.exists(path):
    pytest.skip(f"{path} absent (real data samples live in ../shared/data)")
  return path


def make_hf_qwen(path, *, tie=False, kv_heads=2, heads=4, vocab=128, init_range=0.02, seed=0):
  """A random Qwen2ForCausalLM saved to `path`; returns the torch model."""
  import torch
  from transformers import Qwen2Config, Qwen2ForCausalLM
  torch.manual_seed(seed)
  cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=96,
                    num_hidden_layers=2, num_attention_heads=heads,
                    num_key_value_heads=kv_heads, max_position_embeddings=256,
                    tie_word_embeddings=tie, initializer_range=init_range,
                    rms_norm_eps=1e-6, rope_theta=10000.0)
  model = Qwen2ForCausalLM(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      # Random (not zero / one) biases and norm scales, so their mapping is exercised.
      if name.endswith("bias") or "norm" in name:
        p.add_(torch.randn_like(p) * 0.1)
  model.save_pretrained(str(path))
  return model


def left_padded_batch(vocab=128, seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, vocab, (3, 12))
  mask = np.ones((3, 12), np.int64)
  mask[1, :4] = 0
  mask[2, :9] = 0
  return ids * mask, mask
