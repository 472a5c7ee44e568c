"""R³ against its formulas (Kim & Seo 2024, §3) on hand-written cases, and with MiniLM."""

import numpy as np
import pytest

from r3jax.data import chat
from r3jax.models import bert
from r3jax.eval import text_metrics as tm
from r3jax.rewards import r3
from helpers import why


class FakeEncoder:
  """Fixed embeddings per text, so relevance values are known exactly."""

  def __init__(self, table):
    self.table = table

  def encode(self, texts):
    return np.array([self.table.get(t, [0.0, 0.0]) for t in texts], np.float64)


def test_wordpunct_spec_example():
  text = "Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\n\nThanks."
  assert len(tm.wordpunct(text)) == 20
  assert r3.length_incentive(text) == pytest.approx(0.20)
  assert r3.repetition_penalty(text) == 1.0
  assert tm.wordpunct("wait...!! what?!") == ["wait", "...!!", "what", "?!"]  # Punctuation runs.


def test_repetition_penalty():
  assert r3.repetition_penalty("a b") == 1.0  # Fewer than 3 tokens.
  assert r3.repetition_penalty("") == 1.0
  # "the cat sat" x3 = 9 tokens, 7 trigrams, 3 unique.
  assert r3.repetition_penalty("the cat sat the cat sat the cat sat") == pytest.approx(3 / 7)
  assert r3.repetition_penalty("!!! ??? !!! ??? !!!") == pytest.approx(2 / 3)


