"""Final answers: extraction from a chain, checking against gold, validation of seed golds.

Extraction (``extract_answer``) never raises and is linear in the text. It looks, in
order, for the last ``#### X`` line (GSM8K style; a last ``####`` with nothing after it
is skipped), the last ``\\boxed{X}`` (MATH style; when several are present the *last*
one wins, and a last one left unclosed gives None rather than an earlier one) and the
last ``the answer is X``.

Checking (``verify_answer``) never evaluates model text in-process and never raises. It
says ``correct``, ``wrong`` or ``unknown`` (with a reason), in this order:

1. guards: no answer is ``wrong``; an empty gold or an answer longer than
   ``MAX_INPUT_CHARS`` is ``unknown`` unless it equals the gold verbatim;
2. string equality after normalisation (``$``, ``\\$``, ``\\!``, ``\\,``, ``\\left``/``\\right``,
   ``\\text{...}`` wrappers, ``^\\circ``, ``\\%``, ``\\dfrac``, spaces, a trailing period, an
   enclosing ``\\boxed{}``) is ``correct``;
3. numbers (integers, decimals, ``a/b``, ``\\frac{a}{b}``, mixed numbers ``6\\frac{1}{5}``,
   thousands separators, ``\\$``, ``%`` and unit words such as ``cm`` or ``dollars``; a
   ``%`` is dropped, so ``50\\%`` is ``50``) are compared exactly as rationals,
   in-process; ``0.333`` is not ``1/3``; more than ``MAX_DIGITS`` digits is ``unknown``;
4. tuples and intervals (bracket types matter: ``(3,4]`` is not ``(3,4)``), sets and bare
   lists (order ignored) and matrices are compared element-wise; numeric elements
   exactly, the others as in 5 (sets with symbolic elements go to 5 whole);
5. anything else goes to math-verify in a worker process (``infra.timeout_pool``) under
   a hard limit of ``SYMBOLIC_TIMEOUT_S`` that holds on any thread; before that, answers
   longer than ``MAX_ANSWER_CHARS``, nested deeper than ``MAX_NESTING``, with an exponent
   tower (``9^{9^9}``), an exponent above ``MAX_EXPONENT`` or a factorial of a number
   above ``MAX_EXPONENT`` are refused (``unknown``). A timeout, a crash or an answer that
   math-verify cannot parse is ``unknown``, never ``correct``. math-verify's semantics
   apply there (a decimal matches an irrational gold to 6 places).

``is_equivalent(pred, gold)`` is ``verify_answer(pred, gold).verdict is Verdict.correct``.
The worker pool starts lazily on the first symbolic check (never at import);
``warm_symbolic_pool()`` starts it ahead of time.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from infra.timeout_pool import CallFailed, CallTimeout, TimeoutPool

ANSWER_RE = re.compile(r"####[ \t]*([^\n]*)")
MAX_ANSWER_CHARS = 200  # longest normalised answer that goes to symbolic work
MAX_INPUT_CHARS = 10_000  # longer answers are only compared verbatim
MAX_DIGITS = 1000  # longest number compared exactly
MAX_NESTING = 12  # deepest bracket nesting that goes to symbolic work
MAX_EXPONENT = 10_000  # largest literal exponent / factorial argument for symbolic work
MAX_SYMBOLIC_PAIRS = 32  # most element pairs of one answer that go to symbolic work
MAX_GOLD_CHARS = 1000
SYMBOLIC_TIMEOUT_S = 5.0
SYMBOLIC_WORKERS = 2
SYMBOLIC_MEMORY_BYTES = 2 << 30


# ---------------------------------------------------------------- extraction


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``), or None.

    Only the last occurrence counts: unclosed (a truncated chain) or empty gives None.
    """
    if not isinstance(text, str):
        return None
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        m = re.match(r"[^\s${}]+", text[i : i + 100])
        return m.group(0) if m and text[i - 1] in " \t" else None
    end = _closing_brace(text, i)
    if end is None:
        return None
    return text[i + 1 : end].strip() or None


_BRACE = re.compile(r"[{}]")


