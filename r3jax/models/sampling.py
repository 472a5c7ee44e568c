"""Jitted autoregressive sampling over the KV cache.

`lax.while_loop`s decode a batch of left-padded prompts, one per segment of `cache_chunk`
new slots, each over the cache filled by its end. Every row stops at its first
stop id (or after `max_new_tokens`), and the loop exits early once all rows have stopped.
It returns the sampled tokens with two per-token log-probs: under the distribution
actually sampled from (temperature, top-k and top-p applied), which is what importance
ratios need, and under the unmodified model (temperature 1, no filtering), which is what
KL penalties against a reference need.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from r3jax.core import registry, sharding
from r3jax.data import chat, padding
from r3jax.models import qwen


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


def choose(logits_BV, key, cfg: SampleConfig):
  """Next token, its log-prob under the sampling distribution and under the model."""
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
    u_B1 = 1.0 - jax.random.uniform(key, (probs_BV.shape[0], 1))
    tok_B = jnp.sum(cdf_BV < u_B1 * cdf_BV[:, -1:], axis=-1)
    tok_B = jnp.minimum(tok_B, probs_BV.shape[-1] - 1)
    logp_B = jnp.log(jnp.take_along_axis(probs_BV, tok_B[:, None], -1)[:, 0])
  model_logp_B = jnp.take_along_axis(model_logp_BV, tok_B[:, None], -1)[:, 0]
  return tok_B.astype(jnp.int32), logp_B, model_logp_B


def segments(n_new: int, chunk: int) -> list[int]:
  """Ends of the decode segments: each attends over the prompt and the new slots up to its
  end, not the whole cache (chunk 0: one segment)."""
  if chunk <= 0 or chunk >= n_new:
    return [n_new]
  return list(range(chunk, n_new, chunk)) + [n_new]


# Rollout engines (`rollout.engine`): (params, prompt_BT, prompt_mask_BT, key, *, model_cfg,
# cfg: SampleConfig) -> Samples, the n samples of each prompt in prompt-major rows.
ENGINES = registry.Registry("rollout engine")


@ENGINES.register("static")
@functools.partial(jax.jit, static_argnames=("model_cfg", "cfg"))
def generate(params, prompt_BT: jax.Array, prompt_mask_BT: jax.Array, key: jax.Array, *,
             model_cfg: qwen.QwenConfig, cfg: SampleConfig) -> Samples:
  """Samples `cfg.n` continuations of each left-padded prompt: the whole batch in one
  static-shape loop per cache segment, until its longest row stops."""
  model = qwen.Qwen(model_cfg)
  prompt_BT = jnp.repeat(prompt_BT, cfg.n, axis=0)
  prompt_mask_BT = jnp.repeat(prompt_mask_BT.astype(jnp.int32), cfg.n, axis=0)
  b, t = prompt_BT.shape
  n_new = cfg.max_new_tokens
  kv_mask_BS = jnp.concatenate([prompt_mask_BT, jnp.ones((b, n_new), jnp.int32)], axis=1)
  ends = segments(n_new, cfg.cache_chunk)

  cache = qwen.init_cache(model_cfg, b, t + ends[0])
  positions_BT = qwen.positions_from_mask(prompt_mask_BT)
  logits_BTV, _, cache = model.apply({"params": params}, prompt_BT, positions_BT,
                                     kv_mask_BS[:, :t + ends[0]], cache, 0, last_only=True)
  next_pos_B = positions_BT[:, -1] + 1
  stop_ids = jnp.asarray(cfg.stop_ids or (-1,), jnp.int32)

  def segment(state, end):
    """Decodes slots up to `end` with a cache of t + end slots: masked slots past the
    filled ones add exactly 0 to the softmax, so reading fewer changes no token."""
    kv_mask = kv_mask_BS[:, :t + end]

    def body(state):
      i, done_B, logits_BV, cache, tokens, logps, model_logps, mask = state
      tok_B, logp_B, model_logp_B = choose(logits_BV, jax.random.fold_in(key, i), cfg)
      live_B = ~done_B
      tokens = tokens.at[:, i].set(jnp.where(live_B, tok_B, cfg.pad_id))
      logps = logps.at[:, i].set(jnp.where(live_B, logp_B, 0.0))
      model_logps = model_logps.at[:, i].set(jnp.where(live_B, model_logp_B, 0.0))
      mask = mask.at[:, i].set(live_B.astype(jnp.int32))
      done_B = done_B | jnp.isin(tok_B, stop_ids)
      logits_B1V, _, cache = model.apply(
          {"params": params}, tok_B[:, None], (next_pos_B + i)[:, None], kv_mask, cache, t + i)
      return i + 1, done_B, logits_B1V[:, 0], cache, tokens, logps, model_logps, mask

    grow = lambda x: jnp.pad(x, [(0, 0), (0, 0), (0, t + end - x.shape[2]), (0, 0)])
    state = state[:3] + (jax.tree.map(grow, state[3]),) + state[4:]
    return jax.lax.while_loop(lambda s: (s[0] < end) & ~jnp.all(s[1]), body, state)

  zeros = jnp.zeros((b, n_new), jnp.float32)
  state = (jnp.int32(0), jnp.zeros((b,), bool), logits_BTV[:, -1], cache,
           jnp.full((b, n_new), cfg.pad_id, jnp.int32), zeros, zeros,
           jnp.zeros((b, n_new), jnp.int32))
  for end in ends:
    state = segment(state, end)
  _, done_B, _, _, tokens, logps, model_logps, mask = state
  return Samples(tokens, mask, logps, model_logps, done_B)


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


def generate_text(params, model_cfg, tok, prompt_ids, key, sample_cfg: SampleConfig, *,
                  length: int | None = None, put=jnp.asarray) -> tuple[list[str], Samples]:
  """(texts, samples): `sample_cfg.n` continuations of each prompt (token id lists), left-padded
  to `length` (their longest without it) and placed with `put` (e.g. replicated on a mesh
  when the params span several processes)."""
  tokens_BT, mask_BT = padding.left_pad(prompt_ids, tok.pad_token_id, length)
  samples = generate(params, put(tokens_BT), put(mask_BT), key, model_cfg=model_cfg, cfg=sample_cfg)
  return decode(tok, samples), samples