def test_truncation_and_raw_query():
  assert r3.truncate_response("Sure.<|im_end|>\n<|im_start|>user\nmore") == "Sure."
  assert r3.truncate_response("One.\nHuman: next question") == "One."
  assert r3.truncate_response("Para one.\n\nPara two.\n\n\nJunk") == "Para one.\n\nPara two."
  # Leading blank lines or spaces are stripped before the stop search (the authors' code):
  # they used to cut the answer to nothing, LI 0.00 where the authors give 0.09.
  opening = "\n\n\nHello world, here is a very short reply"
  assert r3.truncate_response(opening) == "Hello world, here is a very short reply"
  assert r3.truncate_response("   \n\n\n  Hi.\n\n\nJunk") == "Hi."
  out = r3.R3(FakeEncoder({}), max_len=128)(["Q?"], [opening], None, None)
  assert out["length_incentive"][0] == pytest.approx(0.09)
  prompt = chat.render([{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi there"},
                        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Tell me more"}],
                       add_generation_prompt=True)
  assert r3.raw_query(prompt) == "Hi there Tell me more"
  assert r3.raw_query("\n\nHuman: What is up?\n\nAssistant: Nothing.\n\nHuman: Why?\n\nAssistant:") == "What is up? Why?"
  assert r3.raw_query("  plain  ") == "plain"


def test_combination_and_branching_exact():
  q, y_oe, y_ce, ref = "Tell me about X", "X is a thing that does many things well", "X is red", "X is red."
  enc = FakeEncoder({q: [1.0, 0.5], y_oe: [0.8, 0.4], y_ce: [2.0, 1.0], ref: [1.0, 1.0]})
  reward = r3.R3(enc, max_len=256)
  out = reward([q, q, q], [y_oe, y_ce, y_ce], [None, ref, None], ["OPENENDED", "CONSTRAINED", "CONSTRAINED"])
  li = [r3.length_incentive(y) for y in (y_oe, y_ce, y_ce)]
  rp = [r3.repetition_penalty(y) for y in (y_oe, y_ce, y_ce)]
  s_oe, s_ce, s_ref = 1.0 * 0.8 + 0.5 * 0.4, 1.0 * 2.0 + 0.5 * 1.0, 2.0 + 1.0
  np.testing.assert_allclose(out["reward"], [rp[0] * li[0] * s_oe,
                                             rp[1] * s_ref * (256 / 100) / 3.5,  # f(s(y*, y))
                                             rp[2] * li[2] * s_ce])  # CE without reference: OE.
  np.testing.assert_allclose(out["closed_ended"], [0, 1, 0])
  assert r3.ce_map(3.5, 512) == pytest.approx(5.12) and r3.ce_map(0.0, 512) == 0.0


def test_ablation_modes():
  q, y = "Tell me about X", "X X X X X X"
  enc = FakeEncoder({q: [1.0, 0.0], y: [0.5, 0.0]})
  get = lambda mode: r3.R3(enc, mode=mode)([q], [y], None, ["oe"])["reward"][0]
  li, rp = 0.06, 1 / 4
  assert get("relevance") == pytest.approx(0.5)
  assert get("li_only") == pytest.approx(li)
  assert get("li_s") == pytest.approx(li * 0.5)
  assert get("no_branch") == pytest.approx(rp * li * 0.5) == get("r3")
  with pytest.raises(ValueError, match="mode"):
    r3.R3(enc, mode="nope")
  with pytest.raises(ValueError, match="unknown query type"):
    r3.query_type("sometimes")


def test_with_minilm_prefers_relevant_and_flags_copies():
  reward = r3.R3(bert.Encoder.from_dir(bert.minilm_dir(), normalize=True), max_len=128)
  q = "Please tell me about Nivo."
  good = "Nivo is a small city that lies in a chain of islands. It is best known for glass making."
  off = "Palmigro is a large animal that lives in deep caves. It is best known for swimming fast."
  out = reward([q, q, q], [good, off, q], None, None)
  assert out["relevance"][0] > out["relevance"][1]
  assert out["reward"][0] > out["reward"][1] and out["reward"][0] > out["reward"][2]
  np.testing.assert_array_equal(out["copies_query"], [0, 0, 1])


def test_encoder_truncation_side_and_length():
  """A long answer whose relevant part is at its end: the authors' Contriever setting
  (left truncation) sees it, the first 256 pieces do not. Defaults: a given encoder keeps
  its last 512 pieces, the packaged MiniLM its first 256."""
  import ml_collections
  from r3jax.rewards import scorers
  assert scorers.encoder_truncation("/models/contriever") == (512, "left")
  assert scorers.encoder_truncation("") == (256, "right")
  assert scorers.encoder_truncation("", 128, "left") == (128, "left")
  q = "What is the capital city of France?"
  filler = " ".join(["The weather was mild and the market sold apples, bread and cheese."] * 40)
  answer = filler + " The capital city of France is Paris."
  right = scorers.make("relevance", max_len=128)
  left = scorers.make("relevance", ml_collections.ConfigDict({"encoder_side": "left"}), max_len=128)
  r, l = right([{"prompt": q}], [answer])["reward"][0], left([{"prompt": q}], [answer])["reward"][0]
  assert l > r + 0.2, (l, r)
  assert right([{"prompt": q}], [answer])["reward"][0] == r  # The shared tokenizer is set per call.


def test_score_command(tmp_path):
  import json
  import subprocess
  import sys
  rows = [{"prompt": "Please tell me about Nivo.", "response": "Nivo is a small city.", "query_type": "OPENENDED"},
          {"prompt": "What color is Nivo?", "response": "Nivo is purple.", "reference": "Nivo is purple.",
           "query_type": "CONSTRAINED"}]
  src = tmp_path / "rows.jsonl"
  src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  out = subprocess.run([sys.executable, "-m", "r3jax.score", "--reward=r3", f"--input={src}",
                        f"--output={tmp_path / 'out.jsonl'}", "--max_len=128"],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, why(out)
  scored = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert scored[1]["closed_ended"] == 1.0 and scored[0]["closed_ended"] == 0.0
  # Identical response and reference: cosine 1, so R3 = RP * f(1) = 1.28 / 3.5.
  assert scored[1]["reward"] == pytest.approx(1.28 / 3.5, rel=1e-4)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "x"}\n')
  out = subprocess.run([sys.executable, "-m", "r3jax.score", f"--input={bad}", f"--output={tmp_path / 'o2'}"],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and f"{bad}:1: missing or non-string field 'response'" in out.stderr