def _closing_brace(text: str, i: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``i``, or None."""
    depth = 0
    for m in _BRACE.finditer(text, i):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return m.start()
    return None


_ANSWER_IS = re.compile(r"answer is", re.IGNORECASE)


def _answer_is(text: str) -> str | None:
    """The last ``answer is X`` with X alone on the rest of its line (bounded work)."""
    hits = deque(_ANSWER_IS.finditer(text), maxlen=50)
    for m in reversed(hits):
        eol = text.find("\n", m.end(), m.end() + 1001)
        rest = text[m.end() : eol if eol >= 0 else m.end() + 1001]
        if eol < 0 and m.end() + 1001 < len(text):
            continue  # not the end of a line within 1,000 characters: not an answer statement
        rest = rest.lstrip(": \t").rstrip()
        rest = rest[:-1].rstrip() if rest.endswith(".") else rest
        rest = rest[1:] if rest.startswith("$") else rest
        rest = rest[:-1] if rest.endswith("$") else rest
        if rest.strip() and "$" not in rest:
            return rest.strip()
    return None


def extract_answer(text: str) -> str | None:
    """The final answer a chain states, or None when it states none (see module doc)."""
    try:
        if not isinstance(text, str) or not text:
            return None
        m = ANSWER_RE.findall(text)
        hashed = m[-1].strip().rstrip(".").strip() if m else ""
        return hashed or last_boxed(text) or _answer_is(text)
    except Exception:  # never let a hostile chain break a batch
        return None


def normalize_gold(raw: str) -> str | None:
    """A gold answer as a clean string, or None when it is empty."""
    s = raw.strip().rstrip(".").strip()
    return s or None


# ---------------------------------------------------------------- normalisation

_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|texttt|mbox|mathrm|mathbf|mathit)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"(\d),\\[!,]\s*(?=\d{3}(?!\d))")  # 32,\!348 and 1,\,000
_NO_SPACE = re.compile(r"(?<!\\)\\[!,]|\\displaystyle(?![A-Za-z])")
_SPACING = re.compile(r"(?<!\\)\\[;:> ]|\\q?quad(?![A-Za-z])|~")
_FRAC_ARG = r"(\{[^{}]*\}|\\[A-Za-z]+|[0-9A-Za-z])"
_LOOSE_FRAC = re.compile(r"\\frac\s*" + _FRAC_ARG + r"\s*" + _FRAC_ARG)
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?:\.|(?![A-Za-z]))|\\[bB]igg?[lr]?(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])|°")
_SPACE_NOT_BETWEEN_LETTERS = re.compile(r"(?<![A-Za-z])\s+|\s+(?![A-Za-z])")


def _unbox(s: str) -> str:
    for _ in range(5):
        m = re.match(r"\\(?:boxed|fbox)\s*\{", s)
        if not m or _closing_brace(s, m.end() - 1) != len(s) - 1:
            return s
        s = s[m.end() : -1].strip()
    return s


def _unbrace(arg: str) -> str:
    return arg[1:-1] if arg.startswith("{") else arg


def _clean(s: str) -> str:
    """Notation-only rewrites, safe to hand to a LaTeX parser (see module doc, step 2)."""
    s = _CTRL.sub(" ", s).strip()
    for a, b in (("\\$", ""), ("$", ""), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""), ("−", "-")):
        s = s.replace(a, b)
    s = _unbox(s.strip())
    s = _NO_SPACE.sub("", _THOUSANDS.sub(r"\1", s))
    s = _SPACING.sub(" ", s)
    s = _LEFT_RIGHT.sub("", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = _LOOSE_FRAC.sub(lambda m: "\\frac{%s}{%s}" % tuple(_unbrace(a) for a in m.groups()), s)
    s = _DEGREES.sub("", s).replace("\\%", "").replace("%", "")
    s = re.sub(r"\s+", " ", s).strip()
    while s.endswith("."):
        s = s[:-1].rstrip()
    return s


def _canon(s: str) -> str:
    """``_clean`` plus ``\\text{}`` unwrapped and spaces dropped unless between letters."""
    s = _TEXT_CMD.sub(r" \1 ", _clean(s))
    return _SPACE_NOT_BETWEEN_LETTERS.sub("", s.strip())


# ---------------------------------------------------------------- numbers

_UNITS = (
    "cents cent dollars dollar degrees degree units unit square sq cubic inches inch in feet foot ft "
    "yards yard yd miles mile mi meters meter metres metre cm mm km kilometers kg grams gram mg "
    "liters liter litres ml gallons gallon pounds pound lbs lb ounces ounce oz hours hour hrs hr "
    "minutes minute mins min seconds second secs sec days day weeks week months month years year "
    "mph kmh percent"
).split()
_UNIT_SUFFIX = re.compile(
    r"(?<=[\d}.])(?:" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")+(?:\^\{?[23]\}?)?$"
)
_DECIMAL = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+"
_PLAIN = re.compile(rf"^(?:{_DECIMAL})$")
_SLASH = re.compile(r"^([-+]?)(\d+)/(\d+)$")
_FRAC = re.compile(rf"^([-+]?)\\frac(?:\{{({_DECIMAL})\}}\{{({_DECIMAL})\}}|(\d)(\d))$")
_MIXED = re.compile(r"^([-+]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$")  # 6\frac{1}{5} = 31/5, MATH's mixed numbers
_INF = re.compile(r"^([-+]?)(?:\\infty|\\inf|∞|oo|infinity)$")


class _Refused(Exception):
    """An answer that is out of bounds for exact or symbolic work (becomes ``unknown``)."""


def _scalar(c: str) -> Fraction | float | None:
    """A canonical string as an exact number (or ±inf), None when it is not one."""
    c = _UNIT_SUFFIX.sub("", c.replace(" ", "")) if len(c) < 100 else c
    plain, m, mixed = _PLAIN.match(c), _SLASH.match(c) or _FRAC.match(c), _MIXED.match(c)
    if (plain or m or mixed) and sum(ch.isdigit() for ch in c) > MAX_DIGITS:
        raise _Refused(f"number with more than {MAX_DIGITS} digits")
    if plain:
        return Fraction(c.replace(",", "").rstrip(".") or "0")
    if m:
        sign, num, den = m.group(1), *(g for g in m.groups()[1:] if g is not None)
        num, den = Fraction(num.replace(",", "")), Fraction(den.replace(",", ""))
        return None if den == 0 else (-1 if sign == "-" else 1) * num / den
    if mixed and int(mixed.group(3)) < int(mixed.group(4)):  # proper fraction: a mixed number, not a product
        whole = int(mixed.group(2)) + Fraction(int(mixed.group(3)), int(mixed.group(4)))
        return -whole if mixed.group(1) == "-" else whole
    m = _INF.match(c)
    if m:
        return float("-inf") if m.group(1) == "-" else float("inf")
    return None


def as_number(s: str) -> Fraction | None:
    """``s`` as an exact rational (see module doc, step 3), or None. Never raises."""
    try:
        v = _scalar(_canon(s)) if isinstance(s, str) and len(s) <= MAX_INPUT_CHARS else None
    except (_Refused, ValueError, ZeroDivisionError):
        return None
    return v if isinstance(v, Fraction) else None


# ---------------------------------------------------------------- structure

_OPEN, _CLOSE = "([{", ")]}"
_MATRIX = re.compile(r"^\\begin\{([pbB]?matrix)\}(.*)\\end\{\1\}$", re.DOTALL)


def _split_top(s: str, sep: str) -> list[str] | None:
    """``s`` split at ``sep`` outside brackets, None when brackets do not balance."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        ch = s[i]
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i = i + len(sep)
            continue
        i += 1
    return parts + [s[start:]] if depth == 0 else None


def _encloses(s: str, skip: int) -> bool:
    """The bracket opening at ``s[skip-1]`` closes at the very end of ``s``."""
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch in _OPEN) - (ch in _CLOSE)
        if depth == 0 and i >= skip - 1:
            return i == len(s) - 1
    return False


