"""One DPO step, r3jax against TRL's DPOTrainer (PyTorch CPU), in the same run.

Both sides train the same model shape (the bench preset: vocab 32000, hidden 512, 8 layers,
8 heads, 2 KV heads) on B pairs of a P-token prompt and two R-token responses (plus EOS),
with sigmoid DPO at β 0.1, AdamW and the reference log-probs computed every step from a
frozen copy (TRL's default; r3jax's too unless loss.precompute_ref). A step is everything
between two optimizer updates: reference forward, policy forward and backward, update.

r3jax uses its training path as configured by default: the prompt runs once for both
responses and the LM head only on response positions (config.prompt_len > 0), and the
head's backward recomputes the logits (lm.head_logprobs). --noshare_prompt runs every row
in full, as TRL does, to separate the two gains.

  python -m bench.dpo_step [--pairs=8] [--prompt=64] [--response=128] [--steps=5] [--noshare_prompt]

The ratio printed last is TRL's median step time over r3jax's.
"""

import copy
import functools
import statistics
import time

from absl import app, flags

_PAIRS = flags.DEFINE_integer("pairs", 8, "Comparisons per step.")
_PROMPT = flags.DEFINE_integer("prompt", 64, "Prompt tokens.")
_RESPONSE = flags.DEFINE_integer("response", 128, "Tokens per response, EOS excluded.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (median reported), after 2 warm-up steps.")
_SHARE = flags.DEFINE_bool("share_prompt", True, "r3jax runs each prompt once for both "
                            "responses (config.prompt_len > 0); false: every row in full.")
_WARMUP = 2


def _data(vocab: int, n: int, seed: int = 0):
  """Token ids (1..vocab-2: 0 is padding, vocab-1 EOS) for n comparisons."""
  import numpy as np
  rng = np.random.RandomState(seed)
  ids = lambda k: rng.randint(1, vocab - 1, k).tolist()
  return [(ids(_PROMPT.value), ids(_RESPONSE.value), ids(_RESPONSE.value)) for _ in range(n)]


def r3jax_step_times(cfg, rows):
  import jax
  import ml_collections
  import numpy as np

  from r3jax.core import optim, sharding
  from r3jax.models import qwen
  from r3jax.trainers import dpo, harness, state as state_lib, step as step_lib

  ocfg = ml_collections.ConfigDict(dict(lr=1e-6, schedule="constant", warmup_steps=0,
                                        warmup_ratio=0.0, min_lr_ratio=0.0, b1=0.9, b2=0.999,
                                        eps=1e-8, weight_decay=0.0, grad_clip=1.0))
  loss_config = ml_collections.ConfigDict(dict(type="sigmoid", beta=0.1, label_smoothing=0.0))
  tx = optim.make(ocfg, 100)
  mesh = sharding.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
  rules = sharding.DEFAULT_RULES
  state, shardings = state_lib.init_state(state_lib.Policy(cfg, tokenizer=None, hf_dir=None), tx, mesh,
                                       rules, seed=0)
  ref_params = jax.tree.map(lambda x: x.copy(), state["params"])
  eos, p = cfg.vocab_size - 1, _PROMPT.value
  # The prompt-split layout of pipeline.ranked_batch (no padding here: every prompt is P).
  shared = p if _SHARE.value else 0
  step_fn = step_lib.make_train_step(
      functools.partial(dpo.dpo_loss, model_cfg=cfg, loss_config=loss_config, prompt_len=shared), tx,
      shardings, mesh)
  ref_fn = jax.jit(lambda params, b: dpo.sequence_logprobs(params, cfg, b, shared)[0])

  t = p + _RESPONSE.value + 1
  tokens = np.array([[prompt + c + [eos], prompt + r + [eos]] for prompt, c, r in rows], np.int32)
  loss_mask = np.zeros_like(tokens)
  loss_mask[:, :, p:] = 1
  batch = {"tokens": tokens, "attn_mask": np.ones_like(tokens), "loss_mask": loss_mask}
  assert tokens.shape == (len(rows), 2, t)

  holder = {"state": state}

  def one_step():
    b = dict(batch, ref_logp=np.asarray(ref_fn(ref_params, batch)))
    b = sharding.put_batch(jax.tree.map(lambda x: x[None], b), mesh, 1)
    holder["state"], m = step_fn(holder["state"], b)
    jax.block_until_ready(m)
    return float(m["loss"])

  times = []
  with harness.mesh_rules(mesh, rules):
    first_loss = one_step()
    for _ in range(_WARMUP - 1 + _STEPS.value):
      t0 = time.perf_counter()
      one_step()
      times.append(time.perf_counter() - t0)
  return times[_WARMUP - 1:], first_loss, qwen.param_count(ref_params)


