"""Metrics: TensorBoard events, metrics.jsonl, and a console progress bar.

Only process 0 writes; the other processes get a writer that does nothing, so training
loops call it unconditionally. Files go through etils epath, so a workdir may be a
gs:// URI. JSONL rows are appended to a local file at every call. Object stores have no
append, so there each file is rewritten whole, at most every `flush_secs` (30 s) and at
close.
"""

import io
import json
import sys
import time

from etils import epath
import jax
import numpy as np
import tqdm

from r3jax.core import paths

_FILES = ("metrics.jsonl", "samples.jsonl")


class _EpathEvents:
  """A tensorboardX record writer for URI workdirs: the events file is rewritten whole on
  each flush (as tensorboardX's own GCS writer does), through epath."""

  def __init__(self, path: str):
    self.path, self.buffer = epath.Path(path), io.BytesIO()

  def write(self, data: bytes):
    self.buffer.write(data)

  def flush(self):
    self.path.write_bytes(self.buffer.getvalue())

  def close(self):
    self.flush()


def _tensorboardx():
  """tensorboardX's SummaryWriter and record_writer (process 0 only), imported without
  torch: tensorboardX imports torch whenever it is installed, only to accept torch tensors,
  which costs seconds of every run's start-up. r3jax logs floats and strings."""
  hidden = "torch" not in sys.modules
  if hidden:
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set.
  try:
    from tensorboardX import SummaryWriter, record_writer  # pylint: disable=g-import-not-at-top
  finally:
    if hidden:
      del sys.modules["torch"]
  return SummaryWriter, record_writer


class _EpathEventsFactory:
  def open(self, path):
    return _EpathEvents(path)

  def directory_check(self, path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)


class Writer:
  """Scalars to TensorBoard and `metrics.jsonl`; text to TensorBoard and `samples.jsonl`."""

  def __init__(self, workdir: str, total_steps: int, initial_step: int = 0, enabled: bool | None = None,
               flush_secs: float | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._bar = None
    if not self.enabled:
      return
    SummaryWriter, record_writer = _tensorboardx()
    self._dir, self._remote = epath.Path(workdir), paths.is_uri(workdir)
    self._dir.mkdir(parents=True, exist_ok=True)
    if self._remote:
      record_writer.register_writer_factory(str(workdir).split("://")[0], _EpathEventsFactory())
    self._tb = SummaryWriter(str(self._dir / "tb"))
    # Lines not yet written. An object store has no append, so there they are all the
    # lines, a resumed run's earlier ones included, and each flush rewrites the file whole;
    # a local file is appended to.
    self._lines = {name: ((self._dir / name).read_text().splitlines(keepends=True)
                          if self._remote and (self._dir / name).exists() else []) for name in _FILES}
    self._flush_secs = (30.0 if self._remote else 0.0) if flush_secs is None else flush_secs
    self._flushed = time.monotonic()
    self._bar = Progress(total_steps, initial_step)

  def _append(self, name: str, rows: list[dict]):
    self._lines[name] += [json.dumps(r) + "\n" for r in rows]
    if time.monotonic() - self._flushed >= self._flush_secs:
      # Locally tensorboardX writes its events file itself; on a URI only a flush uploads it.
      self.flush(events=self._remote)

  def flush(self, events: bool = True):
    """Writes the JSONL files (and the TensorBoard events) out now, e.g. at a checkpoint."""
    if not self.enabled:
      return
    for name, lines in self._lines.items():
      if self._remote:
        paths.write_atomic(self._dir / name, "".join(lines))
      else:  # Opened even with nothing new, so the files exist from the first flush.
        with (self._dir / name).open("a") as f:
          f.write("".join(lines))
        lines.clear()
    if events:
      self._tb.flush()
    self._flushed = time.monotonic()

  def scalars(self, step: int, values: dict, bar: dict | None = None):
    """Logs every value; `bar` picks the few shown beside the progress bar."""
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in values.items()}
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    self._append("metrics.jsonl", [{"step": step, "time": time.time(), **values}])
    if bar is not None and self._bar is not None:
      self._bar.postfix = {k: f"{values.get(k, v):.4g}" for k, v in bar.items()}

  def texts(self, step: int, tag: str, rows: list[dict]):
    if not self.enabled:
      return
    for i, row in enumerate(rows):
      self._tb.add_text(f"{tag}/{i}", "\n\n".join(f"**{k}**: {v}" for k, v in row.items()), step)
    self._append("samples.jsonl", [{"step": step, "tag": tag, **row} for row in rows])

  def drop_after(self, step: int):
    """Removes the rows of steps after `step`: a resumed run logs them again. A line that
    does not parse (the torn end of an append cut by a kill or a full disk) goes too, with a
    note; a resumed run whose metrics.jsonl is gone says so."""
    if not self.enabled:
      return
    for name in _FILES:
      path = self._dir / name
      if self._remote:
        self._lines[name], torn = _rows_until(self._lines[name], step)
      elif path.exists():
        lines = path.read_text().splitlines(keepends=True)
        kept, torn = _rows_until(lines, step)
        if len(kept) != len(lines):
          paths.write_atomic(path, "".join(kept))
      else:
        torn = 0
        if name == "metrics.jsonl" and step:
          self.print(f"resuming at step {step} without {path}: the logged history before it is gone")
      if torn:
        self.print(f"{path}: dropped {torn} unreadable line(s), the torn end of an interrupted write")

  def advance(self, n: int = 1):
    if self._bar is not None:
      self._bar.update(n)

  def at_step(self, step: int):
    """Where a resumed run's progress starts."""
    if self._bar is not None:
      self._bar.start_at(step)

  def summary(self) -> str:
    """'<n> steps in <time>' and the last figures shown beside the bar."""
    return self._bar.summary() if self._bar is not None else ""

  def print(self, msg: str):
    """A message above the progress bar, on stderr with it."""
    if self.enabled:
      tqdm.tqdm.write(msg, file=sys.stderr)

  def close(self):
    if not self.enabled:
      return
    self._bar.close()
    self.flush()
    self._tb.close()


