"""Step scorers: rate candidate next steps of a chain.

``StepScorer.score_batch(items) -> list[list[float | None]]`` rates every candidate of
every item (one item = one chain's prefix and its E candidates at one depth) with a value
in [0, 1], or None when the scorer cannot judge the step ("unknown": implausible for the
MIN chain, ``unknown_score`` for ranking). Scoring is batched so that scorers that call a
model (rollout) send one batch per depth, not one request per candidate.

Kinds (explicit mapping ``SCORERS``): ``arithmetic`` (below), ``rollout`` (Math-Shepherd
value: the share of k completions from the step that reach gold), ``logprob`` (the
policy's geometric-mean token probability of the step).

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

import math
import re
from fractions import Fraction
from dataclasses import dataclass
from typing import Callable, Protocol

from infra.backends.base import GenRequest, GenResult
from infra.prm import PRMClient
from infra.schemas import stable_id
from tasks.answers import as_number, extract_answer, is_equivalent

NUM = r"\d+(?:\.\d+)?"
OP = r"[-+*/×÷x]"
EQUATION_RE = re.compile(rf"((?<![\d.]){NUM}(?:\s*{OP}\s*{NUM})+)\s*=\s*(-?{NUM})")
TOKEN_RE = re.compile(rf"{NUM}|{OP}")
NUMBER_RE = re.compile(NUM)
SMALL_CONSTANT = 12


@dataclass(frozen=True)
class ScoreItem:
    question: str
    gold: str
    prompt: str
    prefix_steps: tuple[str, ...]
    candidates: tuple[str, ...]
    mean_logprobs: tuple[float | None, ...] = ()  # per candidate, where the backend returns log-probs


class StepScorer(Protocol):
    """``name`` is recorded on every chain; ``needs_logprobs`` makes the search ask the
    backend for the candidates' token log-probs (``ScoreItem.mean_logprobs``)."""

    name: str
    needs_logprobs: bool

    def score_batch(self, items: list[ScoreItem]) -> list[list[float | None]]: ...


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
    needs_logprobs = False

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

    def score_batch(self, items: list[ScoreItem]) -> list[list[float | None]]:
        return [self.score(it.question, list(it.prefix_steps), list(it.candidates)) for it in items]


class LogprobScorer:
    """exp(mean token log-prob) of the step under the policy; None where log-probs are missing."""

    name = "logprob"
    needs_logprobs = True

    def score_batch(self, items: list[ScoreItem]) -> list[list[float | None]]:
        return [
            [None if (not c or lp is None) else math.exp(lp) for c, lp in zip(it.candidates, it.mean_logprobs or (None,) * len(it.candidates))]
            for it in items
        ]


class RolloutScorer:
    """Math-Shepherd-style value: from prefix + step, complete ``k`` times with the policy and
    score the share of completions whose final answer equals gold. A step that itself states
    a final answer scores 1.0 or 0.0 by checking it. Works with any generator."""

    name = "rollout"
    needs_logprobs = False

    def __init__(self, generate: Callable[[list[GenRequest]], list[GenResult]], *, k: int, temperature: float,
                 max_tokens: int, separator: str, seed: int):
        self.generate, self.k, self.temperature = generate, k, temperature
        self.max_tokens, self.sep, self.seed = max_tokens, separator, seed

    def score_batch(self, items: list[ScoreItem]) -> list[list[float | None]]:
        out: list[list[float | None]] = [[None] * len(it.candidates) for it in items]
        requests, where = [], []
        for i, it in enumerate(items):
            for j, c in enumerate(it.candidates):
                if not c:
                    continue
                answer = extract_answer(c)
                if answer is not None:
                    out[i][j] = 1.0 if is_equivalent(answer, it.gold) else 0.0
                    continue
                steps = (*it.prefix_steps, c)
                requests.append(GenRequest(
                    prompt=it.prompt, prefix=self.sep.join(steps) + self.sep, n=self.k, temperature=self.temperature,
                    max_tokens=self.max_tokens, seed=int(stable_id("rollout", self.seed, it.prompt, *steps)[:8], 16),
                ))
                where.append((i, j))
        for (i, j), res in zip(where, self.generate(requests) if requests else []):
            hits = sum(is_equivalent(extract_answer(r.text), items[i].gold) for r in res.completions)
            out[i][j] = hits / len(res.completions)
        return out


SCORERS = {
    "arithmetic": lambda cfg, generate, search, seed, pool_cfg, cost, owner: ArithmeticScorer(cfg.ungrounded_score),
    "logprob": lambda cfg, generate, search, seed, pool_cfg, cost, owner: LogprobScorer(),
    "prm": lambda cfg, generate, search, seed, pool_cfg, cost, owner: _prm(cfg, pool_cfg, cost, owner),
    "rollout": lambda cfg, generate, search, seed, pool_cfg, cost, owner: RolloutScorer(
        generate, k=cfg.rollouts, temperature=cfg.rollout_temperature, max_tokens=cfg.rollout_max_tokens,
        separator=search.step_separator, seed=seed,
    ),
}


class PRMScorer:
    """A process reward model's value of each candidate: P(positive) at the candidate's step
    tag, given the question and the steps before it (``infra.prm.PRMClient``)."""

    name = "prm"
    needs_logprobs = False

    def __init__(self, base_url: str | None = None, model: str | None = None, **client_options):
        self.client = PRMClient(base_url, model, **client_options)

    def score_batch(self, items: list[ScoreItem]) -> list[list[float | None]]:
        out: list[list[float | None]] = [[None] * len(it.candidates) for it in items]
        where = [(i, j) for i, it in enumerate(items) for j, c in enumerate(it.candidates) if c]
        texts = [self.client.render(items[i].question, (*items[i].prefix_steps, items[i].candidates[j])) for i, j in where]
        for (i, j), value in zip(where, self.client.positive_at_last_tag(texts) if texts else []):
            out[i][j] = value
        return out


def prm_backends(cfg) -> tuple:
    """The backend configs a scorer config runs on (``ScorerConfig``): a PRM's reward pool, or none."""
    return (cfg.prm_backend,) if cfg.kind == "prm" and cfg.prm_backend is not None else ()


def _prm(cfg, pool_cfg, cost=None, owner: str | None = None) -> StepScorer:
    if cfg.prm_backend is not None:  # the PRM on a reward pool of Ray actors, owned by the run like its other engines
        from functools import partial

        from infra.config import PoolConfig
        from infra.pool import get_pool

        pool = get_pool(cfg.prm_backend, pool_cfg or PoolConfig(), owner)
        return PRMScorer(pool_fn=partial(pool.reward, cost=cost))
    return PRMScorer(cfg.prm_url, cfg.prm_model, timeout_s=cfg.prm_timeout_s)


def build_scorer(cfg, generate=None, search=None, seed: int = 0, pool_cfg=None, cost=None, owner: str | None = None) -> StepScorer:
    """The step scorer named by ``cfg.kind`` (explicit mapping). ``generate`` is the policy,
    needed by scorers that sample (rollout; its calls count wherever ``generate`` counts them);
    ``pool_cfg`` places a PRM's reward pool, whose calls are added to ``cost`` (``infra.cost``);
    ``owner`` (a run directory) owns that pool (``infra.pool.run_pools``), so the run frees it
    with its other engines; None: the process's pools outside any run."""
    return SCORERS[cfg.kind](cfg, generate, search, seed, pool_cfg, cost, owner)
