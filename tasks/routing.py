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


def pair_row(run_id: str, stage: str, route: str, chosen: dict, rejected: dict, prompt: str | None = None) -> dict:
    """A DPO pair with lineage; scores are mean step scores of each chain."""
    cs, rs = _mean(chosen["step_scores"]), _mean(rejected["step_scores"])
    return {
        "run_id": run_id,
        "pair_id": stable_id("pair", chosen["chain_id"], rejected["chain_id"]),
        "problem_id": chosen["problem_id"],
        "stage": stage,
        "route": route,
        "prompt": chosen["prompt"] if prompt is None else prompt,
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

from tasks.common import WORKLIST_STAGE, RunContext, persist_pairs  # noqa: E402

STAGE = WORKLIST_STAGE


def worklists(problems: pa.Table, chains: pa.Table, routes: pa.Table) -> dict[str, list[dict]]:
    """Inputs of the self-correction and diversity stages: each problem with its MAX chain."""
    q = {r["problem_id"]: r for r in problems.select(["problem_id", "question", "gold_answer"]).to_pylist()}
    mx = {r["problem_id"]: r for r in chains.to_pylist() if r["branch"] == "max"}
    out: dict[str, list[dict]] = {"self_correction": [], "diversity": []}
    for r in routes.to_pylist():
        target = {"self_correction": "self_correction", "diversity_induction": "diversity"}.get(r["route"])
        if target:
            c = mx[r["problem_id"]]
            out[target].append({**q[r["problem_id"]], "chain_id": c["chain_id"], "steps": c["steps"], "text": c["text"],
                                "step_scores": c["step_scores"]})
    return out


@task(name="route-and-pair", persist_result=False)
def route_and_pair_task(run_dir: str) -> dict:
    """Route every problem by its generation chains; write generation pairs and the
    worklists of the self-correction and diversity stages. Returns the route counts.

    The ``routes`` shard is written last and commits the stage.
    """
    ctx = RunContext.open(run_dir)
    store = ctx.store
    if not store.is_done("routes", STAGE, "00000"):
        chains = store.read_table("chains", "generation")
        problems = store.read_table("problems", "seeds")
        routes = route_problems(chains, problems.column("problem_id").to_pylist(), run_id=ctx.run_id,
                                mixed_outcome=ctx.cfg.generation.mixed_outcome)
        persist_pairs(ctx, STAGE, "00000", generation_pairs(chains, routes, run_id=ctx.run_id), problems)
        manifest = {}
        for target, rows in worklists(problems, chains, routes).items():
            size = getattr(ctx.cfg, target).shard_size
            manifest[target] = []
            for k in range(0, len(rows), size):
                shard = f"{k // size:05d}"
                store.write("worklist", STAGE, f"{target}-{shard}", pa.Table.from_pylist(rows[k : k + size]))
                manifest[target].append(shard)
        store.write_json(f"_done/{STAGE}.manifest.json", manifest)
        store.write("routes", STAGE, "00000", routes)
    routes = store.read_part("routes", STAGE, "00000").column("route").to_pylist()
    return {r: routes.count(r) for r in ROUTES if routes.count(r)}
