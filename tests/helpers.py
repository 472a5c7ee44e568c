"""Helpers the tests share: real data samples, tiny random HF checkpoints, JSONL files and
training subprocesses watched through their metrics."""

import json
import os
import subprocess
import time

import numpy as np
import pytest

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


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


def write_jsonl(path, rows) -> str:
  """Rows (dicts, or raw strings for malformed lines) to a JSONL file; returns its path."""
  with open(path, "w") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


def tiny_recipe(recipe: str, preset: str = "tiny", *, seq_len: int = 64, steps: int = 3):
  """configs/<recipe>:<preset> from random weights, without its warm-start stages: `steps`
  steps of 4 rows, logged each step, evaluated at the last on one batch, saved
  synchronously."""
  import runpy
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  c = runpy.run_path(os.path.join(root, "configs", recipe))["get_config"](preset)
  c.unlock()
  for stage in c.stages:
    del c[stage]
  c.stages, c.init_from, c.model.allow_random_init = (), "random", True
  c.steps, c.batch_size, c.seq_len, c.log_every, c.eval_every, c.eval_batches = steps, 4, seq_len, 1, steps, 1
  c.checkpoint.update(every=steps, async_save=False)
  return c


def metric_rows(workdir, key) -> dict:
  """step -> the last metrics.jsonl row holding `key` (a resumed run re-logs steps);
  {} before the file exists."""
  path = os.path.join(workdir, "metrics.jsonl")
  rows = {}
  if os.path.exists(path):
    for line in open(path):
      r = json.loads(line)
      if key in r:
        rows[r["step"]] = r
  return rows


def start_until_step(cmd, workdir, key, step, *, env=None, timeout=400, stderr=subprocess.DEVNULL):
  """Starts a training command and returns its process once metrics.jsonl logs `key` at
  `step` or later, still running (to be killed or signalled between checkpoints)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                          env={**os.environ, **(env or {})})
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if max(metric_rows(workdir, key), default=0) >= step:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  return proc


def why(proc, n: int = 3000) -> str:
  """What a failed command printed about its failure: the end of its stderr, or, after a
  fatal signal, what came before the thread dumps (the cause; the dumps fill any tail)."""
  err = proc.stderr or ""
  fatal = err.find("Fatal Python error")
  return err[max(0, fatal - n):fatal + 300] if fatal >= 0 else err[-n:]


def tiny_judge(**kw):
  """An llm_judge.PairwiseJudge on a tiny random model with the tiny tokenizer."""
  import jax
  from r3jax.data import tokenizer as tokenizer_lib
  from r3jax.eval import llm_judge
  from r3jax.models import qwen
  tok = tokenizer_lib.tiny()
  cfg = qwen.preset("tiny", vocab_size=len(tok))
  return llm_judge.PairwiseJudge(cfg, qwen.init_params(cfg, jax.random.key(1)), tok, **kw)
