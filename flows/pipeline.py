"""Prefect flows: wiring only. One parent flow; one subflow per group of stages.

The stages are declared in ``flows.stages``; which shard runs next and which stages run
together is ``infra.schedule``'s; what a run directory holds is ``flows.runs``' and
``infra.storage``'s. Here they meet Prefect: every shard is a task run (retried when its
backend fails), every group a subflow, the run a flow with its status, summary and
artifacts. A shard whose commit holds the same fingerprint (config hash, code version,
inputs) returns at once, so ``prefect flow-run retry``, ``sphere run --resume`` or a changed
config redoes exactly the shards whose inputs or settings changed.
"""

from __future__ import annotations

import queue
import socket
import time
from contextlib import nullcontext

from prefect import flow
from prefect.concurrency.sync import concurrency
from prefect.task_runners import ThreadPoolTaskRunner

from flows import stages as declared
from flows.artifacts import publish
from flows.run_ids import flow_run_bound_id as _flow_run_bound_id, new_run_id, run_flow_run_name as _run_name  # noqa: F401
from flows.runs import (locate_run, pool_stats, prepare_run, prune_stale, record_config_change, status_kept,  # noqa: F401
                        summarize, supersede, unfinished_stages)
from infra import catalog, progress, schedule, validation
from infra.config import RunConfig
from infra.locks import run_lock
from infra.pool import close_pools, close_run_pools, ensure_ray, fits, prewarm, run_pools, total_need
from infra.schedule import StageDeadlineExceeded, StageFailed
from infra.storage import RunStore


def _host_slot(cfg: RunConfig, sts: list[declared.Stage]):
    """A slot of the host's model-stage concurrency limit (``pool.host_concurrency_limit``), if any applies."""
    limit = cfg.pool.host_concurrency_limit
    if not limit or all(st.backends is None for st in sts):
        return nullcontext()
    return concurrency(limit.format(host=socket.gethostname()), occupy=1, strict=False)


