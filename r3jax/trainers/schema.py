"""The config schema: section builders holding every default, and nothing else.

configs/<recipe>.py files build their presets from these sections (the tiny recipes they
share are configs/common.py); no trainer reads a field that is not set here, and
`validate` refuses a config field that is not (`defaults`), so a config printed with
--config shows everything a run uses. `validate(config)` runs in the entry point before any work: each
option value against what the registries offer, and the cross-field constraints (batch
splits over the mesh, rollout shapes, paths), each failure one line naming the field.
"""

import ml_collections

from r3jax.core import sharding
from r3jax.losses import preference as pref_losses
from r3jax.rl import algorithms

ConfigDict = ml_collections.ConfigDict


def model(**kw) -> ConfigDict:
  c = ConfigDict(dict(preset="tiny", hf_dir="", param_dtype="float32", dtype="float32",
                      dropout_rate=0.0, remat=False, allow_random_init=False))
  c.update(kw)
  return c


def optim(**kw) -> ConfigDict:
  """AdamW (core/optim.py); warmup_steps=-1 takes warmup_ratio of the steps."""
  c = ConfigDict(dict(lr=2e-6, schedule="constant", warmup_steps=0, warmup_ratio=0.0,
                      min_lr_ratio=0.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0))
  c.update(kw)
  return c


def checkpoint(**kw) -> ConfigDict:
  c = ConfigDict(dict(every=500, max_to_keep=3, async_save=True))
  c.update(kw)
  return c


def run(trainer: str, name: str) -> ConfigDict:
  """Fields every trainer has."""
  c = ConfigDict()
  c.trainer, c.name, c.seed = trainer, name, 0
  c.stages = ()  # Warm-start stages run first when init_from is empty (trainers/stages.py).
  c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  c.sharding = ConfigDict({"rules": sharding.DEFAULT_RULES})
  c.model = model()
  c.tokenizer = ""  # HF tokenizer dir; "": the model's, or the locally trained tiny one.
  c.init_from = ""  # An HF dir, another run's workdir (its latest checkpoint), or "random".
  c.checkpoint = checkpoint()
  # A non-finite loss, gradient norm or update: "stop" before saving it, or "skip" the
  # update (keep the old state) and stop only after max_in_a_row skips in a row.
  c.nonfinite = ConfigDict(dict(action="stop", max_in_a_row=10))
  return c


def supervised(trainer: str, name: str) -> ConfigDict:
  """Fields of the trainers with a fixed dataset and a train step (SFT, RM, DPO)."""
  c = run(trainer, name)
  c.steps = 4000  # 0: derive from epochs.
  c.epochs = 0
  c.batch_size = 128  # Global, in conversations or comparisons.
  c.micro_batch_per_device = 0  # 0: the whole per-device share at once (no accumulation).
  c.seq_len = 2048
  c.log_every = 10
  c.eval_every = 500
  c.eval_batches = 4
  return c


def sft() -> ConfigDict:
  """SFT with the Qwen recipe's optimizer (Qwen report, Bai et al. 2023 §3.1.2)."""
  c = supervised("sft", "sft")
  c.model.dropout_rate = 0.1
  c.data = ConfigDict(dict(
      train="", eval="", format="auto", eval_fraction=0.05, skip_bad=False,
      control_text="refuse",  # Or "plain": readers.refuse_control.
      use_tfds=False,  # Read files through a TFDS array_record data source.
      tfds_dir="",  # Where data.train="tfds:<name>[/<config>][:<version>][@<split>]" is prepared.
      synthetic_examples=4000,
      synthetic_task="world",  # Without data.train: an entry of data/sources.TASKS.
      synthetic_restate=0.0,  # Share of synthetic answers that open by repeating the question.
      # Several conversations per row of seq_len tokens, attention kept within each
      # (pipeline.pack); batch_size then counts packed rows, and the loss is per token as before.
      packing=False,
      # The rows of data.train / data.eval written once, one JSON line each, to
      # <workdir>/data/process_<i>/ and read back when a batch needs them (readers.RowStore):
      # host memory holds 8 bytes a row however large the file. False: read into memory.
      stream=False))
  c.optim = optim(warmup_steps=1430)
  c.eval_prompts = 4  # Held-out prompts answered greedily at each eval.
  c.sample_tokens = 48
  return c


