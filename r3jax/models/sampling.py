"""What every rollout engine shares: the sampling distribution and the draws from it.

`choose` picks each next token and returns two log-probs: under the distribution actually
sampled from (temperature, top-k and top-p applied), which is what importance ratios need,
and under the unmodified model (temperature 1, no filtering), which is what KL penalties
against a reference need. Each sequence draws with its own key (`sequence_keys`,
`token_keys`), so the engines of `engines.py` give the same samples for the same seed.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from r3jax.core import sharding
from r3jax.data import chat


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  max_new_tokens: int = 128
  temperature: float = 1.0
  top_k: int = 0  # 0: off.
  top_p: float = 1.0  # 1.0: off.
  greedy: bool = False
  n: int = 1  # Samples per prompt; rows come out prompt-major: [p0s0, p0s1, p1s0, ...].
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0
  # New slots per decode segment: each segment attends over the prompt and the new slots
  # up to its end only, so no step reads more than cache_chunk unfilled slots (a full read
  # at 512 new tokens reads 256 on average); each segment compiles its own loop, hence
  # segments of 128, leaving shorter generations one loop (0: always one).
  cache_chunk: int = 128
  # An entry of engines.ENGINES: "static" decodes its batch until the longest row stops,
  # "continuous" refills a slot as soon as its sequence stops.
  engine: str = "continuous"
  # Sequences decoding at once, i.e. KV-cache rows (0: all of them); a multiple of n is
  # best, since "static" runs slots // n prompts per batch.
  slots: int = 0
  sync_steps: int = 32  # "continuous": most decode steps between host round trips.


class Samples(NamedTuple):
  tokens_BN: jax.Array  # [B*n, max_new_tokens], pad_id after the stop token.
  mask_BN: jax.Array  # 1 on response tokens, the stop token included.
  logprobs_BN: jax.Array  # log-prob under the sampling distribution (0 for greedy).
  model_logprobs_BN: jax.Array  # log-prob under the unmodified model.
  stopped_B: jax.Array  # True where a stop id ended the row (False: truncated).


def _nucleus_threshold(probs_BV: jax.Array, top_p: float) -> jax.Array:
  """Largest t with sum(p[p >= t]) >= top_p, per row.

  The tokens with p >= t are the nucleus: the shortest prefix of the sorted distribution
  whose mass reaches top_p (plus ties with its last token). A bisection over the bit
  patterns of non-negative float32s, which order like the floats, finds t exactly in 32
  O(V) passes; XLA:CPU sorts 32k floats 40x slower than that.
  """
  as_int = lambda x: jax.lax.bitcast_convert_type(x, jnp.int32)
  lo_B1 = jnp.zeros(probs_BV.shape[:-1] + (1,), jnp.int32)  # mass(p >= 0) = 1 >= top_p.
  hi_B1 = as_int(jnp.max(probs_BV, -1, keepdims=True)) + 1  # mass(p > max) = 0 < top_p.

  def body(_, bounds):
    lo_B1, hi_B1 = bounds
    mid_B1 = lo_B1 + (hi_B1 - lo_B1) // 2
    t_B1 = jax.lax.bitcast_convert_type(mid_B1, jnp.float32)
    ok_B1 = jnp.sum(jnp.where(probs_BV >= t_B1, probs_BV, 0.0), -1, keepdims=True) >= top_p
    return jnp.where(ok_B1, mid_B1, lo_B1), jnp.where(ok_B1, hi_B1, mid_B1)

  lo_B1, _ = jax.lax.fori_loop(0, 32, body, (lo_B1, hi_B1))
  return jax.lax.bitcast_convert_type(lo_B1, jnp.float32)


def sampling_probs(logits_BV: jax.Array, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0) -> jax.Array:
  """The distribution sampled from: temperature, then top-k, then top-p, renormalised.

  Top-p keeps the smallest prefix of the sorted distribution whose mass reaches p (the
  most likely token always survives); tokens tied with its last token are kept too.
  """
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  if top_k and top_k < logits_BV.shape[-1]:
    # The k-th largest logit as the minimum of the top k: the same value, but slicing the
    # last column of lax.top_k's output cost 35 ms per step at [8, 32000] on XLA:CPU
    # against 0.5 ms for the min (issue #18).
    kth_B1 = jnp.min(jax.lax.top_k(logits_BV, top_k)[0], axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)
  probs_BV = jax.nn.softmax(logits_BV, axis=-1)
  if top_p < 1.0:
    probs_BV = jnp.where(probs_BV >= _nucleus_threshold(probs_BV, top_p), probs_BV, 0.0)
    probs_BV = probs_BV / jnp.sum(probs_BV, -1, keepdims=True)
  return probs_BV


def sequence_keys(key: jax.Array, first_prompt, num_prompts: int, n: int) -> jax.Array:
  """One key per sequence, prompt-major: (prompt first_prompt + p, sample s) folded into
  `key`, so a sequence's draws do not depend on which engine, batch or slot runs it."""
  fold = jax.vmap(jax.random.fold_in, (None, 0))
  keys_P = fold(key, first_prompt + jnp.arange(num_prompts))
  return jax.vmap(lambda k: fold(k, jnp.arange(n)))(keys_P).reshape(num_prompts * n)


