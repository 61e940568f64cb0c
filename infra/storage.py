"""Run storage: Parquet shards written atomically, with completion markers.

Layout::

    <data_root>/runs/<run_id>/config.json                 the validated config of the run
    <data_root>/runs/<run_id>/<table>/<stage>/part-<shard>.parquet
    <data_root>/runs/<run_id>/_done/<table>.<stage>.<shard>.json   completion marker
    <data_root>/catalog.duckdb                            views over every run

Contract: a part file appears only complete (written to a hidden temp name, fsynced,
renamed); a shard counts as finished only when its marker exists, and a finished shard
is never rewritten. The marker records the row count and the file's content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from infra.schemas import SCHEMAS


class StorageError(RuntimeError):
    """A run directory or shard is missing or inconsistent."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunStore:
    data_root: Path
    run_id: str

    @classmethod
    def at(cls, run_dir: str | Path) -> RunStore:
        """The store of the run directory ``<data_root>/runs/<run_id>``."""
        path = Path(run_dir)
        return cls(path.parent.parent, path.name)

    @property
    def run_dir(self) -> Path:
        return self.data_root / "runs" / self.run_id

    def part_path(self, table: str, stage: str, shard: str) -> Path:
        return self.run_dir / table / stage / f"part-{shard}.parquet"

    def marker_path(self, table: str, stage: str, shard: str) -> Path:
        return self.run_dir / "_done" / f"{table}.{stage}.{shard}.json"

    def is_done(self, table: str, stage: str, shard: str) -> bool:
        return self.marker_path(table, stage, shard).is_file() and self.part_path(table, stage, shard).is_file()

    def write(self, table_name: str, stage: str, shard: str, table: pa.Table, **meta) -> Path:
        """Write one shard atomically and mark it done. Returns the part path."""
        table = table.cast(SCHEMAS[table_name]) if table_name in SCHEMAS else table
        path = self.part_path(table_name, stage, shard)
        write_parquet_atomic(table, path)
        marker = self.marker_path(table_name, stage, shard)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".{marker.name}.tmp")
        tmp.write_text(json.dumps({"rows": table.num_rows, "sha256": file_sha256(path), "written_at": time.time(), **meta}))
        os.replace(tmp, marker)
        return path

    def read_part(self, table_name: str, stage: str, shard: str) -> pa.Table:
        """One finished shard; StorageError if it is not finished."""
        if not self.is_done(table_name, stage, shard):
            raise StorageError(f"{table_name}/{stage}/{shard} is not finished in {self.run_dir}")
        return pq.read_table(self.part_path(table_name, stage, shard))

    def committed_parts(self, table_name: str, stage: str | None = None) -> list[Path]:
        """Part files of a table (optionally of one stage) whose completion marker exists."""
        base = self.run_dir / table_name
        stages = [stage] if stage else sorted(p.name for p in base.glob("*") if p.is_dir())
        return [f for st in stages for f in sorted((base / st).glob("part-*.parquet"))
                if self.marker_path(table_name, st, f.stem.removeprefix("part-")).is_file()]

    def read_table(self, table_name: str, stage: str | None = None) -> pa.Table:
        """All finished shards of a table (optionally of one stage), or an empty table."""
        parts = [pq.read_table(f) for f in self.committed_parts(table_name, stage)]
        schema = SCHEMAS.get(table_name)
        if not parts:
            if schema is None:
                raise StorageError(f"no finished shards of {table_name} in {self.run_dir}")
            return schema.empty_table()
        return pa.concat_tables(parts, promote_options="default")

    def save_config(self, config_json: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "config.json"
        tmp = path.with_name(".config.json.tmp")
        tmp.write_text(json.dumps(config_json, indent=2, sort_keys=True))
        os.replace(tmp, path)

    def load_config(self) -> dict:
        path = self.run_dir / "config.json"
        if not path.is_file():
            raise StorageError(f"run {self.run_id!r} not found under {self.data_root / 'runs'}")
        return json.loads(path.read_text())

    def write_json(self, name: str, obj) -> Path:
        path = self.run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        os.replace(tmp, path)
        return path
