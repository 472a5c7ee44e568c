r"""Verifiable answers: a math response's final answer, normalised and checked against its key.

  extract("... so 7 + 5 = 12. The answer is 12.")  -> "12"
  is_correct(response, "12")                        -> True

`extract` tries, in order: the last \boxed{...} (balanced braces), a "#### n" line (GSM8K's
form), the last "the answer is ..." / "answer: ...", else the last number of the text (as
TRL's and verl's GSM8K checkers fall back to). `normalize` makes equal answers compare equal:
thousands separators, currency, percent, trailing ".0" and the final period go; numbers and
simple fractions compare as exact rationals ("1/2" == "0.5" == "\frac{1}{2}").
"""

import fractions
import re

_NUMBER = r"-?\$?\s*\d[\d,]*(?:\.\d+)?(?:/\d+)?"
_HASH = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
_ANSWER_IS = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|answer\s*:)\s*:?\s*([^\n]+)", re.IGNORECASE)
_LAST_NUMBER = re.compile(_NUMBER)
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{[^{}]*\}")
FORMS = ("any", "boxed", "hash", "answer_is")


def _boxed(text: str) -> str | None:
  """The content of the last \boxed{...}, braces balanced."""
  start = text.rfind("\\boxed{")
  if start < 0:
    return None
  depth, i = 1, start + len("\\boxed{")
  for j in range(i, len(text)):
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    if depth == 0:
      return text[i:j]
  return None


def _answer_is(text: str) -> str | None:
  found = _ANSWER_IS.findall(text)
  if not found:
    return None
  phrase = found[-1]
  number = _LAST_NUMBER.search(phrase)  # "The answer is 42 apples." -> "42".
  return number.group(0) if number else phrase.strip().rstrip(".")


def extract(text: str) -> str | None:
  """The final answer of a response (see the module docstring), or None."""
  for found in (_boxed(text), (_HASH.findall(text) or [None])[-1], _answer_is(text)):
    if found is not None and found.strip():
      return found.strip()
  numbers = _LAST_NUMBER.findall(text)
  return numbers[-1].strip() if numbers else None


def _rational(s: str) -> fractions.Fraction | None:
  try:
    return fractions.Fraction(s)
  except (ValueError, ZeroDivisionError):
    return None


def normalize(answer: str) -> str:
  """Canonical text of an answer: an exact rational for a number or simple fraction
  ("1,234.00" -> "1234", "$18" -> "18", "50%" -> "50", "\frac{1}{2}" -> "1/2"), else the
  lowercased text without spaces and a final period."""
  s = _TEXT.sub("", answer.strip())
  s = _FRAC.sub(r"(\1)/(\2)", s)
  s = re.sub(r"[\s$€£]|\\\$|\\%|%|\\!|\\,", "", s).rstrip(".").lstrip("+")
  s = s.replace("(", "").replace(")", "") if re.fullmatch(r"\(?-?[\d.]+\)?/\(?[\d.]+\)?", s) else s
  if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
    s = s.replace(",", "")
  value = _rational(s) if re.fullmatch(r"-?\d+(\.\d+)?(/\d+)?", s) else None
  return str(value) if value is not None else s.lower()


def is_correct(response: str, key) -> bool:
  answer = extract(response)
  return answer is not None and normalize(answer) == normalize(str(key))


def key_of(row: dict) -> str | None:
  """A row's answer key: its `answer` field (a GSM8K worked solution gives its #### line)."""
  key = row.get("answer")
  if key is None:
    return None
  key = str(key)
  hashed = _HASH.findall(key)
  return hashed[-1].strip() if hashed else key.strip()


def format_ok(response: str, form: str = "any") -> bool:
  """Whether the answer is stated in the asked form: boxed (\boxed{}), hash (a #### line),
  answer_is ("The answer is ..."), or any of the three (the last-number fallback is not a
  form)."""
  found = {"boxed": _boxed(response) is not None, "hash": bool(_HASH.findall(response)),
           "answer_is": _answer_is(response) is not None}
  return any(found.values()) if form == "any" else found[form]
