"""Prefect flows: wiring only. One parent flow, one subflow per stage (``flows.stages``).

Every flow takes a run directory (a string), so any stage can run alone against a run
that exists: ``stage_flow(run_dir, "generation")``. A stage's subflow fans its task out
over its shards; each shard task returns at once when the shard's completion marker holds
the same fingerprint (stage config hash, code version, input content hash), so a
``prefect flow-run retry``, ``sphere run --resume`` or a changed config redoes exactly the
shards whose inputs or settings changed, and nothing else.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import socket
import time
from contextlib import nullcontext
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.concurrency.sync import concurrency
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows import stages as declared
from flows.run_ids import flow_run_bound_id as _flow_run_bound_id, new_run_id
from infra import catalog, integrity, progress, validation
from infra.config import RunConfig, apply_overrides, check_inputs, load_config
from infra.cost import cost_rows, run_cost
from infra.locks import run_lock
from infra.pool import close_pool, close_pools, close_run_pools, ensure_ray, fits, prewarm, run_pools, total_need
from infra.storage import RunStore, StorageError
from tasks.report import build_report, qdc_rows


class StageFailed(RuntimeError):
    """Some shards of a stage failed; the finished ones are kept. ``causes``: the shards' exceptions."""

    causes: tuple[BaseException, ...] = ()


class StageDeadlineExceeded(StageFailed):
    """A stage ran past ``pool.stage_deadline_s``; its finished shards are kept."""


def _deadline_error(run_dir: str, cfg: RunConfig, sts: list[declared.Stage], finished: int, total: int) -> StageDeadlineExceeded:
    """Free the run's engines (their calls in flight fail at once) and name what ran out of time."""
    run_pools(run_dir).release_unneeded([], cfg.pool)
    backends = [b for st in sts if st.backends for b in st.backends(cfg)]
    models = sorted({f"{b.kind}:{getattr(b, 'model', None) or getattr(b, 'checkpoint', None) or ''}" for b in backends})
    return StageDeadlineExceeded(
        f"{'+'.join(st.name for st in sts)} ran past pool.stage_deadline_s={cfg.pool.stage_deadline_s}s on "
        f"{', '.join(models) or 'no backend'}: {finished} of {total} shards finished and are kept; resume to redo the rest")


def locate_run(config_path: str | None, run_id: str | None = None, data_root: str | None = None,
               overrides: dict | None = None) -> tuple[RunConfig, RunStore]:
    """The validated config and the store of the run these arguments name (a new id when
    ``run_id`` is None); nothing is written."""
    cfg = _config(config_path, overrides)
    root = Path(data_root or cfg.data_root).resolve()
    return cfg, RunStore(root, run_id or _flow_run_bound_id(cfg.name) or new_run_id(cfg.name))


def prepare_run(
    config_path: str | None, run_id: str | None = None, data_root: str | None = None, overrides: dict | None = None
) -> str:
    """Create a run directory with its validated config, or open an existing one (resume),
    holding the run's writer lock meanwhile (``WriterLocked`` when another process writes it).

    Resuming moves damaged records aside (``integrity.set_aside``: their shards are recomputed)
    and, with ``overrides``, applies them to the stored config and logs the change to
    ``reruns.jsonl``; the stages whose config changed then recompute (their fingerprints
    differ), the others are skipped. The stage graph is checked before anything is written.
    """
    cfg, store = locate_run(config_path, run_id, data_root, overrides)
    with run_lock(store.run_dir):
        return _prepare(cfg, store, config_path, overrides)


def _prepare(cfg: RunConfig, store: RunStore, config_path: str | None, overrides: dict | None) -> str:
    if store.exists():
        store.remove_stale_temps()  # a killed writer's leftovers; the shards they belonged to are redone
        stored = store.load_config()  # damaged: DamagedFile, naming it, before anything moves
        integrity.set_aside(store)  # damaged records and the commits of missing files: those shards are redone
        if RunConfig.model_validate(apply_overrides(stored, overrides)).model_dump(mode="json") != stored:
            record_config_change(str(store.run_dir), "resume", overrides)
            stored = store.load_config()
        declared.check_stages(RunConfig.model_validate(stored))
        return str(store.run_dir)
    declared.check_stages(cfg)
    check_inputs(cfg, config_path or "config")
    store.save_config(cfg.model_dump(mode="json"))
    return str(store.run_dir)


