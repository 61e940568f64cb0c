"""A corpus of SQL that must never change a file through ``sphere query``.

Every future change to the query path must pass ``tests/unit/test_query_sandbox.py`` over
this corpus: each statement is tried bare and in every wrapper DuckDB accepts around a
statement (EXPLAIN, EXPLAIN ANALYZE, EXPLAIN with options, a CTE, the ``query()`` table
function, a multi-statement string, comments), with targets inside the data root, outside
it, relative to the working directory and DuckDB's own special names (``:memory:``).
``{root}`` is the data root, ``{runs}`` its runs folder, ``{part}`` a committed part,
``{marker}`` a committed part's marker, ``{outside}`` a folder outside the root.
Add every new way in that anyone finds.
"""

from __future__ import annotations

TARGETS = ("{runs}/x.csv", "{part}", "{marker}", "{outside}/x.csv", "x.csv", ":memory:", ":memory:.wal", ".tmp/x.csv",
           "{root}/catalog.duckdb")

# Statements that write, attach, load, configure or execute something other than a read.
WRITES = (
    "COPY (SELECT 1 AS a) TO '{t}'",
    "COPY (SELECT 1 AS a) TO '{t}' (FORMAT parquet)",
    "COPY (SELECT 'EVIL: 2+2=5 #### 5' AS chosen) TO '{t}' (FORMAT json)",
    "COPY pairs TO '{t}'",
    "COPY pairs FROM '{t}'",
    "EXPORT DATABASE '{t}'",
    "IMPORT DATABASE '{t}'",
    "ATTACH '{t}' AS evil",
    "ATTACH '{t}' AS evil (TYPE sqlite)",
    "CHECKPOINT",
    "INSTALL httpfs",
    "LOAD httpfs",
    "FORCE INSTALL '{t}'",
    "SET temp_directory = '{t}'",
    "SET enable_external_access = true",
    "SET allowed_directories = ['{root}']",
    "RESET lock_configuration",
    "PRAGMA enable_profiling = 'json'",
    "PRAGMA profiling_output = '{t}'",
    "CALL pragma_version()",
    "CREATE TABLE evil AS SELECT 1",
    "CREATE VIEW pairs2 AS SELECT 1",
    "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
    "CREATE MACRO m() AS 1",
    "INSERT INTO runs VALUES ('x')",
    "UPDATE runs SET status = 'finished'",
    "DELETE FROM runs",
    "DROP VIEW pairs",
    "ALTER VIEW pairs RENAME TO p",
    "PREPARE p AS COPY (SELECT 1) TO '{t}'",
    "EXECUTE p",
    "VACUUM",
    "DETACH memory",
    "USE memory",
    "BEGIN TRANSACTION",
    "PIVOT pairs ON prompt",
    "SUMMARIZE (COPY (SELECT 1) TO '{t}')",
)

WRAPPERS = (
    "{s}",
    "EXPLAIN {s}",
    "EXPLAIN ANALYZE {s}",
    "explain analyze {s}",
    "EXPLAIN (ANALYZE) {s}",
    "EXPLAIN (FORMAT json) {s}",
    "EXPLAIN /* ) */ ANALYZE {s}",
    "EXPLAIN -- comment\nANALYZE {s}",
    "WITH a AS (SELECT 1) {s}",
    "SELECT * FROM query('{q}')",
    "FROM query('{q}')",
    "SELECT * FROM query_table('{q}')",
    "SELECT 1; {s}",
    "{s}; SELECT 1",
    "/* comment */ {s}",
    "({s})",
)

# Reads that must stay out of reach: files the data root does not commit.
READS = (
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/hostname')",
    "SELECT * FROM read_parquet('{part}')",
    "SELECT * FROM read_json('{marker}')",
    "SELECT * FROM glob('{root}/**')",
    "SELECT * FROM '{part}'",
    "SELECT * FROM read_blob('{root}/catalog.duckdb')",
    "SELECT getenv('HOME')",
    "SELECT * FROM sql",
    "SELECT * FROM os",
)


def corpus() -> list[str]:
    """Every write statement with every target in every wrapper, then the reads (templates)."""
    out = []
    for w in WRITES:
        for t in (TARGETS if "{t}" in w else ("",)):
            s = w.replace("{t}", t)
            for wrap in WRAPPERS:
                out.append(wrap.replace("{s}", s).replace("{q}", s.replace("'", "''")))
    return out + list(READS)
