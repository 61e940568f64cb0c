"""What every stage wrapper shares: the run context, validate-then-write, cache keys.

``persist`` is the write path of every stage: run the table's GX suite, write the rows
that fail to ``quarantine`` (with the expectations they failed) and the suite results to
``validation``, then write the good rows and mark the shard done. The shard marker is
written last, so a crash anywhere before it leaves the shard to be redone. When the
failure share passes ``validation.max_failure_share`` the stage raises
``ValidationFailed`` after everything is written: the run keeps what it had.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from infra.config import RunConfig
from infra.schemas import from_rows
from infra.storage import RunStore, file_sha256
from infra.validation import ValidationFailed, validate

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def code_version() -> str:
    """Hash of the pipeline's source and model files: part of every shard cache key."""
    h = hashlib.sha256()
    for folder in ("tasks", "infra"):
        for f in sorted((PROJECT_ROOT / folder).rglob("*")):
            if f.suffix in (".py", ".txt", ".pt") and "__pycache__" not in f.parts:
                h.update(f.relative_to(PROJECT_ROOT).as_posix().encode())
                h.update(file_sha256(f).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class RunContext:
    store: RunStore
    cfg: RunConfig

    @classmethod
    def open(cls, run_dir: str) -> RunContext:
        path = Path(run_dir)
        store = RunStore(path.parent.parent, path.name)
        return cls(store, RunConfig.model_validate(store.load_config()))

    @property
    def run_id(self) -> str:
        return self.store.run_id


def quarantine_rows(run_id: str, stage: str, table: str, bad: list[dict]) -> pa.Table:
    return from_rows(
        [
            {
                "run_id": run_id,
                "stage": stage,
                "table": table,
                "source": b["row"].get("problem_id") or b["row"].get("source"),
                "check": b["check"],
                "reason": b["reason"],
                "row": json.dumps(b["row"], default=str)[:20_000],
            }
            for b in bad
        ],
        "quarantine",
    )


def persist(ctx: RunContext, table_name: str, stage: str, shard: str, table: pa.Table, **meta) -> Path:
    """Validate, write quarantine + validation results + good rows; mark the shard done."""
    outcome = validate(table_name, table)
    store = ctx.store
    store.write("quarantine", f"{stage}-{table_name}", shard, quarantine_rows(ctx.run_id, stage, table_name, outcome.bad_rows))
    store.write(
        "validation",
        f"{stage}-{table_name}",
        shard,
        from_rows([{"run_id": ctx.run_id, "stage": stage, "table": table_name, "shard": shard, **r} for r in outcome.results], "validation"),
    )
    path = store.write(table_name, stage, shard, outcome.good, code_version=code_version(), **meta)
    limit = ctx.cfg.validation.max_failure_share
    if outcome.failure_share > limit:
        raise ValidationFailed(
            f"{table_name}/{stage}/{shard}: {len(outcome.bad_rows)} of {table.num_rows} rows failed their suite "
            f"({outcome.failure_share:.1%} > {limit:.1%}); see the quarantine table"
        )
    return path


def shard_cache_key(inputs: list[Path], stage_hash: str, out_dir: str, shard: str) -> str:
    """(input content hash, stage config hash, code version, output location) -> cache key."""
    h = hashlib.sha256()
    for p in inputs:
        h.update(file_sha256(p).encode())
    h.update(f"{stage_hash}|{code_version()}|{out_dir}|{shard}".encode())
    return h.hexdigest()
