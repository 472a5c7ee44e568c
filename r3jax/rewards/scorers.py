"""One reward interface for PPO, RSO, best-of-N, eval_pairs and eval_gen:

  scorer(rows, responses) -> {"reward": [N], ...}

`rows` holds one prompt row per response: {"prompt": a user text or a message list,
"reference"?, "query_type"?, and any other field the data carries (an answer key, ...)},
as data/readers.to_prompt reads them. Every scorer returns its components: "reward"
always, and R³ also its terms (relevance, length incentive, repetition penalty,
copies_query, ...), which PPO logs.

A reward is an entry of `REWARDS`: a factory that reads its own config section (PPO's
`config.reward`; fields it does not find take their schema defaults) and returns a scorer.
`make(spec, section)` builds one from a registered name or a reward-model run directory:
  r3, relevance, li_s, no_branch, li_only   R³ and its ablations (R³ paper §4.3), MiniLM by default;
  length                                    the word-punctuation token count (a baseline);
  math, format                              a verifiable answer checked against the row's key,
                                            and whether it is stated in reward.answer_format;
  random                                    uniform noise (chance level, seeded);
  <path>                                    a reward-model run's workdir (trainer "rm").

PPO also takes a weighted mix, `0.5*r3+0.5*runs/rm_tiny` (`terms`, `Mix`): each term is
scored alone, logged raw, and normalised by its own running moments before the weighted
sum (trainers/ppo.advantages), so terms on different scales mix as the weights say.
"""

import dataclasses
import functools
import json
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from r3jax.core import registry
from r3jax.core.errors import DataError
from r3jax.data import chat, padding
from r3jax.eval import text_metrics
from r3jax.models import qwen
from r3jax.rewards import r3, verifiable


@functools.partial(jax.jit, static_argnames="cfg")
def _scores(params, tokens_BT, mask_BT, cfg):
  return qwen.sequence_scores(params, cfg, tokens_BT, mask_BT)


