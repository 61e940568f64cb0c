"""Writing a query's result (``sphere query --format/--out``) batch by batch.

``check_out(out, data_root)`` refuses an ``--out`` that is, or resolves through symlinks
to, a path inside the data root, a directory, or a file in a directory that does not exist.
``write_result(batches, fmt, out)`` streams the batches to ``out`` (or stdout): memory stays
at about one batch whatever the result's size. A file is written under a hidden temp name
beside it and renamed into place only when the whole result is written, so a query that
fails half-way leaves no partial file (and an existing file is replaced only by a whole one).

Formats: ``csv`` (header, quoted strings), ``json`` (JSON lines, one object per row; a
0-row result writes nothing), ``parquet`` (needs ``--out``), ``table`` (the terminal: the
first ``TABLE_ROWS`` rows, then how many more there were).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import BinaryIO, Iterable

import pyarrow as pa

from infra.fs import as_path

FORMATS = ("table", "csv", "json", "parquet")
TABLE_ROWS = 200


class OutputError(ValueError):
    """``--out`` / ``--format`` name a place or a combination the result cannot be written to."""


def check_out(out: Path | None, fmt: str, data_root: Path) -> Path | None:
    """The resolved target file for ``out``, or an ``OutputError`` saying what is wrong with it."""
    if fmt not in FORMATS:
        raise OutputError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if out is None:
        if fmt == "parquet":
            raise OutputError("--format parquet needs --out FILE")
        return None
    if fmt == "table":
        raise OutputError("--out needs --format csv, json or parquet (table is for the terminal)")
    target = Path(out).expanduser().resolve()
    root = as_path(data_root).resolve()  # an object-store root: every local file is outside it
    if isinstance(root, Path) and (target == root or root in target.parents):
        raise OutputError(f"--out {out} is inside the data root {root}; sphere query never writes there (choose a path outside it)")
    if target.is_dir():
        raise OutputError(f"--out {out} is a directory; name a file")
    if not target.parent.is_dir():
        raise OutputError(f"--out {out}: the directory {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise OutputError(f"--out {out}: the directory {target.parent} is not writable")
    return target


def write_result(batches: Iterable[pa.RecordBatch], schema: pa.Schema, fmt: str, target: Path | None, *,
                 show=None) -> int:
    """Write every batch as ``fmt`` to ``target`` (stdout when None); returns the row count.
    ``show(schema, rows, total)`` renders the ``table`` format (the first rows and the total)."""
    if fmt == "table":
        rows, total = [], 0
        for b in batches:
            if len(rows) < TABLE_ROWS:
                rows += b.slice(0, TABLE_ROWS - len(rows)).to_pylist()
            total += b.num_rows
        show(schema, rows, total)
        return total
    if target is None:
        sys.stdout.flush()
        return _write(batches, schema, fmt, sys.stdout.buffer)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            n = _write(batches, schema, fmt, f)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _write(batches: Iterable[pa.RecordBatch], schema: pa.Schema, fmt: str, sink: BinaryIO) -> int:
    n = 0
    if fmt == "csv":
        import pyarrow.csv as pacsv

        with pacsv.CSVWriter(sink, schema) as w:
            for b in batches:
                w.write_batch(b)
                n += b.num_rows
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(sink, schema) as w:
            for b in batches:
                w.write_batch(b)
                n += b.num_rows
    else:
        for b in batches:
            sink.write("".join(json.dumps(r, default=str) + "\n" for r in b.to_pylist()).encode())
            n += b.num_rows
    sink.flush()
    return n