def trl_step_times(cfg, rows):
  import datasets
  import tokenizers
  import torch
  import transformers
  import trl

  from r3jax.models import qwen

  # A word-level tokenizer whose words are token ids, so both sides see identical sequences.
  vocab = {f"t{i}": i for i in range(cfg.vocab_size)}
  tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t1"))
  tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="t0",
                                             eos_token=f"t{cfg.vocab_size - 1}", padding_side="left")
  text = lambda ids: "".join(f" t{i}" for i in ids)
  data = datasets.Dataset.from_list(
      [{"prompt": text(p), "chosen": text(c), "rejected": text(r)} for p, c, r in rows])

  hf_cfg = transformers.Qwen2Config(**{k: v for k, v in qwen.to_hf_config(cfg).items()
                                       if k not in ("architectures", "model_type")})
  torch.manual_seed(0)
  model = transformers.Qwen2ForCausalLM(hf_cfg).float()

  class Timer(transformers.TrainerCallback):

    def __init__(self):
      self.times, self.t0 = [], 0.0

    def on_step_begin(self, args, state, control, **kw):
      self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
      self.times.append(time.perf_counter() - self.t0)

  timer = Timer()
  args = trl.DPOConfig(output_dir="/tmp/r3jax_bench_trl", per_device_train_batch_size=len(rows),
                       max_steps=_WARMUP + _STEPS.value, learning_rate=1e-6, beta=0.1,
                       loss_type=["sigmoid"], max_length=None, logging_steps=10_000,
                       save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                       dataloader_num_workers=0, disable_tqdm=True, max_grad_norm=1.0,
                       warmup_steps=0, lr_scheduler_type="constant", weight_decay=0.0,
                       gradient_checkpointing=False)  # TRL's default recomputes; r3jax does not.
  ref = copy.deepcopy(model).eval()  # TRL would reload it from the hub name, which we lack.
  trainer = trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data,
                           processing_class=tok, callbacks=[timer])
  batch = next(iter(trainer.get_train_dataloader()))
  assert batch["input_ids"].shape == (2 * len(rows), _PROMPT.value + _RESPONSE.value + 1), \
      batch["input_ids"].shape
  trainer.train()
  return timer.times[_WARMUP:], torch.get_num_threads()


def main(argv):
  del argv
  import jax

  from r3jax.models import qwen

  cfg = qwen.preset("bench")
  # The physics: reference forward (2N) + policy forward and backward (6N) per token, at
  # this machine's fp32 matmul peak, measured first.
  import jax.numpy as jnp
  from bench.peaks import matmul_peak
  peak = matmul_peak(jnp.float32)
  # The same sequences each step: every pair is in one batch, as the shapes are fixed.
  rows = _data(cfg.vocab_size, _PAIRS.value)
  ours, first_loss, n_params = r3jax_step_times(cfg, rows)
  print(f"r3jax DPO step: {statistics.median(ours) * 1e3:.0f} ms median", flush=True)
  theirs, threads = trl_step_times(cfg, rows)
  a, b = statistics.median(ours), statistics.median(theirs)
  tokens = 2 * _PAIRS.value * (_PROMPT.value + _RESPONSE.value + 1)
  print(f"devices: {jax.devices()}; torch threads {threads}")
  print(f"r3jax prompt shared by both responses: {_SHARE.value}")
  print(f"shape: {_PAIRS.value} pairs x (prompt {_PROMPT.value} + response {_RESPONSE.value} + EOS), "
        f"bench model ({n_params / 1e6:.1f}M params); first r3jax loss "
        f"{first_loss:.4f} (log 2 = 0.6931)")
  print(f"r3jax DPO step: {a * 1e3:.0f} ms median ({tokens / a:,.0f} tokens/s); "
        f"steps {[round(x * 1e3) for x in ours]}")
  print(f"TRL DPOTrainer step: {b * 1e3:.0f} ms median ({tokens / b:,.0f} tokens/s); "
        f"steps {[round(x * 1e3) for x in theirs]}")
  # Matmul FLOPs, 8 per parameter per position (reference 2, policy 6); the embedding
  # gather is free. Full rows: P + R positions each through decoder and head, as TRL runs
  # them. Shared prompt: P positions once per pair, then R per response; head on R + 1.
  head, (pairs, p, r) = cfg.vocab_size * cfg.hidden_size, (_PAIRS.value, _PROMPT.value, _RESPONSE.value)
  body = n_params - 2 * head
  full = 8 * (body + head) * 2 * pairs * (p + r) / peak
  shared = 8 * (body * pairs * (p + 2 * r) + head * 2 * pairs * (r + 1)) / peak
  ours_bound = shared if _SHARE.value else full
  print(f"matmul bound at this machine's {peak / 1e9:.0f} GFLOP/s fp32 peak: full rows {full * 1e3:.0f} ms "
        f"(TRL at {full / b:.0%} of it), r3jax's work {ours_bound * 1e3:.0f} ms (r3jax at "
        f"{ours_bound / a:.0%} of it)")
  print(f"speed-up (TRL time / r3jax time): {b / a:.2f}x")


if __name__ == "__main__":
  app.run(main)