class RewardModel:
  """A trained reward model, read from its run directory. It tokenizes with its own
  tokenizer (the policy's may differ). With a mesh (PPO), its params are replicated on it
  and each batch is split over the data-parallel devices."""

  def __init__(self, workdir: str, batch_size: int = 32, max_len: int = 2048, mesh=None):
    # Local: the checkpoint and tokenizer libraries are slow to import, and config
    # validation imports this module for REWARDS and check().
    from r3jax.core import checkpoint  # pylint: disable=g-import-not-at-top
    from r3jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
    model_dir = os.path.join(workdir, "model")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
      raise FileNotFoundError(f"{workdir}: not a reward-model run (no model/config.json)")
    with open(os.path.join(model_dir, "config.json")) as f:
      self.cfg = qwen.config_from_hf(json.load(f), dropout_rate=0.0)
    self.tokenizer = tokenizer_lib.load(model_dir)
    params = checkpoint.load_host(workdir)["params"]
    if set(params) != {"backbone", "head"}:
      raise FileNotFoundError(f"{workdir}: its checkpoint has no reward head")
    self.mesh = mesh
    if mesh is None:
      self.params = jax.tree.map(jnp.asarray, params)
      self.put, self.get = (lambda b: {k: jnp.asarray(v) for k, v in b.items()}), np.asarray
    else:
      from r3jax.core import sharding  # pylint: disable=g-import-not-at-top
      self.params = jax.tree.map(lambda x: sharding.replicate(x, mesh), params)
      self.put = lambda b: sharding.put_batch(b, mesh)
      self.get = lambda x: sharding.local_rows(x, mesh)
      # Whole rows per device: round the batch up to a multiple of the local devices.
      shards = max(sharding.data_parallel(mesh.shape) // jax.process_count(), 1)
      batch_size = -(-batch_size // shards) * shards
    self.batch_size, self.max_len = batch_size, max_len

  def __call__(self, rows, responses) -> dict:
    prompts = [r["prompt"] for r in rows]
    out = []
    for i in range(0, len(responses), self.batch_size):
      ids = [chat.tokenize_response(self.tokenizer, chat.as_messages(p), r)[0][-self.max_len:]
             for p, r in zip(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])]
      # Power-of-two widths and a fixed batch keep the number of compiled shapes small;
      # left padding is fine because the score is read at the last real token.
      width = padding.bucket(max(len(x) for x in ids), 16)
      pad = [[self.tokenizer.pad_token_id]] * (self.batch_size - len(ids))
      tok_BT, mask_BT = padding.left_pad(ids + pad, self.tokenizer.pad_token_id, width)
      b = self.put({"tok": tok_BT, "mask": mask_BT})
      out.append(self.get(_scores(self.params, b["tok"], b["mask"], cfg=self.cfg))[:len(ids)])
    return {"reward": np.concatenate(out).astype(np.float64) if out else np.zeros(0)}


@functools.lru_cache(maxsize=4)
def _encoder(path: str, normalize: bool, dtype: str = "float32"):
  """One loaded encoder per (path, normalize, dtype): several R³ modes, or best-of-N rounds,
  share it."""
  from r3jax.models import bert  # pylint: disable=g-import-not-at-top
  return bert.Encoder.from_dir(path, normalize=normalize, dtype=dtype)


def encoder_truncation(encoder: str, length: int = 0, side: str = "") -> tuple[int, str]:
  """(word pieces kept, side cut) for R³'s relevance encoder; 0 / "" pick the default. A
  given encoder (Contriever, the authors' encoder) keeps the last 512 pieces, as the
  authors' code does: an answer's relevant part is often its end, and the first 256
  pieces of a long answer can score 0.010 where its last 512 score 0.207. The packaged
  MiniLM keeps its own setting, the first 256 (sentence-transformers' max_seq_length)."""
  return length or (512 if encoder else 256), side or ("left" if encoder else "right")


@dataclasses.dataclass(frozen=True)
class Reward:
  fn: Callable  # (section: ConfigDict, *, max_len, seed, mesh) -> scorer(rows, responses)
  needs: tuple[str, ...] = ()  # Fields every prompt row must carry (checked before any work).


REWARDS = registry.Registry("reward", Reward)


def r3_scorer(section, *, max_len: int, seed: int, mesh, mode: str):
  """R³ (or an ablation, `mode`) with its relevance encoder: section.encoder (an HF BERT
  dir, e.g. Contriever: dot product unless section.normalize) or the packaged MiniLM
  (cosine), truncating as `encoder_truncation` says, computing in section.encoder_dtype
  (bfloat16 is for accelerators: on XLA:CPU it is no faster, bench/encoder)."""
  del seed, mesh
  from r3jax.models import bert  # pylint: disable=g-import-not-at-top
  encoder = section.get("encoder", "")
  normalize = section.get("normalize", None)
  enc = _encoder(encoder or bert.minilm_dir(), (not encoder) if normalize is None else normalize,
                 section.get("encoder_dtype", "float32"))
  length, side = encoder_truncation(encoder, section.get("encoder_len", 0), section.get("encoder_side", ""))
  reward = r3.R3(dataclasses.replace(enc, max_len=length, truncation_side=side), max_len=max_len, mode=mode)
  return lambda rows, ys: reward([chat.as_text(r["prompt"]) for r in rows], ys,
                                 [r.get("reference") for r in rows], [r.get("query_type") for r in rows])


for _mode in r3.MODES:  # R³ and each ablation of the paper's Table 4.
  REWARDS.register(_mode)(functools.partial(r3_scorer, mode=_mode))


@REWARDS.register("length")
def length_scorer(section, *, max_len: int, seed: int, mesh):
  """The response's word-punctuation token count (a baseline that rewards length alone)."""
  del section, max_len, seed, mesh
  return lambda rows, ys: {"reward": np.array([len(text_metrics.wordpunct(r3.truncate_response(y)))
                                               for y in ys], float)}


@REWARDS.register("random")
def random_scorer(section, *, max_len: int, seed: int, mesh):
  """Uniform noise, seeded: chance level."""
  del section, max_len, mesh
  rng = np.random.default_rng(seed)
  return lambda rows, ys: {"reward": rng.random(len(ys))}


@REWARDS.register("math", needs=("answer",))
def math_scorer(section, *, max_len: int, seed: int, mesh):
  """1 when the response's final answer equals the row's key (field `answer`; a GSM8K
  solution's #### line), else 0 (rewards/verifiable.py); `parsed`: whether it stated one."""
  del section, max_len, seed, mesh

  def score(rows, ys):
    keys = [verifiable.key_of(r) for r in rows]
    if None in keys:
      row = rows[keys.index(None)]
      raise DataError(f"{row.get('where', 'a prompt row')}: no answer key (field 'answer') for the math reward")
    return {"reward": np.array([float(verifiable.is_correct(y, k)) for y, k in zip(ys, keys)]),
            "parsed": np.array([float(verifiable.extract(y) is not None) for y in ys])}
  return score


@REWARDS.register("format")
def format_scorer(section, *, max_len: int, seed: int, mesh):
  """1 when the response states its answer in reward.answer_format (boxed, hash, answer_is, or
  any of them), else 0 (verifiable.format_ok)."""
  del max_len, seed, mesh
  form = verifiable.check_form(section.get("answer_format", "any"))  # A typo fails before scoring.
  return lambda rows, ys: {"reward": np.array([float(verifiable.format_ok(y, form)) for y in ys])}


def make(spec: str, section=None, *, max_len: int = 512, seed: int = 0, mesh=None):
  """A scorer from a REWARDS name (reading `section`, its config section) or a reward-model
  run path (see the module docstring)."""
  if spec in REWARDS:
    return REWARDS[spec].fn(section or ml_collections.ConfigDict(), max_len=max_len, seed=seed, mesh=mesh)
  check(spec)
  return RewardModel(spec, mesh=mesh)


def terms(spec: str) -> list[tuple[float, str]]:
  """A reward spec as (weight, scorer) terms: "r3" -> [(1.0, "r3")];
  "0.5*r3+0.5*runs/rm_tiny" -> [(0.5, "r3"), (0.5, "runs/rm_tiny")]. A weight may be
  negative ("1*r3+-0.01*length"); a path may not contain '+' or '*'."""
  out = []
  for part in spec.split("+"):
    weight, name = part.split("*", 1) if "*" in part else ("1", part)
    try:
      w = float(weight)
    except ValueError:
      raise ValueError(f"reward {spec!r}: {weight!r} is not a weight (terms are weight*name, "
                       "joined by '+')") from None
    if not math.isfinite(w):  # float() takes "nan" and "inf"; the run would die at step 1.
      raise ValueError(f"reward {spec!r}: the weight {weight!r} is not a finite number")
    if not name.strip():
      raise ValueError(f"reward {spec!r}: a term has no scorer name")
    out.append((w, name.strip()))
  return out


def label(name: str) -> str:
  """A term's name in logs: the scorer's name, or a reward-model run's directory name."""
  return name if name in REWARDS else os.path.basename(os.path.normpath(name))


class Mix:
  """The scorer of a (possibly one-term) reward spec. Its components are one term's own
  (R³ with its terms, as before), or for several terms each term's components under
  "<label>/" and "reward" = Σ weight · raw value, which is what an unnormalised mix scores
  (before_after.md). `raw(components)` is the [N, terms] matrix PPO normalises per term."""

  def __init__(self, spec: str, section=None, **kw):
    self.labels = self.check_labels(spec)
    self.weights, names = zip(*terms(spec))
    self.scorers = tuple(make(n, section, **kw) for n in names)

  @staticmethod
  def check_labels(spec: str) -> tuple[str, ...]:
    """The terms' log names; ValueError when two terms would log under one name."""
    labels = tuple(label(n.lstrip("@")) for _, n in terms(spec))
    if len(set(labels)) < len(labels):
      raise ValueError(f"reward {spec!r}: two terms share a name in {labels}")
    return labels

  def __call__(self, rows, responses) -> dict:
    parts = [f(rows, responses) for f in self.scorers]
    if len(parts) == 1:
      return parts[0]
    out = {f"{l}/{k}": v for l, p in zip(self.labels, parts) for k, v in p.items()}
    out["reward"] = sum(w * np.asarray(p["reward"], np.float64) for w, p in zip(self.weights, parts))
    return out

  def raw(self, components: dict) -> np.ndarray:
    if len(self.labels) == 1:
      return np.asarray(components["reward"], np.float64)[:, None]
    return np.stack([np.asarray(components[f"{l}/reward"], np.float64) for l in self.labels], 1)


def check_rows(spec: str, rows) -> None:
  """DataError naming the first prompt row (file:line) that lacks a field a term needs."""
  for _, name in terms(spec):
    for need in REWARDS[name].needs if name in REWARDS else ():
      for r in rows:
        if r.get(need) is None:
          raise DataError(f"{r.get('where', 'a prompt row')}: no field {need!r}, which the {name} "
                          "reward needs (its answer key)")


def check(spec: str) -> None:
  """FileNotFoundError unless `spec` names a scorer: cheap, for config validation."""
  if spec in REWARDS:
    return
  if not os.path.exists(os.path.join(spec, "model", "config.json")):
    raise FileNotFoundError(f"reward {spec!r}: not one of {', '.join(REWARDS)} and not a "
                            "reward-model run directory (no model/config.json)")