@flow(name="stages", flow_run_name="{label}")
def group_flow(run_dir: str, stages: list[str], label: str, max_inflight: int) -> dict[str, list[str]]:
    """Run a group of stages (one stage, or stages that stream: ``flows.stages.stream_groups``)
    over their shards: as a shard commits, the shards it feeds (``shards_of``) become ready;
    ``infra.schedule.ShardQueue`` decides what starts (at most ``max_inflight`` model shards,
    later stages first; CPU shards one at a time beside model work, or ``max_inflight`` in a
    group without one). A failed shard's followers never start; the group fails after every
    other shard finished (they are kept), naming the failures. Returns each stage's outputs."""
    sts = [declared.get(s) for s in stages]
    store = RunStore.at(run_dir)
    cfg = RunConfig.model_validate(store.load_config())
    followers = declared.followers(sts)
    model = {st.name: st.backends is not None for st in sts}
    lanes = schedule.ShardQueue(stages, model, max_inflight, 1 if any(model.values()) else max_inflight)
    tasks = {st.name: st.shard_task.with_options(retries=cfg.pool.shard_retries) if st.backends else st.shard_task for st in sts}
    hashes = {st.name: st.config_hash(cfg) for st in sts}
    events: queue.SimpleQueue = queue.SimpleQueue()
    done: dict[str, list[str]] = {s: [] for s in stages}
    failed: list[tuple[str, str, BaseException]] = []
    report = lambda name: progress.report(name, lanes.finished[name], lanes.total[name])  # noqa: E731

    head = sts[0].shards(run_dir)
    prune_stale(store, sts[0], head)
    end = time.monotonic() + cfg.pool.stage_deadline_s if cfg.pool.stage_deadline_s else None
    with _host_slot(cfg, sts):
        if any(model.values()):
            ensure_ray(cfg.pool)  # on this (the flow's) thread, not a task's
        for sh in head:
            lanes.push(sts[0].name, sh)
        for name in stages:
            report(name)
        while lanes.pending:
            for name, shard in lanes.take():
                fut = tasks[name].submit(run_dir, shard, hashes[name])
                fut.add_done_callback(lambda f, name=name, shard=shard: events.put((name, shard, f)))
            try:
                name, shard, fut = events.get(timeout=None if end is None else max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise _deadline_error(run_dir, cfg, sts, sum(map(len, done.values())), sum(lanes.total.values())) from None
            lanes.finish(name)
            try:
                done[name].append(fut.result())
            except Exception as e:  # a failed shard fails the group after the others finish
                failed.append((name, shard, e))
            else:
                for f in followers.get(name, []):
                    for sh in f.shards_of(run_dir, shard):
                        lanes.push(f.name, sh)
                    report(f.name)
            report(name)
    if failed:
        raise StageFailed.of(label, sum(lanes.total.values()), failed)
    for st in sts[1:]:  # every shard is known now: drop what an earlier sharding left
        prune_stale(store, st, st.shards(run_dir))
    return {name: sorted(paths) for name, paths in done.items()}


def _deadline_error(run_dir: str, cfg: RunConfig, sts: list[declared.Stage], finished: int, total: int) -> StageDeadlineExceeded:
    """Free the run's engines (their calls in flight fail at once) and name what ran out of time."""
    run_pools(run_dir).release_unneeded([], cfg.pool)
    return StageDeadlineExceeded.of([st.name for st in sts], cfg.pool.stage_deadline_s, [b for st in sts for b in st.backends_of(cfg)],
                                    finished, total)


@flow(name="sphere-run", flow_run_name=_run_name)
def sphere_run(config_path: str | None = None, run_id: str | None = None, data_root: str | None = None, overrides: dict | None = None) -> dict:
    """The whole pipeline. With ``run_id`` of an existing run, resumes it (finished shards
    whose fingerprint still holds are kept; ``overrides`` change its stored config). Holds the
    run's writer lock throughout: ``WriterLocked`` at once when another process writes the run."""
    _, store = locate_run(config_path, run_id, data_root, overrides)
    with run_lock(store.run_dir):
        run_dir = prepare_run(config_path, store.run_id, str(store.data_root), overrides)
        return _run_stages(run_dir)


@flow(name="sphere-rerun", flow_run_name="rerun-{stage}")
def sphere_rerun(run_dir: str, stage: str, overrides: dict | None = None) -> dict:
    """Re-execute ``stage`` and everything downstream from the stored upstream Parquet: the
    stage's old outputs move to ``_superseded/``, a config change is applied and logged to
    ``reruns.jsonl``, upstream shards are skipped. Holds the run's writer lock throughout."""
    declared.get(stage)
    with run_lock(run_dir):
        record_config_change(run_dir, stage, overrides)
        supersede(run_dir, stage)
        return _run_stages(run_dir)


def _run_stages(run_dir: str) -> dict:
    """The run's groups of stages in order (barrier: one stage each), each after freeing the
    engines it does not need when they would not fit beside its own, or all of them before an
    exclusive (GPU training) stage; after each, the engines no later stage needs. The run's
    status is kept (``status_kept``); its engines are freed at the end, however it ends."""
    try:
        with status_kept(run_dir):
            return _stages(run_dir)
    finally:
        close_run_pools(run_dir)
        close_pools()  # free the actors' CPUs/GPUs for whatever runs next in this process


def _stages(run_dir: str) -> dict:
    store = RunStore.at(run_dir)
    cfg = RunConfig.model_validate(store.load_config())
    run = declared.check_stages(cfg)
    backends = lambda st: st.backends_of(cfg)  # noqa: E731
    t_start = time.monotonic()
    validation.preload()  # GX imports while the first engines load
    pools = run_pools(run_dir)
    model_stages = [s for s in run if s.backends]
    if model_stages:  # Ray on the main thread: its daemons die with the thread that started them
        ensure_ray(cfg.pool, total_need([b for s in model_stages for b in backends(s)], cfg.pool))
        if not store.stage_marker_paths(model_stages[0].name):  # a new run: load while seeds are read
            for b in backends(model_stages[0]):
                prewarm(b, cfg.pool, run_dir)
    groups = declared.stream_groups(run) if cfg.scheduling == "streaming" else [[st] for st in run]
    plan = schedule.parts(groups, backends, lambda bs: fits(bs, cfg.pool))
    runner = ThreadPoolTaskRunner(max_workers=cfg.generation.concurrency + 1)  # model shards + one CPU shard
    for k, part in enumerate(plan):
        pools.make_room([b for st in part for b in backends(st)], cfg.pool, exclusive=any(st.exclusive(cfg) for st in part))
        label = "+".join(st.name for st in part)
        group_flow.with_options(name=label, flow_run_name=label, task_runner=runner)(
            run_dir, [st.name for st in part], label, cfg.generation.concurrency)
        # the barrier baseline loads and frees every stage's engines; streaming keeps what a later part needs
        pools.release_unneeded(schedule.keep_after(plan, k, backends) if cfg.scheduling == "streaming" else [], cfg.pool)
    catalog.refresh(store.data_root)
    summary = summarize(run_dir, pool_stats(pools, t_start))
    return publish(summary, with_report=cfg.metrics.enabled)
