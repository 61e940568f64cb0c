"""Self-generation: the pruned step search over a shard of problems -> ``chains`` rows.

Pure: ``self_generate(problems, section, engine)`` depends only on its inputs. Every
problem gets two rows (MAX and MIN); a chain that never states an answer keeps its text
with verdict ``no_answer`` and ``error`` saying how it ended, so nothing vanishes.
"""

from __future__ import annotations

import pyarrow as pa

from infra.config import GenerationStage
from infra.prompts import load_template
from infra.schemas import from_rows, require
from tasks.engine import Engine
from tasks.rows import chain_row
from tasks.runner import ConfigView, Engines
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


def generation_stage(inputs: dict[str, pa.Table], config: ConfigView, engines: Engines) -> dict[str, pa.Table]:
    """The stage function (``tasks.runner``): one ``problems`` shard searched with the policy."""
    return self_generate(inputs["problems"], config.generation, engines.search(config.policy))
