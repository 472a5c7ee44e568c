"""Host memory of an SFT data file read whole against streamed (data.stream), in one run.

Each mode runs in a child process: it loads the file as `sources.conversations` does for
training (the held-out split included), then builds 64 batches of 8 rows drawn at random
through the tiny tokenizer (`pipeline.sft_batch`). The child reports its peak resident set
(getrusage's ru_maxrss: anonymous memory and mapped files, not the page cache that
RowStore's reads go through), its load time and its row count; the parent prints them
side by side, with the streamed peak as a share of the whole-file one.

  python -m bench.data_memory --mb=1000          # writes a ~1 GB file of conversations
  python -m bench.data_memory --data=rows.jsonl  # or any conversation file

The generated file (random words in user/assistant turns, a fixed seed) goes to /tmp,
and is reused by a later run that asks for the same size.
"""

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_MB = flags.DEFINE_integer("mb", 100, "Size of the generated file, without --data.")
_DATA = flags.DEFINE_string("data", "", "A conversation file (any format data.train reads).")
_CHILD = flags.DEFINE_enum("child", "", ["", "whole", "stream"], "Internal: measure one mode.")


def generate(mb: int) -> str:
  """A JSONL file of about `mb` MB of two-turn conversations of random words."""
  path = os.path.join(tempfile.gettempdir(), f"r3jax_bench_conversations_{mb}mb.jsonl")
  if os.path.exists(path) and os.path.getsize(path) >= mb << 20:
    return path
  rng = random.Random(0)
  words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
           for _ in range(5000)]
  text = lambda n: " ".join(rng.choices(words, k=n))
  with open(path + ".tmp", "w") as f:
    while f.tell() < mb << 20:
      row = {"messages": [{"role": "user", "content": text(rng.randint(5, 40))},
                          {"role": "assistant", "content": text(rng.randint(20, 200))}]}
      f.write(json.dumps(row) + "\n")
  os.replace(path + ".tmp", path)
  return path


def child(mode: str, path: str) -> None:
  """Loads `path` in `mode`, batches random rows; prints {rows, load_s, peak_mib}."""
  import ml_collections
  import numpy as np
  from r3jax.data import pipeline, sources, tokenizer as tokenizer_lib
  tok = tokenizer_lib.tiny()
  data = ml_collections.ConfigDict(dict(
      train=path, eval="", format="auto", eval_fraction=0.05, skip_bad=False, control_text="refuse",
      use_tfds=False, tfds_dir="", stream=mode == "stream"))
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    train, held_out, _ = sources.conversations(data, workdir, seed=0)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    for _ in range(64):
      pipeline.sft_batch(tok, [train[int(i)]["messages"] for i in rng.integers(0, len(train), 8)], 512)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.
    print(json.dumps({"rows": len(train) + len(held_out), "load_s": load_s, "peak_mib": peak}))


def main(argv):
  del argv
  if _CHILD.value:
    return child(_CHILD.value, _DATA.value)
  path = _DATA.value or generate(_MB.value)
  out = {}
  for mode in ("whole", "stream"):
    done = subprocess.run([sys.executable, "-m", "bench.data_memory", f"--child={mode}", f"--data={path}"],
                          capture_output=True, text=True, check=True)
    out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
  print(f"file: {path} ({os.path.getsize(path) / 2**20:,.0f} MiB, {out['whole']['rows']:,} conversations)")
  for mode, r in out.items():
    print(f"{mode}: peak RSS {r['peak_mib']:,.0f} MiB, load {r['load_s']:.1f} s")
  print(f"streamed peak / whole-file peak: {out['stream']['peak_mib'] / out['whole']['peak_mib']:.3f}")


if __name__ == "__main__":
  app.run(main)
