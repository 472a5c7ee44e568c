"""The data formats users download: each reads the same rows as its JSONL twin, and a
damaged file is one line naming it."""

import gzip
import json
import pickle

import pytest

from r3jax.core.errors import DataError
from r3jax.data import readers
from helpers import shared_file

datasets = pytest.importorskip("datasets")  # Writes the Parquet and Arrow twins.


def one_line(fn) -> str:
  with pytest.raises(DataError) as e:
    fn()
  assert "\n" not in str(e.value)
  return str(e.value)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
  """dpo_en_demo.json's rows as .json.gz, Parquet, an Arrow directory and a DatasetDict."""
  d = tmp_path_factory.mktemp("twins")
  src = shared_file("dpo_en_demo.json")
  raw = open(src, "rb").read()
  (d / "rows.json.gz").write_bytes(gzip.compress(raw))
  ds = datasets.Dataset.from_list(json.loads(raw))
  ds.to_parquet(str(d / "rows.parquet"))
  ds.save_to_disk(str(d / "arrow"))
  datasets.DatasetDict({"train": ds}).save_to_disk(str(d / "dict"))
  return src, d


@pytest.mark.parametrize("name", ["rows.json.gz", "rows.parquet", "arrow"])
def test_each_format_reads_the_rows_of_its_json_twin(twins, name):
  src, d = twins
  a, b = readers.load_comparisons(src), readers.load_comparisons(str(d / name))
  strip = lambda rows: [{k: v for k, v in r.items() if k != "where"} for r in rows]
  assert len(a.rows) == 300 and strip(a.rows) == strip(b.rows)
  assert b.rows[7]["where"] == (f"{src}: item 7".replace(src, str(d / name)) if name.endswith(".gz")
                                else f"{d / name}: row 7")


def test_hh_as_jsonl_gz_reads_as_its_twin(tmp_path):
  src = shared_file("hh_harmless_base_sample.jsonl")
  gz = tmp_path / "hh.jsonl.gz"
  gz.write_bytes(gzip.compress(open(src, "rb").read()))
  a = readers.load_conversations(src, skip_bad=True)
  b = readers.load_conversations(str(gz), skip_bad=True)
  assert [r["messages"] for r in a.rows] == [r["messages"] for r in b.rows] and len(a.rows) > 100
  assert [s.replace(src, str(gz)) for s in a.skipped] == b.skipped


def test_damaged_files_are_one_line(twins, tmp_path):
  src, d = twins
  gz = tmp_path / "cut.jsonl.gz"
  gz.write_bytes(gzip.compress(open(shared_file("hh_harmless_base_sample.jsonl"), "rb").read())[:5000])
  assert one_line(lambda: readers.load_comparisons(str(gz), skip_bad=True)).startswith(
      f"{gz}: truncated or damaged gzip file")
  pq = tmp_path / "cut.parquet"
  pq.write_bytes((d / "rows.parquet").read_bytes()[:3000])
  assert one_line(lambda: readers.load_comparisons(str(pq))).startswith(f"{pq}: not a readable Parquet file")
  # A Parquet file without the columns a reader needs names the row and the field.
  assert one_line(lambda: readers.load_texts(str(d / "rows.parquet"))) == (
      f"{d / 'rows.parquet'}: row 0: missing field 'text'")
  assert one_line(lambda: readers.load_comparisons(str(d / "dict"))) == (
      f"{d / 'dict'}: a DatasetDict with the splits train; name one directory, e.g. {d / 'dict' / 'train'}")
  assert one_line(lambda: readers.load_comparisons(str(tmp_path))).startswith(
      f"{tmp_path}: a directory without a state.json")


