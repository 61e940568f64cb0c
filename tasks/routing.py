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
                                "text": c["text"], "step_scores": c["step_scores"]})
    return {target: from_rows(rows, "worklist") for target, rows in out.items()}


def route(problems: pa.Table, chains: pa.Table, section: GenerationStage, *, run_id: str) -> dict[str, pa.Table]:
    """Route every problem by its generation chains: {"routes", "pairs" (generation pairs),
    "worklist:<stage>" for each stage a route feeds}."""
    routes = route_problems(chains, problems.column("problem_id").to_pylist(), run_id=run_id, mixed_outcome=section.mixed_outcome)
    lists = worklists(problems, chains, routes, run_id=run_id)
    return {"routes": routes, "pairs": generation_pairs(chains, routes, run_id=run_id), **{f"worklist:{t}": w for t, w in lists.items()}}


@task(name=STAGE, task_run_name=STAGE + "-{shard}", cache_policy=NO_CACHE)
def routing_task(run_dir: str, shard: str, config_hash: str) -> str:
    """Route every problem: write the worklists of the self-correction and diversity stages
    (``worklist/routing/part-<stage>-<k>``, ``<stage>.shard_size`` problems each, listed in
    ``_done/routing.manifest.json``), then the generation pairs and ``routes``; the stage
    marker, written last, commits it."""
    ctx = RunContext.open(run_dir)
    store = ctx.store
    fp = ctx.fingerprint(config_hash, [("problems", "seeds"), ("chains", "generation")])
    if not ctx.is_done(STAGE, shard, fp):
        problems = store.read_table("problems", "seeds")
        out = route(problems, store.read_table("chains", "generation"), ctx.cfg.generation, run_id=ctx.run_id)
        manifest = {}
        for target in WORKLIST_TARGETS.values():
            size, rows = getattr(ctx.cfg, target).shard_size, out[f"worklist:{target}"]
            manifest[target] = [f"{k // size:05d}" for k in range(0, rows.num_rows, size)]
            for k, sh in zip(range(0, rows.num_rows, size), manifest[target]):
                store.write("worklist", STAGE, f"{target}-{sh}", rows.slice(k, size), fingerprint=fp,
                            commit=f"{STAGE}.{shard}")
        store.prune("worklist", STAGE, [f"{t}-{sh}" for t, shards in manifest.items() for sh in shards])
        store.write_json(f"_done/{STAGE}.manifest.json", manifest)
        ctx.commit(STAGE, shard, {"pairs": out["pairs"], "routes": out["routes"]}, fp, problems=problems)
    return str(store.part_path("routes", STAGE, shard))