def _structure(c: str) -> tuple[str, list] | None:
    """A canonical answer as ``(kind, items)``: kinds ``"(]"``-style brackets, ``set``,
    ``list`` (bare commas) or ``matrix`` (items are rows); None for a scalar."""
    m = _MATRIX.match(c)
    if m:
        rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
        return ("matrix", [r.split("&") for r in rows])
    if c.startswith("\\{") and c.endswith("\\}") and _encloses(c, 2):
        items = _split_top(c[2:-2], ",")
        return ("set", items) if items is not None else None
    if len(c) > 2 and c[0] in "([" and c[-1] in ")]" and _encloses(c, 1):
        items = _split_top(c[1:-1], ",")
        return (c[0] + c[-1], items) if items and len(items) > 1 else None
    items = _split_top(c, ",")
    return ("list", items) if items and len(items) > 1 else None


# ---------------------------------------------------------------- verdicts


class Verdict(str, enum.Enum):
    """Outcome of one check. ``unknown`` means undecided (timeout, refused, unparseable)."""

    correct = "correct"
    wrong = "wrong"
    unknown = "unknown"


@dataclass(frozen=True)
class Verification:
    """A verdict and why. Not usable as a bool: ask ``.verdict`` or ``.correct``."""

    verdict: Verdict
    reason: str

    @property
    def correct(self) -> bool:
        return self.verdict is Verdict.correct

    def __bool__(self) -> bool:
        raise TypeError("a Verification is not a bool: use .correct or .verdict")


