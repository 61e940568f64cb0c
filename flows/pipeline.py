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

import json  # noqa: E402
import secrets  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from prefect import flow  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from infra import catalog, progress, validation  # noqa: E402
from infra.config import RunConfig, apply_overrides, load_config  # noqa: E402
from infra.pool import close_pools, ensure_ray, prewarm  # noqa: E402
from infra.storage import RunStore  # noqa: E402
from tasks.generation import STAGE as GENERATION, generate_shard  # noqa: E402
from tasks.diversity import diversify_shard  # noqa: E402
from tasks.metrics import metrics_task  # noqa: E402
from tasks.routing import route_and_pair_task  # noqa: E402
from tasks.seeds import seeds_task  # noqa: E402
from tasks.self_correction import self_correct_shard  # noqa: E402
from tasks.sft import sft_task  # noqa: E402

TABLES = ("problems", "chains", "pairs", "sft", "metrics", "routes", "quarantine", "validation")
STAGES = ("seeds", "generation", "routing", "self_correction", "diversity", "sft", "metrics")
DOWNSTREAM = {
    "seeds": STAGES[1:],
    "generation": ("routing", "self_correction", "diversity", "sft", "metrics"),
    "routing": ("self_correction", "diversity", "sft", "metrics"),
    "self_correction": ("sft", "metrics"),
    "diversity": ("sft", "metrics"),
    "sft": ("metrics",),
    "metrics": (),
}


class StageFailed(RuntimeError):
    """Some shards of a stage failed; the finished ones are kept."""


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def prepare_run(
    config_path: str | None, run_id: str | None = None, data_root: str | None = None, overrides: dict | None = None
) -> str:
    """Create a run directory with its validated config, or find an existing one (resume)."""
    cfg = load_config(config_path, overrides) if config_path else RunConfig.model_validate(apply_overrides({}, overrides))
    root = Path(data_root or cfg.data_root).resolve()
    if run_id and (root / "runs" / run_id / "config.json").is_file():
        return str(root / "runs" / run_id)
    run_id = run_id or _flow_run_bound_id(cfg.name) or new_run_id(cfg.name)
    if (root / "runs" / run_id / "config.json").is_file():
        return str(root / "runs" / run_id)
    store = RunStore(root, run_id)
    store.save_config(cfg.model_dump(mode="json"))
    return str(store.run_dir)


def _flow_run_bound_id(name: str) -> str | None:
    """Inside a Prefect flow run (a deployment's scheduled run), a run id derived from the
    flow run's id, so ``prefect flow-run retry`` finds the same run directory and redoes only
    its unfinished shards. None outside a flow run."""
    from prefect.runtime import flow_run

    fid = flow_run.get_id()
    return f"{name}-fr{str(fid).replace('-', '')[:12]}" if fid else None


@flow(name="seeds", flow_run_name="seeds")
def seeds_stage(run_dir: str) -> list[str]:
    return seeds_task(run_dir)


def _fan_out(task, run_dir: str, stage: str, shards: list[str]) -> list[str]:
    """Run the stage's shards, holding a slot of the host's model-stage concurrency limit
    (``pool.host_concurrency_limit``) when one is configured."""
    pool_cfg = RunConfig.model_validate(RunStore.at(run_dir).load_config()).pool
    if not pool_cfg.host_concurrency_limit:
        return _fan_out_shards(task, run_dir, stage, shards)
    import socket

    from prefect.concurrency.sync import concurrency

    with concurrency(pool_cfg.host_concurrency_limit.format(host=socket.gethostname()), occupy=1, strict=False):
        return _fan_out_shards(task, run_dir, stage, shards)


