"""The embedded verifiable task: short arithmetic word problems with exact answers.

Each problem is one or two operations on small numbers, told as a story ("Mira has 7
shells. She finds 5 more and gives away 3. How many shells does she have now?"). Its SFT
answer works the steps and ends with the key in the form the math reward reads first
after \\boxed / ####: "7 + 5 = 12. 12 - 3 = 9. The answer is 9." The exact checker
(rewards/verifiable.py) is this task's gold judge, as the fact checker is the world's.

Problems are split by their numbers (a hash of the template and operands) three ways:
"train" (SFT's worked solutions, 3 in 5), "rl" (RL's prompts, keys only, 1 in 5) and "test"
(held out from both, 1 in 5). A tiny model memorises the combinations SFT showed (on
2026-12-05 it answered 80% of them, and half of new ones), so RL on SFT's own problems
measures recall; on "rl" it has to get new combinations right, which is the skill the
held-out "test" split measures. Everything comes from a seed: no files, no downloads.
"""

import random
import zlib

NAMES = ["Mira", "Tomas", "Ana", "Ravi", "Lena", "Omar", "Yuki", "Sara", "Ivan", "Nia"]
ITEMS = ["shells", "apples", "stamps", "marbles", "cards", "coins", "books", "pens"]

# (question template, (a, b, c) -> worked steps and answer). a, b, c are drawn per template
# by `_operands`; every answer is a non-negative integer.
TEMPLATES = (
    ("{n} has {a} {i}. {n} finds {b} more. How many {i} does {n} have now?",
     lambda a, b, c: ([(a, "+", b)], a + b)),
    ("{n} has {a} {i} and gives away {b}. How many {i} are left?",
     lambda a, b, c: ([(a, "-", b)], a - b)),
    ("{n} has {a} bags with {b} {i} in each. How many {i} is that in all?",
     lambda a, b, c: ([(a, "*", b)], a * b)),
    ("{n} has {a} {i}. {n} finds {b} more and gives away {c}. How many {i} does {n} have now?",
     lambda a, b, c: ([(a, "+", b), (a + b, "-", c)], a + b - c)),
    ("{n} has {a} bags with {b} {i} in each and finds {c} more. How many {i} does {n} have?",
     lambda a, b, c: ([(a, "*", b), (a * b, "+", c)], a * b + c)),
)


def _operands(rng: random.Random, t: int) -> tuple[int, int, int]:
  a, b = rng.randint(2, 20), rng.randint(2, 20)
  if t in (2, 4):  # A product: single digits.
    a, b = rng.randint(2, 9), rng.randint(2, 9)
  if t == 1:
    a, b = max(a, b), min(a, b)
  c = {3: rng.randint(1, a + b), 4: rng.randint(1, 9)}.get(t, 0)  # 0: one operation.
  return a, b, c


def _steps_text(steps, answer) -> str:
  ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
  sym = {"+": "+", "-": "-", "*": "x"}
  worked = " ".join(f"{x} {sym[o]} {y} = {ops[o](x, y)}." for x, o, y in steps)
  return f"{worked} The answer is {answer}."


SPLITS = ("test", "rl", "train", "train", "train")  # By the hash of a problem's numbers.


def split_of(t: int, a: int, b: int, c: int) -> str:
  return SPLITS[zlib.crc32(f"{t}:{a}:{b}:{c}".encode()) % len(SPLITS)]


def problems(n: int, seed: int, split: str = "train") -> list[dict]:
  """n {prompt, answer, reference} rows of one split (train, rl or test); answer is the
  key as a string, reference the worked solution."""
  if split not in SPLITS:
    raise ValueError(f"split {split!r}: expected train, rl or test")
  rng = random.Random(seed)
  out = []
  while len(out) < n:
    t = rng.randrange(len(TEMPLATES))
    a, b, c = _operands(rng, t)
    if split_of(t, a, b, c) != split:
      continue
    template, solve = TEMPLATES[t]
    steps, answer = solve(a, b, c)
    question = template.format(n=rng.choice(NAMES), i=rng.choice(ITEMS), a=a, b=b, c=c)
    out.append({"prompt": question, "answer": str(answer), "reference": _steps_text(steps, answer)})
  return out


def conversations(n: int, seed: int) -> list[dict]:
  """SFT rows {messages, prompt, reference, answer} from the train split."""
  return [{"messages": [{"role": "user", "content": p["prompt"]},
                        {"role": "assistant", "content": p["reference"]}], **p}
          for p in problems(n, seed, "train")]
