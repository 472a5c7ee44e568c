"""TFDS datasets built from local JSONL/JSON files, stored as array_record.

`build(source, data_dir)` copies a file into `manual_dir`, runs a TFDS builder over it and
returns a random-access data source (`as_data_source`), so the rows are read with TFDS's
indexing instead of held in memory. TFDS works here without TensorFlow. Each stored
example is one raw row as JSON text, keeping its `file:line` origin, so the readers'
validation and error messages apply unchanged.
"""

import json
import os
import shutil

import tensorflow_datasets as tfds

from r3jax.data import readers


class LocalRows(tfds.core.GeneratorBasedBuilder):
  """Rows of a local JSONL / JSON / text file placed in manual_dir as `rows.<ext>`."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the data file in manual_dir as rows.jsonl (or .json / .txt)."

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "row": tfds.features.Text(), "where": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    files = [f for f in os.listdir(dl_manager.manual_dir) if f.startswith("rows.")]
    if len(files) != 1:
      raise FileNotFoundError(f"{dl_manager.manual_dir}: expected exactly one rows.* file")
    return {"train": self._generate_examples(os.path.join(dl_manager.manual_dir, files[0]))}

  def _generate_examples(self, path):
    for i, (where, obj) in enumerate(readers.iter_records(path)):
      if isinstance(obj, readers.DataError):
        row = json.dumps({"__error__": str(obj)})
      else:
        row = json.dumps(obj)
      yield i, {"row": row, "where": where}


def build(source: str, data_dir: str):
  """A TFDS data source over `source`'s rows; built once per data_dir."""
  if not os.path.exists(source):
    raise readers.DataError(f"{source}: file not found")
  manual = os.path.join(data_dir, "manual")
  os.makedirs(manual, exist_ok=True)
  ext = os.path.splitext(source)[1]
  shutil.copyfile(source, os.path.join(manual, f"rows{ext}"))
  builder = LocalRows(data_dir=os.path.join(data_dir, "tfds"), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return builder.as_data_source(split="train")


def load_conversations(source: str, data_dir: str, fmt: str = "auto", skip_bad: bool = False,
                       control_text: str = "refuse") -> readers.Loaded:
  """Like readers.load_conversations, but reading through the TFDS data source."""
  rows, skipped = [], []
  ds = build(source, data_dir)
  copy = os.path.join(data_dir, "manual", "rows" + os.path.splitext(source)[1])
  text = lambda x: x.decode() if isinstance(x, bytes) else x
  for i in range(len(ds)):
    ex = ds[i]
    where = text(ex["where"]).replace(copy, source)  # Errors name the user's file.
    obj = json.loads(text(ex["row"]).replace(json.dumps(copy)[1:-1], json.dumps(source)[1:-1]))
    try:
      if isinstance(obj, dict) and "__error__" in obj:
        raise readers.DataError(obj["__error__"])
      row = {"messages": readers.to_conversation(obj, fmt, where)}
      if control_text != "plain":
        readers.refuse_control(row, where)
      rows.append({"where": where, **row})
    except readers.DataError as e:
      if not skip_bad:
        raise
      skipped.append(str(e))
  if not rows:
    raise readers.DataError(f"{source}: no usable rows")
  # TFDS stores examples in hashed-key order; restore file order for reproducible splits.
  rows.sort(key=lambda r: _position(r["where"]))
  return readers.Loaded(rows, skipped)


def _position(where: str) -> int:
  tail = where.rsplit(":", 1)[-1].strip()
  return int(tail.split()[-1])
