"""Prefect flows: wiring only. One parent flow, one subflow per stage.

Every flow takes a run directory (a string), so any stage can run alone against a run
that exists: ``generation_stage(run_dir, shards)``. Shard tasks are cached on (input
content, stage config, code version, output location) with persisted results, and a
shard whose completion marker is missing always recomputes (``refresh_cache``), so a
``prefect flow-run retry`` or ``sphere run --resume`` redoes only what did not finish.
"""

from __future__ import annotations

from infra.env import apply_offline_env

apply_offline_env()

import secrets  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from prefect import flow  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from infra import catalog, progress  # noqa: E402
from infra.config import RunConfig, load_config  # noqa: E402
from infra.pool import close_pools, ensure_ray  # noqa: E402
from infra.storage import RunStore  # noqa: E402
from tasks.generation import STAGE as GENERATION, generate_shard  # noqa: E402
from tasks.routing import route_and_pair_task  # noqa: E402
from tasks.seeds import seeds_task  # noqa: E402

TABLES = ("problems", "chains", "pairs", "routes", "quarantine", "validation")


class StageFailed(RuntimeError):
    """Some shards of a stage failed; the finished ones are kept."""


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def prepare_run(
    config_path: str | None, run_id: str | None = None, data_root: str | None = None, overrides: dict | None = None
) -> str:
    """Create a run directory with its validated config, or find an existing one (resume)."""
    cfg = load_config(config_path, overrides) if config_path else RunConfig.model_validate(_nest(overrides or {}))
    root = Path(data_root or cfg.data_root).resolve()
    if run_id and (root / "runs" / run_id / "config.json").is_file():
        return str(root / "runs" / run_id)
    store = RunStore(root, run_id or new_run_id(cfg.name))
    store.save_config(cfg.model_dump(mode="json"))
    return str(store.run_dir)


def _nest(overrides: dict) -> dict:
    out: dict = {}
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


@flow(name="seeds", flow_run_name="seeds")
def seeds_stage(run_dir: str) -> list[str]:
    return seeds_task(run_dir)


@flow(name="generation", flow_run_name="generation")
def generation_stage(run_dir: str, shards: list[str]) -> list[str]:
    store = RunStore(Path(run_dir).parent.parent, Path(run_dir).name)
    futures = [
        generate_shard.with_options(refresh_cache=not store.is_done("chains", GENERATION, s)).submit(run_dir, s) for s in shards
    ]
    done, failed = [], []
    for fut in as_completed(futures):
        try:
            done.append(fut.result())
        except Exception as e:  # a failed shard fails the stage after the others finish
            failed.append(f"{type(e).__name__}: {e}")
        progress.report(GENERATION, len(done) + len(failed), len(shards))
    if failed:
        raise StageFailed(f"{len(failed)} of {len(shards)} generation shards failed (finished ones kept):\n" + "\n".join(failed))
    return sorted(done)


@flow(name="pairs", flow_run_name="pairs")
def pairing_stage(run_dir: str) -> dict:
    return route_and_pair_task(run_dir)


def summarize(run_dir: str) -> dict:
    store = RunStore(Path(run_dir).parent.parent, Path(run_dir).name)
    counts = {t: store.read_table(t).num_rows for t in TABLES}
    routes = store.read_table("routes").column("route").to_pylist()
    return {
        "run_id": store.run_id,
        "run_dir": run_dir,
        "counts": counts,
        "routes": {r: routes.count(r) for r in sorted(set(routes))},
    }


def _publish(summary: dict) -> None:
    rows = [{"table": t, "rows": n} for t, n in summary["counts"].items()]
    create_table_artifact(key="sphere-row-counts", table=rows, description=f"Row counts of run {summary['run_id']}")
    store = RunStore(Path(summary["run_dir"]).parent.parent, Path(summary["run_dir"]).name)
    val = store.read_table("validation").to_pylist()
    failed = [v for v in val if not v["success"]]
    md = [
        f"# Run `{summary['run_id']}`",
        f"Data: `{summary['run_dir']}`",
        "",
        "| route | problems |",
        "|---|---|",
        *[f"| {r} | {n} |" for r, n in summary["routes"].items()],
        "",
        f"Validation: {len(val)} expectation runs, {len(failed)} with failures.",
        *[f"- {v['table']}/{v['stage']}/{v['shard']}: {v['expectation']}({v['column']}) {v['unexpected_count']} rows" for v in failed[:50]],
    ]
    create_markdown_artifact(key="sphere-run-summary", markdown="\n".join(md), description="SPHERE run summary")


def _run_name() -> str:
    from prefect.runtime import flow_run

    return flow_run.parameters.get("run_id") or "new-run"


@flow(name="sphere-run", flow_run_name=_run_name)
def sphere_run(config_path: str | None = None, run_id: str | None = None, data_root: str | None = None, overrides: dict | None = None) -> dict:
    """The whole pipeline. With ``run_id`` of an existing run, resumes it (finished shards are kept)."""
    run_dir = prepare_run(config_path, run_id, data_root, overrides)
    try:
        return _run_stages(run_dir)
    finally:
        close_pools()  # free the actors' CPUs/GPUs for whatever runs next in this process


def _run_stages(run_dir: str) -> dict:
    shards = seeds_stage(run_dir)
    progress.report("seeds", 1, 1)
    cfg = RunConfig.model_validate(RunStore(Path(run_dir).parent.parent, Path(run_dir).name).load_config())
    ensure_ray(cfg.pool)  # from the main thread, before shard tasks build the pool in theirs
    generation_stage.with_options(task_runner=ThreadPoolTaskRunner(max_workers=cfg.generation.concurrency))(run_dir, shards)
    pairing_stage(run_dir)
    progress.report("pairs", 1, 1)
    catalog.refresh(Path(run_dir).parent.parent)
    summary = summarize(run_dir)
    _publish(summary)
    return summary
