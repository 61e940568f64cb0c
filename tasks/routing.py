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

from infra.schemas import from_rows, require, stable_id

ROUTES = ("generation_pair", "self_correction", "diversity_induction", "mixed_drop", "mixed_swap", "incomplete")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


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


def pair_row(run_id: str, stage: str, route: str, chosen: dict, rejected: dict) -> dict:
    cs, rs = _mean(chosen["step_scores"]), _mean(rejected["step_scores"])
    return {
        "run_id": run_id,
        "pair_id": stable_id("pair", chosen["chain_id"], rejected["chain_id"]),
        "problem_id": chosen["problem_id"],
        "stage": stage,
        "route": route,
        "prompt": chosen["prompt"],
        "chosen": chosen["text"],
        "rejected": rejected["text"],
        "chosen_chain_id": chosen["chain_id"],
        "rejected_chain_id": rejected["chain_id"],
        "chosen_score": cs,
        "rejected_score": rs,
        "margin": cs - rs,
    }


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


# ---------------------------------------------------------------- Prefect wrapper

from prefect import task  # noqa: E402

from infra.storage import RunStore  # noqa: E402
from tasks.common import RunContext, persist  # noqa: E402

STAGE = "pairs"


@task(name="route-and-pair", persist_result=False)
def route_and_pair_task(run_dir: str) -> dict:
    """Route every problem by its generation chains and write generation pairs.

    Reads all finished ``chains/generation`` shards; writes ``routes`` and validated
    ``pairs`` (stage ``generation``). Returns the route counts.
    """
    ctx = RunContext.open(run_dir)
    store: RunStore = ctx.store
    if not store.is_done("routes", STAGE, "00000"):
        chains = store.read_table("chains", "generation")
        pids = store.read_table("problems", "seeds").column("problem_id").to_pylist()
        routes = route_problems(chains, pids, run_id=ctx.run_id, mixed_outcome=ctx.cfg.generation.mixed_outcome)
        persist(ctx, "pairs", "generation", "00000", generation_pairs(chains, routes, run_id=ctx.run_id))
        store.write("routes", STAGE, "00000", routes)
    routes = store.read_part("routes", STAGE, "00000").column("route").to_pylist()
    return {r: routes.count(r) for r in ROUTES if routes.count(r)}
