"""Run storage: Parquet shards written atomically, with completion markers.

Layout::

    <data_root>/runs/<run_id>/config.json                 the validated config of the run
    <data_root>/runs/<run_id>/<table>/<stage>/part-<shard>.parquet
    <data_root>/runs/<run_id>/_done/<table>.<stage>.<shard>.json   completion marker
    <data_root>/runs/<run_id>/_superseded/<when>-<why>/...         outputs moved aside (never deleted)
    <data_root>/catalog.duckdb                            views over every run

Contract: a file appears only complete (``atomic_write``: written to a hidden temp name,
fsynced, renamed). A shard counts as finished only when its marker exists; the marker
records the row count, size and content hash of the file and the shard's ``fingerprint``
(what it was computed from: stage config hash, code version, input content hash). ``is_done``
with a fingerprint is true only when the recorded one is equal, so a shard computed from
other inputs or another config is recomputed, and an unchanged one is never rewritten.

One commit per stage shard: a part written by a stage names its stage-shard marker
(``commit``: ``_done/stages/<stage>.<shard>.json``, written after every table of the shard),
and counts as finished only once that marker exists. So a shard's chains and pairs appear
together or not at all, to the stages, the catalog and ``sphere query`` alike.

Reads verify: every committed part read (``read_part``, ``read_table``, ``committed_parts``,
so the catalog too) is checked against its marker (size, row count, sha256) and a part changed
after its commit raises ``PartCorrupt`` naming the file and the stage to rerun.

Every JSON record of a run (markers, manifests, ``config.json``, ``status.json``) is read
through ``read_json``: a truncated, garbled or unreadable one raises ``DamagedFile`` naming the
file and its repair, never a bare ``JSONDecodeError``. For resume a damaged marker counts as
not done (``is_done``, ``stage_done``), so the shard is recomputed and its marker rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from infra.fs import AnyPath, StorePath, as_path, cache_root, upload_dir
from infra.schemas import SCHEMAS


class StorageError(RuntimeError):
    """A run directory or shard is missing or inconsistent."""


class RunNotFound(StorageError):
    """No run with this id under the data root."""


class PartCorrupt(StorageError):
    """A committed part no longer matches its completion marker (changed after its commit)."""


class DamagedFile(StorageError):
    """A run's JSON record (marker, manifest, config, status) is truncated, not JSON, not the
    object it should be, or cannot be read. The message names the file and its repair."""


def read_json(path: Path, repair: str) -> dict:
    """The JSON object in ``path``; ``DamagedFile`` naming ``path`` and ``repair`` when it is
    empty, truncated, not UTF-8, not a JSON object or unreadable. A missing file raises
    ``FileNotFoundError`` (callers that allow absence check first)."""
    try:
        text = as_path(path).read_text(encoding="utf-8")
        obj = json.loads(text)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DamagedFile(f"{path} cannot be read ({e.strerror or e}); {repair}") from None
    except UnicodeDecodeError:
        raise DamagedFile(f"{path} is damaged (not UTF-8 text); {repair}") from None
    except json.JSONDecodeError as e:
        why = "empty" if not text.strip() else f"not valid JSON: {e.msg}, line {e.lineno} column {e.colno}"
        raise DamagedFile(f"{path} is damaged ({why}); {repair}") from None
    if not isinstance(obj, dict):
        raise DamagedFile(f"{path} is damaged (a JSON {type(obj).__name__}, not an object); {repair}")
    return obj


_VERIFIED: dict[tuple, str] = {}  # (path, inode, size, mtime_ns) -> sha256 already checked in this process


def verify_part(path: AnyPath, marker: dict) -> Path:
    """``path`` if its size, row count and sha256 equal what ``marker`` recorded at commit,
    else ``PartCorrupt``. A file whose (inode, size, mtime) this process verified before is
    not hashed again; any rewrite of the file changes them.

    A part on an object store (``StorePath``) is read once into this host's part cache
    (``cache_root()/parts/<sha256>.parquet``, content-addressed), checked while it is read, and
    the local copy is returned: every reader (DuckDB, the report, the metrics) then reads local
    committed bytes, never the network, and never a part without its marker. Once cached, a
    part is checked against the store's size only (one request)."""
    if isinstance(path, StorePath):
        return _verified_copy(path, marker)
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if _VERIFIED.get(key) == marker.get("sha256"):
        return path
    problem = None
    if "size" in marker and st.st_size != marker["size"]:
        problem = f"size {st.st_size:,} bytes, committed {marker['size']:,}"
    else:
        sha = file_sha256(path)
        if sha != marker.get("sha256"):
            problem = f"sha256 {sha[:12]}..., committed {str(marker.get('sha256'))[:12]}..."
        else:
            rows = pq.read_metadata(path).num_rows
            if rows != marker.get("rows"):
                problem = f"{rows} rows, committed {marker.get('rows')}"
    if problem:
        raise _part_corrupt(path, problem)
    _VERIFIED[key] = marker["sha256"]
    return path