def preference(trainer: str, name: str) -> ConfigDict:
  """RM (Qwen report §3.2.1; InstructGPT §3.5 eq. 1) and DPO (Rafailov et al. 2023 §4) on
  comparisons: Qwen's PMP schedule."""
  c = supervised(trainer, name)
  c.steps, c.epochs, c.batch_size = 0, 1, 64
  c.data = ConfigDict(dict(train="", eval="", eval_fraction=0.05, skip_bad=False,
                           control_text="refuse",  # Or "plain": readers.refuse_control.
                           tfds_dir="",  # For "tfds:<name>..." data (readers._tfds_rows).
                           synthetic_examples=6000, synthetic_seed=0,
                           keep_ties=False,  # Comparisons whose responses are all equal.
                           # Several comparisons per row of K·seq_len tokens, each prompt once
                           # and its K responses beside it, attention kept within each response
                           # (pipeline.pack_comparisons); batch_size then counts packed rows,
                           # and the loss is per comparison as before. DPO: with prompt_len=0.
                           packing=False,
                           stream=False))  # As SFT's data.stream.
  c.optim = optim(lr=3e-6, weight_decay=0.0)
  c.eval_every, c.eval_batches = 200, 8
  if trainer == "rm":
    c.loss = ConfigDict(dict(margin=0.0))
  else:
    # type: an entry of losses/preference.LOSSES; each entry's own parameters (SimPO's
    # simpo_gamma, ...) follow at their registered defaults.
    c.loss = ConfigDict(dict(type="sigmoid", beta=0.1, label_smoothing=0.0, precompute_ref=False))
    for _, entry in pref_losses.LOSSES.items():
      c.loss.update(entry.params)
    # Columns [0, prompt_len) of each row hold the prompt (its last prompt_len tokens), the
    # rest the response: the prompt then runs once for both responses (pipeline.ranked_batch,
    # trainers/dpo.sequence_logprobs). 0 runs each row in full instead.
    c.prompt_len = c.seq_len // 2
  return c


def kto(name: str = "kto") -> ConfigDict:
  """KTO (Ethayarajh et al. 2024 §4) on unpaired feedback, or on comparisons taken apart
  (trainers/kto.py): DPO's fields with KTO's loss, β and the weights of the desirable and
  the undesirable rows (λ_D, λ_U; TRL's names and defaults). Its reference log-probs are
  never precomputed: the mismatched pairs of its KL estimate change with every batch."""
  return as_kto(preference("dpo", name))


def as_kto(c: ConfigDict) -> ConfigDict:
  """A DPO config as KTO on the same data: KTO's trainer and loss section, every other
  field as it was, less the data fields KTO does not read."""
  c.trainer = "kto"
  del c.data["packing"]  # A KTO row is one completion: nothing to share a prompt with.
  del c.data["stream"]  # KTO takes its comparisons apart into new rows, held in memory.
  c.loss = ConfigDict(dict(beta=0.1, desirable_weight=1.0, undesirable_weight=1.0))
  return c


