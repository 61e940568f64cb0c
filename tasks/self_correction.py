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

from infra.config import RunConfig
from infra.prompts import Template
from infra.schemas import from_rows, require
from tasks.generation import chain_row
from tasks.routing import pair_row
from tasks.scorers import StepScorer
from tasks.search import Generate, SearchProblem, pruned_search

STAGE = "self_correction"
WORKLIST_COLUMNS = ["problem_id", "question", "gold_answer", "chain_id", "steps", "step_scores"]


def correction_start(steps: list[str], scores: list[float], unknown_score: float) -> tuple[str, tuple[str, ...], tuple[float, ...]]:
    """(the step to show as wrong, the steps kept, their scores) for a failed chain."""
    for i, s in enumerate(scores):
        if s < unknown_score:
            return steps[i], tuple(steps[:i]), tuple(scores[:i])
    return (steps[-1] if steps else "(no answer)"), (), ()


def self_correct(
    worklist: pa.Table, generate: Generate, scorer: StepScorer, cfg: RunConfig, *, run_id: str, model: str,
    review: Template, solve: Template, config_hash: str,
) -> tuple[pa.Table, pa.Table]:
    """(chains, pairs) for one shard of failed problems."""
    for col in WORKLIST_COLUMNS:
        if col not in worklist.column_names:
            raise ValueError(f"self-correction worklist lacks column {col!r}")
    rows = worklist.to_pylist()
    problems = []
    for r in rows:
        wrong, keep, kept_scores = correction_start(r["steps"], r["step_scores"], cfg.scorer.unknown_score)
        problems.append(SearchProblem(r["problem_id"], r["question"], review.render(question=r["question"], wrong_step=wrong),
                                      r["gold_answer"], keep, kept_scores))
    chains = pruned_search(problems, generate, scorer, cfg.search, seed=cfg.seed + 1, unknown_score=cfg.scorer.unknown_score)
    by_id = {r["problem_id"]: r for r in rows}
    out = []
    for c, p in zip(chains, [p for p in problems for _ in range(2)]):
        out.append(chain_row(c, by_id[c.problem_id], run_id=run_id, stage=STAGE, model=model, cfg=cfg, template=review,
                             prompt=p.prompt, config_hash=config_hash, scorer=scorer.name, parent=by_id[c.problem_id]["chain_id"]))
    table = from_rows(out, "chains")
    return table, correction_pairs(table, solve, {r["problem_id"]: r["question"] for r in rows}, run_id=run_id)


def correction_pairs(chains: pa.Table, solve: Template, questions: dict[str, str], *, run_id: str) -> pa.Table:
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


# ---------------------------------------------------------------- Prefect wrapper

from prefect import task  # noqa: E402

from infra.prompts import load_template  # noqa: E402
from tasks.common import RunContext, model_shard, worklist_cache_key  # noqa: E402
from tasks.generation import is_transient  # noqa: E402
from tasks.scorers import build_scorer  # noqa: E402

SECTIONS = ("seed", "policy", "search", "scorer", "self_correction", "generation")


@task(name="self-correct-shard", task_run_name="self-correct-{shard}", cache_key_fn=worklist_cache_key(STAGE, SECTIONS),
      persist_result=True, retries=2, retry_delay_seconds=2, retry_condition_fn=is_transient)
def self_correct_shard(run_dir: str, shard: str) -> str:
    """Self-correction over one worklist shard -> validated ``chains`` and ``pairs`` shards."""
    ctx = RunContext.open(run_dir)
    cfg = ctx.cfg

    def compute(worklist, pool):
        return self_correct(
            worklist, pool.generate, build_scorer(cfg.scorer, pool.generate, cfg.search, cfg.seed, cfg.pool), cfg,
            run_id=ctx.run_id, model=pool.model_name, review=load_template(cfg.self_correction.prompt_template),
            solve=load_template(cfg.generation.prompt_template), config_hash=cfg.stage_hash(*SECTIONS),
        )

    return model_shard(ctx, STAGE, shard, cfg.self_correction.policy or cfg.policy, compute)
