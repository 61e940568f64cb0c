"""Step scorers: rate candidate next steps of a chain.

``StepScorer.score(question, prefix_steps, candidates) -> list[float | None]`` returns a
value in [0, 1] per candidate, or None when the scorer cannot judge the step ("unknown",
which the search treats as implausible for the MIN chain and as ``unknown_score`` for
ranking).

``ArithmeticScorer`` recomputes every ``a op b (op c ...) = r`` in a step exactly, with
rationals and the usual precedence: 0.0 when any fails. When all hold, it also checks
grounding: every operand must appear in the question or in an earlier step (small
constants up to ``SMALL_CONSTANT`` are always allowed, e.g. "twice", "half"); a step with
an ungrounded operand (a number copied wrong) scores ``ungrounded_score``, else 1.0. A
final-answer step (``#### X``) scores 1.0 when X equals the result of the last equation in
the chain, 0.0 when it differs. ``first_wrong_step`` locates the first step whose
arithmetic fails.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Protocol

from tasks.answers import as_number, extract_answer

NUM = r"\d+(?:\.\d+)?"
OP = r"[-+*/×÷x]"
EQUATION_RE = re.compile(rf"((?<![\d.]){NUM}(?:\s*{OP}\s*{NUM})+)\s*=\s*(-?{NUM})")
TOKEN_RE = re.compile(rf"{NUM}|{OP}")
NUMBER_RE = re.compile(NUM)
SMALL_CONSTANT = 12


class StepScorer(Protocol):
    name: str

    def score(self, question: str, prefix_steps: list[str], candidates: list[str]) -> list[float | None]: ...


def _strip_thousands(text: str) -> str:
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def evaluate(expr: str) -> Fraction | None:
    """Exact value of ``a op b op c ...`` with * and / before + and -; None if malformed."""
    toks = TOKEN_RE.findall(expr)
    if len(toks) < 3 or len(toks) % 2 == 0:
        return None
    terms: list[Fraction] = []
    signs: list[int] = []
    cur = Fraction(toks[0])
    sign = 1
    for op, val in zip(toks[1::2], toks[2::2]):
        v = Fraction(val)
        if op in "*×x":
            cur *= v
        elif op in "/÷":
            if v == 0:
                return None
            cur /= v
        else:
            terms.append(cur)
            signs.append(sign)
            sign = 1 if op == "+" else -1
            cur = v
    terms.append(cur)
    signs.append(sign)
    return sum((s * t for s, t in zip(signs, terms)), Fraction(0))


def equations(step: str) -> list[tuple[Fraction | None, Fraction]]:
    """(computed left side, stated right side) for every equation in the step."""
    return [(evaluate(lhs), Fraction(rhs)) for lhs, rhs in EQUATION_RE.findall(_strip_thousands(step))]


def step_verdict(step: str, prefix_steps: list[str]) -> bool | None:
    """True if the step's arithmetic holds, False if it fails, None if nothing to check."""
    eqs = equations(step)
    if eqs:
        return all(lhs is not None and lhs == rhs for lhs, rhs in eqs)
    answer = extract_answer(step)
    if answer is None:
        return None
    stated = as_number(answer)
    last = next((equations(s)[-1][1] for s in reversed(prefix_steps) if equations(s)), None)
    if stated is None or last is None:
        return None
    return stated == last


def _numbers(text: str) -> set[Fraction]:
    return {Fraction(x) for x in NUMBER_RE.findall(_strip_thousands(text))}


def ungrounded_operands(step: str, question: str, prefix_steps: list[str]) -> list[Fraction]:
    """Operands of the step's equations found neither in the question nor in earlier steps."""
    known = _numbers(question)
    for s in prefix_steps:
        known |= _numbers(s)
    out = []
    for lhs, _ in EQUATION_RE.findall(_strip_thousands(step)):
        for x in NUMBER_RE.findall(lhs):
            v = Fraction(x)
            if v not in known and not (v.denominator == 1 and 0 <= v <= SMALL_CONSTANT):
                out.append(v)
    return out


def first_wrong_step(steps: list[str]) -> int | None:
    """Index of the first step whose arithmetic fails, or None."""
    for i, step in enumerate(steps):
        if step_verdict(step, steps[:i]) is False:
            return i
    return None


class ArithmeticScorer:
    name = "arithmetic"

    def __init__(self, ungrounded_score: float = 0.25):
        self.ungrounded_score = ungrounded_score

    def score(self, question: str, prefix_steps: list[str], candidates: list[str]) -> list[float | None]:
        out: list[float | None] = []
        for c in candidates:
            v = step_verdict(c, prefix_steps)
            if v and ungrounded_operands(c, question, prefix_steps):
                out.append(self.ungrounded_score)
            else:
                out.append(None if v is None else float(v))
        return out


SCORERS = {"arithmetic": lambda cfg: ArithmeticScorer(cfg.ungrounded_score)}


def build_scorer(cfg) -> StepScorer:
    """The step scorer named by ``cfg.kind`` (explicit mapping)."""
    return SCORERS[cfg.kind](cfg)
