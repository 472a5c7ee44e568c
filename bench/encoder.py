"""R³'s relevance encoder: r3jax's jitted BERT (models/bert.py) vs `transformers.BertModel`
(PyTorch CPU) on the same MiniLM weights, shape and thread count, in the same run.

The shape is the reward phase's: a batch of texts padded to one bucket width (random
word-piece ids, all real tokens, so neither side can skip padding). Both sides pool the
last hidden states; r3jax's time includes the device-to-host copy of the embeddings.

  python -m bench.encoder [--batch=64] [--length=128] [--repeats=5] [--threads=2]
"""

from absl import app, flags

_BATCH = flags.DEFINE_integer("batch", 64, "Texts per encode call.")
_LENGTH = flags.DEFINE_integer("length", 128, "Word pieces per text.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per side (the fastest reported).")
_THREADS = flags.DEFINE_integer("threads", 2, "PyTorch intra-op threads.")


def main(_):
  import jax
  import numpy as np
  import torch
  from transformers import BertModel
  from bench.peaks import best_time
  from r3jax.models import bert

  torch.set_num_threads(_THREADS.value)
  path = bert.minilm_dir()
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 30000, (_BATCH.value, _LENGTH.value)).astype(np.int32)
  mask = np.ones_like(ids)
  times = {}
  for dtype in ("float32", "bfloat16"):
    cfg, params, _ = bert.load(path, dtype)
    run = lambda: np.asarray(bert.embed(params, ids, mask, cfg=cfg, normalize=True))
    ours = run()
    times[f"r3jax {dtype}"] = best_time(run, _REPEATS.value)
    model = BertModel.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    t_ids, t_mask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

    def hf():
      with torch.inference_mode():
        h = model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.float()
      e = h.mean(1)
      return (e / e.norm(dim=-1, keepdim=True)).numpy()

    cos = float(np.min(np.sum(ours * hf(), -1)))
    times[f"HF {dtype}"] = best_time(hf, _REPEATS.value)
    print(f"{dtype}: min cosine(r3jax, HF) over the batch {cos:.5f}")
  print(f"MiniLM-L6, batch {_BATCH.value} x {_LENGTH.value} word pieces, {_THREADS.value} torch "
        f"threads, jax {jax.__version__}, fastest of {_REPEATS.value}")
  for dtype in ("float32", "bfloat16"):
    ours, theirs = times[f"r3jax {dtype}"], times[f"HF {dtype}"]
    print(f"{dtype:9s} r3jax {ours * 1e3:8.1f} ms   HF BertModel {theirs * 1e3:8.1f} ms   "
          f"r3jax/HF {ours / theirs:5.2f}x")


if __name__ == "__main__":
  app.run(main)