def token_keys(seq_keys_B: jax.Array, step_B: jax.Array) -> jax.Array:
  """The key of each sequence's new token number step_B."""
  return jax.vmap(jax.random.fold_in)(seq_keys_B, step_B)


def choose(logits_BV, keys_B, cfg: SampleConfig):
  """Next token, its log-prob under the sampling distribution and under the model; row b
  draws with keys_B[b] (token_keys)."""
  model_logp_BV = jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1)
  if cfg.greedy:
    tok_B = jnp.argmax(logits_BV, axis=-1)
    logp_B = jnp.zeros(tok_B.shape, jnp.float32)
  else:
    # Inverse-CDF sampling: one uniform per row instead of V Gumbels (threefry on V
    # floats per step costs more than the whole filter on CPU). u is in (0, 1], so the
    # first index whose CDF reaches u has positive probability.
    probs_BV = sampling_probs(logits_BV, cfg.temperature, cfg.top_k, cfg.top_p)
    cdf_BV = jnp.cumsum(probs_BV, axis=-1)
    u_B1 = 1.0 - jax.vmap(jax.random.uniform)(keys_B)[:, None]
    tok_B = jnp.sum(cdf_BV < u_B1 * cdf_BV[:, -1:], axis=-1)
    tok_B = jnp.minimum(tok_B, probs_BV.shape[-1] - 1)
    logp_B = jnp.log(jnp.take_along_axis(probs_BV, tok_B[:, None], -1)[:, 0])
  model_logp_B = jnp.take_along_axis(model_logp_BV, tok_B[:, None], -1)[:, 0]
  return tok_B.astype(jnp.int32), logp_B, model_logp_B


def decode(tokenizer, samples: Samples) -> list[str]:
  """Response texts, with the stop token dropped."""
  out = []
  for toks, m, stopped in zip(*(sharding.fetch(x) for x in (samples.tokens_BN, samples.mask_BN,
                                                            samples.stopped_B))):
    ids = [int(x) for x, keep in zip(toks, m) if keep]
    if stopped and ids:
      ids = ids[:-1]
    out.append(tokenizer.decode(ids, skip_special_tokens=False))
  return out


def stop_ids(tok) -> tuple[int, ...]:
  """The one stop rule of every generation site: the end of a ChatML turn, the end of a
  document, and the tokenizer's own end-of-sequence token, as Qwen2.5's generation config
  stops at both <|im_end|> and <|endoftext|>. A token the vocabulary lacks is left out."""
  vocab = tok.get_vocab()
  ids = {vocab.get(chat.IM_END), vocab.get(chat.ENDOFTEXT), tok.eos_token_id}
  return tuple(sorted(i for i in ids if i is not None))


def sample_config(tok, **kw) -> SampleConfig:
  """A SampleConfig with the tokenizer's stop ids and pad id."""
  return SampleConfig(stop_ids=stop_ids(tok), pad_id=tok.pad_token_id, **kw)


def chat_ids(tok, conversations) -> list[np.ndarray]:
  """Token ids of chat prompts (lists of messages), each ending in the assistant header."""
  return [chat.tokenize(tok, m, add_generation_prompt=True)[0] for m in conversations]