def _v(verdict: Verdict, reason: str) -> Verification:
    return Verification(verdict, reason)


def verify_answer(pred: str | None, gold: str, *, timeout_s: float | None = None) -> Verification:
    """Check ``pred`` against ``gold`` (see module doc). Never raises."""
    try:
        return _verify(pred, gold, SYMBOLIC_TIMEOUT_S if timeout_s is None else timeout_s)
    except _Refused as e:
        return _v(Verdict.unknown, str(e))
    except Exception as e:  # a verifier bug must not break a batch; it is never "correct"
        return _v(Verdict.unknown, f"verifier error: {type(e).__name__}")


def is_equivalent(pred: str | None, gold: str) -> bool:
    """True when ``verify_answer(pred, gold)`` is ``correct``."""
    return verify_answer(pred, gold).verdict is Verdict.correct


def _verify(pred: object, gold: object, timeout_s: float) -> Verification:
    if pred is None or not str(pred).strip():
        return _v(Verdict.wrong, "no answer")
    pred, gold = str(pred), "" if gold is None else str(gold)
    if not gold.strip():
        return _v(Verdict.unknown, "empty gold")
    if max(len(pred), len(gold)) > MAX_INPUT_CHARS:
        if pred.strip() == gold.strip():
            return _v(Verdict.correct, "verbatim equal")
        return _v(Verdict.unknown, f"longer than {MAX_INPUT_CHARS} characters")
    p, g = _canon(pred), _canon(gold)
    if not p:
        return _v(Verdict.wrong, "empty answer after normalisation")
    if p == g:
        return _v(Verdict.correct, "equal after normalisation")
    pending: list[tuple[str, str]] = []
    verdict = _compare(p, g, pending)
    if verdict is not None:
        return verdict
    if pending == [(p, g)]:  # the whole answer: math-verify gets it with \text{} and spaces intact
        pending = [(_clean(pred), _clean(gold))]
    return _symbolic(pending, timeout_s)