def _config(config_path: str | None, overrides: dict | None) -> RunConfig:
    """The run's validated config: ``config_path`` with ``overrides``, or the defaults with them."""
    return load_config(config_path, overrides) if config_path else RunConfig.model_validate(apply_overrides({}, overrides))


def _host_slot(cfg: RunConfig, *stages: declared.Stage):
    """A slot of the host's model-stage concurrency limit (``pool.host_concurrency_limit``)
    when one is configured and any of ``stages`` is a model stage; else nothing."""
    limit = cfg.pool.host_concurrency_limit
    if all(st.backends is None for st in stages) or not limit:
        return nullcontext()
    return concurrency(limit.format(host=socket.gethostname()), occupy=1, strict=False)


@flow(name="stage", flow_run_name="{stage}")
def stage_flow(run_dir: str, stage: str) -> list[str]:
    """Run one declared stage over its shards (submitted together, at most
    ``generation.concurrency`` at once); fail the stage if any shard failed, after the
    others finished (they are kept). Returns the shards' output paths."""
    st = declared.get(stage)
    store = RunStore.at(run_dir)
    cfg = RunConfig.model_validate(store.load_config())
    shards = st.shards(run_dir)
    config_hash = st.config_hash(cfg)
    _prune(store, st, shards)
    task = _shard_task(st, cfg)
    done, failed, causes = [], [], []
    with _host_slot(cfg, st):
        if st.backends:
            ensure_ray(cfg.pool)  # on this (the flow's) thread, not a task's
        futures = [task.submit(run_dir, s, config_hash) for s in shards]
        progress.report(st.name, 0, len(shards))
        try:
            for fut in as_completed(futures, timeout=cfg.pool.stage_deadline_s):
                try:
                    done.append(fut.result())
                except Exception as e:  # a failed shard fails the stage after the others finish
                    failed.append(f"{type(e).__name__}: {e}")
                    causes.append(e)
                progress.report(st.name, len(done) + len(failed), len(shards))
        except TimeoutError:
            raise _deadline_error(run_dir, cfg, [st], len(done), len(shards)) from None
    if st.backends and cfg.scheduling == "barrier":
        for b in st.backends(cfg):
            close_pool(b, cfg.pool, run_dir)  # the barrier baseline: every stage loads and frees its own engines
    if failed:
        err = StageFailed(f"{len(failed)} of {len(shards)} {st.name} shards failed (finished ones kept):\n" + "\n".join(failed))
        err.causes = tuple(causes)
        raise err
    return sorted(done)


def _prune(store: RunStore, st: declared.Stage, shards: list[str]) -> None:
    """A new sharding leaves no stale shards of ``st`` behind (their quarantine and suite results neither)."""
    if st.shards is declared.one_shard:
        return
    keep = set(shards)
    stale = [m for m in sorted((store.run_dir / "_done" / "stages").glob(f"{st.name}.*.json")) if m.stem.partition(".")[2] not in keep]
    if stale:  # the commits first, so no reader sees a commit whose files were moved
        store.supersede(stale, f"stale-{st.name}")
    for table in st.writes:
        store.prune(table, st.name, shards)
        for implicit in declared.IMPLICIT_WRITES:
            store.prune(implicit, f"{st.name}-{table}", shards)


def _shard_task(st: declared.Stage, cfg: RunConfig):
    """The stage's Prefect task; a model stage's retries infrastructure failures (``pool.shard_retries``)."""
    return st.task.with_options(retries=cfg.pool.shard_retries) if st.backends else st.task


