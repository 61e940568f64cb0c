"""The DuckDB catalog: a view per table over the committed parts of every run.

A part is committed when its completion marker exists (``infra.storage``); parts without
one (a shard killed after its write, or that failed its validation gate) are never shown.

A damaged run never blocks the others: a shard whose marker cannot be read or whose part
changed after its commit is left out of the views, and the ``runs`` view says so (status
``damaged``, or ``incomplete`` when a committed file is missing, with the files and their repair
in ``error``; ``infra.integrity``). The other shards of that run, and every other run, are shown.

- ``committed_parts`` and ``runs_table`` are what ``infra.query`` (``sphere query``) hands its
  sandbox at query time: it sees every shard committed so far and never opens the catalog file.
- ``refresh(data_root)`` writes ``catalog.duckdb`` with the same views (explicit part
  lists, as of the refresh) for other DuckDB clients; it is rebuilt in a temp file and
  renamed into place, so a reader of the old file never blocks it.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa

from infra import integrity
from infra.schemas import SCHEMAS
from infra.storage import RunStore, StorageError
from infra.fs import as_path, is_uri

CATALOG_FILE = "catalog.duckdb"


class CatalogError(RuntimeError):
    """The catalog is missing, or a query against it failed."""


def sql_string(path: Path | str) -> str:
    """A path as a single-quoted SQL string literal (quotes doubled)."""
    return "'" + Path(path).as_posix().replace("'", "''") + "'"


def sql_list(paths) -> str:
    """Paths as a DuckDB list literal, for ``read_parquet([...])``."""
    return "[" + ", ".join(sql_string(p) for p in paths) + "]"


def catalog_path(data_root: Path) -> Path:
    return as_path(data_root) / CATALOG_FILE


def committed_parts(data_root: Path) -> dict[str, list[Path]]:
    """Every committed part file under ``data_root`` that matches its marker, by table; a damaged
    shard is left out (``integrity.intact_parts``; the ``runs`` view names it)."""
    runs = sorted(p for p in (as_path(data_root) / "runs").glob("*") if p.is_dir())
    return {name: [f for r in runs for f in integrity.intact_parts(RunStore.at(r), name)] for name in SCHEMAS}


RUNS_SCHEMA = pa.schema([("run_id", pa.string()), ("name", pa.string()), ("status", pa.string()), ("started_at", pa.string()),
                         ("finished_at", pa.string()), ("error", pa.string()), ("host", pa.string()), ("pid", pa.int64())])


def runs_table(data_root: Path) -> pa.Table:
    """One row per run under ``data_root``: its status (``running``, ``finished``, ``failed``,
    ``interrupted``; ``RunStore.read_status``), when it started and finished, and its error.
    A run with a damaged or missing file (``integrity.check``) reads ``damaged`` or
    ``incomplete`` whatever its record says, with the record's status, the files and their
    repair in ``error``."""
    rows = []
    for r in sorted(p for p in (as_path(data_root) / "runs").glob("*") if (p / "config.json").is_file()):
        store = RunStore.at(r)
        try:
            st = store.read_status()
        except StorageError:  # damaged: named by the check below
            st = {"status": "unknown"}
        try:
            name = store.load_config().get("name")
        except StorageError:
            name = None
        problems = integrity.check(store)
        if problems:
            bad = "damaged" if any(p.kind == "damaged" for p in problems) else "incomplete"
            st = {**st, "status": bad, "error": f"{st.get('status')}, but {bad}: {integrity.summary(problems)}"}
        rows.append({"run_id": r.name, "name": name, **{k: st.get(k) for k in RUNS_SCHEMA.names if k not in ("run_id", "name")}})
    return pa.Table.from_pylist(rows, RUNS_SCHEMA)


def _create_views(con, data_root: Path) -> None:
    con.register("_runs", runs_table(data_root))
    con.execute("CREATE OR REPLACE TABLE runs AS SELECT * FROM _runs")
    con.unregister("_runs")
    for name, parts in committed_parts(data_root).items():
        if parts:
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({sql_list(parts)}, union_by_name = true)")
        else:  # no committed part yet: an empty view with the table's columns
            empty = f"_empty_{name}"
            con.register(empty, SCHEMAS[name].empty_table())
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM {empty}")
            con.unregister(empty)


def refresh(data_root: Path) -> Path | None:
    """Rewrite the catalog file's views (committed parts as of now). Returns its path; None for
    an object-store root, which has no catalog file (its views would name ``s3://`` paths that
    DuckDB reads only through a network extension): ``sphere query`` builds the same views in
    memory from the markers."""
    if is_uri(data_root):
        return None
    root = Path(data_root).resolve()
    path = catalog_path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        _create_views(con, root)
    finally:
        con.close()
    os.replace(tmp, path)
    return path