def _compare(p: str, g: str, pending: list[tuple[str, str]], depth: int = 0) -> Verification | None:
    """In-process verdict for canonical strings, or None with symbolic pairs in ``pending``
    (then the verdict is: all pending pairs correct, given the in-process parts are)."""
    if depth > MAX_NESTING:
        raise _Refused(f"nested deeper than {MAX_NESTING}")
    if p == g:
        return _v(Verdict.correct, "equal after normalisation")
    a, b = _scalar(p), _scalar(g)
    if a is not None and b is not None:
        return _v(Verdict.correct, "equal numbers") if a == b else _v(Verdict.wrong, "different numbers")
    sp, sg = _structure(p), _structure(g)
    if sp and sg and len(sp[0]) == len(sg[0]) == 2 and sp[0] != sg[0]:
        return _v(Verdict.wrong, f"brackets {sp[0]} vs {sg[0]}")
    if sp is None or sg is None or sp[0] != sg[0]:
        pending.append((p, g))
        return None
    kind, xs, ys = sp[0], sp[1], sg[1]
    if kind in ("set", "list"):
        return _compare_unordered(xs, ys, p, g, pending)
    if kind == "matrix":
        if [len(r) for r in xs] != [len(r) for r in ys]:
            return _v(Verdict.wrong, "different matrix shapes")
        xs, ys = [x for r in xs for x in r], [y for r in ys for y in r]
    if len(xs) != len(ys):
        return _v(Verdict.wrong, f"{len(xs)} elements, gold has {len(ys)}")
    for x, y in zip(xs, ys):
        v = _compare(x, y, pending, depth + 1)
        if v is not None and v.verdict is not Verdict.correct:
            pending.clear()
            return _v(v.verdict, f"element {x!r} vs {y!r}: {v.reason}"[:300])
    return None if pending else _v(Verdict.correct, "equal element-wise")


def _compare_unordered(xs: list[str], ys: list[str], p: str, g: str, pending: list) -> Verification | None:
    if sorted(xs) == sorted(ys):
        return _v(Verdict.correct, "same elements")
    nx, ny = [_scalar(x) for x in xs], [_scalar(y) for y in ys]
    if all(v is not None for v in nx + ny):
        same = set(nx) == set(ny)
        return _v(Verdict.correct, "same numbers") if same else _v(Verdict.wrong, "different numbers")
    pending.append((p, g))
    return None


# ---------------------------------------------------------------- symbolic

_POOL: TimeoutPool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> TimeoutPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = TimeoutPool(
                SYMBOLIC_WORKERS, preload=("tasks.answers", "math_verify"), memory_limit_bytes=SYMBOLIC_MEMORY_BYTES
            )
        return _POOL


def warm_symbolic_pool() -> None:
    """Start the symbolic worker pool now (else the first symbolic check starts it)."""
    _pool().call(_symbolic_pairs, [], timeout_s=60)


def _refusal(s: str) -> str | None:
    """Why ``s`` is out of bounds for symbolic work, or None."""
    if len(s) > MAX_ANSWER_CHARS:
        return f"longer than {MAX_ANSWER_CHARS} characters for a symbolic check"
    depth = top = 0
    for ch in s:
        depth += (ch in _OPEN) - (ch in _CLOSE)
        top = max(top, depth)
    if top > MAX_NESTING:
        return f"nested deeper than {MAX_NESTING}"
    for m in re.finditer(r"\^|\*\*", s):
        exp = _exponent(s, m.end())
        after = s[m.end() :].lstrip(" ")[len(exp) :].lstrip(" }")
        if "^" in exp or "**" in exp or "\\exp" in exp or after.startswith(("^", "**")):
            return "exponent tower"
        if re.fullmatch(r"[-+]?\d+", exp.strip("{}()")) and abs(int(exp.strip("{}()")[:8])) > MAX_EXPONENT:
            return f"exponent above {MAX_EXPONENT}"
    for m in re.finditer(r"(\d+)\}?\)?!", s):
        if len(m.group(1)) > 7 or int(m.group(1)) > MAX_EXPONENT:
            return f"factorial above {MAX_EXPONENT}"
    return None