def _part_corrupt(path: AnyPath, problem: str) -> PartCorrupt:
    stage = path.parent.name.split("-")[0]
    return PartCorrupt(f"{path} was changed after its commit ({problem}); its data cannot be trusted. Recompute it: "
                       f"sphere rerun {path.parents[2].name} --stage {stage}")


def _verified_copy(path: StorePath, marker: dict) -> Path:
    sha = str(marker.get("sha256"))
    local = cache_root() / "parts" / f"{sha}.parquet"
    size = path.stat().st_size
    if "size" in marker and size != marker["size"]:
        raise _part_corrupt(path, f"size {size:,} bytes, committed {marker['size']:,}")
    if local.is_file():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    h = hashlib.sha256()
    try:
        with path.fs.open_input_stream(path.key) as src, open(tmp, "wb") as out:
            while block := src.read(1 << 20):
                h.update(block)
                out.write(block)
        if h.hexdigest() != sha:
            raise _part_corrupt(path, f"sha256 {h.hexdigest()[:12]}..., committed {sha[:12]}...")
        rows = pq.read_metadata(tmp).num_rows
        if rows != marker.get("rows"):
            raise _part_corrupt(path, f"{rows} rows, committed {marker.get('rows')}")
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)
    return local


def file_sha256(path: AnyPath) -> str:
    h = hashlib.sha256()
    with (path.open("rb") if isinstance(path, StorePath) else open(path, "rb")) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), to tell it from a later process
    given the same id; None when there is no such process (or no ``/proc``)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    if Path("/proc").is_dir():
        return start is not None and _process_start(pid) == start
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


RUN_STATUSES = ("running", "finished", "failed", "interrupted")


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a hidden temp file beside ``path``, fsync it, rename it onto
    ``path``. Readers see the old file or the whole new one, never a part; a crash leaves
    at most a ``.*.tmp`` file. Returns ``path``.

    On an object store (``StorePath``) the temp file is local and is uploaded whole to ``path``:
    the object appears only when its upload completes, so readers see the same all or nothing."""
    path = as_path(path)
    if isinstance(path, StorePath):
        with tempfile.TemporaryDirectory(prefix="sphere-upload-") as d:
            tmp = Path(d) / path.name
            write(tmp)
            path.upload(tmp)
        return path
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
    a half-written directory; a crash leaves at most ``.*.tmp`` directories. Returns ``path``.

    On an object store the folder is written locally, the old keys under ``path`` are deleted and
    the files uploaded with ``_files.json`` last (``infra.fs.upload_dir``); what commits it is the
    caller's marker, written after this returns."""
    path = as_path(path)
    if isinstance(path, StorePath):
        with tempfile.TemporaryDirectory(prefix="sphere-upload-") as d:
            write(Path(d))
            path.rmtree()
            upload_dir(Path(d), path)
        return path
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