def test_ptx_text_is_tokenized_once_into_a_memory_map(tmp_path):
  """PPO-ptx reads its corpus a chunk at a time into <workdir>/ptx and maps it: the rows are
  the documents' ids, each ended by end-of-text, cut into ptx.seq_len; a second run reuses it."""
  import ml_collections
  import numpy as np
  from r3jax.data import sources, tokenizer as tokenizer_lib
  tok = tokenizer_lib.tiny()
  docs = [f"Document {i} says {'more ' * (i % 7)}things." for i in range(2500)]
  path = tmp_path / "corpus.txt.gz"
  path.write_bytes(gzip.compress("".join(d + "\n" for d in docs).encode()))
  cfg = ml_collections.ConfigDict(dict(coef=0.1, data=str(path), seq_len=16, synthetic_docs=0))
  rows = sources.ptx_rows(cfg, tok, str(tmp_path / "run"))
  want = np.concatenate([tok(d)["input_ids"] + [tok.eos_token_id] for d in docs])
  assert isinstance(rows, np.memmap) and rows.shape == (len(want) // 16, 16)
  np.testing.assert_array_equal(rows.reshape(-1), want[:rows.size])
  cache = tmp_path / "run" / "ptx" / "process_0" / "tokens.u32"
  mtime = cache.stat().st_mtime_ns
  sources.ptx_rows(cfg, tok, str(tmp_path / "run"))
  assert cache.stat().st_mtime_ns == mtime  # Reused, not rebuilt.


BUILDER = '''
import tensorflow_datasets as tfds

class TinyPrefs(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "prompt": tfds.features.Text(), "chosen": tfds.features.Text(),
        "rejected": tfds.features.Text(),
        "messages": tfds.features.Sequence({"role": tfds.features.Text(),
                                            "content": tfds.features.Text()})}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"No {i}.",
                "messages": [{"role": "user", "content": f"Question {i}?"},
                             {"role": "assistant", "content": f"Answer {i}."}]}
'''


def test_a_prepared_tfds_dataset_reads_by_name_from_tfds_dir(tmp_path, monkeypatch):
  """`tfds:<name>[@<split>]` from data.tfds_dir, nothing downloaded: a sequence of records
  reads as a list of turns; a dataset that is not there is one line."""
  import importlib
  import sys
  from r3jax.data import sources
  from r3jax.trainers import schema
  pkg = tmp_path / "pkg" / "tiny_prefs_builder"
  pkg.mkdir(parents=True)
  (pkg / "__init__.py").write_text(BUILDER)
  monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
  module = importlib.import_module("tiny_prefs_builder")
  module.TinyPrefs(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
  sys.modules.pop("tiny_prefs_builder")
  tfds_dir = str(tmp_path / "tfds")
  rows = readers.load_comparisons("tfds:tiny_prefs", tfds_dir=tfds_dir).rows
  assert sorted(r["responses"][0] for r in rows) == [f"Answer {i}." for i in range(6)]
  assert rows[0]["where"] == "tfds:tiny_prefs: row 0"
  convs = readers.load_conversations("tfds:tiny_prefs:1.0.0@test", tfds_dir=tfds_dir).rows
  assert len(convs) == 2 and all(c["messages"][1]["role"] == "assistant" for c in convs)
  c = schema.preference("dpo", "x").data
  c.update(train="tfds:tiny_prefs", eval="tfds:tiny_prefs@test", tfds_dir=tfds_dir)
  train, held_out, _ = sources.comparisons(c, 0)
  assert (len(train), len(held_out)) == (6, 2)
  assert one_line(lambda: readers.load_comparisons("tfds:nope", tfds_dir=tfds_dir)).startswith(
      f"tfds:nope: not a prepared array_record dataset in data.tfds_dir={tfds_dir} (DatasetNotFoundError")
  assert one_line(lambda: readers.load_comparisons("tfds:tiny_prefs")).startswith(
      "tfds:tiny_prefs: set data.tfds_dir")


def test_a_byte_order_mark_and_windows_line_ends_are_not_data(tmp_path):
  rows = [{"prompt": "Q?", "chosen": "yes", "rejected": "no"}] * 2
  body = "".join(json.dumps(r) + "\r\n" for r in rows).encode()
  (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + body)
  (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
  (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfFirst line.\r\nSecond line.\r\n")
  for name in ("bom.jsonl", "bom.json"):
    assert len(readers.load_comparisons(str(tmp_path / name)).rows) == 2
  assert [r["text"] for r in readers.load_texts(str(tmp_path / "bom.txt")).rows] == ["First line.", "Second line."]


def test_multi_part_content_reads_its_text_parts(tmp_path):
  turn = lambda role, *parts: {"role": role, "content": [{"type": "text", "text": t} for t in parts]}
  rows = [{"messages": [turn("user", "Hi ", "there"), turn("assistant", "Hello.")]},
          {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                        {"role": "assistant", "content": "A cat."}]}]
  path = tmp_path / "parts.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  loaded = readers.load_conversations(str(path), skip_bad=True)
  assert loaded.rows[0]["messages"][0]["content"] == "Hi there"
  assert loaded.skipped == [f"{path}:2: field 'messages' item 0: a content part of type 'image_url'; "
                            "only text parts are read"]


@pytest.mark.parametrize("name", ["rows.parquet", "hh.jsonl.gz"])
def test_a_stored_file_reads_the_rows_of_the_file_read_whole(twins, tmp_path, name):
  """data.stream: readers.RowStore keeps the rows on disk and byte offsets in memory; it
  reads the same rows, skips the same bad ones, and its views (held-out split, slices,
  negative indices) are those of the list."""
  from r3jax.data import sources
  if name == "hh.jsonl.gz":
    src = tmp_path / name
    src.write_bytes(gzip.compress(open(shared_file("hh_harmless_base_sample.jsonl"), "rb").read()))
    load = lambda **kw: readers.load_conversations(str(src), skip_bad=True, **kw)
  else:
    load = lambda **kw: readers.load_comparisons(str(twins[1] / name), **kw)
  whole, stored = load(), load(store=str(tmp_path / "train.rows.jsonl"))
  assert isinstance(stored.rows, readers.RowStore) and stored.rows.offsets.dtype == "int64"
  assert len(stored.rows) == len(whole.rows) > 100 and stored.skipped == whole.skipped
  assert list(stored.rows) == whole.rows and stored.rows[-3:] == whole.rows[-3:]
  assert stored.rows[-1] == whole.rows[-1]
  with pytest.raises(IndexError):
    stored.rows[len(whole.rows)]  # pylint: disable=pointless-statement
  for a, b in zip(sources._hold_out(whole.rows, 0.1, 3), sources._hold_out(stored.rows, 0.1, 3)):
    assert isinstance(b, readers.RowStore) and list(b) == a
  copy = pickle.loads(pickle.dumps(stored.rows))  # After a read: the handle is not pickled.
  assert copy[5] == whole.rows[5]
  view = stored.rows.take([4, 2])
  readers.RowStore.write(str(tmp_path / "train.rows.jsonl"), iter([{"where": "other launch"}]))
  assert list(view) == [whole.rows[4], whole.rows[2]]  # The path was written again.
  assert one_line(lambda: readers.RowStore.write(str(tmp_path / "x"), iter([{"where": "f:3", "v": b"\0"}]))
                  ).startswith("f:3: a value JSON cannot hold")


def test_a_streamed_run_trains_as_the_run_in_memory(tmp_path, capsys):
  """data.stream: an SFT run on packed HH rows, and a DPO run on packed comparisons, log
  the same losses and batches, step for step, as reading the file into memory; the rows
  lie in the workdir, and streaming is a config error for KTO and beside data.use_tfds."""
  from r3jax.core.errors import ConfigError
  from r3jax.trainers import stages, validate
  from helpers import metric_rows, tiny_recipe
  hh = shared_file("hh_harmless_base_sample.jsonl")
  for recipe in ("sft_qwen.py", "dpo_qwen.py"):
    logged = {}
    for stream in (False, True):
      c = tiny_recipe(recipe, seq_len=96)
      c.data.update(train=hh, skip_bad=True, packing=True, stream=stream)
      if "prompt_len" in c:
        c.prompt_len = 0
      workdir = tmp_path / f"{recipe}-{stream}"
      stages.run(c, str(workdir))
      keep = ("train/loss", "eval/loss", "data/batch_checksum", "train/rewards/margin")
      logged[stream] = {s: {k: r[k] for k in keep if k in r} for s, r in metric_rows(workdir, "train/loss").items()}
      assert (workdir / "data" / "process_0" / "train.rows.jsonl").exists() == stream
    assert len(logged[True]) == 3 and logged[True] == logged[False], recipe
  assert "skipped 1 bad rows" in capsys.readouterr().err
  for recipe, preset, field in (("dpo_qwen.py", "tiny-kto", "stream"), ("sft_qwen.py", "tiny", "use_tfds")):
    c = tiny_recipe(recipe, preset)
    c.data.update(stream=True, **({field: True} if field == "use_tfds" else {}))
    with pytest.raises(ConfigError, match="config.data.stream"):
      validate.validate(c)
