"""The pruned step search of SPHERE self-generation, as a pure function over a generator.

For every problem, two chains (MAX and MIN) grow one step per depth. At each depth the
policy samples E candidate next steps per distinct prefix (a step ends at the separator),
the scorer rates them, MAX keeps the best and MIN the worst *plausible* candidate
(plausible = non-empty, not a repeat of an earlier step or of another candidate, and
judgeable by the scorer). A chain stops at a final answer, when the model ends its
output, or at D_max.

Batching: all prefixes alive at one depth, across all problems, go to ``generate`` in one
call, so a shard of 50 problems is one batch per depth. Seeds: a request's seed is a hash
of (run seed, problem id, prefix), so the same prefix always gets the same candidates and
results do not depend on sharding or batching. MAX and MIN share their first request.
Every chain keeps, per step, the candidates scored at the node it was picked from and their
scores (``Chain.candidates``): the trace ``tasks.step_pairs`` pairs right and wrong steps from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from infra.backends.base import GenRequest, GenResult
from infra.config import SearchConfig
from infra.schemas import stable_id
from tasks.answers import extract_answer
from tasks.scorers import ScoreItem, StepScorer

Generate = Callable[[list[GenRequest]], list[GenResult]]


@dataclass(frozen=True)
class SearchProblem:
    problem_id: str
    question: str
    prompt: str
    gold: str = ""
    start_steps: tuple[str, ...] = ()
    start_scores: tuple[float, ...] = ()  # scores of start_steps (kept from an earlier chain)


@dataclass
class Chain:
    problem_id: str
    branch: str
    steps: list[str]
    scores: list[float | None] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    finish: str = ""  # "answer" | "eos" | "max_depth" | "no_candidates" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sampled_tokens: int = 0
    error: str | None = None  # why the search of this problem failed (finish == "error")
    # per step: the candidates the search scored at the node it was picked from, and their
    # scores (None: not judgeable); [] for start steps kept from an earlier chain
    candidates: list[list[str]] = field(default_factory=list)
    candidate_scores: list[list[float | None]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return bool(self.finish)


def _seed(seed: int, problem_id: str, steps: list[str]) -> int:
    return int(stable_id(seed, problem_id, *steps)[:8], 16)


def prefix_text(steps: list[str], sep: str) -> str:
    """The text a chain's next step is sampled after: its steps, each ended by the separator."""
    return sep.join(steps) + sep if steps else ""


def _choose(
    texts: list[str], rewards: list[float], plausible: list[bool], avoid: str | None, strict: bool
) -> tuple[int | None, int | None]:
    """Indices of the MAX and MIN candidates (None when no candidate is usable)."""
    usable = [i for i, t in enumerate(texts) if t]
    if not usable:
        return None, None
    best = max(usable, key=lambda i: (rewards[i], -i))
    pool = [i for i in usable if plausible[i]] if strict else usable
    pool = pool or usable
    distinct = [i for i in pool if texts[i] != avoid] or pool
    worst = min(distinct, key=lambda i: (rewards[i], -i))
    return best, worst


def pruned_search(
    problems: list[SearchProblem],
    generate: Generate,
    scorer: StepScorer,
    cfg: SearchConfig,
    *,
    seed: int,
    unknown_score: float,
    branches: tuple[str, ...] = ("max", "min"),
) -> list[Chain]:
    """Grow one chain per (problem, branch); returns them in input order, branch-major."""
    for p in problems:
        if len(p.start_scores) != len(p.start_steps):
            raise ValueError(f"{p.problem_id}: {len(p.start_steps)} start steps but {len(p.start_scores)} start scores")
    chains = [Chain(p.problem_id, b, list(p.start_steps), list(p.start_scores), list(p.start_scores),
                    candidates=[[] for _ in p.start_steps], candidate_scores=[[] for _ in p.start_steps])
              for p in problems for b in branches]
    by_id = {p.problem_id: p for p in problems}
    sep = cfg.step_separator
    for depth in range(cfg.max_depth):
        alive = [c for c in chains if not c.done]
        if not alive:
            break
        keys: dict[tuple, int] = {}
        requests: list[GenRequest] = []
        for c in alive:
            key = (c.problem_id, tuple(c.steps))
            if key not in keys:
                keys[key] = len(requests)
                p = by_id[c.problem_id]
                requests.append(
                    GenRequest(
                        prompt=p.prompt,
                        prefix=prefix_text(c.steps, sep),
                        n=cfg.candidates,
                        temperature=cfg.temperature,
                        top_p=cfg.top_p,
                        max_tokens=cfg.max_step_tokens,
                        stop=(sep,),
                        seed=_seed(seed, c.problem_id, c.steps),
                        logprobs=scorer.needs_logprobs,
                    )
                )
        results = generate(requests)
        if len(results) != len(requests):
            raise RuntimeError(f"backend returned {len(results)} results for {len(requests)} requests")
        items, order = [], []
        for key, k in keys.items():
            p = by_id[key[0]]
            comps = results[k].completions
            items.append(ScoreItem(
                p.question, p.gold, p.prompt, key[1], tuple(c.text.strip() for c in comps),
                tuple(None if c.logprob is None else c.logprob / max(c.completion_tokens, 1) for c in comps),
            ))
            order.append(k)
        scored = {k: (list(it.candidates), s) for k, it, s in zip(order, items, scorer.score_batch(items))}
        picks: dict[int, str] = {}
        for c in sorted(alive, key=lambda c: c.branch != "max"):
            k = keys[(c.problem_id, tuple(c.steps))]
            res, (texts, scores) = results[k], scored[k]
            values = [unknown_score if s is None else s for s in scores]
            prev = (unknown_score if c.scores[-1] is None else c.scores[-1]) if c.scores else 0.0
            rewards = [v - prev for v in values] if cfg.reward_mode == "delta" else values
            seen: set[str] = set(c.steps)
            plausible = []
            for t, s in zip(texts, scores):
                plausible.append(bool(t) and t not in seen and s is not None)
                seen.add(t)
            best, worst = _choose(texts, rewards, plausible, picks.get(k), cfg.drop_unparseable_for_min)
            pick = best if c.branch == "max" else worst
            c.prompt_tokens = max(c.prompt_tokens, res.prompt_tokens)
            c.sampled_tokens += sum(x.completion_tokens for x in res.completions)
            if pick is None:
                c.finish = "no_candidates"
                continue
            picks.setdefault(k, texts[pick])
            chosen = res.completions[pick]
            c.steps.append(texts[pick])
            c.scores.append(scores[pick])
            c.rewards.append(rewards[pick])
            c.candidates.append(list(texts))
            c.candidate_scores.append(list(scores))
            c.completion_tokens += chosen.completion_tokens
            if extract_answer(texts[pick]) is not None:
                c.finish = "answer"
            elif chosen.finish_reason == "eos":
                c.finish = "eos"
    for c in chains:
        if not c.done:
            c.finish = "max_depth"
    return chains
