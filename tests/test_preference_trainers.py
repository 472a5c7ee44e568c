"""Comparison data, reward-model scoring, and the RM / DPO / RSO trainers end to end."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3jax.core import checkpoint
from r3jax.data import chat, pipeline, readers, synthetic, tokenizer as tokenizer_lib
from r3jax.models import qwen
from helpers import metric_rows, shared_file, start_until_step, write_jsonl, why

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_comparison_formats_and_errors(tmp_path):
  hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: name a fruit\n\nAssistant: apple",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: name a fruit\n\nAssistant: rock"}
  path = write_jsonl(tmp_path / "c.jsonl", [
      {"prompt": "Q?", "chosen": "good", "rejected": "bad"},
      {"prompt": [{"role": "user", "content": "Q2?"}], "responses": ["a", "b", "c"]},
      hh,
      {"conversations": [{"from": "human", "value": "Q3"}], "chosen": {"from": "gpt", "value": "x"},
       "rejected": {"from": "gpt", "value": "y"}}])
  rows = readers.load_comparisons(path).rows
  assert [r["responses"] for r in rows] == [["good", "bad"], ["a", "b", "c"], ["apple", "rock"], ["x", "y"]]
  assert rows[2]["prompt"][-1] == {"role": "user", "content": "name a fruit"} and len(rows[2]["prompt"]) == 3
  assert rows[1]["where"].endswith("c.jsonl:2")

  bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q", "chosen": "ok", "rejected": "  "}])
  with pytest.raises(readers.DataError, match=r"bad.jsonl:1: empty or non-string response in 'rejected'"):
    readers.load_comparisons(bad)
  bad = write_jsonl(tmp_path / "bad2.jsonl", [{"prompt": "Q", "chosen": "ok"}])
  with pytest.raises(readers.DataError, match=r"bad2.jsonl:1: missing field 'rejected'"):
    readers.load_comparisons(bad)
  bad = write_jsonl(tmp_path / "bad3.jsonl", [dict(hh, rejected=hh["rejected"].replace("hello", "hey"))])
  with pytest.raises(readers.DataError, match=r"bad3.jsonl:1: 'chosen' and 'rejected' differ before"):
    readers.load_comparisons(bad)


def test_shared_comparison_files_parse():
  with pytest.raises(readers.DataError, match=r"hh_harmless_base_sample.jsonl:87: empty"):
    readers.load_comparisons(shared_file("hh_harmless_base_sample.jsonl"))
  loaded = readers.load_comparisons(shared_file("hh_harmless_base_sample.jsonl"), skip_bad=True)
  assert len(loaded.skipped) == 1 and len(loaded.rows) > 50
  dpo = readers.load_comparisons(shared_file("dpo_en_demo.json")).rows
  assert len(dpo) == 300 and all(len(r["responses"]) == 2 for r in dpo)


def test_ranked_batch_masks_only_the_final_response():
  tok = tokenizer_lib.tiny()
  prompt = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "earlier answer"},
            {"role": "user", "content": "Please tell me about Kalo."}]
  batch, truncated = pipeline.ranked_batch(tok, [{"prompt": prompt, "responses": ["Kalo is a city.", "No."]}], 64)
  assert batch["tokens"].shape == (1, 2, 64) and truncated == 0
  for j, want in enumerate(["Kalo is a city.", "No."]):
    trained = batch["tokens"][0, j][batch["loss_mask"][0, j] == 1]
    assert tok.decode(trained) == want + chat.IM_END
  n_short = len(chat.tokenize_response(tok, prompt, "y")[0])
  _, truncated = pipeline.ranked_batch(tok, [{"prompt": prompt, "responses": ["x " * 80, "y"]}], n_short)
  assert truncated == 1  # Counted per response: the short one fits exactly.


def test_ranked_batch_prompt_split_layout():
  tok = tokenizer_lib.tiny()
  prompt = [{"role": "user", "content": "Please tell me about Kalo."}]
  rows = [{"prompt": prompt, "responses": ["Kalo is a city.", "No."]}]
  whole, _ = pipeline.ranked_batch(tok, rows, 64)
  split, truncated = pipeline.ranked_batch(tok, rows, 64, prompt_len=24)
  n_prompt = int(np.argmax(whole["loss_mask"][0, 0]))
  assert truncated == 0 and n_prompt <= 24
  # Same tokens and masks, the prompt moved to end at column 24, identical in both rows.
  for j in range(2):
    for name in ("tokens", "loss_mask"):
      np.testing.assert_array_equal(split[name][0, j][split["attn_mask"][0, j] == 1],
                                    whole[name][0, j][whole["attn_mask"][0, j] == 1])
    assert split["attn_mask"][0, j, 24 - n_prompt:24].all() and not split["attn_mask"][0, j, :24 - n_prompt].any()
    assert split["loss_mask"][0, j, 24] == 1  # The response starts at column prompt_len.
  np.testing.assert_array_equal(split["tokens"][0, 0, :24], split["tokens"][0, 1, :24])
  # A long prompt keeps its end (the assistant header); a long response keeps its start.
  short, truncated = pipeline.ranked_batch(tok, rows, 24, prompt_len=8)
  assert truncated == 2 and short["attn_mask"][0, :, :8].all()
  np.testing.assert_array_equal(short["tokens"][0, 0, :8], whole["tokens"][0, 0, n_prompt - 8:n_prompt])
  np.testing.assert_array_equal(short["tokens"][0, 0, 8:], whole["tokens"][0, 0, n_prompt:n_prompt + 16])
  with pytest.raises(ValueError, match="prompt_len=64"):
    pipeline.ranked_batch(tok, rows, 64, prompt_len=64)


@pytest.mark.slow
def test_shared_prompt_logprobs_equal_whole_rows():
  """sequence_logprobs with the prompt run once equals running every row in full, in
  value and in gradient, on prompts and responses of mixed lengths."""
  from r3jax.trainers import dpo
  cfg = qwen.preset("tiny", num_layers=2)
  params = qwen.init_params(cfg, jax.random.key(0))
  tok = tokenizer_lib.tiny()
  rows = synthetic.comparisons(6, seed=3)
  whole, _ = pipeline.ranked_batch(tok, rows, 64)
  split, truncated = pipeline.ranked_batch(tok, rows, 64, prompt_len=24)
  assert truncated == 0 and len({int(np.argmax(m)) for m in whole["loss_mask"][:, 0]}) > 1
  sign = jnp.array([[1.0, -1.0]])

  def objective(p, batch, prompt_len):
    lp, n = dpo.sequence_logprobs(p, cfg, batch, prompt_len)
    return jnp.sum(lp * sign), (lp, n)

  (_, (lp_ref, n_ref)), g_ref = jax.value_and_grad(objective, has_aux=True)(params, whole, 0)
  shared = jax.jit(jax.value_and_grad(objective, has_aux=True), static_argnums=2)
  (_, (lp, n)), g = shared(params, split, 24)
  np.testing.assert_array_equal(n, n_ref)
  np.testing.assert_allclose(lp, lp_ref, rtol=1e-5, atol=1e-4)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_reference_free_loss_builds_and_reads_no_reference():
  """loss.type=simpo: the task's prepare step leaves batches as they are (it would need the
  train state to copy a reference), and the loss runs on batches without ref_logp."""
  import types
  import ml_collections
  from r3jax.losses import preference as losses
  from r3jax.trainers import dpo
  cfg = qwen.preset("tiny", num_layers=2)
  params = qwen.init_params(cfg, jax.random.key(0))
  batch, _ = pipeline.ranked_batch(tokenizer_lib.tiny(), synthetic.comparisons(4, seed=1), 64, 24)
  loss_config = ml_collections.ConfigDict(dict(type="simpo", beta=2.0, label_smoothing=0.0,
                                        precompute_ref=True, simpo_gamma=1.0))
  printed = []
  ctx = types.SimpleNamespace(
      run=types.SimpleNamespace(config=types.SimpleNamespace(loss=loss_config, prompt_len=24),
                                writer=types.SimpleNamespace(print=printed.append)),
      policy=types.SimpleNamespace(cfg=cfg), state=None, fresh=True)
  prepare = dpo.with_reference(ctx)
  assert prepare(batch, "train", np.arange(4)) is batch and "no reference model" in printed[0]
  loss, (weight, m) = jax.jit(lambda p, b: dpo.dpo_loss(p, b, None, model_cfg=cfg, loss_config=loss_config,
                                                        prompt_len=24))(params, batch)
  lp, n = dpo.sequence_logprobs(params, cfg, batch, 24)
  want, want_m = losses.dpo_loss(lp[:, 0], lp[:, 1], None, None, loss_type="simpo", beta=2.0,
                                 chosen_len_B=n[:, 0], rejected_len_B=n[:, 1], simpo_gamma=1.0)
  np.testing.assert_allclose(loss / weight, jnp.mean(want), rtol=1e-5)
  np.testing.assert_allclose(m["rewards/margin"] / weight, want_m["rewards/margin"], rtol=1e-5)


def test_reward_read_at_last_real_token_whatever_the_padding_side():
  cfg = qwen.preset("tiny", vocab_size=64, num_layers=2)
  params = {"backbone": qwen.init_params(cfg, jax.random.key(0)),
            "head": {"w": jax.random.normal(jax.random.key(1), (cfg.hidden_size,)), "b": jnp.float32(0.3)}}
  ids = np.array([5, 9, 11, 3, 7], np.int32)
  right = np.zeros((1, 8), np.int32)
  right[0, :5] = ids
  left = np.zeros((1, 8), np.int32)
  left[0, 3:] = ids
  r_right = qwen.sequence_scores(params, cfg, jnp.asarray(right), jnp.asarray(right > 0))
  r_left = qwen.sequence_scores(params, cfg, jnp.asarray(left), jnp.asarray(left > 0))
  r_none = qwen.sequence_scores(params, cfg, jnp.asarray(ids[None]), jnp.ones((1, 5), jnp.int32))
  np.testing.assert_allclose(r_right, r_none, atol=1e-5)
  np.testing.assert_allclose(r_left, r_none, atol=1e-5)


def test_synthetic_comparisons_are_real_comparisons():
  rows = synthetic.comparisons(300, seed=3)
  assert len(rows) == 300 and all(r["responses"][0] != r["responses"][1] for r in rows)
  assert all(r["responses"][0] == r["reference"] for r in rows)
  assert {r["query_type"] for r in rows} == {"open_ended", "closed_ended"}


def _run(args, env=None, timeout=900):
  out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
  assert out.returncode == 0, why(out)
  return out


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
  """A short tiny SFT run: the starting point of the RM and DPO tests."""
  path = tmp_path_factory.mktemp("sft")
  _run(["r3jax.train", "--config=configs/sft_qwen.py:tiny", f"--workdir={path}", "--config.steps=150",
        "--config.seq_len=64", "--config.eval_every=1000", "--config.eval_prompts=1",
        "--config.sample_tokens=4", "--config.data.synthetic_examples=2000"])
  return path


@pytest.mark.slow
def test_rm_loop_trains_the_head_and_scores_through_eval_pairs(tmp_path, sft_dir):
  rm_dir = tmp_path / "rm"
  _run(["r3jax.train", "--config=configs/rm_qwen.py", f"--workdir={rm_dir}", f"--config.init_from={sft_dir}",
        f"--config.tokenizer={sft_dir / 'tokenizer'}", "--config.steps=150", "--config.eval_every=150",
        "--config.data.synthetic_examples=6000"])
  ev = metric_rows(rm_dir, "eval/rm/accuracy")
  # A smoke test of the loop: a zero head ties every pair (loss log 2, strict accuracy 0);
  # after 150 steps the head separates pairs. Accuracy well above chance, and an eval loss
  # reliably under log 2, need a longer SFT and RM run than CI affords (150 steps read
  # 0.6951 with one data order and just under log 2 with another); see the notes.
  assert ev[0]["eval/loss"] == pytest.approx(np.log(2), abs=1e-6) and ev[0]["eval/rm/accuracy"] == 0.0
  assert ev[150]["eval/rm/accuracy"] > 0.0 and abs(ev[150]["eval/loss"] - np.log(2)) > 1e-4
  assert set(checkpoint.param_keys(rm_dir)) == {"backbone", "head"}
  out = _run(["r3jax.eval_pairs", f"--reward={rm_dir},length,random", "--data=synthetic", "--limit=200",
              f"--out={tmp_path}"])
  table = {r.split("|")[1].strip(): r for r in out.stdout.splitlines() if r.startswith("| ")}
  assert {"rm", "length", "random"} <= set(table), out.stdout
  assert (tmp_path / "pairs_accuracy.csv").exists()


@pytest.mark.slow
def test_eval_pairs_on_hh_sample_reports_skips_and_accuracy(tmp_path):
  path = shared_file("hh_harmless_base_sample.jsonl")
  bad = subprocess.run([sys.executable, "-m", "r3jax.eval_pairs", "--reward=length", f"--data={path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "hh_harmless_base_sample.jsonl:87: empty" in bad.stderr
  # Every row is parsed (and line 87 skipped); scoring the first 100 keeps CI time down.
  out = _run(["r3jax.eval_pairs", "--reward=length,relevance", f"--data={path}", "--skip_bad", "--limit=100"])
  assert "skipped 1 bad rows" in out.stderr and "| length |" in out.stdout and "| relevance |" in out.stdout


@pytest.mark.slow
def test_dpo_on_8_devices_fits_and_resumes_exactly_after_sigkill(tmp_path, sft_dir):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}

  def cmd(workdir):  # 32 training pairs, two batches: a fit test, cheap enough for CI.
    return ["r3jax.train", "--config=configs/dpo_qwen.py", f"--workdir={workdir}",
            f"--config.init_from={sft_dir}", f"--config.tokenizer={sft_dir / 'tokenizer'}",
            "--config.mesh=(('data', 2), ('fsdp', 4), ('tensor', 1))", "--config.steps=12",
            "--config.batch_size=16", "--config.seq_len=64", "--config.prompt_len=24",
            "--config.checkpoint.every=3",
            "--config.checkpoint.async_save=False", "--config.log_every=1", "--config.eval_every=12",
            "--config.data.synthetic_examples=40", "--config.data.eval_fraction=0.2",
            "--config.optim.lr=1e-3", "--config.optim.warmup_steps=0"]

  ref = _run(cmd(tmp_path / "ref"), env=env)
  assert "mesh {'data': 2, 'fsdp': 4" in ref.stderr and "32 train / 8 eval" in ref.stderr
  # Training rows, since 12 steps are too few to generalise; the held-out rise is measured
  # on the tiny preset (README).
  rows = metric_rows(tmp_path / "ref", "train/rewards/margin")
  first, last = [rows[s] for s in (1, 2, 3)], [rows[s] for s in (10, 11, 12)]
  assert np.mean([r["train/rewards/margin"] for r in last]) > 0.5
  assert np.mean([r["train/rewards/accuracy"] for r in last]) > 0.8
  assert (np.mean([r["train/loss"] for r in last]) <
          np.mean([r["train/loss"] for r in first]) - 0.15)
  ev = metric_rows(tmp_path / "ref", "eval/rewards/accuracy")
  assert ev[0]["eval/rewards/margin"] == pytest.approx(0.0, abs=1e-4)  # Policy == reference at start.
  assert set(ev) == {0, 12}

  kill_dir = tmp_path / "killed"
  proc = start_until_step([sys.executable, "-m", *cmd(kill_dir)], kill_dir, "train/loss", 5, env=env)
  proc.kill()
  proc.wait(timeout=30)
  resumed = _run(cmd(kill_dir), env=env)
  assert "resumed from step" in resumed.stderr
  a, b = checkpoint.load_host(tmp_path / "ref", 12), checkpoint.load_host(kill_dir, 12)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_rso_on_8_devices_builds_ranked_pairs_and_resumes_exactly_after_sigkill(tmp_path, sft_dir):
  """RSO end to end on a data=2 x fsdp=4 mesh: sample, score, rejection-sample and pair,
  then DPO with sigmoid-norm. A copy killed during the DPO stage reuses the pairs, resumes,
  and ends bitwise equal to the uninterrupted run."""
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}

  def cmd(workdir):
    return ["r3jax.train", "--config=configs/rso_qwen.py", f"--workdir={workdir}",
            f"--config.init_from={sft_dir}", f"--config.tokenizer={sft_dir / 'tokenizer'}",
            "--config.mesh=(('data', 2), ('fsdp', 4), ('tensor', 1))", "--config.rso.num_prompts=16",
            "--config.rso.n=8", "--config.rso.prompts_per_batch=8", "--config.rollout.max_new_tokens=16",
            "--config.steps=8", "--config.batch_size=8", "--config.eval_every=8", "--config.log_every=1",
            "--config.checkpoint.every=2", "--config.checkpoint.async_save=False"]

  ref = tmp_path / "ref"
  _run(cmd(ref), env=env)
  pairs = [json.loads(l) for l in open(ref / "pairs.jsonl")]
  assert pairs and all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
  assert len(pairs) <= 16 * 2  # k = 4 accepted per prompt: at most 2 first-round pairs.
  assert sorted(metric_rows(ref, "train/loss")) == list(range(1, 9))

  killed = tmp_path / "killed"
  killed.mkdir()
  (killed / "pairs.jsonl").write_bytes((ref / "pairs.jsonl").read_bytes())  # As if sampled there.
  proc = start_until_step([sys.executable, "-m", *cmd(killed)], killed, "train/loss", 3, env=env)
  proc.kill()
  proc.wait(timeout=30)
  resumed = _run(cmd(killed), env=env)
  assert "reusing" in resumed.stderr and "resumed from step" in resumed.stderr
  a, b = checkpoint.load_host(ref, 8), checkpoint.load_host(killed, 8)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)