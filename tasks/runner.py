"""One runner turns a stage declaration into the work of one shard.

For a stage declared with a pure function (``flows.stages.Stage.fn``), every shard is::

    read its inputs (Stage.inputs)  ->  fingerprint  ->  engines from the run's pools
        ->  fn(inputs, config, engines)  ->  commit (validate, quarantine, write, mark)

with the stage function's one signature::

    fn(inputs: dict[str, pa.Table], config: ConfigView, engines: Engines) -> dict[str, pa.Table]

``config`` is the run's config seen through exactly the paths the stage's fingerprint covers
(``Stage.config_paths``): reading any other path raises ``UndeclaredConfig`` naming it, so a
stage cannot depend on a setting whose change would not recompute it. ``engines`` builds the
search engine of a backend from the run's pools (``RunContext.engine``; its calls are added
to the shard's cost). The fingerprint is the stage's config hash, the code version of the
function's module (``tasks.code_version``) and the content hash of exactly the inputs read.

Inputs (``Read``): a table's part of the same shard, the whole table, or a worklist
consumer's rows (``WorkShard``: the rows of the stage's target in the worklist part of its
source shard, its ``k``-th slice of ``<stage>.shard_size``). Stages that are genuinely
different (seeds stream a source; train owns a checkpoint folder; evaluate a model per
round) keep their own task, built on the same ``RunContext``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.config import SearchConfig
from infra.cost import Cost
from tasks.common import RunContext, is_transient
from tasks.engine import Engine


class UndeclaredConfig(AttributeError):
    """A stage function read a config path its declaration does not hand it (not in its fingerprint)."""


@dataclass(frozen=True)
class Read:
    """One input of a stage: ``table`` as written by ``stage`` (None: every stage's parts).
    ``scope``: ``shard`` (the part of the shard with this shard's id), ``table`` (every
    committed part) or ``worklist`` (this consumer shard's rows of its source shard's part)."""

    table: str
    stage: str | None = None
    scope: Literal["shard", "table", "worklist"] = "shard"


@dataclass(frozen=True, order=True)
class WorkShard:
    """A worklist consumer's shard: the ``k``-th slice of the rows the routing of generation
    shard ``source`` sent to its stage. Written ``<source>-<k:03d>``, the shard id on disk."""

    source: str
    k: int

    def __str__(self) -> str:
        return f"{self.source}-{self.k:03d}"

    @classmethod
    def parse(cls, shard: str) -> WorkShard:
        source, sep, k = shard.rpartition("-")
        if not sep or not source or not k.isdigit():
            raise ValueError(f"{shard!r} is not a worklist shard id (<source shard>-<k>)")
        return cls(source, int(k))

    @classmethod
    def of(cls, source: str, n_rows: int, size: int) -> list[WorkShard]:
        """The consumer shards one source shard's ``n_rows`` worklist rows make, ``size`` rows each."""
        return [cls(source, k) for k in range((n_rows + size - 1) // size)]


class ConfigView:
    """A read-only view of a pydantic config through ``paths`` (dotted): attributes on a path
    or under one are the config's own values; a prefix of a path is a narrower view; anything
    else raises ``UndeclaredConfig``."""

    def __init__(self, value: Any, paths: tuple[str, ...], stage: str, prefix: str = ""):
        self._value, self._paths, self._stage, self._prefix = value, paths, stage, prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        dotted = f"{self._prefix}{name}"
        if any(dotted == p or dotted.startswith(p + ".") for p in self._paths):
            return getattr(self._value, name)
        if any(p.startswith(dotted + ".") for p in self._paths):
            return ConfigView(getattr(self._value, name), self._paths, self._stage, dotted + ".")
        raise UndeclaredConfig(f"stage {self._stage!r} read config {dotted!r}, which its declaration does not hand it "
                               f"(config paths: {', '.join(self._paths)}); declare it so its changes recompute the stage")


class Engines:
    """The engines a stage function may use, all from the run's pools; ``run_id`` names the run."""

    def __init__(self, ctx: RunContext, config_hash: str, cost: Cost | None):
        self._ctx, self._hash, self.cost = ctx, config_hash, cost
        self.run_id = ctx.run_id

    def search(self, backend_cfg, search: SearchConfig | None = None) -> Engine:
        """The search engine of ``backend_cfg`` (with ``search``, default the run's), scored by the run's scorer."""
        if self.cost is None:
            raise RuntimeError("a stage without backends asked for an engine; declare its backends")
        return self._ctx.engine(backend_cfg, self._hash, search, cost=self.cost)


def _worklist_rows(part: pa.Table, stage: str, shard: WorkShard, size: int) -> pa.Table:
    rows = part.filter(pc.equal(part.column("target"), stage))
    return rows.slice(shard.k * size, size)


def run_shard(st, run_dir: str, shard: str, config_hash: str) -> str:
    """Compute and commit one shard of the declared stage ``st`` unless its commit holds the
    same fingerprint. Returns the path of its first table's part."""
    ctx = RunContext.open(run_dir)
    store = ctx.store
    work = WorkShard.parse(shard) if any(r.scope == "worklist" for r in st.inputs) else None
    where = {"shard": lambda r: (r.table, r.stage, shard), "table": lambda r: (r.table, r.stage),
             "worklist": lambda r: (r.table, r.stage, work.source)}
    fp = ctx.fingerprint(st.fn.__module__, config_hash, [where[r.scope](r) for r in st.inputs])
    if not ctx.is_done(st.name, shard, fp):
        inputs = {}
        for r in st.inputs:
            if r.scope == "table":
                inputs[r.table] = store.read_table(r.table, r.stage)
            else:
                part = store.read_part(r.table, r.stage, work.source if work else shard)
                inputs[r.table] = _worklist_rows(part, st.name, work, getattr(ctx.cfg, st.name).shard_size) if r.scope == "worklist" else part
        view = ConfigView(ctx.cfg, st.config_paths, st.name)
        cost = Cost() if st.backends else None
        out = st.fn(inputs, view, Engines(ctx, config_hash, cost))
        extra = st.record(out, shard, view) if st.record else None
        ctx.commit(st.name, shard, out, fp, problems=inputs.get(st.checked_against) if st.checked_against else None,
                   extra=extra, cost=cost)
    return str(store.part_path(st.writes[0], st.name, shard))


@functools.cache
def stage_task(st):
    """The Prefect task of a declared stage with a function: ``(run_dir, shard, config_hash) -> path``,
    named after the stage; a model stage's retries only infrastructure failures (``is_transient``)."""

    def run(run_dir: str, shard: str, config_hash: str) -> str:
        return run_shard(st, run_dir, shard, config_hash)

    run.__name__ = run.__qualname__ = f"{st.name}_shard"
    return task(run, name=st.name, task_run_name=st.name + "-{shard}", cache_policy=NO_CACHE, retry_delay_seconds=2,
                retry_condition_fn=is_transient)
