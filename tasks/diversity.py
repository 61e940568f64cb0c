"""Diversity induction: problems where MAX and MIN were both right.

A smaller policy (its own backend, ``2E`` candidates per step by default) runs the same
pruned search, looking for other valid trajectories and plausible failures. Pairs: the
policy's correct MAX trajectory vs the small model's MIN chain when that chain is wrong.
The small model's correct chains feed the SFT set (after near-duplicate removal).
"""

from __future__ import annotations

import pyarrow as pa

from infra.config import RunConfig
from infra.prompts import Template
from infra.schemas import from_rows
from tasks.generation import chain_row
from tasks.routing import pair_row
from tasks.scorers import StepScorer
from tasks.search import Generate, SearchProblem, pruned_search

STAGE = "diversity"
WORKLIST_COLUMNS = ["problem_id", "question", "gold_answer", "chain_id", "text", "step_scores"]


def small_search_config(cfg: RunConfig):
    return cfg.search.model_copy(update={"candidates": cfg.diversity.candidates or 2 * cfg.search.candidates})


def diversify(
    worklist: pa.Table, generate: Generate, scorer: StepScorer, cfg: RunConfig, *, run_id: str, model: str,
    template: Template, config_hash: str,
) -> tuple[pa.Table, pa.Table]:
    """(chains, pairs) for one shard of solved problems."""
    for col in WORKLIST_COLUMNS:
        if col not in worklist.column_names:
            raise ValueError(f"diversity worklist lacks column {col!r}")
    rows = worklist.to_pylist()
    problems = [SearchProblem(r["problem_id"], r["question"], template.render(question=r["question"]), r["gold_answer"]) for r in rows]
    search = small_search_config(cfg)
    chains = pruned_search(problems, generate, scorer, search, seed=cfg.seed + 2, unknown_score=cfg.scorer.unknown_score)
    by_id = {r["problem_id"]: r for r in rows}
    out = [
        chain_row(c, by_id[c.problem_id], run_id=run_id, stage=STAGE, model=model, cfg=cfg, template=template,
                  prompt=template.render(question=by_id[c.problem_id]["question"]), config_hash=config_hash,
                  scorer=scorer.name, parent=by_id[c.problem_id]["chain_id"], search=search)
        for c in chains
    ]
    table = from_rows(out, "chains")
    pairs = []
    for r in out:
        if r["branch"] == "min" and not r["correct"] and r["verdict"] != "no_answer":
            policy = by_id[r["problem_id"]]
            chosen = {"chain_id": policy["chain_id"], "problem_id": r["problem_id"], "text": policy["text"],
                      "step_scores": policy["step_scores"], "prompt": r["prompt"]}
            pairs.append(pair_row(run_id, STAGE, "diversity_induction", chosen, r))
    return table, from_rows(pairs, "pairs")


# ---------------------------------------------------------------- Prefect wrapper

from prefect import task  # noqa: E402

from infra.prompts import load_template  # noqa: E402
from tasks.common import RunContext, model_shard, worklist_cache_key  # noqa: E402
from tasks.generation import is_transient  # noqa: E402
from tasks.scorers import build_scorer  # noqa: E402

SECTIONS = ("seed", "search", "scorer", "diversity", "generation")


@task(name="diversify-shard", task_run_name="diversify-{shard}", cache_key_fn=worklist_cache_key(STAGE, SECTIONS),
      persist_result=True, retries=2, retry_delay_seconds=2, retry_condition_fn=is_transient)
def diversify_shard(run_dir: str, shard: str) -> str:
    """Diversity induction over one worklist shard -> validated ``chains`` and ``pairs`` shards."""
    ctx = RunContext.open(run_dir)
    cfg = ctx.cfg

    def compute(worklist, pool):
        search = small_search_config(cfg)
        return diversify(
            worklist, pool.generate, build_scorer(cfg.scorer, pool.generate, search, cfg.seed, cfg.pool), cfg, run_id=ctx.run_id,
            model=pool.model_name, template=load_template(cfg.generation.prompt_template), config_hash=cfg.stage_hash(*SECTIONS),
        )

    return model_shard(ctx, STAGE, shard, cfg.diversity.small_policy, compute)