@flow(name="stream", flow_run_name="{label}")
def stream_flow(run_dir: str, stages: list[str], label: str = "stream", max_inflight: int = 4) -> dict[str, list[str]]:
    """Run a group of stages that stream (``flows.stages.stream_groups``): as each shard of a
    stage commits, the shards it feeds in the stages that stream from it (``shards_of``) become
    ready, so a generation shard's routing, self-correction and diversity run while other
    shards still generate, on the same engines. At most ``max_inflight`` model shards and one
    CPU shard (routing) run at once (the task runner has ``max_inflight + 1`` threads), and a
    ready shard of a later stage goes before one of an earlier stage: work flows through to the
    end instead of queueing behind every generation shard, and CPU work overlaps model work.

    Task runs keep their stage's name (``generation-00003``, ``self_correction-00003-000``), and
    each stage's progress is reported on its own. A failed shard's followers are not submitted;
    the group fails after every other shard finished (they are kept), naming the failures.
    Returns each stage's output paths."""
    sts = [declared.get(s) for s in stages]
    store = RunStore.at(run_dir)
    cfg = RunConfig.model_validate(store.load_config())
    head, names = sts[0], {st.name for st in sts}
    followers: dict[str, list[declared.Stage]] = {}
    for st in sts[1:]:
        if st.stream_from not in names:
            raise declared.StageGraphError(f"stage {st.name!r} streams from {st.stream_from!r}, which is not in {stages}")
        followers.setdefault(st.stream_from, []).append(st)
    tasks = {st.name: _shard_task(st, cfg) for st in sts}
    hashes = {st.name: st.config_hash(cfg) for st in sts}
    events: queue.SimpleQueue = queue.SimpleQueue()
    total = {st.name: 0 for st in sts}
    done: dict[str, list[str]] = {st.name: [] for st in sts}
    failed: dict[str, list[str]] = {st.name: [] for st in sts}

    rank = {st.name: k for k, st in enumerate(sts)}
    order = itertools.count()
    # Ready shards, (-rank, order, stage, shard): later stages first, so a shard goes all the way
    # through. Model shards and CPU shards (routing) wait apart: a CPU shard never waits for a model slot.
    ready: dict[bool, list[tuple[int, int, str, str]]] = {True: [], False: []}
    inflight = {True: 0, False: 0}

    def push(st: declared.Stage, shard: str) -> None:
        heapq.heappush(ready[st.backends is not None], (-rank[st.name], next(order), st.name, shard))
        total[st.name] += 1

    def submit(model: bool) -> None:
        _, _, name, shard = heapq.heappop(ready[model])
        st = sts[rank[name]]
        inflight[model] += 1
        fut = tasks[name].submit(run_dir, shard, hashes[name])
        fut.add_done_callback(lambda f: events.put((st, shard, f)))

    head_shards = head.shards(run_dir)
    _prune(store, head, head_shards)
    limit = cfg.pool.stage_deadline_s
    end = time.monotonic() + limit if limit else None
    with _host_slot(cfg, *sts):
        if any(st.backends for st in sts):
            ensure_ray(cfg.pool)
        for sh in head_shards:
            push(head, sh)
        for st in sts:
            progress.report(st.name, 0, total[st.name])
        while ready[True] or ready[False] or inflight[True] or inflight[False]:
            while ready[True] and inflight[True] < max_inflight:  # a queued follower never waits behind every head shard
                submit(True)
            while ready[False] and inflight[False] < 1:  # CPU shards one at a time, beside the model shards
                submit(False)
            try:
                st, shard, fut = events.get(timeout=None if end is None else max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise _deadline_error(run_dir, cfg, sts, sum(map(len, done.values())), sum(total.values())) from None
            inflight[st.backends is not None] -= 1
            try:
                done[st.name].append(fut.result())
            except Exception as e:  # a failed shard fails the group after the others finish; its followers never start
                failed[st.name].append(f"{st.name}/{shard}: {type(e).__name__}: {e}")
            else:
                for f in followers.get(st.name, []):
                    for sh in f.shards_of(run_dir, shard):
                        push(f, sh)
                    progress.report(f.name, len(done[f.name]) + len(failed[f.name]), total[f.name])
            progress.report(st.name, len(done[st.name]) + len(failed[st.name]), total[st.name])
    errors = [e for st in sts for e in failed[st.name]]
    if errors:
        raise StageFailed(f"{len(errors)} shards of {label} failed (finished ones kept):\n" + "\n".join(errors))
    for st in sts[1:]:  # every shard is known now: drop what an earlier sharding left
        _prune(store, st, st.shards(run_dir))
    return {name: sorted(paths) for name, paths in done.items()}


def summarize(run_dir: str, extra: dict | None = None) -> dict:
    """Row counts, routes, pairs by stage and ``cost`` (plus ``extra``), written to ``summary.json``.

    ``cost``: per model stage, what its committed shards cost (``infra.cost.run_cost``:
    requests, completions, prompt and completion tokens, engine-seconds, shards), summed
    from their commit records, so cumulative over every invocation of the run (a resume adds
    only the shards it computes). The ``engine_*`` and ``pool_builds`` extras are this
    invocation's."""
    store = RunStore.at(run_dir)
    run = declared.check_stages(RunConfig.model_validate(store.load_config()))
    counts = {t: store.read_table(t).num_rows for t in declared.tables(run) if t != "worklist"}
    routes = store.read_table("routes").column("route").to_pylist()
    pairs = store.read_table("pairs").column("stage").to_pylist()
    summary = {
        "run_id": store.run_id,
        "run_dir": run_dir,
        "counts": counts,
        "routes": {r: routes.count(r) for r in sorted(set(routes))},
        "pairs_by_stage": {s: pairs.count(s) for s in sorted(set(pairs))},
        "cost": run_cost(store),
        **(extra or {}),
    }
    store.write_json("summary.json", summary)
    return summary


def _publish(summary: dict) -> None:
    rows = [{"table": t, "rows": n} for t, n in summary["counts"].items()]
    create_table_artifact(key="sphere-row-counts", table=rows, description=f"Row counts of run {summary['run_id']}")
    if summary["cost"]:
        create_table_artifact(key="sphere-stage-cost", table=cost_rows(summary["cost"]),
                              description=f"What each stage of run {summary['run_id']} cost (its committed shards)")
    val = RunStore.at(summary["run_dir"]).read_table("validation").to_pylist()
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
    """The ``sphere-run`` flow run's name: the id of the run it writes (its ``run_id``
    parameter, else the id ``prepare_run`` derives from the flow run, ``<name>-fr<id>``), as
    ``sphere report``, ``rerun``, ``export`` and ``run --resume`` take it. ``new-run`` only when
    the config cannot be read; the flow run then fails in ``prepare_run`` with the config's error."""
    params = flow_run.parameters
    if params.get("run_id"):
        return params["run_id"]
    try:
        name = _config(params.get("config_path"), params.get("overrides")).name
    except Exception:  # noqa: BLE001 - a name must not fail the run before prepare_run reports why
        return "new-run"
    return _flow_run_bound_id(name) or "new-run"


@flow(name="sphere-run", flow_run_name=_run_name)
def sphere_run(config_path: str | None = None, run_id: str | None = None, data_root: str | None = None, overrides: dict | None = None) -> dict:
    """The whole pipeline. With ``run_id`` of an existing run, resumes it (finished shards
    whose fingerprint still holds are kept; ``overrides`` change its stored config). Holds the
    run's writer lock throughout: ``WriterLocked`` at once when another process writes the run."""
    _, store = locate_run(config_path, run_id, data_root, overrides)
    with run_lock(store.run_dir):
        run_dir = prepare_run(config_path, store.run_id, str(store.data_root), overrides)
        try:
            return _tracked(run_dir)
        finally:
            close_run_pools(run_dir)
            close_pools()  # free the actors' CPUs/GPUs for whatever runs next in this process


def _tracked(run_dir: str) -> dict:
    """Run the stages with the run's status kept in ``status.json`` (the catalog's ``runs``
    view): running, then finished, failed (with the error) or interrupted."""
    store = RunStore.at(run_dir)
    store.set_status("running")
    try:
        summary = _run_stages(run_dir)
    except Exception as e:
        store.set_status("failed", f"{type(e).__name__}: {e}")
        raise
    except BaseException as e:  # Ctrl-C, SIGTERM, a cancelled flow run
        store.set_status("interrupted", type(e).__name__)
        raise
    store.set_status("finished")
    return summary


def _run_stages(run_dir: str) -> dict:
    store = RunStore.at(run_dir)
    cfg = RunConfig.model_validate(store.load_config())
    run = declared.check_stages(cfg)
    # Ray must start on the main thread: its daemons die with the thread that spawned them
    # (PR_SET_PDEATHSIG is per thread). GX imports meanwhile; actors are spawned by the
    # raylet, so on a new run the first model stage's backend loads while seeds are read and
    # validated. A resumed run loads nothing ahead: each stage builds what it needs.
    t_start = time.monotonic()
    validation.preload()
    model_stages = [s for s in run if s.backends]
    pools = run_pools(run_dir)
    if model_stages:
        ensure_ray(cfg.pool, total_need([b for s in model_stages for b in s.backends(cfg)], cfg.pool))
        if not _started(store, model_stages[0]):
            for b in model_stages[0].backends(cfg):
                prewarm(b, cfg.pool, run_dir)
    runner = ThreadPoolTaskRunner(max_workers=cfg.generation.concurrency)  # a stage alone: at most `concurrency` shards
    stream_runner = ThreadPoolTaskRunner(max_workers=cfg.generation.concurrency + 1)  # model shards + one CPU shard
    parts = [p for g in declared.stream_groups(run) for p in _fitting(g, cfg)] if cfg.scheduling == "streaming" else [[st] for st in run]
    for k, part in enumerate(parts):
        needed = [b for st in part if st.backends for b in st.backends(cfg)]
        if any(st.exclusive(cfg) for st in part):  # e.g. TRL training on the GPUs the engines hold
            pools.release_unneeded([], cfg.pool)
        elif needed and not fits(pools.backends() + needed, cfg.pool):  # make room: free what this part does not use
            pools.release_unneeded(needed, cfg.pool)
        if len(part) == 1:
            stage_flow.with_options(name=part[0].name, flow_run_name=part[0].name, task_runner=runner)(run_dir, part[0].name)
        else:
            label = "+".join(st.name for st in part)
            stream_flow.with_options(task_runner=stream_runner)(run_dir, [st.name for st in part], label, cfg.generation.concurrency)
        later = [b for p in parts[k + 1:] for st in p if st.backends for b in st.backends(cfg)]
        pools.release_unneeded(later, cfg.pool)  # engines no remaining stage needs
    catalog.refresh(store.data_root)
    wall = time.monotonic() - t_start
    span = pools.busy_span()  # from the first engine call to the last: the model stages' share
    summary = summarize(run_dir, {
        "pool_builds": pools.builds, "engine_loads": pools.engine_loads,
        "engine_busy_share": round(pools.busy_seconds(t_start) / wall, 4) if wall else None,  # >= 1 engine working
        "engine_busy_share_model_span": round(pools.busy_seconds(span[0]) / (span[1] - span[0]), 4) if span and span[1] > span[0] else None,
    })
    _publish(summary)
    if cfg.metrics.enabled:
        try:
            summary["report"] = str(_publish_report(run_dir))
        except Exception as e:  # the data and metrics are committed; a plotting failure must not fail the run
            get_run_logger().warning("QDC report not written: %s: %s (retry with `sphere report %s`)", type(e).__name__, e, store.run_id)
            summary["report_error"] = f"{type(e).__name__}: {e}"
    return summary


def _fitting(group: list[declared.Stage], cfg: RunConfig) -> list[list[declared.Stage]]:
    """Cut a streaming group where the next stage's backend cannot hold a pool beside the
    pools of the stages before it (declared resources against the Ray cluster): those stages
    then wait for the part before them, whose pools are freed first. On a machine that holds
    them all, one part."""
    parts: list[list[declared.Stage]] = [[]]
    backends: list = []
    for st in group:
        mine = list(st.backends(cfg)) if st.backends else []
        if mine and backends and not fits(backends + mine, cfg.pool):
            parts.append([])
            backends = []
        parts[-1].append(st)
        backends += mine
    return parts


def unfinished_stages(run_dir: str) -> list[str]:
    """The run's enabled stages that are not finished: a shard that is not committed (its stage
    marker, or the marker of a table that marker lists, is missing or unreadable), a stage whose
    shards cannot be listed (a damaged manifest or routing marker), or a stage that runs after
    an unfinished one (whose shards are not even listed yet)."""
    store = RunStore.at(run_dir)
    out: list[str] = []
    for st in declared.check_stages(RunConfig.model_validate(store.load_config())):
        try:
            done = not set(st.after) & set(out) and all(store.stage_done(st.name, sh) for sh in st.shards(run_dir))
        except StorageError:
            done = False
        if not done:
            out.append(st.name)
    return out


def _started(store: RunStore, stage: declared.Stage) -> bool:
    """Whether any shard of the stage has a marker."""
    return any((store.run_dir / "_done" / "stages").glob(f"{stage.name}.*.json"))


def stage_outputs(store: RunStore, stage: str) -> list[Path]:
    """Every file and folder a stage owns, from its declaration: ``<table>/<stage>`` for each
    table it writes, its quarantine/validation folders (``<table>/<stage>-*``), its markers
    and its manifest."""
    st = declared.get(stage)
    run = store.run_dir
    done = run / "_done"
    paths = list((done / "stages").glob(f"{stage}.*.json"))  # the commits first: a reader never sees one without its files
    paths += [run / t / stage for t in st.writes] + [d for t in declared.IMPLICIT_WRITES for d in (run / t).glob(f"{stage}-*")]
    paths += [m for t in (*st.writes, *declared.IMPLICIT_WRITES) for m in done.glob(f"{t}.{stage}.*.json")]
    paths += [m for t in declared.IMPLICIT_WRITES for m in done.glob(f"{t}.{stage}-*.json")]
    paths += [done / f"{stage}.manifest.json"]
    return [p for p in dict.fromkeys(paths) if p.exists()]


def supersede(run_dir: str, stage: str) -> Path:
    """Move the outputs of ``stage`` and everything downstream aside (nothing is deleted)."""
    store = RunStore.at(run_dir)
    declared.get(stage)  # unknown stage: StageGraphError naming the stages
    return store.supersede([p for st in (stage, *declared.downstream(stage)) for p in stage_outputs(store, st)], stage)


def record_config_change(run_dir: str, stage: str, overrides: dict | None) -> dict:
    """Apply config overrides to the run's stored config and log the change (``reruns.jsonl``).
    Overrides that do not validate raise before anything is written. Returns the logged entry."""
    store = RunStore.at(run_dir)
    old = store.load_config()
    new = RunConfig.model_validate(apply_overrides(old, overrides)).model_dump(mode="json")
    changes = {k: {"old": _get(old, k), "new": _get(new, k)} for k in (overrides or {})}
    entry = store.log_config_change(stage, changes)
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
    ``reruns.jsonl``. Holds the run's writer lock throughout (``WriterLocked`` at once when
    another process writes the run, e.g. a run still generating).
    """
    declared.get(stage)
    with run_lock(run_dir):
        record_config_change(run_dir, stage, overrides)
        supersede(run_dir, stage)
        try:
            return _tracked(run_dir)
        finally:
            close_pools()