def ppo() -> ConfigDict:
  """PPO with the Qwen recipe's defaults (Qwen report, Bai et al. 2023 §3.2.2)."""
  c = run("ppo", "ppo")
  c.steps = 400  # PPO iterations.
  c.prompts_per_step = 64
  # instruction: appended to every prompt after a blank line (e.g. the answer form a
  # verifiable reward reads: "... put your final answer within \boxed{}.").
  c.data = ConfigDict(dict(prompts="", synthetic_examples=2000, prompt_seed=1, instruction="",
                          control_text="refuse",  # Or "plain": readers.refuse_control.
                          tfds_dir="",  # For data.prompts="tfds:<name>..." (readers._tfds_rows).
                          synthetic_task="world"))  # Without data.prompts: data/sources.TASKS.
  # engine: an entry of models/engines.ENGINES: "static" (a batch decodes until its longest
  # row stops) or "continuous" (a stopped sequence's slot is refilled at once). slots:
  # sequences decoding at once, i.e. the KV cache's rows (0: all prompts_per_step x n, where
  # "continuous" runs static's loop: there is nothing to refill).
  # dynamic_sampling (DAPO §3.2): drop groups whose rewards are all equal and sample more
  # prompts, up to max_extra_rounds more rounds per iteration (trainers/ppo.sample_batch).
  c.rollout = ConfigDict(dict(engine="continuous", slots=0, n=2, top_p=0.9, top_k=0, temperature=1.0,
                              max_new_tokens=512, prompt_len=256, dynamic_sampling=False,
                              max_extra_rounds=4))
  # reward.mode: any scorer (rewards/scorers.make): r3 and its ablations, length, random, a
  # reward-model run directory ("@rm": this run's stage "rm"), or a weighted mix of them,
  # "0.5*r3+0.5*@rm", each term normalised by its own running moments (normalize_score).
  # encoder_len / encoder_side: word pieces R³'s encoder keeps and which end it cuts; 0 / ""
  # for the default (scorers.encoder_truncation: a given encoder such as Contriever keeps
  # its last 512, as the authors' code does; the packaged MiniLM its first 256).
  # encoder_dtype: R³'s encoder compute dtype, float32 or bfloat16 (embeddings pooled in fp32).
  c.reward = ConfigDict(dict(mode="r3", encoder="", normalize=True, query_types="field",
                             classifier="", scale=1.0, normalize_score=True, clip=10.0,
                             encoder_len=0, encoder_side="", encoder_dtype="float32",
                             overlong_cache=0, overlong_coef=1.0, answer_format="any"))
  # overlong_cache (DAPO's L_cache, eq. 13): over the last overlong_cache tokens before
  # rollout.max_new_tokens, overlong_coef x a penalty falling linearly to -1 joins the
  # normalised score (0: off). answer_format: the form the `format` reward asks for (boxed,
  # hash, answer_is, or any; rewards/verifiable.format_ok).
  # kl.placement: "reward" (β·KL per token in the reward, InstructGPT eq. 2) or "loss" (β·KL of the
  # current policy added to the policy loss, GRPO's k3 term).
  c.kl = ConfigDict(dict(estimator="k1", beta=0.04, adaptive=False, target=6.0, horizon=10000,
                         placement="reward"))
  # advantage and policy_loss name entries of rl/algorithms.ADVANTAGES and POLICY_LOSSES
  # (algorithms.use_method sets both, and what else a method prescribes); loss_params holds
  # each registered policy loss's own parameters, from its registry entry (PPO's ε is
  # loss_params.ppo_clip.eps_low / eps_high); loss_agg:
  # token_mean, seq_mean (GRPO) or token_sum (Dr. GRPO), rl/ops.aggregate.
  c.ppo = ConfigDict(dict(advantage="gae", policy_loss="ppo_clip", epochs=1, minibatch=16,
                          value_clip=0.15, gamma=1.0, lam=0.95, vf_coef=1.0,
                          entropy_coef=0.0, whiten=True, value_warmup_steps=50,
                          loss_agg="token_mean"))
  c.ppo.loss_params = ConfigDict({name: dict(e.params) for name, e in
                                  algorithms.POLICY_LOSSES.items() if e.params})
  c.optim = optim(lr=1e-6, weight_decay=0.0)
  c.value_lr = 5e-6
  # init_from_reward (PPO-max): the value model starts as the reward model (reward.mode
  # must then hold exactly one reward-model term of the policy's architecture).
  c.value = ConfigDict(dict(init_from_reward=False))
  # LoRA (rank 0: off): the policy and the value train adapters on the frozen SFT weights,
  # which double as the KL reference.
  c.lora = ConfigDict(dict(rank=0, alpha=16.0, targets=("q_kernel", "v_kernel")))
  # PPO-ptx: coef · LM loss on pretraining text (ptx.data, or synthetic documents).
  c.ptx = ConfigDict(dict(coef=0.0, data="", batch=4, seq_len=64, synthetic_docs=500))
  c.checkpoint = checkpoint(every=50, max_to_keep=2)
  c.eval_prompts = 8
  c.log_samples_every = 10
  return c


def rso(c: ConfigDict) -> ConfigDict:
  """Adds RSO's sampling stage (trainers/rso.py) to a DPO config; best-of-N's too."""
  c.data.prompts = ""  # {prompt, reference?, query_type?} rows, as for PPO.
  c.data.synthetic_examples = 2000  # For `direct`.
  c.rso = ConfigDict(dict(construction="rso", reward="r3", encoder="", n=64, k=8, beta=0.5,
                          pairing="first_round", num_prompts=1000, prompts_per_batch=8))
  c.rollout = ConfigDict(dict(temperature=0.7, top_k=40, top_p=1.0, max_new_tokens=512,
                              prompt_len=256, engine="continuous", slots=0))  # As PPO's.
  c.loss.update(type="sigmoid_norm", beta=0.05)  # β here is the paper's γ.
  c.best_of_n = ConfigDict(dict(rounds=1, sft_steps=200, lr=1e-5))
  return c


def defaults(trainer: str) -> ConfigDict:
  """Every field a trainer reads, at its default: what `validate` holds a config against
  (a field outside it is a typo or another trainer's, and is refused)."""
  if trainer in ("rso", "best_of_n"):
    c = rso(preference("dpo", trainer))
    c.sft = sft()  # best-of-N's fine-tuning rounds.
    return c
  builders = {"sft": sft, "ppo": ppo, "rm": lambda: preference("rm", "rm"),
              "dpo": lambda: preference("dpo", "dpo"), "kto": kto}
  return builders[trainer]()
