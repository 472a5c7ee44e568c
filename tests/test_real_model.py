"""Opt-in: the real Qwen2.5-Coder-0.5B-Instruct against transformers. Skipped unless
$R3JAX_QWEN25_DIR names the directory that `python -m r3jax.convert_gguf --out=DIR` builds
(README, "A real checkpoint"); about 2 minutes and 8 GiB of host memory on 2 cores."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3jax.data import chat, tokenizer as tokenizer_lib
from r3jax.models import hf, engines, sampling
from test_qwen import masked_maxdiff, ours_logits, torch_logits

MODEL_DIR = os.environ.get("R3JAX_QWEN25_DIR", "")
pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(MODEL_DIR, "model.safetensors")),
    reason="set R3JAX_QWEN25_DIR to the directory built by `python -m r3jax.convert_gguf --out=DIR`")

CONVERSATIONS = {
    "no system turn": [{"role": "user", "content": "\nWrite a Python function that adds two numbers.\n"},
                       {"role": "assistant", "content": "\n\ndef add(a, b):\n    return a + b\n"}],
    "system turn": [{"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "What is 2 + 2?"},
                    {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "  And 3 + 3?"},
                    {"role": "assistant", "content": " 6\n"}],
}


@pytest.fixture(scope="module")
def models():
  import torch
  from transformers import AutoModelForCausalLM
  ref = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
  cfg, params = hf.load(MODEL_DIR)
  return ref, cfg, params, tokenizer_lib.load(MODEL_DIR)


def _prompts(tok):
  texts = [[{"role": "user", "content": "Write a haiku about sorting."}],
           [{"role": "user", "content": "What does `git rebase` do? One sentence."}]]
  rows = [chat.tokenize(tok, t, add_generation_prompt=True)[0] for t in texts]
  width = max(map(len, rows))
  ids = np.full((len(rows), width), tok.pad_token_id, np.int64)
  mask = np.zeros((len(rows), width), np.int64)
  for i, r in enumerate(rows):  # Left-padded, as the sampler's prompts are.
    ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
  return ids, mask


def test_logits_greedy_tokens_and_export_match_transformers(models, tmp_path):
  import torch
  from transformers import AutoModelForCausalLM
  ref, cfg, params, tok = models
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (24, 896, 14, 2)
  ids, mask = _prompts(tok)
  assert mask[1].sum() != mask[0].sum()  # Really left-padded.
  want = torch_logits(ref, ids, mask)
  assert masked_maxdiff(ours_logits(cfg, params, ids, mask), want, mask) <= 1e-3

  with torch.no_grad():
    out = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                       max_new_tokens=32, min_new_tokens=32, pad_token_id=tok.pad_token_id, eos_token_id=None)
  got = engines.generate(params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0), model_cfg=cfg,
                          cfg=sampling.SampleConfig(max_new_tokens=32, greedy=True))
  np.testing.assert_array_equal(np.asarray(got.tokens_BN), out[:, ids.shape[1]:].numpy())
  assert "sort" in tok.decode(np.asarray(got.tokens_BN)[0]).lower()  # It answers sensibly.

  hf.export(params, cfg, str(tmp_path / "out"), tokenizer=tok)
  back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
  assert masked_maxdiff(torch_logits(back, ids, mask), want, mask) <= 1e-5
  assert tokenizer_lib.load(str(tmp_path / "out")).chat_template == tok.chat_template


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chat_template_ids_equal_apply_chat_template(models, name):
  tok = models[3]
  conv = CONVERSATIONS[name]
  for messages, gen in ((conv, False), (conv[:-1], True)):
    ids, mask = chat.tokenize(tok, messages, add_generation_prompt=gen)
    want = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert ids.tolist() == list(want), (name, gen)
  text = tok.decode(ids)
  if name == "no system turn":
    assert "You are Qwen" in text  # The template's default system prompt.
  ids, mask = chat.tokenize(tok, conv)
  trained = tok.decode(ids[mask == 1])
  # Exactly the assistant contents and their end tokens; a "\n\n\n" token that straddles
  # the header's newline and a content's leading blank line is trained.
  contents = "".join(m["content"] + chat.IM_END for m in conv if m["role"] == "assistant")
  assert trained.lstrip("\n") == contents.lstrip("\n")


def test_r3_stop_rules_and_ce_fallback_on_real_answers(models):
  """R³'s stop rules (README, "Using a real checkpoint") on the model's own greedy answers:
  leading whitespace is stripped, a role marker or a run of blank lines ends the answer,
  and a closed-ended query without a reference scores by the open-ended branch."""
  from r3jax.models import bert
  from r3jax.rewards import r3
  _, cfg, params, tok = models
  ids, mask = _prompts(tok)
  got = engines.generate(params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0), model_cfg=cfg,
                          cfg=sampling.sample_config(tok, max_new_tokens=48, greedy=True))
  answers = sampling.decode(tok, got)
  for y in answers:
    cut = r3.truncate_response(y)
    assert cut and y.strip().startswith(cut)
    assert r3.truncate_response("\n\n \n" + y) == cut  # Leading blank lines no longer empty it.
    for tail in ("\nUser: and now in Rust?", "\n Assistant: sure", "<|im_end|>junk", "\n\n\n\nP.S. more"):
      assert r3.truncate_response(y + tail) == cut, tail
  reward = r3.R3(bert.Encoder.from_dir(bert.minilm_dir(), normalize=True), max_len=48)
  prompts = ["Write a haiku about sorting.", "What does `git rebase` do? One sentence."]
  open_ended = reward(prompts, answers)["reward"]
  no_ref = reward(prompts, answers, [None, ""], ["closed", "closed"])
  np.testing.assert_allclose(no_ref["reward"], open_ended)
  assert not no_ref["closed_ended"].any()
  with_ref = reward(prompts, answers, ["A haiku.", "It replays commits onto another base."], ["closed"] * 2)
  assert with_ref["closed_ended"].all() and not np.allclose(with_ref["reward"], open_ended)


def test_packed_comparisons_score_as_transformers_scores_their_rows(models):
  """RM/DPO packing on the real checkpoint (GQA, QKV bias, RoPE θ 1e6): each response's
  summed log-prob from packed rows (the prompt once, each response a branch whose positions
  continue from it) equals transformers' on that response's own row, cut rows included."""
  import torch
  from r3jax.data import pipeline, readers
  from r3jax.trainers import dpo
  from helpers import shared_file
  ref, cfg, params, tok = models
  seq_len = 256  # dpo_en_demo's responses run longer: some rows are cut, as unpacked.
  rows = readers.load_comparisons(shared_file("dpo_en_demo.json")).rows[:6]
  index, truncated = pipeline.pack_comparisons(tok, rows, seq_len)
  packs = [[rows[i] for i in p] for p in index]
  packed, _ = pipeline.packed_comparisons(tok, packs, seq_len, max(map(len, packs)))
  lp, n = jax.jit(lambda p, b: dpo.sequence_logprobs(p, cfg, b))(params, packed)
  lp, n = np.asarray(lp)[packed["valid"] == 1], np.asarray(n)[packed["valid"] == 1]
  unpacked, truncated_unpacked = pipeline.ranked_batch(tok, [c for p in packs for c in p], seq_len)
  assert truncated == truncated_unpacked > 0
  ids, mask = unpacked["tokens"].reshape(-1, seq_len), unpacked["attn_mask"].reshape(-1, seq_len)
  logits = torch_logits(ref, ids.astype(np.int64), mask.astype(np.int64))
  logp = torch.log_softmax(torch.tensor(logits[:, :-1]), -1).gather(-1, torch.tensor(ids[:, 1:, None].astype(np.int64)))
  w = unpacked["loss_mask"].reshape(-1, seq_len)[:, 1:]
  want = (logp[..., 0].numpy() * w).sum(-1).reshape(-1, 2)
  np.testing.assert_array_equal(n, w.sum(-1).reshape(-1, 2))
  np.testing.assert_allclose(lp, want, rtol=2e-4, atol=2e-3)
