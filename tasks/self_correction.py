"""Self-correction: problems where MAX and MIN both failed.

For each problem the policy is shown its failed MAX attempt through the review template:
the first wrong step when the scorer located one (first step scored below
``unknown_score``), else the wrong final answer. It continues from the last good step
(the steps before the wrong one) and the same pruned search runs over the correction,
giving a ``max`` and a ``min`` corrected chain (``parent_chain_id`` = the failed chain).
Pairs: the corrected chain that reaches gold vs the one that stays wrong, only when
exactly one is right. Pair prompts are the problem's solve prompt (the completions are
whole solutions), so they train like every other pair.
"""

from __future__ import annotations

import pyarrow as pa

from infra.config import SelfCorrectionStage
from infra.prompts import Template, load_template
from infra.schemas import from_rows, require
from tasks.engine import Engine
from tasks.rows import chain_row, pair_row
from tasks.runner import ConfigView, Engines
from tasks.search import SearchProblem

STAGE = "self_correction"


def correction_start(steps: list[str], scores: list[float], unknown_score: float) -> tuple[str, tuple[str, ...], tuple[float, ...]]:
    """(the step to show as wrong, the steps kept, their scores) for a failed chain."""
    for i, s in enumerate(scores):
        if s < unknown_score:
            return steps[i], tuple(steps[:i]), tuple(scores[:i])
    return (steps[-1] if steps else "(no answer)"), (), ()


def self_correct(worklist: pa.Table, section: SelfCorrectionStage, engine: Engine, solve: Template) -> dict[str, pa.Table]:
    """{"chains": corrected MAX/MIN chains, "pairs": correction pairs} for one worklist shard
    of failed problems; ``solve`` is the generation prompt the pairs are trained with."""
    require(worklist, "worklist", ["problem_id", "question", "gold_answer", "chain_id", "steps", "step_scores"])
    review = load_template(section.prompt_template)
    rows = worklist.to_pylist()
    problems = []
    for r in rows:
        wrong, keep, kept_scores = correction_start(r["steps"], r["step_scores"], engine.unknown_score)
        problems.append(SearchProblem(r["problem_id"], r["question"], review.render(question=r["question"], wrong_step=wrong),
                                      r["gold_answer"], keep, kept_scores))
    chains = engine.search_chains(problems, seed_offset=1)
    by_id = {r["problem_id"]: r for r in rows}
    prompts = {p.problem_id: p.prompt for p in problems}
    out = [chain_row(c, by_id[c.problem_id], stage=STAGE, engine=engine, template=review, prompt=prompts[c.problem_id],
                     parent=by_id[c.problem_id]["chain_id"]) for c in chains]
    table = from_rows(out, "chains")
    return {"chains": table, "pairs": correction_pairs(table, solve, {r["problem_id"]: r["question"] for r in rows}, run_id=engine.run_id)}


def correction_pairs(chains: pa.Table, solve: Template, questions: dict[str, str], *, run_id: str) -> pa.Table:
    """Corrected chain that reaches gold vs the one that stays wrong, only when exactly one is right."""
    require(chains, "chains", ["problem_id", "branch", "correct", "text", "chain_id", "step_scores"])
    by: dict[str, dict[str, dict]] = {}
    for r in chains.to_pylist():
        by.setdefault(r["problem_id"], {})[r["branch"]] = r
    rows = []
    for pid, b in by.items():
        mx, mn = b.get("max"), b.get("min")
        if not mx or not mn or mx["correct"] == mn["correct"]:
            continue
        chosen, rejected = (mx, mn) if mx["correct"] else (mn, mx)
        rows.append(pair_row(run_id, STAGE, "self_correction", chosen, rejected, prompt=solve.render(question=questions[pid])))
    return from_rows(rows, "pairs")


def self_correction_stage(inputs: dict[str, pa.Table], config: ConfigView, engines: Engines) -> dict[str, pa.Table]:
    """The stage function (``tasks.runner``): one worklist shard corrected with the self-correction policy."""
    engine = engines.search(config.self_correction.policy or config.policy)
    return self_correct(inputs["worklist"], config.self_correction, engine, load_template(config.generation.prompt_template))
