"""The DuckDB catalog: one file with a view per table over every run's Parquet.

Views use globs, so shards written after ``refresh`` are visible without a refresh. An
empty, schema-only part file under ``runs/_schema`` keeps every view valid before any run
has written that table. Queries from the CLI open the catalog read-only.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from infra.schemas import SCHEMAS
from infra.storage import write_parquet_atomic

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
    return Path(data_root) / CATALOG_FILE


def refresh(data_root: Path) -> Path:
    """Create or update the catalog file's views. Returns its path."""
    root = Path(data_root).resolve()
    for name, schema in SCHEMAS.items():
        placeholder = root / "runs" / "_schema" / name / "_" / "part-empty.parquet"
        if not placeholder.is_file():
            write_parquet_atomic(schema.empty_table(), placeholder)
    path = catalog_path(root)
    con = duckdb.connect(str(path))
    try:
        for name in SCHEMAS:
            glob = sql_string(root / "runs" / "*" / name / "**" / "part-*.parquet")
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({glob}, union_by_name = true)")
    finally:
        con.close()
    return path


def query(data_root: Path, sql: str) -> pa.Table:
    """Run ``sql`` read-only against the catalog; returns an Arrow table."""
    path = catalog_path(data_root)
    if not path.is_file():
        raise CatalogError(f"no catalog at {path}: run `sphere run` first (or pass --data-root)")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as e:
        raise CatalogError(f"cannot open catalog {path}: {e}") from None
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as e:
        raise CatalogError(f"query failed: {e}") from None
    finally:
        con.close()
