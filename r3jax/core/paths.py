"""Workdirs that may be URIs (gs://…): the few helpers for files that must pass through a
local directory, because the library writing or reading them only knows local paths
(HF tokenizers, safetensors). Everything else uses etils epath directly."""

import contextlib
import json
import os
import shutil
import tempfile

from etils import epath

from r3jax.core.errors import ConfigError


def is_uri(path) -> bool:
  return "://" in str(path)


def check_writable(path, what: str) -> None:
  """A directory this run may create and write (`what` names it in the message): one line
  now, not a traceback from the first writer. A URI needs its filesystem's package."""
  if is_uri(path):
    try:
      epath.Path(path).exists()
    except ImportError as e:
      raise ConfigError(f"{what}={path}: {e} (the {str(path).split(':')[0]}:// filesystem)") from None
    return
  existing = os.path.abspath(path)  # The directory itself, or where it would be made.
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  try:  # A real write: root passes every permission check, not a read-only mount.
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise ConfigError(f"{what}={path}: cannot write there ({e.strerror or e})") from None


def read_json_object(path, damaged: str = "") -> dict:
  """A JSON object from a file (a URI too); a ConfigError naming the file, with `damaged`
  appended (what to do), when it is truncated, not JSON or not an object."""
  try:
    out = json.loads(epath.Path(path).read_bytes())
  except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
    raise ConfigError(f"{path}: not readable JSON ({e}){damaged}") from None
  if not isinstance(out, dict):
    raise ConfigError(f"{path}: expected a JSON object, got {type(out).__name__}{damaged}")
  return out


def write_atomic(path, text: str) -> None:
  """Writes a whole text file that no reader (or a kill) sees half-written: an object
  store's write is atomic already; a local file is written aside and renamed."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_uri(path):
    path.write_text(text)
    return
  tmp = path.parent / f"{path.name}.tmp{os.getpid()}"
  tmp.write_text(text)
  tmp.replace(path)


def copy_dir(src, dst) -> None:
  """Copies the files of a flat directory; either side may be a URI."""
  src, dst = epath.Path(src), epath.Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  for f in src.iterdir():
    (dst / f.name).write_bytes(f.read_bytes())


@contextlib.contextmanager
def local_dir(path):
  """A local directory standing for `path`: `path` itself when it is local; otherwise a
  temporary copy of it (if it exists), uploaded back on exit."""
  if not is_uri(path):
    os.makedirs(path, exist_ok=True)
    yield str(path)
    return
  tmp = tempfile.mkdtemp(prefix="r3jax_")
  try:
    if epath.Path(path).exists():
      copy_dir(path, tmp)
    yield tmp
    copy_dir(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
