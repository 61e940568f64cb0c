"""Self-generation: the pruned step search over a shard of problems -> ``chains`` rows.

Pure: ``self_generate(problems, section, engine)`` depends only on its inputs. Every
problem gets two rows (MAX and MIN); a chain that never states an answer keeps its text
with verdict ``no_answer`` and ``error`` saying how it ended, so nothing vanishes.

With ``evolve.frontier`` the shard's problems are first sampled ``frontier_samples`` times
(whole solutions from the policy at the search temperature): only problems whose solve rate
is strictly between 0 and 1 are searched; every problem's rate is a ``frontier`` row, and
routing sends the others to ``off_frontier``.
"""

from __future__ import annotations

import pyarrow as pa

from infra.backends.base import GenRequest
from infra.config import GenerationStage, SearchConfig
from infra.prompts import load_template
from infra.schemas import from_rows, require, stable_id
from tasks.answers import extract_answer, is_equivalent
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


def frontier(problems: pa.Table, section: GenerationStage, engine: Engine, samples: int, search: SearchConfig,
             max_tokens: int) -> pa.Table:
    """One ``frontier`` row per problem: ``samples`` whole solutions at ``search.temperature``
    (``max_tokens`` each: the evaluation's budget), how many reach gold, and whether
    the solve rate is strictly between 0 and 1 (``kept``). Seeds depend on (run seed, problem)."""
    template = load_template(section.prompt_template)
    rows = problems.select(["problem_id", "question", "gold_answer"]).to_pylist()
    requests = [GenRequest(prompt=template.render(question=r["question"]), n=samples, temperature=search.temperature,
                           top_p=search.top_p, max_tokens=max_tokens,
                           seed=int(stable_id(engine.seed, "frontier", r["problem_id"])[:8], 16)) for r in rows]
    results = engine.generate(requests) if requests else []
    out = []
    for r, res in zip(rows, results):
        solved = sum(bool(is_equivalent(extract_answer(c.text), r["gold_answer"])) for c in res.completions)
        n = len(res.completions)
        out.append({"run_id": engine.run_id, "problem_id": r["problem_id"], "samples": n, "solved": solved,
                    "solve_rate": solved / n if n else 0.0, "kept": 0 < solved < n})
    return from_rows(out, "frontier")


def generation_stage(inputs: dict[str, pa.Table], config: ConfigView, engines: Engines) -> dict[str, pa.Table]:
    """The stage function (``tasks.runner``): one ``problems`` shard searched with the policy
    (only its frontier problems with ``evolve.frontier``)."""
    problems, engine = inputs["problems"], engines.search(config.policy)
    if not config.evolve.frontier:
        return {**self_generate(problems, config.generation, engine), "frontier": from_rows([], "frontier")}
    rates = frontier(problems, config.generation, engine, config.evolve.frontier_samples, config.search, config.evaluate.max_tokens)
    kept = set(rates.filter(rates.column("kept")).column("problem_id").to_pylist())
    searched = problems.filter(pa.array([p in kept for p in problems.column("problem_id").to_pylist()], pa.bool_()))
    return {**self_generate(searched, config.generation, engine), "frontier": rates}
