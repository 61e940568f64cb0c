"""Self-generation: the pruned step search over a shard of problems -> ``chains`` rows.

Pure: ``self_generate(problems, generate, scorer, cfg, ...)`` depends only on its inputs.
Every chain becomes a row; a chain that never states an answer keeps its text with
verdict ``no_answer``; a problem whose search raised keeps two rows with ``error`` set,
so nothing vanishes.
"""

from __future__ import annotations

import pyarrow as pa

from infra.config import RunConfig, SearchConfig
from infra.prompts import Template
from infra.schemas import from_rows, require, stable_id
from tasks.answers import extract_answer, is_equivalent
from tasks.scorers import StepScorer
from tasks.search import Chain, Generate, SearchProblem, pruned_search

STAGE = "generation"


def chain_row(
    c: Chain, problem: dict, *, run_id: str, stage: str, model: str, cfg: RunConfig, template: Template, prompt: str,
    config_hash: str, scorer: str, parent: str | None = None, error: str | None = None, search: SearchConfig | None = None,
) -> dict:
    """One ``chains`` row; ``prompt`` is the rendered prompt the chain was grown from."""
    text = cfg.search.step_separator.join(c.steps)
    answer = extract_answer(c.steps[-1]) if c.steps else None
    correct = is_equivalent(answer, problem["gold_answer"]) if answer is not None else False
    verdict = "error" if error else ("no_answer" if answer is None else ("correct" if correct else "wrong"))
    if answer is None and not error:
        error = f"no final answer stated (chain ended by {c.finish or 'error'} after {len(c.steps)} steps)"
    return {
        "run_id": run_id,
        "chain_id": stable_id("chain", problem["problem_id"], stage, c.branch, template.sha, config_hash, cfg.seed),
        "problem_id": problem["problem_id"],
        "stage": stage,
        "branch": c.branch,
        "model": model,
        "scorer": scorer,
        "reward_mode": cfg.search.reward_mode,
        "template_hash": template.sha,
        "config_hash": config_hash,
        "temperature": cfg.search.temperature,
        "top_p": cfg.search.top_p,
        "candidates": (search or cfg.search).candidates,
        "seed": cfg.seed,
        "prompt": prompt,
        "steps": c.steps,
        "step_scores": [cfg.scorer.unknown_score if s is None else s for s in c.scores],
        "step_rewards": c.rewards,
        "n_steps": len(c.steps),
        "text": text,
        "final_answer": answer,
        "gold_answer": problem["gold_answer"],
        "correct": bool(correct) and not error,
        "verdict": verdict,
        "finish": c.finish or "error",
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "sampled_tokens": c.sampled_tokens,
        "parent_chain_id": parent,
        "error": error,
    }


def self_generate(
    problems: pa.Table, generate: Generate, scorer: StepScorer, cfg: RunConfig, *, run_id: str,
    model: str, template: Template, config_hash: str,
) -> pa.Table:
    """MAX and MIN chains for every problem of the shard (2 rows per problem)."""
    require(problems, "problems", ["problem_id", "question", "gold_answer"])
    rows = problems.to_pylist()
    sp = [SearchProblem(r["problem_id"], r["question"], template.render(question=r["question"]), r["gold_answer"]) for r in rows]
    chains = pruned_search(sp, generate, scorer, cfg.search, seed=cfg.seed, unknown_score=cfg.scorer.unknown_score)
    by_id = {r["problem_id"]: r for r in rows}
    out = [
        chain_row(c, by_id[c.problem_id], run_id=run_id, stage=STAGE, model=model, cfg=cfg, template=template,
                  prompt=template.render(question=by_id[c.problem_id]["question"]), config_hash=config_hash, scorer=scorer.name)
        for c in chains
    ]
    return from_rows(out, "chains")


# ---------------------------------------------------------------- Prefect wrapper

from prefect import task  # noqa: E402

from infra.backends.base import BackendError  # noqa: E402
from infra.prompts import load_template  # noqa: E402
from tasks.common import RunContext, persist, shard_cache_key  # noqa: E402
from tasks.scorers import build_scorer  # noqa: E402

STAGE_SECTIONS = ("seed", "policy", "search", "scorer", "generation")


def is_transient(task, task_run, state) -> bool:
    """Retry only infrastructure failures (the backend), never bad data or bugs."""
    try:
        state.result()
    except BackendError:
        return True
    except Exception:
        return False
    return False


def _cache_key(context, params) -> str:
    ctx = RunContext.open(params["run_dir"])
    inputs = [ctx.store.part_path("problems", "seeds", params["shard"])]
    return shard_cache_key(inputs, ctx.cfg.stage_hash(*STAGE_SECTIONS), params["run_dir"], params["shard"])


@task(
    name="generate-shard",
    task_run_name="generate-{shard}",
    cache_key_fn=_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=is_transient,
)
def generate_shard(run_dir: str, shard: str) -> str:
    """Self-generation over one problems shard -> a validated ``chains`` shard (path)."""
    from infra.pool import get_pool

    ctx = RunContext.open(run_dir)
    if ctx.store.is_done("chains", STAGE, shard):
        return str(ctx.store.part_path("chains", STAGE, shard))
    problems = ctx.store.read_part("problems", "seeds", shard)
    pool = get_pool(ctx.cfg.policy, ctx.cfg.pool)
    chains = self_generate(
        problems, pool.generate, build_scorer(ctx.cfg.scorer, pool.generate, ctx.cfg.search, ctx.cfg.seed, ctx.cfg.pool), ctx.cfg,
        run_id=ctx.run_id, model=pool.model_name,
        template=load_template(ctx.cfg.generation.prompt_template), config_hash=ctx.cfg.stage_hash(*STAGE_SECTIONS),
    )
    return str(persist(ctx, "chains", STAGE, shard, chains))