def _fan_out_shards(task, run_dir: str, stage: str, shards: list[str]) -> list[str]:
    """Submit one task per shard, wait for all, fail the stage if any failed (others kept)."""
    store = RunStore.at(run_dir)
    ensure_ray(RunConfig.model_validate(store.load_config()).pool)  # on this (the flow's) thread, not a task's
    futures = [task.with_options(refresh_cache=not store.is_done("chains", stage, s)).submit(run_dir, s) for s in shards]
    done, failed = [], []
    progress.report(stage, 0, len(shards))
    for fut in as_completed(futures):
        try:
            done.append(fut.result())
        except Exception as e:  # a failed shard fails the stage after the others finish
            failed.append(f"{type(e).__name__}: {e}")
        progress.report(stage, len(done) + len(failed), len(shards))
    close_pools()  # free the actors for the next stage's backend
    if failed:
        raise StageFailed(f"{len(failed)} of {len(shards)} {stage} shards failed (finished ones kept):\n" + "\n".join(failed))
    return sorted(done)


@flow(name="generation", flow_run_name="generation")
def generation_stage(run_dir: str, shards: list[str]) -> list[str]:
    return _fan_out(generate_shard, run_dir, GENERATION, shards)


@flow(name="routing", flow_run_name="routing")
def routing_stage(run_dir: str) -> dict:
    return route_and_pair_task(run_dir)


def _worklist_shards(run_dir: str, stage: str) -> list[str]:
    return json.loads((Path(run_dir) / "_done" / "routing.manifest.json").read_text())[stage]


@flow(name="self-correction", flow_run_name="self-correction")
def self_correction_stage(run_dir: str) -> list[str]:
    return _fan_out(self_correct_shard, run_dir, "self_correction", _worklist_shards(run_dir, "self_correction"))


@flow(name="diversity", flow_run_name="diversity")
def diversity_stage(run_dir: str) -> list[str]:
    return _fan_out(diversify_shard, run_dir, "diversity", _worklist_shards(run_dir, "diversity"))


@flow(name="sft", flow_run_name="sft")
def sft_stage(run_dir: str) -> int:
    return sft_task(run_dir)


@flow(name="metrics", flow_run_name="metrics")
def metrics_stage(run_dir: str) -> int:
    return metrics_task(run_dir)


def summarize(run_dir: str) -> dict:
    store = RunStore.at(run_dir)
    counts = {t: store.read_table(t).num_rows for t in TABLES}
    routes = store.read_table("routes").column("route").to_pylist()
    pairs = store.read_table("pairs").column("stage").to_pylist()
    summary = {
        "run_id": store.run_id,
        "run_dir": run_dir,
        "counts": counts,
        "routes": {r: routes.count(r) for r in sorted(set(routes))},
        "pairs_by_stage": {s: pairs.count(s) for s in sorted(set(pairs))},
    }
    store.write_json("summary.json", summary)
    return summary


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
        "| stage | pairs |",
        "|---|---|",
        *[f"| {st} | {n} |" for st, n in summary["pairs_by_stage"].items()],
        "",
        f"Validation: {len(val)} expectation runs, {len(failed)} with failures.",
        *[f"- {v['table']}/{v['stage']}/{v['shard']}: {v['expectation']}({v['column']}) {v['unexpected_count']} rows" for v in failed[:50]],
    ]
    create_markdown_artifact(key="sphere-run-summary", markdown="\n".join(md), description="SPHERE run summary")


