"""Self-generation: the pruned step search over a shard of problems -> ``chains`` rows.

Pure: ``self_generate(problems, section, engine)`` depends only on its inputs. Every
problem gets two rows (MAX and MIN); a chain that never states an answer keeps its text
with verdict ``no_answer`` and ``error`` saying how it ended, so nothing vanishes.
"""

from __future__ import annotations

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.config import GenerationStage
from infra.cost import Cost
from infra.prompts import load_template
from infra.schemas import from_rows, require
from tasks.common import RunContext, is_transient
from tasks.engine import Engine
from tasks.rows import chain_row
from tasks.search import SearchProblem

STAGE = "generation"


def self_generate(problems: pa.Table, section: GenerationStage, engine: Engine) -> dict[str, pa.Table]:
    """{"chains": MAX and MIN chains for every problem of the shard (2 rows per problem)}."""
    require(problems, "problems", ["problem_id", "question", "gold_answer"])
    template = load_template(section.prompt_template)
    rows = problems.to_pylist()
    prompts = {r["problem_id"]: template.render(question=r["question"]) for r in rows}
    chains = engine.search_chains([SearchProblem(r["problem_id"], r["question"], prompts[r["problem_id"]], r["gold_answer"]) for r in rows])
    by_id = {r["problem_id"]: r for r in rows}
    out = [chain_row(c, by_id[c.problem_id], stage=STAGE, engine=engine, template=template, prompt=prompts[c.problem_id]) for c in chains]
    return {"chains": from_rows(out, "chains")}


@task(name=STAGE, task_run_name=STAGE + "-{shard}", cache_policy=NO_CACHE, retry_delay_seconds=2, retry_condition_fn=is_transient)
def generation_task(run_dir: str, shard: str, config_hash: str) -> str:
    """Self-generation over one ``problems`` shard -> a validated ``chains`` shard (its path)."""
    ctx = RunContext.open(run_dir)
    fp = ctx.fingerprint(__name__, config_hash, [("problems", "seeds", shard)])
    if not ctx.is_done(STAGE, shard, fp):
        problems = ctx.store.read_part("problems", "seeds", shard)
        cost = Cost()
        ctx.commit(STAGE, shard, self_generate(problems, ctx.cfg.generation, ctx.engine(ctx.cfg.policy, config_hash, cost=cost)), fp,
                   cost=cost)
    return str(ctx.store.part_path("chains", STAGE, shard))
