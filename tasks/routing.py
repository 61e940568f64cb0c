"""Route each problem by its (MAX correct, MIN correct) outcome, and wire generation pairs.

Routes (SPHERE, DESIGN.md):
    MAX right, MIN wrong  -> ``generation_pair``   (chosen = MAX, rejected = MIN)
    both wrong            -> ``self_correction``
    both right            -> ``diversity_induction``
    MAX wrong, MIN right  -> ``mixed_drop`` or ``mixed_swap`` (config ``generation.mixed_outcome``)
    a chain missing       -> ``incomplete`` (e.g. quarantined by validation)
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.config import GenerationStage
from infra.schemas import from_rows, require
from tasks.common import RunContext
from tasks.rows import pair_row

STAGE = "routing"
ROUTES = ("generation_pair", "self_correction", "diversity_induction", "mixed_drop", "mixed_swap", "incomplete")
WORKLIST_TARGETS = {"self_correction": "self_correction", "diversity_induction": "diversity"}  # route -> stage it feeds


def route_problems(chains: pa.Table, problem_ids: list[str], *, run_id: str, mixed_outcome: str) -> pa.Table:
    require(chains, "chains", ["problem_id", "branch", "correct", "stage"])
    by = {(r["problem_id"], r["branch"]): r["correct"] for r in chains.select(["problem_id", "branch", "correct"]).to_pylist()}
    rows = []
    for pid in problem_ids:
        mx, mn = by.get((pid, "max")), by.get((pid, "min"))
        if mx is None or mn is None:
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


def route(problems: pa.Table, chains: pa.Table, section: GenerationStage, *, run_id: str) -> dict[str, pa.Table]:
    """Route every problem by its generation chains: {"routes", "pairs" (generation pairs),
    "worklist:<stage>" for each stage a route feeds}."""
    routes = route_problems(chains, problems.column("problem_id").to_pylist(), run_id=run_id, mixed_outcome=section.mixed_outcome)
    lists = worklists(problems, chains, routes, run_id=run_id)
    return {"routes": routes, "pairs": generation_pairs(chains, routes, run_id=run_id), **{f"worklist:{t}": w for t, w in lists.items()}}


def consumer_shards(generation_shard: str, n_rows: int, size: int) -> list[str]:
    """The shards of a worklist consumer fed by one generation shard: ``<shard>-<k>`` for the
    k-th slice of ``size`` rows."""
    return [f"{generation_shard}-{k // size:03d}" for k in range(0, n_rows, size)]


def worklist_slice(worklist: pa.Table, target: str, shard: str, size: int) -> pa.Table:
    """The rows of consumer shard ``<generation shard>-<k>`` of ``target`` in a routing worklist part."""
    k = int(shard.rsplit("-", 1)[1])
    rows = worklist.filter(pc.equal(worklist.column("target"), target))
    return rows.slice(k * size, size)


@task(name=STAGE, task_run_name=STAGE + "-{shard}", cache_policy=NO_CACHE)
def routing_task(run_dir: str, shard: str, config_hash: str) -> str:
    """Route the problems of one generation shard: commit its ``routes``, generation ``pairs``
    and one ``worklist`` part for self-correction and diversity together; the stage marker
    lists the consumer shards (``consumer_shards``) each target gets from it, so they can
    start as soon as this shard commits."""
    ctx = RunContext.open(run_dir)
    store = ctx.store
    fp = ctx.fingerprint(__name__, config_hash, [("problems", "seeds", shard), ("chains", "generation", shard)])
    if not ctx.is_done(STAGE, shard, fp):
        problems = store.read_part("problems", "seeds", shard)
        out = route(problems, store.read_part("chains", "generation", shard), ctx.cfg.generation, run_id=ctx.run_id)
        lists = {t: out[f"worklist:{t}"] for t in WORKLIST_TARGETS.values()}
        consumers = {t: consumer_shards(shard, w.num_rows, getattr(ctx.cfg, t).shard_size) for t, w in lists.items()}
        worklist = pa.concat_tables(list(lists.values()))
        ctx.commit(STAGE, shard, {"pairs": out["pairs"], "routes": out["routes"], "worklist": worklist}, fp,
                   problems=problems, extra={"consumers": consumers})
    return str(store.part_path("routes", STAGE, shard))