def _publish_report(run_dir: str) -> Path:
    """Write ``<run>/report.html`` and publish the QDC table and the report path as artifacts."""
    from tasks.report import build_report, qdc_rows

    path, runs = build_report([run_dir])
    create_table_artifact(key="sphere-qdc", table=qdc_rows(runs[0]), description=f"QDC metrics of run {runs[0].run_id}")
    create_markdown_artifact(
        key="sphere-report",
        markdown=f"# QDC report of `{runs[0].run_id}`\n\nSelf-contained HTML: `{path}`\n\n"
        f"Open it in a browser, or compare runs: `sphere report {runs[0].run_id} --compare OTHER_RUN`.",
        description="Where the run's QDC report is",
    )
    return path


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
    store = RunStore.at(run_dir)
    cfg = RunConfig.model_validate(store.load_config())
    # Ray must start on the main thread: its daemons die with the thread that spawned them
    # (PR_SET_PDEATHSIG is per thread). GX imports meanwhile; actors are spawned by the
    # raylet, so the policy loads in the background while seeds are read and validated.
    validation.preload()
    ensure_ray(cfg.pool)
    if not store.is_done("routes", "routing", "00000"):
        prewarm(cfg.policy, cfg.pool)
    shards = seeds_stage(run_dir)
    progress.report("seeds", 1, 1)
    runner = ThreadPoolTaskRunner(max_workers=cfg.generation.concurrency)
    generation_stage.with_options(task_runner=runner)(run_dir, shards)
    routing_stage(run_dir)
    if cfg.self_correction.enabled:
        self_correction_stage.with_options(task_runner=runner)(run_dir)
    if cfg.diversity.enabled:
        diversity_stage.with_options(task_runner=runner)(run_dir)
    sft_stage(run_dir)
    if cfg.metrics.enabled:
        metrics_stage(run_dir)
    catalog.refresh(store.data_root)
    summary = summarize(run_dir)
    _publish(summary)
    if cfg.metrics.enabled:
        try:
            summary["report"] = str(_publish_report(run_dir))
        except Exception as e:  # the data and metrics are committed; a plotting failure must not fail the run
            from prefect import get_run_logger

            get_run_logger().warning("QDC report not written: %s: %s (retry with `sphere report %s`)", type(e).__name__, e, store.run_id)
            summary["report_error"] = f"{type(e).__name__}: {e}"
    return summary


def stage_outputs(store: RunStore, stage: str) -> list[Path]:
    """Every file and folder a stage owns: ``<table>/<stage>[-*]``, its markers and manifest."""
    owned = lambda name: name == stage or name.startswith(f"{stage}-")  # noqa: E731
    paths = [d for t in store.run_dir.iterdir() if t.is_dir() and not t.name.startswith("_") for d in t.iterdir() if d.is_dir() and owned(d.name)]
    done = store.run_dir / "_done"
    if done.is_dir():
        paths += [m for m in done.iterdir() if owned(m.name.split(".")[1] if m.name.count(".") >= 2 else "") or m.name == f"{stage}.manifest.json"]
    return paths


def supersede(run_dir: str, stage: str) -> Path:
    """Move the outputs of ``stage`` and everything downstream aside (nothing is deleted)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    store = RunStore.at(run_dir)
    dest = store.run_dir / "_superseded" / f"{time.strftime('%Y%m%d-%H%M%S')}-{stage}"
    for st in (stage, *DOWNSTREAM[stage]):
        for path in stage_outputs(store, st):
            target = dest / path.relative_to(store.run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
    return dest


def record_rerun(run_dir: str, stage: str, overrides: dict | None) -> dict:
    """Apply config overrides to the run's stored config and log the change."""
    store = RunStore.at(run_dir)
    old = store.load_config()
    new = RunConfig.model_validate(apply_overrides(old, overrides)).model_dump(mode="json")
    changes = {k: {"old": _get(old, k), "new": _get(new, k)} for k in (overrides or {})}
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": stage, "changes": changes}
    with open(store.run_dir / "reruns.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    store.save_config(new)
    return entry


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


@flow(name="sphere-rerun", flow_run_name="rerun-{stage}")
def sphere_rerun(run_dir: str, stage: str, overrides: dict | None = None) -> dict:
    """Re-execute ``stage`` and everything downstream from the stored upstream Parquet.

    Upstream stages are not touched (their finished shards are skipped); the stage's old
    outputs are moved to ``_superseded/``; a config change is applied and logged to
    ``reruns.jsonl``.
    """
    record_rerun(run_dir, stage, overrides)
    supersede(run_dir, stage)
    try:
        return _run_stages(run_dir)
    finally:
        close_pools()
