"""``sphere query``: read-only SQL over the committed parts of every run, in a sandbox that
cannot write anywhere.

Three independent walls, each enough on its own against a write into the data root:

1. **The statement.** DuckDB's own parser splits the input (``extract_statements``); exactly
   one statement is accepted, and only of type SELECT (DESCRIBE, SUMMARIZE, SHOW, VALUES,
   FROM-first and CTEs parse as SELECT), or an EXPLAIN [ANALYZE] whose explained statement,
   cut out with DuckDB's tokenizer and parsed again, is itself a SELECT. Anything else
   (COPY, ATTACH, INSTALL, LOAD, SET, PRAGMA, CALL, CREATE, PIVOT's multi-statement, ...)
   raises ``QueryRefused`` naming the statement type, before the query runs.
2. **No file access at all.** The query runs in an in-memory database whose file system is
   closed: ``allowed_paths``, ``allowed_directories`` and ``temp_directory`` are emptied
   *before* ``enable_external_access`` is turned off (turned off at connect time DuckDB 2.0
   keeps ``:memory:`` and its ``.wal`` names relative to the working directory writable),
   replacement scans of Python variables, extension auto-install/auto-load are off, and the
   configuration is locked. No spill files: a query that needs more than ``memory_limit``
   fails and says so.
3. **Data handed in, not found.** The views are ``pyarrow.dataset`` objects over exactly
   the committed parts (each verified against its marker; ``infra.storage``) and a ``runs``
   table built in memory; DuckDB scans them through Arrow, never by path.

Results stream (``to_arrow_reader``) in batches of ``BATCH_ROWS`` rows, so a large result is
never held whole (``write_result``). A query still running after ``timeout_s`` is
interrupted.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from infra.catalog import CatalogError, catalog_path, committed_parts, runs_table
from infra.schemas import SCHEMAS
from infra.storage import StorageError
from infra.fs import as_path, snapshot

BATCH_ROWS = 10_000
ALLOWED = "SELECT"

# Order matters: the path lists can only be changed while external access is on.
_CLOSE_FILE_SYSTEM = ("SET enable_progress_bar = false", "SET temp_directory = ''", "SET allowed_paths = []", "SET allowed_directories = []",
                      "SET enable_external_access = false", "SET lock_configuration = true")


class QueryRefused(CatalogError):
    """The SQL is not one read-only query (COPY, ATTACH, INSTALL, LOAD, SET, CREATE, ...)."""


def _refuse(what: str) -> QueryRefused:
    return QueryRefused(f"sphere query runs one read-only SELECT statement; refused: {what} "
                        "(to save a result use --format csv|json|parquet --out FILE)")


def _explained(text: str) -> str | None:
    """The statement that ``EXPLAIN [ANALYZE] [(options)] <statement>`` explains, cut out with
    DuckDB's tokenizer (positions are UTF-8 byte offsets); None when the text has another shape."""
    raw = text.encode()
    tokens = [(pos, kind) for pos, kind in duckdb.tokenize(text) if kind != duckdb.token_type.comment]
    ends = [p for p, _ in tokens[1:]] + [len(raw)]
    words = [raw[p:e].decode().strip() for (p, _), e in zip(tokens, ends)]
    i = 0
    if i < len(words) and words[i].upper() == "EXPLAIN":
        i += 1
    else:
        return None
    if i < len(words) and words[i].upper() == "ANALYZE":
        i += 1
    if i < len(words) and words[i].startswith("("):
        depth = 0
        while i < len(words):
            if tokens[i][1] == duckdb.token_type.operator:
                depth += words[i].count("(") - words[i].count(")")
            i += 1
            if depth == 0:
                break
        if depth != 0:
            return None
    return raw[tokens[i][0]:].decode() if i < len(tokens) else None


def check_read_only(sql: str) -> None:
    """``QueryRefused`` unless ``sql`` is exactly one SELECT (or an EXPLAIN of one); a parse
    error is a ``CatalogError`` with DuckDB's message."""
    with _PARSER_LOCK:
        return _check(_parser(), sql)


_PARSER: list[duckdb.DuckDBPyConnection] = []
_PARSER_LOCK = threading.Lock()


def _parser() -> duckdb.DuckDBPyConnection:
    """A private connection used only to parse (a connection costs ~20 ms to open)."""
    if not _PARSER:
        _PARSER.append(duckdb.connect())
    return _PARSER[0]


