"""Diversity induction: problems where MAX and MIN were both right.

A smaller policy (its own backend, ``2E`` candidates per step by default) runs the same
pruned search, looking for other valid trajectories and plausible failures. Pairs: the
policy's correct MAX trajectory vs the small model's MIN chain when that chain is wrong.
The small model's correct chains feed the SFT set (after near-duplicate removal).
"""

from __future__ import annotations

import pyarrow as pa

from infra.config import DiversityStage, SearchConfig
from infra.prompts import load_template
from infra.schemas import from_rows, require
from tasks.engine import Engine
from tasks.rows import chain_row, pair_row
from tasks.runner import ConfigView, Engines
from tasks.search import SearchProblem

STAGE = "diversity"


def small_search_config(search: SearchConfig, section: DiversityStage) -> SearchConfig:
    """The small policy's search: the run's, with ``section.candidates`` (default 2E) per step."""
    return search.model_copy(update={"candidates": section.candidates or 2 * search.candidates})


def diversify(worklist: pa.Table, section: DiversityStage, engine: Engine, prompt_template: str) -> dict[str, pa.Table]:
    """{"chains": the small policy's MAX/MIN chains, "pairs": policy MAX vs small wrong MIN}
    for one worklist shard of solved problems. ``engine`` searches with the small policy's
    settings (``small_search_config``); ``prompt_template`` is the generation prompt."""
    require(worklist, "worklist", ["problem_id", "question", "gold_answer", "chain_id", "text", "step_scores"])
    template = load_template(prompt_template)
    rows = worklist.to_pylist()
    prompts = {r["problem_id"]: template.render(question=r["question"]) for r in rows}
    chains = engine.search_chains([SearchProblem(r["problem_id"], r["question"], prompts[r["problem_id"]], r["gold_answer"]) for r in rows],
                                  seed_offset=2)
    by_id = {r["problem_id"]: r for r in rows}
    out = [chain_row(c, by_id[c.problem_id], stage=STAGE, engine=engine, template=template, prompt=prompts[c.problem_id],
                     parent=by_id[c.problem_id]["chain_id"]) for c in chains]
    pairs = []
    for r in out:
        if r["branch"] == "min" and r["verdict"] == "wrong":
            policy = by_id[r["problem_id"]]
            chosen = {"chain_id": policy["chain_id"], "problem_id": r["problem_id"], "text": policy["text"],
                      "step_scores": policy["step_scores"], "prompt": r["prompt"]}
            pairs.append(pair_row(engine.run_id, STAGE, "diversity_induction", chosen, r))
    return {"chains": from_rows(out, "chains"), "pairs": from_rows(pairs, "pairs")}


def diversity_stage(inputs: dict[str, pa.Table], config: ConfigView, engines: Engines) -> dict[str, pa.Table]:
    """The stage function (``tasks.runner``): one worklist shard searched with the small policy."""
    engine = engines.search(config.diversity.small_policy, small_search_config(config.search, config.diversity))
    return diversify(inputs["worklist"], config.diversity, engine, config.generation.prompt_template)
