"""The zero-shot query-type classifier reads the same answer log-probs as transformers."""

import numpy as np
import torch

from r3jax.data import chat, tokenizer as tokenizer_lib
from r3jax.models import hf
from r3jax.rewards import query_types
from helpers import make_hf_qwen


def test_classifier_matches_torch_answer_logprobs(tmp_path):
  tok = tokenizer_lib.tiny()
  model = make_hf_qwen(tmp_path, vocab=len(tok), init_range=0.2)
  cfg, params = hf.load(str(tmp_path))
  queries = ["How can I make a good first impression?",
             "How many movies are in the Fast and Furious franchise?",
             "Please tell me about Kalo.", "What is the capital of Renvo? " * 3]
  # batch_size 3 splits the queries over two padded batches.
  labels, logit_open = query_types.classify(params, cfg, tok, queries, batch_size=3)

  def torch_logprob(prompt_ids, answer):
    ans = tok(answer)["input_ids"]
    ids = torch.tensor([prompt_ids + ans])
    with torch.no_grad():
      logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
    return sum(float(logp[len(prompt_ids) - 1 + i, a]) for i, a in enumerate(ans))

  want = []
  for q in queries:
    msgs = [{"role": "user", "content": query_types.PROMPT.format(conversation=q)}]
    ids = list(chat.tokenize(tok, msgs, add_generation_prompt=True)[0])
    want.append(torch_logprob(ids, "OPEN-ENDED") - torch_logprob(ids, "CLOSED-ENDED"))
  want = np.array(want)
  np.testing.assert_allclose(logit_open, want, atol=2e-3)
  assert labels == ["open_ended" if d >= 0 else "closed_ended" for d in want]
