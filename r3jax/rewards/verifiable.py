r"""Verifiable answers: a math response's final answer, normalised and checked against its key.

  extract("... so 7 + 5 = 12. The answer is 12.")  -> "12"
  is_correct(response, "12")                        -> True

`extract` tries, in order: the last \boxed{...} (balanced braces), a "#### n" line (GSM8K's
form, Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"), the last "the
answer is ..." / "answer: ...", else the last number of the text (as TRL's and verl's GSM8K
checkers fall back to). `normalize` makes equal answers compare equal: thousands
separators, currency, percent, degrees, a final period, a "x =" in front and unit words
after a number go; numbers and simple fractions compare as exact rationals
("1/2" == "0.5" == "\frac{1}{2}", "18.00" == "18"); anything else as lowercased text
without spaces. There is no symbolic equivalence: "\sqrt{2}/2" and "1/\sqrt{2}" differ.
"""

import fractions
import re

from r3jax.core.errors import ConfigError

FORMS = ("any", "boxed", "hash", "answer_is")

# A number as written in a response: sign, "$", thousands groups or plain digits, decimals,
# and "/d" for a simple fraction. The look-behind keeps "10-20" from reading as -20 and
# "Qwen2" or "v1.5" from reading as numbers; a group needs three digits, so "10," is 10.
_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_NUMBER = rf"(?<![\w.])[-−]?(?:\$\s*)?(?:{_INT}(?:\.\d+)?|\.\d+)(?:/\d+)?"
# An answer token: a LaTeX fraction (before the number, which would read only its "1").
_TOKEN = re.compile(rf"[-−]?\\[dt]?frac\{{[^{{}}]+\}}\{{[^{{}}]+\}}|{_NUMBER}")
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASH = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
_ANSWER_IS = re.compile(r"\b(?:the\s+(?:final\s+)?answer\s+is|answer\s*:)\s*:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")

# normalize's steps.
_WRAP = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]?frac\{\s*([\d.]+)\s*\}\{\s*([\d.]+)\s*\}|\\[dt]?frac(\d)(\d)")
_DROP = re.compile(r"\\left|\\right|\\[!,;: ]|\^\s*\{?\\circ\}?|°|\\?[$%€£]")
_ASSIGN = re.compile(r"[a-zA-Z]\s*=\s*(.+)")  # "x = 5".
_UNIT = re.compile(r"(-?[\d.,/]+)\s+(?!pi\b)[a-zA-Z]{2,}[a-zA-Z\s.]*")  # "18 dollars".
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)"
_NUMERIC = re.compile(rf"-?{_DECIMAL}(?:/{_DECIMAL})?")


def _boxed(text: str) -> str | None:
  """The content of the last \boxed{...} (or \fbox), braces balanced; None if unclosed."""
  starts = list(_BOX.finditer(text))
  if not starts:
    return None
  depth, i = 1, starts[-1].end()
  for j in range(i, len(text)):
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    if depth == 0:
      return text[i:j]
  return None


def _hash(text: str) -> str | None:
  found = _HASH.findall(text)
  return found[-1] if found else None


def _answer_is(text: str) -> str | None:
  """What follows the last "the answer is" / "answer:" (the rest of its sentence; after its
  last "=" when it works a sum, "12 - 3 = 9"): its first number or fraction, else the
  phrase ("Paris"); None when nothing follows."""
  found = list(_ANSWER_IS.finditer(text))
  if not found:
    return None
  phrase = text[found[-1].end():].lstrip().split("\n", 1)[0]
  phrase = _SENTENCE_END.split(phrase, 1)[0].rsplit("=", 1)[-1].strip()
  token = _TOKEN.search(phrase)
  return token.group(0) if token else (phrase or None)


def extract(text: str) -> str | None:
  """The final answer of a response (see the module docstring), or None."""
  for found in (_boxed(text), _hash(text), _answer_is(text)):
    if found is not None and found.strip():
      return found.strip()
  tokens = _TOKEN.findall(text)
  return tokens[-1].strip() if tokens else None


def _rational(s: str) -> fractions.Fraction | None:
  num, _, den = s.partition("/")
  try:
    return fractions.Fraction(num) / fractions.Fraction(den or 1)
  except (ValueError, ZeroDivisionError):
    return None


def normalize(answer: str) -> str:
  """Canonical text of an answer: an exact rational for a number or simple fraction
  ("1,234.00" -> "1234", "$18" -> "18", "50%" -> "50", "-\frac{1}{2}" -> "-1/2",
  "18 dollars" -> "18", "x = 5" -> "5"), else the lowercased text without spaces and a
  final period. Idempotent: normalize(normalize(a)) == normalize(a)."""
  s = _WRAP.sub(r" \1 ", answer.replace("−", "-"))  # "5\text{ apples}": a unit word.
  s = _FRAC.sub(lambda m: "/".join(g for g in m.groups() if g), s)
  s = _DROP.sub("", s).strip().rstrip(".").strip()
  assign = _ASSIGN.fullmatch(s)
  s = assign.group(1) if assign else s
  unit = _UNIT.fullmatch(s)
  s = unit.group(1) if unit else s
  s = re.sub(r"\s", "", s).rstrip(".").lstrip("+")
  if _THOUSANDS.fullmatch(s):
    s = s.replace(",", "")
  value = _rational(s) if _NUMERIC.fullmatch(s) else None
  return str(value) if value is not None else s.lower()


def is_correct(response: str, key) -> bool:
  """Whether the response's extracted answer equals the key, both normalised."""
  answer = extract(response)
  return answer is not None and normalize(answer) == normalize(str(key))


def key_of(row: dict) -> str | None:
  """A row's answer key: its `answer` field as a string (a GSM8K worked solution gives its
  #### line); None when it has none or it is blank."""
  key = row.get("answer")
  if key is None:
    return None
  key = _hash(str(key)) or str(key)
  return key.strip() or None


def check_form(form: str) -> str:
  """`form` when it is one of FORMS, else a ConfigError naming reward.answer_format."""
  if form not in FORMS:
    raise ConfigError(f"reward.answer_format={form!r}: expected one of {', '.join(FORMS)}")
  return form


def format_ok(response: str, form: str = "any") -> bool:
  """Whether the answer is stated in the asked form: boxed (a non-empty \boxed{}), hash (a
  #### line), answer_is ("The answer is N", or "Answer: N"), or any of the three (the
  last-number fallback is not a form)."""
  found = {"boxed": bool((_boxed(response) or "").strip()), "hash": _hash(response) is not None,
           "answer_is": _answer_is(response) is not None}
  return any(found.values()) if check_form(form) == "any" else found[form]