def clock(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"


class Progress:
  """A progress bar whose ETA is true: the rate is measured from the end of the first step
  (which includes compilation). On a terminal a tqdm bar; otherwise (logs, CI) a plain
  line at the first step, then every 30 s and at the end, with no cursor codes."""

  def __init__(self, total: int, initial: int = 0, every_s: float = 30.0):
    self.total, self.n, self.postfix, self.every_s = total, initial, {}, every_s
    self.t0 = self.t_first = time.monotonic()
    self.n_first, self.printed = None, 0.0
    self.bar = (tqdm.tqdm(total=total, initial=initial, dynamic_ncols=True, unit="step",
                          smoothing=0.1, mininterval=1.0) if sys.stderr.isatty() else None)

  def start_at(self, step: int):
    self.n = step
    if self.bar is not None:
      self.bar.n = self.bar.last_print_n = self.bar.initial = step
      self.bar.refresh()

  def update(self, n: int = 1):
    self.n += n
    now = time.monotonic()
    if self.n_first is None:  # The first step compiled: time the rest from here.
      self.n_first, self.t_first = self.n, now
      if self.bar is not None:
        self.bar.reset(self.total)
        self.bar.n = self.bar.last_print_n = self.bar.initial = self.n
    if self.bar is not None:
      self.bar.set_postfix(self.postfix, refresh=False)
      self.bar.update(0 if self.n == self.n_first else n)
    elif now - self.printed >= self.every_s or self.n in (self.n_first, self.total):
      self.printed = now
      print(self.line(now), file=sys.stderr, flush=True)

  def line(self, now: float) -> str:
    done = self.n - self.n_first
    rate = done / (now - self.t_first) if done else 0.0
    eta = f", ETA {clock((self.total - self.n) / rate)}" if rate and self.n < self.total else ""
    figures = "".join(f", {k}={v}" for k, v in self.postfix.items())
    return (f"{self.n}/{self.total} steps ({self.n / max(self.total, 1):.0%}), "
            f"{clock(now - self.t0)} elapsed{eta}{figures}")

  def summary(self) -> str:
    figures = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
    return f"{self.n} steps in {clock(time.monotonic() - self.t0)}" + (f"; last {figures}" if figures else "")

  def close(self):
    if self.bar is not None:
      self.bar.close()


def _rows_until(lines: list[str], step: int) -> tuple[list[str], int]:
  """(the lines of rows logged at or before `step`, how many lines did not parse)."""
  kept, torn = [], 0
  for line in lines:
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      torn += 1
      continue
    if isinstance(row, dict) and row.get("step", 0) <= step:
      kept.append(line if line.endswith("\n") else line + "\n")
  return kept, torn


def read_jsonl(path) -> list[dict]:
  """The rows of a JSONL log; a line that does not parse (a run killed mid-append) is left
  out, as plots.read_series does."""
  rows = []
  for line in epath.Path(path).read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return [r for r in rows if isinstance(r, dict)]
