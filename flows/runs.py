"""Operations on a run directory that the flows wire together: open or create a run
(``prepare_run``), apply a config change (``record_config_change``), list what is
unfinished, move a stage's outputs aside for a rerun, drop stale shards, write the
summary. None of them runs a stage; each reads the stage declarations (``flows.stages``)
and the run's store (``infra.storage.RunStore``), which alone knows the layout on disk.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from flows import stages as declared
from flows.run_ids import bound_or_new_id
from infra import integrity
from infra.config import RunConfig, apply_overrides, check_inputs, config_or_defaults
from infra.cost import run_cost
from infra.locks import run_lock
from infra.storage import RunStore, StorageError
from infra.fs import as_path


def locate_run(config_path: str | None, run_id: str | None = None, data_root: str | None = None,
               overrides: dict | None = None) -> tuple[RunConfig, RunStore]:
    """The validated config and the store of the run these arguments name (a new id when
    ``run_id`` is None); nothing is written."""
    cfg = config_or_defaults(config_path, overrides)
    root = as_path(data_root or cfg.data_root).resolve()
    return cfg, RunStore(root, run_id or bound_or_new_id(cfg.name))


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


def stage_outputs(store: RunStore, stage: str) -> list[Path]:
    """Every file and folder a stage owns, from its declaration (``RunStore.stage_outputs``):
    its tables, their quarantine/validation folders, its markers and its manifest."""
    return store.stage_outputs(stage, declared.get(stage).writes, declared.IMPLICIT_WRITES)


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


def prune_stale(store: RunStore, st: declared.Stage, shards: list[str]) -> None:
    """A new sharding leaves no stale shards of ``st`` behind (their quarantine and suite results neither)."""
    if st.shards is not declared.one_shard:
        store.prune_stage(st.name, st.writes, declared.IMPLICIT_WRITES, shards)


@contextmanager
def status_kept(run_dir: str):
    """The run's status in ``status.json`` (the catalog's ``runs`` view) around its stages:
    running, then finished, failed (with the error) or interrupted (Ctrl-C, SIGTERM, a
    cancelled flow run)."""
    store = RunStore.at(run_dir)
    store.set_status("running")
    try:
        yield
    except Exception as e:
        store.set_status("failed", f"{type(e).__name__}: {e}")
        raise
    except BaseException as e:
        store.set_status("interrupted", type(e).__name__)
        raise
    store.set_status("finished")


def pool_stats(pools, t_start: float) -> dict:
    """This invocation's engine figures for the summary: pools built, engines loaded, and the
    share of the wall time since ``t_start`` (and of the span from the first engine call to the
    last) during which at least one engine worked (``infra.pool.RunPools``)."""
    wall = time.monotonic() - t_start
    span = pools.busy_span()
    return {
        "pool_builds": pools.builds, "engine_loads": pools.engine_loads,
        "engine_busy_share": round(pools.busy_seconds(t_start) / wall, 4) if wall else None,
        "engine_busy_share_model_span": round(pools.busy_seconds(span[0]) / (span[1] - span[0]), 4) if span and span[1] > span[0] else None,
    }
