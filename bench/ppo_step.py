"""Where one PPO iteration's time goes, against what this machine's physics allows.

Runs the real PPO trainer (R³ reward with MiniLM) for a few iterations on the bench model
shape (hidden 512, 8 layers, 8 heads, 2 KV heads, intermediate 1408; the vocabulary is the
tiny tokenizer's 2048 so that responses decode) with random weights, so every rollout
runs to max_new_tokens. With --model=<HF dir> (e.g. the real Qwen2.5-Coder-0.5B-Instruct
from python -m r3jax.convert_gguf), that checkpoint and its tokenizer answer real prompts
(--prompts_file, the Vicuna questions by default), with LoRA adapters (--lora_rank) so that the
policy, its optimizer, the value head and the frozen reference fit in a 24 GiB host; its
answers stop at EOS, so the generated-token counts are the logged mean lengths. The first
iteration (compilation) is dropped.

Lower bounds, from the matmul peak and memory bandwidth measured in this same run:
  rollout: the prefill does 2·N FLOPs per prompt token (64 per row, padding included);
  then each decode step reads every weight once, and does 2·N FLOPs per row;
  reference + value forward: 2 models x 2·N·tokens FLOPs;
  update: per epoch, policy and value forward + backward, 6·N·tokens FLOPs each (4·N with
  LoRA: frozen weights need no weight gradients).

  python -m bench.ppo_step [--iters=4] [--prompts=16] [--new_tokens=128]
  python -m bench.ppo_step --model=DIR [--lora_rank=16] [--prompts=8] [--dtype=bfloat16]
  ... [--engine=continuous --slots=8]   (the rollout engine; with slots=0, static's one loop)
"""

import json
import os
import tempfile

from absl import app, flags

_ITERS = flags.DEFINE_integer("iters", 4, "PPO iterations (the first is compilation).")
_PROMPTS = flags.DEFINE_integer("prompts", 16, "Prompts per iteration (2 samples each).")
_NEW = flags.DEFINE_integer("new_tokens", 128, "Response length.")
_MODEL = flags.DEFINE_string("model", "", "HF checkpoint dir; empty: the random bench model.")
_PROMPTS_FILE = flags.DEFINE_string(
    "prompts_file", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                 "vicuna_bench_questions.jsonl"), "Prompts for --model.")
_LORA = flags.DEFINE_integer("lora_rank", 16, "LoRA rank with --model (0: full fine-tuning).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_ENGINE = flags.DEFINE_string("engine", "continuous", "rollout.engine (models/engines.ENGINES).")
_SLOTS = flags.DEFINE_integer("slots", 0, "rollout.slots: sequences decoding at once (0: all).")
PROMPT = 64  # Prompt tokens per row, left-padded.


def main(argv):
  del argv
  import runpy
  import jax
  import jax.numpy as jnp
  import numpy as np
  from r3jax.data import tokenizer
  from r3jax.models import hf, qwen
  from r3jax.trainers import stages
  from bench.peaks import bandwidth, matmul_peak

  config = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "configs", "ppo_qwen.py"))["get_config"]("qwen")
  n_prompts, new = _PROMPTS.value, _NEW.value
  if _MODEL.value:
    config.model.update(hf_dir=_MODEL.value, dtype=_DTYPE.value)
    config.data.prompts = _PROMPTS_FILE.value
    config.lora.rank = _LORA.value
  else:
    config.model.update(preset="bench", allow_random_init=True, dtype=_DTYPE.value)
    config.init_from = "random"
  config.update(steps=_ITERS.value, prompts_per_step=n_prompts, eval_prompts=2, log_samples_every=1000)
  config.rollout.update(max_new_tokens=new, prompt_len=PROMPT, engine=_ENGINE.value, slots=_SLOTS.value)
  config.ppo.update(minibatch=8, epochs=1, value_warmup_steps=0)
  config.checkpoint.update(every=10_000, async_save=False)
  with tempfile.TemporaryDirectory() as workdir:
    stages.run(config, workdir)
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    rows = [r for r in rows if "time/rollout" in r][1:]
    if _MODEL.value:
      cfg = hf.load_config(_MODEL.value)
    else:
      cfg = qwen.preset("bench", vocab_size=len(tokenizer.tiny(cache_dir=os.path.join(workdir, "tokenizer"))))

  phases = ["time/rollout", "time/reward", "time/reference_value", "time/advantages", "time/update"]
  t = {k: float(np.mean([r[k] for r in rows])) for k in phases}
  total = sum(t.values())
  shapes = jax.eval_shape(lambda k: qwen.init_params(cfg, k), jax.random.key(0))
  n = qwen.param_count(shapes) - cfg.vocab_size * cfg.hidden_size  # Matmul params.
  rows_b = n_prompts * config.rollout.n
  mean_new = float(np.mean([r["rollout/length"] for r in rows]))  # Real answers stop at EOS.
  tokens = rows_b * (PROMPT + mean_new)
  peak, bw = matmul_peak(jnp.float32), bandwidth()
  bound = {
      # The prompts' prefill (2·N FLOPs per prompt token) is part of the rollout phase too.
      "time/rollout": mean_new * max(4 * (n + cfg.vocab_size * cfg.hidden_size) / bw, 2 * n * rows_b / peak)
                      + 2 * n * rows_b * PROMPT / peak,
      "time/reference_value": 2 * 2 * n * tokens / peak,
      "time/update": 2 * (4 if config.lora.rank else 6) * n * tokens / peak,
  }
  print(f"model: {_MODEL.value or 'random bench model'}: {n / 1e6:.1f}M matmul params, vocab "
        f"{cfg.vocab_size}, {_DTYPE.value}{f', LoRA rank {config.lora.rank}' if config.lora.rank else ''}; "
        f"{rows_b} rollouts of {mean_new:.1f} tokens (mean) after <= {PROMPT}-token prompts; mean of {len(rows)} iterations")
  print(f"machine: matmul peak {peak / 1e9:.1f} GFLOP/s, memory bandwidth {bw / 1e9:.1f} GB/s")
  print(f"{'phase':24s} {'time':>8s} {'share':>7s} {'bound':>8s} {'time/bound':>10s}")
  for k in phases:
    b = bound.get(k)
    if b and t[k] < b:  # Faster than physics: its work was still in flight when the timer read.
      ratio = "(async: its work ends in a later phase)"
    else:
      ratio = f"{t[k] / b:9.1f}x" if b else UNBOUNDED[k].rjust(10)
    print(f"{k[5:]:24s} {t[k]:7.2f}s {t[k] / total:6.1%} " + (f"{b:7.2f}s " if b else f"{'-':>8s} ") + ratio)
  print(f"iteration {total:.2f}s: {rows_b * mean_new / t['time/rollout']:,.0f} generated tokens/s in the "
        f"rollout, {rows_b * mean_new / total:,.0f} per iteration second")


UNBOUNDED = {"time/reward": "(MiniLM on host)", "time/advantages": "(small, eager)"}


if __name__ == "__main__":
  app.run(main)