def write_parquet_atomic(table: pa.Table, path: Path, digest: dict | None = None) -> Path:
    """``table`` as a Parquet file at ``path`` (``atomic_write``). ``digest``, when given, receives
    the file's ``size`` and ``sha256``, taken from the local temp file before it is renamed or
    uploaded (on an object store, without reading the object back)."""
    def write(tmp: Path) -> None:
        pq.write_table(table, tmp, compression="zstd")
        if digest is not None:
            digest.update(size=tmp.stat().st_size, sha256=file_sha256(tmp))

    return atomic_write(path, write)


@dataclass(frozen=True)
class RunStore:
    data_root: AnyPath  # a local Path or a StorePath (infra.fs)
    run_id: str

    @classmethod
    def at(cls, run_dir: str | Path) -> RunStore:
        """The store of the run directory ``<data_root>/runs/<run_id>``."""
        path = as_path(run_dir)
        return cls(path.parent.parent, path.name)

    @classmethod
    def open(cls, data_root: str | Path, run_id: str) -> RunStore:
        """The store of an existing run; ``RunNotFound`` naming where it looked otherwise."""
        store = cls(as_path(data_root).resolve(), run_id)
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

    def repair(self, path: Path) -> str:
        """How to repair ``path`` of this run when it is damaged or missing (every message naming
        such a file says it): a record of a shard is recomputed by a resume; the config cannot be."""
        run, name = self.run_id, as_path(path).name
        if name == "config.json":
            return (f"it holds the run's settings and cannot be recomputed: restore it from a copy, or move the run "
                    f"aside (mv {self.run_dir} <elsewhere>) so that it no longer shows among the runs")
        if name == "status.json":
            return f"it only records how the run went: `sphere run --resume {run}` writes it anew"
        parts = name.split(".")
        if as_path(path).parent.name == "_done" and not name.endswith(".manifest.json") and len(parts) > 2:
            stage = parts[1].split("-")[0]  # <table>.<stage>[-<table>].<shard>.json
        else:  # _done/stages/<stage>.<shard>.json, _done/<stage>.manifest.json
            stage = parts[0]
        return (f"`sphere run --resume {run}` recomputes that shard (or `sphere rerun {run} --stage {stage}` "
                f"redoes the stage and everything after it)")

    def read_record(self, path: Path) -> dict:
        """A JSON record of this run (``read_json``): ``DamagedFile`` names it and its repair."""
        return read_json(path, self.repair(path))

    def marker(self, table: str, stage: str, shard: str) -> dict | None:
        """The shard's completion marker, or None when the shard is not finished (no marker,
        no part, or the stage-shard commit the marker names is not written yet). A marker that
        cannot be read raises ``DamagedFile``."""
        path = self.marker_path(table, stage, shard)
        if not (path.is_file() and self.part_path(table, stage, shard).is_file()):
            return None
        m = self.read_record(path)
        if m.get("commit") and not (self.run_dir / "_done" / "stages" / f"{m['commit']}.json").is_file():
            return None
        return m

    def is_done(self, table: str, stage: str, shard: str, fingerprint: dict | None = None) -> bool:
        """Finished, and (when ``fingerprint`` is given) computed from exactly that. A damaged
        marker is not done: the shard is recomputed and the marker written anew."""
        try:
            m = self.marker(table, stage, shard)
        except DamagedFile:
            return False
        return m is not None and (fingerprint is None or m.get("fingerprint") == fingerprint)

    def write(self, table_name: str, stage: str, shard: str, table: pa.Table, **meta) -> Path:
        """Write one shard atomically and mark it done (``meta`` goes into the marker,
        e.g. ``fingerprint=``; ``commit="<stage>.<shard>"`` makes the part count only once
        that stage-shard marker exists). Returns the part path."""
        table = table.cast(SCHEMAS[table_name]) if table_name in SCHEMAS else table
        digest: dict = {}
        path = write_parquet_atomic(table, self.part_path(table_name, stage, shard), digest)
        marker = {"rows": table.num_rows, **digest, "written_at": time.time(), **meta}
        atomic_write_text(self.marker_path(table_name, stage, shard), json.dumps(marker, sort_keys=True))
        return path

    def read_part(self, table_name: str, stage: str, shard: str) -> pa.Table:
        """One finished shard, verified against its marker; StorageError if it is not finished."""
        m = self.marker(table_name, stage, shard)
        if m is None:
            raise StorageError(f"{table_name}/{stage}/{shard} is not finished in {self.run_dir}")
        return pq.read_table(verify_part(self.part_path(table_name, stage, shard), m))

    def committed_shards(self, table_name: str, stage: str | None = None) -> list[tuple[str, str]]:
        """(stage, shard) of every finished shard of a table (optionally of one stage), in order."""
        base = self.run_dir / table_name
        stages = [stage] if stage else sorted(p.name for p in base.glob("*") if p.is_dir())
        return [(st, f.stem.removeprefix("part-")) for st in stages for f in sorted((base / st).glob("part-*.parquet"))
                if self.marker(table_name, st, f.stem.removeprefix("part-")) is not None]

    def committed_parts(self, table_name: str, stage: str | None = None) -> list[Path]:
        """Part files of a table (optionally of one stage) that are committed, each verified
        against its marker (``PartCorrupt`` when one was changed after its commit)."""
        return [verify_part(self.part_path(table_name, st, sh), self.marker(table_name, st, sh))
                for st, sh in self.committed_shards(table_name, stage)]

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

    def stage_done(self, stage: str, shard: str, fingerprint: dict | None = None) -> bool:
        """The stage's shard is committed (its marker and the marker of every table it lists are
        there and readable) and, when ``fingerprint`` is given, was computed from exactly that."""
        path = self.stage_marker_path(stage, shard)
        if not path.is_file():
            return False
        try:
            m = self.read_record(path)
        except DamagedFile:
            return False
        return (fingerprint is None or m.get("fingerprint") == fingerprint) and all(self.is_done(t, stage, shard) for t in m.get("tables", []))

    def unmark_stage(self, stage: str, shard: str) -> None:
        """Withdraw a stage shard's commit before it is recomputed: its old parts stop counting
        (to every reader) until the new commit is written."""
        self.stage_marker_path(stage, shard).unlink(missing_ok=True)

    def mark_stage_done(self, stage: str, shard: str, fingerprint: dict, tables: list[str], **extra) -> None:
        """Mark a stage's shard finished: written last, after every table of the shard."""
        atomic_write_text(self.stage_marker_path(stage, shard),
                          json.dumps({**extra, "fingerprint": fingerprint, "tables": tables, "written_at": time.time()}, sort_keys=True))

    def stage_marker(self, stage: str, shard: str) -> dict | None:
        """A stage shard's commit record, or None when it is not committed (``DamagedFile`` when unreadable)."""
        path = self.stage_marker_path(stage, shard)
        return self.read_record(path) if path.is_file() else None

    def stage_marker_paths(self, stage: str) -> list[Path]:
        """Every commit record of ``stage``, one per shard that has one (readable or not), sorted."""
        return sorted((self.run_dir / "_done" / "stages").glob(f"{stage}.*.json"))

    def prune_stage(self, stage: str, tables: tuple[str, ...], implicit: tuple[str, ...], keep: list[str]) -> None:
        """A new sharding of ``stage`` leaves no stale shards behind: its commit records of shards
        not in ``keep`` first (so no reader sees a commit whose files moved), then the parts of
        the ``tables`` it writes and of their ``implicit`` companions (``<table>/<stage>-<written>``)."""
        keep_set = set(keep)
        stale = [m for m in self.stage_marker_paths(stage) if m.stem.partition(".")[2] not in keep_set]
        if stale:
            self.supersede(stale, f"stale-{stage}")
        for table in tables:
            self.prune(table, stage, keep)
            for other in implicit:
                self.prune(other, f"{stage}-{table}", keep)

    def stage_outputs(self, stage: str, tables: tuple[str, ...], implicit: tuple[str, ...]) -> list[Path]:
        """Every file and folder ``stage`` owns when it writes ``tables`` (each with its
        ``implicit`` companions): its commit records (first: a reader never sees one without its
        files), ``<table>/<stage>``, ``<implicit>/<stage>-*``, the tables' markers and its manifest."""
        done = self.run_dir / "_done"
        paths = self.stage_marker_paths(stage)
        paths += [self.run_dir / t / stage for t in tables] + [d for t in implicit for d in (self.run_dir / t).glob(f"{stage}-*")]
        paths += [m for t in (*tables, *implicit) for m in done.glob(f"{t}.{stage}.*.json")]
        paths += [m for t in implicit for m in done.glob(f"{t}.{stage}-*.json")]
        paths += [done / f"{stage}.manifest.json"]
        return [p for p in dict.fromkeys(paths) if p.exists()]

    def read_table(self, table_name: str, stage: str | None = None) -> pa.Table:
        """All finished shards of a table (optionally of one stage, each verified), or an empty table."""
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
        keep_set = set(keep)
        parts = sorted((self.run_dir / table_name / stage).glob("part-*.parquet"))
        stale = [sh for sh in (f.stem.removeprefix("part-") for f in parts)
                 if sh not in keep_set and self.marker_path(table_name, stage, sh).is_file()]
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
        return self.read_record(self.run_dir / "config.json")

    def set_status(self, status: str, error: str | None = None) -> dict:
        """Record the run's status in ``status.json``: ``running`` (with this process's id,
        host and start time), then ``finished``, ``failed`` (with the error) or ``interrupted``."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, not {status!r}")
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        try:
            old = self.read_status(raw=True)
        except DamagedFile:  # a damaged record is replaced; only its start time is lost
            old = {}
        rec = {"status": status, "pid": os.getpid(), "pid_start": _process_start(os.getpid()), "host": socket.gethostname(),
               "started_at": old.get("started_at") if status != "running" else now, "updated_at": now,
               "finished_at": now if status != "running" else None, "error": error}
        atomic_write_text(self.run_dir / "status.json", json.dumps(rec, indent=2, sort_keys=True))
        return rec

    def read_status(self, raw: bool = False) -> dict:
        """The run's status record. A ``running`` run whose process is gone (killed: kill -9,
        a lost machine) on this host reads as ``interrupted``; a run from before status
        records exists reads as ``finished`` when it has a summary, else ``unknown``. An unreadable
        record raises ``DamagedFile``."""
        path = self.run_dir / "status.json"
        if not path.is_file():
            return {} if raw else {"status": "finished" if (self.run_dir / "summary.json").is_file() else "unknown"}
        rec = self.read_record(path)
        if (not raw and rec.get("status") == "running" and rec.get("host") == socket.gethostname()
                and not _alive(rec.get("pid", -1), rec.get("pid_start"))):
            rec = {**rec, "status": "interrupted", "error": rec.get("error") or "the run's process ended without finishing (killed?)"}
        return rec

    def write_json(self, name: str, obj) -> Path:
        return atomic_write_text(self.run_dir / name, json.dumps(obj, indent=2, sort_keys=True, default=str))

    def log_config_change(self, stage: str, changes: dict) -> dict:
        """Append one entry (when, which stage, {field: {old, new}}) to ``reruns.jsonl``."""
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": stage, "changes": changes}
        path = self.run_dir / "reruns.jsonl"
        if isinstance(path, StorePath):  # no append on an object store: the log is rewritten whole
            old = path.read_text() if path.is_file() else ""
            path.write_text(old + json.dumps(entry) + "\n")
            return entry
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        return entry