def _check(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
        if len(statements) != 1:
            raise _refuse("no statement" if not statements else f"{len(statements)} statements (send one at a time)")
        st = statements[0]
        kind = st.type.name
        if kind == "EXPLAIN":
            inner = _explained(st.query)
            inner_kinds = [s.type.name for s in con.extract_statements(inner)] if inner is not None else []
            if inner_kinds != [ALLOWED]:
                raise _refuse(f"EXPLAIN of {', '.join(inner_kinds) or 'an unrecognised statement'}")
        elif kind != ALLOWED:
            raise _refuse(kind)
    except duckdb.Error as e:
        raise CatalogError(f"query failed: {e}") from None


def sandbox(data_root: Path, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with no file system (walls 2 and 3 above) and the
    catalog's views: one per table over its committed parts, plus ``runs``."""
    try:
        con = duckdb.connect(config={"python_enable_replacements": False, "autoinstall_known_extensions": False,
                                     "autoload_known_extensions": False, "memory_limit": memory_limit})
    except duckdb.Error as e:
        raise CatalogError(f"cannot start the query engine (--memory-limit {memory_limit!r}?): {e}") from None
    try:
        for statement in _CLOSE_FILE_SYSTEM:
            con.execute(statement)
        with snapshot(as_path(data_root) / "runs"):  # an object store: one listing, each record read once
            con.register("runs", runs_table(data_root))
            for name, parts in committed_parts(data_root).items():
                schema = SCHEMAS[name]
                con.register(name, _dataset(parts, schema) if parts else schema.empty_table())
    except StorageError as e:  # a committed part changed after its commit (PartCorrupt)
        con.close()
        raise CatalogError(str(e)) from None
    except BaseException:
        con.close()
        raise
    return con


def _dataset(parts: list, schema: pa.Schema) -> pads.Dataset:
    """A ``pyarrow.dataset`` over exactly ``parts``: local files (an object store's parts are
    their verified copies in this host's cache, ``infra.storage.verify_part``), so DuckDB needs
    no network extension."""
    return pads.dataset([str(p) for p in parts], schema=schema, format="parquet")


@contextlib.contextmanager
def query_batches(data_root: Path, sql: str, *, timeout_s: float = 300.0, memory_limit: str = "2GB") -> Iterator[pa.RecordBatchReader]:
    """Run ``sql`` read-only against the committed parts under ``data_root``; yields a reader
    of its result in batches of at most ``BATCH_ROWS`` rows. Errors while reading (the time
    limit, the memory limit, DuckDB's) are ``CatalogError``s."""
    root = as_path(data_root).resolve()
    if not catalog_path(root).is_file() and not (root / "runs").is_dir():
        raise CatalogError(f"no catalog at {catalog_path(root)}: run `sphere run` first (or pass --data-root)")
    check_read_only(sql)
    con = sandbox(root, memory_limit)
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.start()
    try:
        try:
            reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
        except duckdb.Error as e:
            raise _query_error(e, timeout_s, memory_limit) from None
        yield _Guarded(reader, timeout_s, memory_limit)
    finally:
        timer.cancel()
        con.close()


def query(data_root: Path, sql: str, *, timeout_s: float = 300.0, memory_limit: str = "2GB") -> pa.Table:
    """``query_batches`` read whole into one Arrow table (for small results)."""
    with query_batches(data_root, sql, timeout_s=timeout_s, memory_limit=memory_limit) as reader:
        return pa.Table.from_batches(list(reader), schema=reader.schema)


def _query_error(e: duckdb.Error, timeout_s: float, memory_limit: str) -> CatalogError:
    if isinstance(e, duckdb.InterruptException):
        return CatalogError(f"query stopped after {timeout_s:g}s (--timeout)")
    if isinstance(e, duckdb.OutOfMemoryException):
        return CatalogError(f"query needs more memory than --memory-limit {memory_limit}: {e}")
    return CatalogError(f"query failed: {e}")


class _Guarded:
    """A record batch reader whose DuckDB errors surface as ``CatalogError``."""

    def __init__(self, reader: pa.RecordBatchReader, timeout_s: float, memory_limit: str) -> None:
        self._reader, self._timeout_s, self._memory_limit = reader, timeout_s, memory_limit
        self.schema = reader.schema

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return
            except duckdb.Error as e:
                raise _query_error(e, self._timeout_s, self._memory_limit) from None
            except (pa.ArrowException, OSError) as e:  # DuckDB's error, as it crosses the Arrow stream
                text = str(e)
                if "INTERRUPT" in text.upper():
                    raise CatalogError(f"query stopped after {self._timeout_s:g}s (--timeout)") from None
                raise CatalogError(f"query failed: {text}") from None
            yield batch
