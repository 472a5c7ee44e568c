"""URI workdirs (gs://…) without GCS: the URI code path (whole-file rewrites, throttled
flushes, local staging for HF tokenizers and safetensors, all through etils epath) run
against a local directory. Checkpoints go through orbax/tensorstore, whose gs:// support is
their own, on the same epath paths the other tests use."""

import json

from etils import epath
import flax.linen as nn
import jax
import numpy as np
import pytest

from r3jax.core import metrics, paths, plots
from r3jax.data import readers, tokenizer as tokenizer_lib
from r3jax.models import qwen
from r3jax.trainers import harness


@pytest.fixture
def as_uri(monkeypatch, tmp_path):
  """Paths under tmp_path take the branch a gs:// path takes (the local staging
  directories, made elsewhere, stay local)."""
  monkeypatch.setattr(paths, "is_uri", lambda path: str(path).startswith(str(tmp_path)))


def test_writer_logs_flushes_and_resumes_like_on_a_uri(as_uri, tmp_path):
  run = tmp_path / "run"
  w = metrics.Writer(str(run), 3, enabled=True)
  assert w._flush_secs == 30.0  # pylint: disable=protected-access
  w.scalars(1, {"train/loss": 2.0})
  w.texts(1, "eval_samples", [{"prompt": "p", "answer": "a"}])
  # The whole file is rewritten, so within flush_secs nothing is written per row.
  assert not (run / "metrics.jsonl").exists()
  w.scalars(2, {"train/loss": 1.0})
  w.flush()
  assert [r["step"] for r in metrics.read_jsonl(run / "metrics.jsonl")] == [1, 2]
  w.close()
  w = metrics.Writer(str(run), 3, initial_step=2, enabled=True)  # A resumed run.
  w.scalars(3, {"train/loss": 0.5})
  w.close()
  assert [r["train/loss"] for r in metrics.read_jsonl(run / "metrics.jsonl")] == [2.0, 1.0, 0.5]
  assert json.loads((run / "samples.jsonl").read_text())["answer"] == "a"
  out = plots.plot_workdir(str(run))
  assert epath.Path(out[0]).read_bytes()[:4] == b"\x89PNG"


def test_event_files_are_rewritten_whole_through_epath(tmp_path):
  factory = metrics._EpathEventsFactory()  # pylint: disable=protected-access
  factory.directory_check(str(tmp_path / "tb"))
  events = factory.open(str(tmp_path / "tb" / "events"))
  events.write(b"abc")
  events.flush()
  events.write(b"def")
  events.close()
  assert (tmp_path / "tb" / "events").read_bytes() == b"abcdef"


def test_tokenizer_cache_data_and_hf_export_like_on_a_uri(as_uri, tmp_path):
  tok = tokenizer_lib.tiny(cache_dir=str(tmp_path / "tok"))  # Trained in a temp dir, copied up.
  assert (tmp_path / "tok" / "tokenizer.json").exists()
  again = tokenizer_lib.tiny(cache_dir=str(tmp_path / "tok"))  # Copied down, not retrained.
  assert again.get_vocab() == tok.get_vocab()
  readers.write_jsonl(str(tmp_path / "data" / "rows.jsonl"), [{"a": 1}, {"a": 2}])
  assert metrics.read_jsonl(tmp_path / "data" / "rows.jsonl") == [{"a": 1}, {"a": 2}]
  cfg = qwen.preset("tiny", vocab_size=len(tok))
  params = nn.unbox(qwen.Qwen(cfg).init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"])
  path = harness.export_hf(str(tmp_path / "run"), params, cfg, tok)
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(p.name for p in epath.Path(path).iterdir())
