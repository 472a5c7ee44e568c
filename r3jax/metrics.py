"""Metrics: TensorBoard events, metrics.jsonl, and a console progress bar.

Only process 0 writes; the other processes get a writer that does nothing, so training
loops call it unconditionally.
"""

import json
import os
import sys
import time

import jax
import numpy as np
import tqdm


class Writer:
  """Scalars to TensorBoard and `metrics.jsonl`; text to TensorBoard and `samples.jsonl`."""

  def __init__(self, workdir: str, total_steps: int, initial_step: int = 0, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._bar = None
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter  # Local: only process 0 needs it.
    os.makedirs(workdir, exist_ok=True)
    self._tb = SummaryWriter(os.path.join(workdir, "tb"))
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._samples = open(os.path.join(workdir, "samples.jsonl"), "a")
    self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True,
                          unit="step", smoothing=0.1, mininterval=1.0)

  def scalars(self, step: int, values: dict, bar: dict | None = None):
    """Logs every value; `bar` picks the few shown beside the progress bar."""
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in values.items()}
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
    self._jsonl.flush()
    if bar is not None and self._bar is not None:
      self._bar.set_postfix({k: f"{values.get(k, v):.4g}" for k, v in bar.items()}, refresh=False)

  def texts(self, step: int, tag: str, rows: list[dict]):
    if not self.enabled:
      return
    for i, row in enumerate(rows):
      self._samples.write(json.dumps({"step": step, "tag": tag, **row}) + "\n")
      self._tb.add_text(f"{tag}/{i}", "\n\n".join(f"**{k}**: {v}" for k, v in row.items()), step)
    self._samples.flush()

  def advance(self, n: int = 1):
    if self._bar is not None:
      self._bar.update(n)

  def print(self, msg: str):
    """A message above the progress bar, on stderr with it."""
    if self.enabled:
      tqdm.tqdm.write(msg, file=sys.stderr)

  def close(self):
    if not self.enabled:
      return
    self._bar.close()
    self._tb.close()
    self._jsonl.close()
    self._samples.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
