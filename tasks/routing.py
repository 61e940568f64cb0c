"""Route each problem by its (MAX correct, MIN correct) outcome, and wire generation pairs.

Routes (SPHERE, DESIGN.md):
    MAX right, MIN wrong  -> ``generation_pair``   (chosen = MAX, rejected = MIN)
    both wrong            -> ``self_correction``
    both right            -> ``diversity_induction``
    MAX wrong, MIN right  -> ``mixed_drop`` or ``mixed_swap`` (config ``generation.mixed_outcome``)
    a chain missing       -> ``incomplete`` (e.g. quarantined by validation)
    not searched          -> ``off_frontier`` (evolve.frontier: the policy solves it always or never)
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from infra.config import GenerationStage
from infra.schemas import from_rows, require
from tasks.rows import pair_row
from tasks.runner import ConfigView, Engines, WorkShard

STAGE = "routing"
ROUTES = ("generation_pair", "self_correction", "diversity_induction", "mixed_drop", "mixed_swap", "incomplete", "off_frontier")
WORKLIST_TARGETS = {"self_correction": "self_correction", "diversity_induction": "diversity"}  # route -> stage it feeds


def route_problems(chains: pa.Table, problem_ids: list[str], *, run_id: str, mixed_outcome: str,
                   off_frontier: frozenset[str] = frozenset()) -> pa.Table:
    require(chains, "chains", ["problem_id", "branch", "correct", "stage"])
    by = {(r["problem_id"], r["branch"]): r["correct"] for r in chains.select(["problem_id", "branch", "correct"]).to_pylist()}
    rows = []
    for pid in problem_ids:
        mx, mn = by.get((pid, "max")), by.get((pid, "min"))
        if pid in off_frontier:
            route = "off_frontier"
        elif mx is None or mn is None:
            route = "incomplete"
        elif mx and not mn:
            route = "generation_pair"
        elif not mx and not mn:
            route = "self_correction"
        elif mx and mn:
            route = "diversity_induction"
        else:
            route = f"mixed_{mixed_outcome}"
        rows.append({"run_id": run_id, "problem_id": pid, "max_correct": mx, "min_correct": mn, "route": route})
    return from_rows(rows, "routes")


def generation_pairs(chains: pa.Table, routes: pa.Table, *, run_id: str) -> pa.Table:
    """Pairs from the generation stage: MAX vs MIN where exactly one is right."""
    by = {(r["problem_id"], r["branch"]): r for r in chains.to_pylist()}
    rows = []
    for r in routes.to_pylist():
        mx, mn = by.get((r["problem_id"], "max")), by.get((r["problem_id"], "min"))
        if r["route"] == "generation_pair":
            rows.append(pair_row(run_id, "generation", r["route"], mx, mn))
        elif r["route"] == "mixed_swap":
            rows.append(pair_row(run_id, "generation", r["route"], mn, mx))
    return from_rows(rows, "pairs")


def worklists(problems: pa.Table, chains: pa.Table, routes: pa.Table, *, run_id: str) -> dict[str, pa.Table]:
    """Inputs of the self-correction and diversity stages: each routed problem with its MAX chain."""
    q = {r["problem_id"]: r for r in problems.select(["problem_id", "question", "gold_answer"]).to_pylist()}
    mx = {r["problem_id"]: r for r in chains.to_pylist() if r["branch"] == "max"}
    out: dict[str, list[dict]] = {target: [] for target in WORKLIST_TARGETS.values()}
    for r in routes.to_pylist():
        target = WORKLIST_TARGETS.get(r["route"])
        if target:
            c = mx[r["problem_id"]]
            out[target].append({"run_id": run_id, **q[r["problem_id"]], "chain_id": c["chain_id"], "steps": c["steps"],
                                "text": c["text"], "step_scores": c["step_scores"], "target": target})
    return {target: from_rows(rows, "worklist") for target, rows in out.items()}


def route(problems: pa.Table, chains: pa.Table, section: GenerationStage, *, run_id: str,
          frontier: pa.Table | None = None) -> dict[str, pa.Table]:
    """Route every problem by its generation chains: {"pairs" (generation pairs), "routes",
    "worklist" (every routed problem, its ``target`` the stage it feeds)}. A problem whose
    ``frontier`` row is not kept is routed ``off_frontier``."""
    off = frozenset() if frontier is None else frozenset(
        frontier.filter(pc.invert(frontier.column("kept"))).column("problem_id").to_pylist())
    routes = route_problems(chains, problems.column("problem_id").to_pylist(), run_id=run_id, mixed_outcome=section.mixed_outcome,
                            off_frontier=off)
    lists = worklists(problems, chains, routes, run_id=run_id)
    return {"pairs": generation_pairs(chains, routes, run_id=run_id), "routes": routes, "worklist": pa.concat_tables(list(lists.values()))}


def routing_stage(inputs: dict[str, pa.Table], config: ConfigView, engines: Engines) -> dict[str, pa.Table]:
    """The stage function (``tasks.runner``): one generation shard's problems routed."""
    return route(inputs["problems"], inputs["chains"], config.generation, run_id=engines.run_id, frontier=inputs["frontier"])


def consumers(outputs: dict[str, pa.Table], shard: str, config: ConfigView) -> dict:
    """What routing's commit records beside its tables: per stage a worklist feeds, the
    consumer shards this shard's worklist makes (``WorkShard.of``: ``<stage>.shard_size`` rows
    each), so they can start as soon as this shard commits (``flows.stages.consumers_of``)."""
    targets = outputs["worklist"].column("target")
    return {"consumers": {t: [str(w) for w in WorkShard.of(shard, pc.sum(pc.equal(targets, t)).as_py() or 0, getattr(config, t).shard_size)]
                          for t in WORKLIST_TARGETS.values()}}
