"""Run storage: Parquet shards written atomically, with completion markers.

Layout::

    <data_root>/runs/<run_id>/config.json                 the validated config of the run
    <data_root>/runs/<run_id>/<table>/<stage>/part-<shard>.parquet
    <data_root>/runs/<run_id>/_done/<table>.<stage>.<shard>.json   completion marker
    <data_root>/runs/<run_id>/_superseded/<when>-<why>/...         outputs moved aside (never deleted)
    <data_root>/catalog.duckdb                            views over every run

Contract: a file appears only complete (``atomic_write``: written to a hidden temp name,
fsynced, renamed). A shard counts as finished only when its marker exists; the marker
records the row count, the file's content hash and the shard's ``fingerprint`` (what it
was computed from: stage config hash, code version, input content hash). ``is_done``
with a fingerprint is true only when the recorded one is equal, so a shard computed from
other inputs or another config is recomputed, and an unchanged one is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from infra.schemas import SCHEMAS


class StorageError(RuntimeError):
    """A run directory or shard is missing or inconsistent."""


class RunNotFound(StorageError):
    """No run with this id under the data root."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a hidden temp file beside ``path``, fsync it, rename it onto
    ``path``. Readers see the old file or the whole new one, never a part; a crash leaves
    at most a ``.*.tmp`` file. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_dir(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a fresh hidden temp directory beside ``path``, then swap it in
    for ``path`` (the old directory, if any, is renamed aside and removed). Readers never see
    a half-written directory; a crash leaves at most ``.*.tmp`` directories. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    old = path.with_name(f".{path.name}.{os.getpid()}.old.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


@dataclass(frozen=True)
class RunStore:
    data_root: Path
    run_id: str

    @classmethod
    def at(cls, run_dir: str | Path) -> RunStore:
        """The store of the run directory ``<data_root>/runs/<run_id>``."""
        path = Path(run_dir)
        return cls(path.parent.parent, path.name)

    @classmethod
    def open(cls, data_root: str | Path, run_id: str) -> RunStore:
        """The store of an existing run; ``RunNotFound`` naming where it looked otherwise."""
        store = cls(Path(data_root).resolve(), run_id)
        if not store.exists():
            raise RunNotFound(f"run {run_id!r} not found under {store.data_root / 'runs'}")
        return store

    def exists(self) -> bool:
        return (self.run_dir / "config.json").is_file()

    @property
    def run_dir(self) -> Path:
        return self.data_root / "runs" / self.run_id

    def part_path(self, table: str, stage: str, shard: str) -> Path:
        return self.run_dir / table / stage / f"part-{shard}.parquet"

    def marker_path(self, table: str, stage: str, shard: str) -> Path:
        return self.run_dir / "_done" / f"{table}.{stage}.{shard}.json"

    def marker(self, table: str, stage: str, shard: str) -> dict | None:
        """The shard's completion marker, or None when the shard is not finished."""
        path = self.marker_path(table, stage, shard)
        if not (path.is_file() and self.part_path(table, stage, shard).is_file()):
            return None
        return json.loads(path.read_text())

    def is_done(self, table: str, stage: str, shard: str, fingerprint: dict | None = None) -> bool:
        """Finished, and (when ``fingerprint`` is given) computed from exactly that."""
        m = self.marker(table, stage, shard)
        return m is not None and (fingerprint is None or m.get("fingerprint") == fingerprint)

    def write(self, table_name: str, stage: str, shard: str, table: pa.Table, **meta) -> Path:
        """Write one shard atomically and mark it done (``meta`` goes into the marker,
        e.g. ``fingerprint=``). Returns the part path."""
        table = table.cast(SCHEMAS[table_name]) if table_name in SCHEMAS else table
        path = write_parquet_atomic(table, self.part_path(table_name, stage, shard))
        marker = {"rows": table.num_rows, "sha256": file_sha256(path), "written_at": time.time(), **meta}
        atomic_write_text(self.marker_path(table_name, stage, shard), json.dumps(marker, sort_keys=True))
        return path

    def read_part(self, table_name: str, stage: str, shard: str) -> pa.Table:
        """One finished shard; StorageError if it is not finished."""
        if not self.is_done(table_name, stage, shard):
            raise StorageError(f"{table_name}/{stage}/{shard} is not finished in {self.run_dir}")
        return pq.read_table(self.part_path(table_name, stage, shard))

    def committed_shards(self, table_name: str, stage: str | None = None) -> list[tuple[str, str]]:
        """(stage, shard) of every finished shard of a table (optionally of one stage), in order."""
        base = self.run_dir / table_name
        stages = [stage] if stage else sorted(p.name for p in base.glob("*") if p.is_dir())
        return [(st, f.stem.removeprefix("part-")) for st in stages for f in sorted((base / st).glob("part-*.parquet"))
                if self.marker_path(table_name, st, f.stem.removeprefix("part-")).is_file()]

    def committed_parts(self, table_name: str, stage: str | None = None) -> list[Path]:
        """Part files of a table (optionally of one stage) whose completion marker exists."""
        return [self.part_path(table_name, st, sh) for st, sh in self.committed_shards(table_name, stage)]

    def content_hash(self, inputs: list[tuple]) -> str:
        """One hash of committed parts, each input ``(table, stage or None[, shard])``: their
        paths and the content hashes their markers recorded (no file is re-read). A missing
        input counts as absent, so the hash changes when it appears."""
        h = hashlib.sha256()
        for table_name, stage, *shard in inputs:
            shards = [(stage, shard[0])] if shard else self.committed_shards(table_name, stage)
            for st, sh in shards:
                m = self.marker(table_name, st, sh)
                h.update(f"{table_name}/{st}/{sh}:{m['sha256'] if m else None}\n".encode())
        return h.hexdigest()[:16]

    def stage_marker_path(self, stage: str, shard: str) -> Path:
        return self.run_dir / "_done" / "stages" / f"{stage}.{shard}.json"

    def stage_done(self, stage: str, shard: str, fingerprint: dict) -> bool:
        """The stage's shard finished from exactly ``fingerprint``, and every table it wrote is there."""
        path = self.stage_marker_path(stage, shard)
        if not path.is_file():
            return False
        m = json.loads(path.read_text())
        return m.get("fingerprint") == fingerprint and all(self.is_done(t, stage, shard) for t in m.get("tables", []))

    def mark_stage_done(self, stage: str, shard: str, fingerprint: dict, tables: list[str]) -> None:
        """Mark a stage's shard finished: written last, after every table of the shard."""
        atomic_write_text(self.stage_marker_path(stage, shard),
                          json.dumps({"fingerprint": fingerprint, "tables": tables, "written_at": time.time()}, sort_keys=True))

    def read_table(self, table_name: str, stage: str | None = None) -> pa.Table:
        """All finished shards of a table (optionally of one stage), or an empty table."""
        parts = [pq.read_table(f) for f in self.committed_parts(table_name, stage)]
        schema = SCHEMAS.get(table_name)
        if not parts:
            if schema is None:
                raise StorageError(f"no finished shards of {table_name} in {self.run_dir}")
            return schema.empty_table()
        return pa.concat_tables(parts, promote_options="default")

    def supersede(self, paths: list[Path], why: str) -> Path:
        """Move ``paths`` (inside the run) to ``_superseded/<time>-<why>/``, keeping their
        relative layout. Nothing is deleted. Returns the destination folder."""
        dest = self.run_dir / "_superseded" / f"{time.strftime('%Y%m%d-%H%M%S')}-{why}"
        for path in paths:
            target = dest / path.relative_to(self.run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
        return dest

    def prune(self, table_name: str, stage: str, keep: list[str]) -> list[str]:
        """Supersede the finished shards of ``table/stage`` that are not in ``keep`` (left
        from an earlier sharding of the same stage). Returns the shards moved aside."""
        stale = [sh for _, sh in self.committed_shards(table_name, stage) if sh not in set(keep)]
        if stale:
            self.supersede([p for sh in stale for p in (self.part_path(table_name, stage, sh),
                                                          self.marker_path(table_name, stage, sh))], f"stale-{stage}")
        return stale

    def remove_stale_temps(self) -> list[Path]:
        """Delete the ``.*.tmp`` files and folders a killed writer left in the run (call only
        when no other process writes to it, e.g. when a run resumes). Returns what went."""
        gone = []
        for p in sorted(self.run_dir.rglob(".*.tmp"), key=lambda p: -len(p.parts)):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p)
        return gone

    def save_config(self, config_json: dict) -> None:
        atomic_write_text(self.run_dir / "config.json", json.dumps(config_json, indent=2, sort_keys=True))

    def load_config(self) -> dict:
        if not self.exists():
            raise RunNotFound(f"run {self.run_id!r} not found under {self.data_root / 'runs'}")
        return json.loads((self.run_dir / "config.json").read_text())

    def write_json(self, name: str, obj) -> Path:
        return atomic_write_text(self.run_dir / name, json.dumps(obj, indent=2, sort_keys=True, default=str))

    def log_config_change(self, stage: str, changes: dict) -> dict:
        """Append one entry (when, which stage, {field: {old, new}}) to ``reruns.jsonl``."""
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": stage, "changes": changes}
        with open(self.run_dir / "reruns.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        return entry
