"""Final-answer extraction and checking against gold.

Extraction looks, in order, for ``#### X`` (GSM8K style), the last ``\\boxed{X}`` (MATH
style) and ``the answer is X``. Checking never evaluates model text: plain numbers
(integers, decimals, fractions, with thousands separators) are compared exactly as
rationals; anything else goes to math-verify for symbolic equivalence, with its own
timeouts when called on the main thread and a length cap everywhere, so one check is
bounded in time.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

ANSWER_RE = re.compile(r"####\s*([^\n]*)")
ANSWER_IS_RE = re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*\.?\s*$", re.IGNORECASE | re.MULTILINE)
NUMBER_RE = re.compile(r"^[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$|^[-+]?\d+/\d+$")
MAX_ANSWER_CHARS = 200


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth, j = 0, i
    while j < len(text):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
        j += 1
    return None


def extract_answer(text: str) -> str | None:
    """The final answer a chain states, or None when it states none."""
    m = ANSWER_RE.findall(text)
    if m and m[-1].strip():
        return m[-1].strip().rstrip(".").strip()
    boxed = last_boxed(text)
    if boxed:
        return boxed
    m = ANSWER_IS_RE.findall(text)
    return m[-1].strip() if m else None


def as_number(s: str) -> Fraction | None:
    s = s.strip().strip("$").replace(" ", "")
    if not NUMBER_RE.match(s):
        return None
    try:
        return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def is_equivalent(pred: str | None, gold: str) -> bool:
    """True when ``pred`` equals ``gold`` as a number or, failing that, symbolically."""
    if pred is None or not pred.strip():
        return False
    a, b = as_number(pred), as_number(gold)
    if a is not None and b is not None:
        return a == b
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return pred.strip() == gold.strip()
    from math_verify import parse, verify

    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None  # math-verify's timeouts use SIGALRM: main thread only
    wrap = lambda s: s if "$" in s or "\\" not in s else f"${s}$"  # noqa: E731
    try:
        g = parse(wrap(gold), parsing_timeout=timeout)
        p = parse(wrap(pred), parsing_timeout=timeout)
        return bool(g and p and verify(g, p, timeout_seconds=timeout))
    except Exception:  # math-verify raises many types on odd input; a failed parse is "not equal"
        return False


def normalize_gold(raw: str) -> str | None:
    """A gold answer as a clean string, or None when it is empty."""
    s = raw.strip().rstrip(".").strip()
    return s or None
