"""Zero-shot query-type classification with a chat LM (Kim & Seo 2024, R³ paper, App. B.1).

The paper asked GPT-4 with the prompt below. Here any Qwen chat model answers it, and
instead of parsing free text we compare the log-probabilities it gives the two allowed
answers after the assistant header, so every query gets a label and a confidence.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from r3jax.data import chat, padding
from r3jax.losses import lm
from r3jax.models import qwen

PROMPT = (
    "Could you identify whether the last user query of the below conversation is "
    "open-ended or not?\n"
    "Open-ended means that the responses to the query can be relatively anything and "
    "creative.\n"
    "However, its counterparts, i.e., 'closed-ended query', indicate the corresponding "
    "responses should be consistent and constrained as a closed form.\n"
    'Please just answer it either "OPEN-ENDED" or "CLOSED-ENDED".\n'
    "CONVERSATION:\n{conversation}")
LABELS = {"open_ended": "OPEN-ENDED", "closed_ended": "CLOSED-ENDED"}


@functools.partial(jax.jit, static_argnames=("n_answer", "cfg"))
def _answer_logprob(params, seq_BT, mask_BT, n_answer, cfg):
  """Sum of log p(last n_answer tokens | the rest) per left-padded row."""
  logits, _, _ = qwen.Qwen(cfg).apply({"params": params}, seq_BT, kv_mask_BS=mask_BT)
  lp_BT = lm.token_logprobs(logits[:, :-1], seq_BT[:, 1:])
  keep_T = jnp.arange(lp_BT.shape[1]) >= lp_BT.shape[1] - n_answer
  return jnp.sum(jnp.where(keep_T, lp_BT, 0.0), -1)


def classify(params, cfg, tokenizer, queries, batch_size: int = 16, max_len: int = 512):
  """(labels, logit_open): a label per query, and log P(OPEN-ENDED) - log P(CLOSED-ENDED).

  Prompts longer than max_len keep their end, where the question to answer is.
  """
  prompts = [list(chat.tokenize(tokenizer, [{"role": "user", "content": PROMPT.format(conversation=q)}],
                                add_generation_prompt=True)[0]) for q in queries]
  scores = {}
  for label, text in LABELS.items():
    ans = tokenizer(text)["input_ids"]
    out = []
    for i in range(0, len(prompts), batch_size):
      rows = [(p + ans)[-max_len:] for p in prompts[i:i + batch_size]]
      # Power-of-two widths and a fixed batch: a handful of compiled shapes.
      width = padding.bucket(max(len(r) for r in rows), 16)
      tok_BT, mask_BT = padding.left_pad(rows + [[tokenizer.pad_token_id]] * (batch_size - len(rows)),
                                          tokenizer.pad_token_id, width)
      lp = _answer_logprob(params, jnp.asarray(tok_BT), jnp.asarray(mask_BT), n_answer=len(ans), cfg=cfg)
      out.append(np.asarray(lp)[:len(rows)])
    scores[label] = np.concatenate(out) if out else np.zeros(0)
  logit_open = scores["open_ended"] - scores["closed_ended"]
  return ["open_ended" if d >= 0 else "closed_ended" for d in logit_open], logit_open
