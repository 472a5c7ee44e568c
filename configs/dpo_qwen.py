"""Offline preference optimisation: DPO (Rafailov et al. 2023), its variants on pairs, and KTO
(Ethayarajh et al. 2024) on unpaired feedback.

Presets (`--config=configs/dpo_qwen.py:<preset>`):
  tiny   (default) DPO from the tiny SFT policy (trained first in <workdir>/sft, or reused)
         on the embedded synthetic comparisons.
  tiny-simpo  the same with SimPO (Meng et al. 2024): reference-free, so no reference
         model is built or run; β 2, target margin γ (loss.simpo_gamma) 1, the paper's γ/β
         of a half.
  tiny-orpo  ORPO (Hong et al. 2024): the chosen response's NLL plus λ (loss.beta) 0.1 ×
         the log odds ratio, the paper's λ; reference-free.
  tiny-cpo  CPO (Xu et al. 2024): reference-free DPO, β 0.1, plus the chosen NLL with
         weight loss.cpo_alpha 1 (TRL's defaults).
  tiny-kto  KTO (trainer "kto") on the same comparisons taken apart: chosen -> desirable,
         rejected -> undesirable; 64 rows a step (the responses of DPO's 32 pairs), β 0.1,
         weights λ_D = λ_U = 1 (the classes are balanced). Unpaired files train it with
         --config.data.train=<file> (kto_en_demo.json, {prompt, completion, label} rows).
  r3     the R³ paper's DPO baseline (App. F): β 0.1, 3 epochs; needs --config.init_from=<SFT>
         and --config.data.train=<comparisons>.
  real-0.5b  DPO on ../shared/data/dpo_en_demo.json from a Qwen2.5-0.5B checkpoint's weights
         (--config.model.hf_dir=DIR), full fine-tuning in bf16 compute, 16 steps of 4 pairs
         (128 prompt + 192 response tokens each), held-out accuracy on 24 pairs at steps 0,
         8 and 16 (docs/results.md, "Every recipe on a real model").
  real-0.5b-orpo  the same with ORPO: no reference model, so a step does one forward less.
  real-0.5b-kto  KTO on ../shared/data/kto_en_demo.json (150 desirable, 150 undesirable
         rows), 16 steps of 8 rows (2 microbatches of 4), as real-0.5b otherwise; held
         out: 24 rows.
loss.type (trainer dpo): an entry of r3jax/losses/preference.LOSSES: sigmoid (DPO), ipo,
hinge (SLiC), sigmoid_norm and hinge_norm (RSO; β plays γ), and the reference-free simpo
(SimPO), orpo and cpo; any dpo preset takes --config.loss.type=<entry> with that entry's
own fields (loss.simpo_gamma, loss.cpo_alpha). KTO is a trainer of its own (trainers/kto.py;
loss.beta, loss.desirable_weight, loss.undesirable_weight).
"""

from configs import common
from r3jax.trainers import schema


def get_config(arg=None):
  preset = arg or "tiny"
  if preset == "tiny":
    return common.dpo_tiny()
  if preset == "tiny-simpo":
    c = common.dpo_tiny("dpo_tiny-simpo")
    c.loss.update(type="simpo", beta=2.0, simpo_gamma=1.0)
    return c
  if preset == "tiny-orpo":
    c = common.dpo_tiny("dpo_tiny-orpo")
    c.loss.update(type="orpo", beta=0.1)
    return c
  if preset == "tiny-cpo":
    c = common.dpo_tiny("dpo_tiny-cpo")
    c.loss.update(type="cpo", beta=0.1, cpo_alpha=1.0)
    return c
  if preset == "tiny-kto":
    c = schema.as_kto(common.dpo_tiny("kto_tiny"))
    c.batch_size = 64  # The 64 responses of DPO's 32 pairs.
    return c
  if preset == "real-0.5b":
    return real_05b()
  if preset == "real-0.5b-orpo":
    # No reference: about 60 s a step here and 21.8 GiB peak (2 steps measured here).
    c = real_05b("dpo_real-0.5b-orpo")
    c.loss.update(type="orpo", beta=0.1)
    return c
  if preset == "real-0.5b-kto":
    return real_05b_kto()
  if preset != "r3":
    raise ValueError(f"unknown preset {preset!r}; see the docstring of configs/dpo_qwen.py")
  c = common.with_sft_stage(schema.preference("dpo", f"dpo_{preset}"))
  c.model.preset = "qwen-7b"
  c.epochs = 3
  c.optim.update(lr=5e-7, schedule="cosine", warmup_steps=-1, warmup_ratio=0.1)
  return c


def real_05b(name="dpo_real-0.5b"):
  c = schema.preference("dpo", name)
  c.model.update(preset="qwen2.5-0.5b", hf_dir="", dtype="bfloat16")
  c.data.update(train="../shared/data/dpo_en_demo.json", eval_fraction=0.08)  # 24 of 300.
  # Prompts (median ~190 tokens) keep their last 128, responses (median ~350) their first
  # 192: a step of 4 pairs with its reference forward then takes ~40 s here, and the
  # preference shows early in a reply.
  c.steps, c.epochs, c.batch_size, c.seq_len, c.prompt_len = 16, 0, 4, 320, 128
  c.optim.update(lr=5e-6, warmup_steps=2, schedule="constant")
  c.log_every, c.eval_every, c.eval_batches = 2, 8, 6
  common.real_checkpoints(c, every=8)
  return c


def real_05b_kto():
  c = schema.as_kto(real_05b("kto_real-0.5b"))
  c.data.train = "../shared/data/kto_en_demo.json"
  # 8 rows a step (each row's KL completion is another row's), the 8 responses of real-0.5b's
  # 4 pairs, in 2 microbatches of 4: at 8 at once the step's activations (7.3 GiB planned)
  # with the reference, the KL forward and the checkpoint's copy passed this host's 23 GiB;
  # in two, a step takes about 95 s and the run peaks at 23.1 GiB, as real-0.5b does (2 steps
  # measured here). Held out: 24 rows, 3 batches.
  c.batch_size, c.micro_batch_per_device, c.eval_batches = 8, 4, 3
  return c