def _exponent(s: str, i: int) -> str:
    """The exponent operand starting at ``s[i]``: a ``{}`` or ``()`` group, or one token."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] in "{(":
        depth = 0
        for j in range(i, len(s)):
            depth += (s[j] in "{(") - (s[j] in "})")
            if depth == 0:
                return s[i : j + 1]
        return s[i:]
    m = re.match(r"\\[A-Za-z]+|[-+]?\d+|\w", s[i:])
    return m.group(0) if m else ""


def _symbolic(pairs: list[tuple[str, str]], timeout_s: float) -> Verification:
    if timeout_s <= 0:
        return _v(Verdict.unknown, "symbolic checks disabled (timeout_s <= 0)")
    if len(pairs) > MAX_SYMBOLIC_PAIRS:
        return _v(Verdict.unknown, f"more than {MAX_SYMBOLIC_PAIRS} elements need a symbolic check")
    for p, g in pairs:
        why = _refusal(p) or _refusal(g)
        if why:
            return _v(Verdict.unknown, why)
    try:
        results = _pool().call(_symbolic_pairs, pairs, timeout_s=timeout_s)
    except CallTimeout:
        return _v(Verdict.unknown, f"symbolic check exceeded its time limit ({timeout_s:g}s)")
    except CallFailed as e:
        return _v(Verdict.unknown, f"symbolic check failed: {e}"[:300])
    for verdict, reason in results:
        if verdict != Verdict.correct.value:
            return _v(Verdict(verdict), reason)
    return _v(Verdict.correct, results[0][1] if len(results) == 1 else "equal element-wise")


def _symbolic_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Worker side (in a ``TimeoutPool`` process): math-verify on each ``(pred, gold)``."""
    from math_verify import parse, verify
    from sympy import Basic, MatrixBase

    _quiet_math_verify()
    out = []
    for pred, gold in pairs:
        g = [x for x in parse(f"${_clean(gold)}$", parsing_timeout=None) if isinstance(x, (Basic, MatrixBase))]
        p = [x for x in parse(f"${_clean(pred)}$", parsing_timeout=None) if isinstance(x, (Basic, MatrixBase))]
        if not g or not p:
            out.append((Verdict.unknown.value, f"math-verify cannot parse the {'gold' if not g else 'answer'}"))
            continue
        try:
            same = verify(g, p, timeout_seconds=None, raise_on_error=True)
        except Exception as e:
            out.append((Verdict.unknown.value, f"math-verify error: {type(e).__name__}"))
            continue
        out.append((Verdict.correct.value, "equal (math-verify)") if same else (Verdict.wrong.value, "not equal (math-verify)"))
    return out


def _quiet_math_verify() -> None:
    """No "Timeout is disabled" warnings: the pool enforces the time limit."""
    import math_verify.grader
    import math_verify.parser

    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    logging.getLogger("math_verify").setLevel(logging.ERROR)


# ---------------------------------------------------------------- seed golds


def check_gold(gold: str, fmt: Literal["gsm8k", "math"]) -> str | None:
    """Why ``gold`` is not a usable gold answer for ``fmt``, or None when it is.

    GSM8K golds must be numbers (``as_number``). MATH golds must be non-empty after
    normalisation, at most ``MAX_GOLD_CHARS`` long, free of control characters and have
    balanced ``{}``, ``\\left``/``\\right`` and ``\\begin``/``\\end``. Never raises for any gold;
    an unknown ``fmt`` is a ``ValueError``.
    """
    if fmt not in ("gsm8k", "math"):
        raise ValueError(f"unknown gold format {fmt!r}")
    if not isinstance(gold, str) or not gold.strip():
        return "empty gold"
    if len(gold) > MAX_GOLD_CHARS:
        return f"gold longer than {MAX_GOLD_CHARS} characters"
    if _CTRL.search(re.sub(r"[\t\n\r]", " ", gold)):
        return "control characters in gold"
    if fmt == "gsm8k":
        return None if as_number(gold) is not None else f"GSM8K gold is not a number: {gold[:60]!r}"
    depth = 0
    for ch in gold:
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            break
    if depth != 0:
        return "unbalanced braces in gold"
    for a, b in (("\\left", "\\right"), ("\\begin", "\\end")):
        if len(re.findall(re.escape(a) + r"(?![A-Za-z])", gold)) != len(re.findall(re.escape(b) + r"(?![A-Za-z])", gold)):
            return f"unbalanced {a}/{b} in gold"
    return None if _canon(gold) else "gold is empty after normalisation"
