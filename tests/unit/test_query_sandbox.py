"""`sphere query` cannot write anywhere: no statement but one SELECT (or EXPLAIN of one) runs,
DuckDB's file system is closed, files are handed in as the committed parts only, --out never
lands inside the data root, and results stream in bounded memory."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from flows.cli import app
from infra import catalog
from infra.catalog import CatalogError
from infra.query import QueryRefused, check_read_only, query, sandbox
from infra.schemas import from_rows
from infra.storage import RunStore
from tests.unit.hostile_queries import READS, TARGETS, WRAPPERS, WRITES, corpus

SPHERE = [sys.executable, "-m", "flows.cli"]


@pytest.fixture
def root(tmp_path):
    store = RunStore(tmp_path / "data", "r1")
    store.write("problems", "seeds", "00000", from_rows([{"run_id": "r1", "problem_id": "a", "question": "q", "gold_answer": "1"}], "problems"))
    store.write("pairs", "routing", "00000", from_rows([{"run_id": "r1", "pair_id": "p1", "problem_id": "a", "prompt": "q",
                                                         "chosen": "1 #### 1", "rejected": "2 #### 2"}], "pairs"))
    catalog.refresh(store.data_root)
    (tmp_path / "outside").mkdir()
    return store.data_root


def snapshot(*dirs: Path) -> dict[str, str]:
    """Every file under ``dirs``: path -> sha256 (a change, an addition or a removal shows)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for d in dirs for p in sorted(Path(d).rglob("*")) if p.is_file()}


def fill(sql: str, root: Path) -> str:
    store = RunStore(root, "r1")
    part = store.part_path("pairs", "routing", "00000")
    marker = next((store.run_dir / "_done").glob("pairs.routing.*.json"))
    return (sql.replace("{root}", str(root)).replace("{runs}", str(root / "runs")).replace("{part}", str(part))
            .replace("{marker}", str(marker)).replace("{outside}", str(root.parent / "outside")))


def test_the_reported_attack_is_refused_and_writes_nothing(root):
    """Issue 18.1 as reported: EXPLAIN ANALYZE COPY into <root>/runs/ exited 0 and created the file."""
    before = snapshot(root)
    res = CliRunner().invoke(app, ["query", f"explain analyze copy (select 1 as a) to '{root}/runs/x.csv'", "--data-root", str(root)])
    assert res.exit_code == 1 and "refused: EXPLAIN of COPY" in res.output
    assert snapshot(root) == before and not (root / "runs" / "x.csv").exists()


def test_every_hostile_query_in_the_corpus_fails_cleanly_and_changes_no_file(root, monkeypatch):
    monkeypatch.chdir(root / "runs")  # relative targets ('x.csv', ':memory:') would land inside the data root
    outside = root.parent / "outside"
    before = snapshot(root, outside)
    items = corpus()
    assert len(items) > 2000
    for template in items:
        sql = fill(template, root)
        with pytest.raises(CatalogError):
            query(root, sql, timeout_s=30)
        assert snapshot(root, outside) == before, sql


@pytest.mark.parametrize("statement", [w for w in WRITES if "{t}" in w][:6])
def test_the_sandbox_alone_cannot_write_even_when_the_statement_check_is_bypassed(root, monkeypatch, statement):
    """Wall 2 on its own: write statements sent straight to the sandbox connection (no
    statement check) fail, for every target, with the working directory inside the data
    root (DuckDB 2.0 leaves ':memory:' writable there when external access is off at connect)."""
    import duckdb

    monkeypatch.chdir(root / "runs")
    before = snapshot(root, root.parent / "outside")
    con = sandbox(root, "256MB")
    try:
        for target in TARGETS:
            with pytest.raises(duckdb.Error):
                con.execute(fill(statement.replace("{t}", target), root))
        for sql in ("SET enable_external_access = true", "SET allowed_directories = ['/']", "SET temp_directory = '.'",
                    "ATTACH ':memory:.wal' AS w", "INSTALL httpfs"):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
    finally:
        con.close()
    assert snapshot(root, root.parent / "outside") == before


@pytest.mark.parametrize("sql", list(READS))
def test_files_the_data_root_does_not_commit_cannot_be_read(root, sql):
    with pytest.raises(CatalogError):
        query(root, fill(sql, root))


@pytest.mark.parametrize("sql,expect", [
    ("select problem_id from problems", [{"problem_id": "a"}]),
    ("from pairs select chosen", [{"chosen": "1 #### 1"}]),
    ("with x as (select * from pairs) select count(*) as n from x", [{"n": 1}]),
    ("select * from query('select count(*) as n from problems')", [{"n": 1}]),
    ("select count(*) as n from query_table('pairs')", [{"n": 1}]),
    ("select count(*) as n from runs", [{"n": 0}]),
    ("select 'a;b' as s -- trailing comment", [{"s": "a;b"}]),
])
def test_read_only_queries_still_work(root, sql, expect):
    assert query(root, sql).to_pylist() == expect


@pytest.mark.parametrize("sql", ["explain select * from pairs", "EXPLAIN ANALYZE select count(*) from pairs",
                                 "explain (format json) select 1", "describe pairs", "summarize problems", "show tables"])
def test_explain_of_a_select_and_the_select_like_statements_run(root, sql):
    assert query(root, sql).num_rows >= 1


@pytest.mark.parametrize("sql,refused", [
    ("", "no statement"), ("select 1; select 2", "2 statements"), ("explain copy pairs to 'x'", "EXPLAIN of COPY"),
    ("explain analyze create table t as select 1", "EXPLAIN of CREATE"), ("pivot pairs on prompt", "MULTI"), ("call pragma_version()", "CALL"),
])
def test_refusals_name_what_was_refused(sql, refused):
    with pytest.raises(QueryRefused, match="one read-only SELECT statement; refused: " + refused):
        check_read_only(sql)


_fragments = st.sampled_from(["COPY", "(", ")", "SELECT", "1", "TO", "'x.csv'", "EXPLAIN", "ANALYZE", ";", "FROM", "pairs",
                              "ATTACH", "':memory:'", "query(", "'", "''", "--", "/*", "*/", "WITH", "a", "AS", "INSTALL",
                              "SET", "=", "true", ",", "FORMAT", "json", "LOAD", "CALL", "PRAGMA", "CREATE", "TABLE"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wrap=st.sampled_from(WRAPPERS), write=st.sampled_from(WRITES), target=st.sampled_from(TARGETS),
       noise=st.lists(_fragments, max_size=12))
def test_property_no_sql_changes_the_data_root(root, monkeypatch, wrap, write, target, noise):
    """For any SQL — corpus pieces recombined with random token soup — the query either runs
    or fails with a CatalogError, and the data root's files and hashes are unchanged after."""
    monkeypatch.chdir(root / "runs")
    before = snapshot(root)
    statement = write.replace("{t}", target)
    for sql in (wrap.replace("{s}", statement).replace("{q}", statement.replace("'", "''")), " ".join(noise),
                statement + " " + " ".join(noise)):
        try:
            query(root, fill(sql, root), timeout_s=30)
        except CatalogError:
            pass
        assert snapshot(root) == before, sql


def test_out_inside_the_data_root_is_refused_also_through_a_symlink(root, tmp_path):
    link = tmp_path / "innocent"
    link.symlink_to(root / "runs")
    before = snapshot(root)
    for out in (root / "runs" / "r1" / "x.csv", root / "y.csv", link / "z.csv"):
        res = CliRunner().invoke(app, ["query", "select 1 as a", "--data-root", str(root), "--format", "csv", "--out", str(out)])
        assert res.exit_code == 1 and "inside the data root" in res.output, res.output
    assert snapshot(root) == before


def test_out_errors_are_one_line_and_leave_nothing(root, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["query", "select 1 as a", "--data-root", str(root), "--format", "csv", "--out", str(tmp_path / "no" / "f.csv")])
    assert res.exit_code == 1 and "does not exist" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["query", "select 1 as a", "--data-root", str(root), "--format", "parquet"])
    assert res.exit_code == 1 and "needs --out" in res.output
    # a query failing half-way (its time limit) leaves no partial file, and keeps an existing one
    out = tmp_path / "keep.json"
    out.write_text("old\n")
    res = runner.invoke(app, ["query", "select range from range(3000000000) where range % 7 = 0", "--data-root", str(root),
                              "--format", "json", "--out", str(out), "--timeout", "2"])
    assert res.exit_code == 1 and "stopped after 2s" in res.output
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".keep")) == []


def test_zero_rows_and_formats(root, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["query", "select * from pairs where false", "--data-root", str(root), "--format", "json"])
    assert res.exit_code == 0 and res.stdout == ""  # JSON lines: no row, no line (was a blank line)
    res = runner.invoke(app, ["query", "select pair_id from pairs", "--data-root", str(root), "--format", "csv"])
    assert res.stdout == '"pair_id"\n"p1"\n'
    out = tmp_path / "r.parquet"
    res = runner.invoke(app, ["query", "select range as i from range(25000)", "--data-root", str(root), "--format", "parquet", "--out", str(out)])
    import pyarrow.parquet as pq

    assert res.exit_code == 0 and pq.read_table(out).column("i").to_pylist() == list(range(25000))


def test_a_runaway_query_is_stopped_at_its_time_limit(root):
    t = time.perf_counter()
    with pytest.raises(CatalogError, match="stopped after 1s"):
        query(root, "select count(*) from range(3000000000) a, range(1000) b", timeout_s=1)
    assert time.perf_counter() - t < 20


def test_memory_limit_bounds_a_large_result_streamed_to_a_file(root, tmp_path):
    """Issue 18.9: 3M rows as JSON with --memory-limit 64MB reached 1.48 GB RSS (the whole
    result was held, then formatted). Streamed in batches, the process stays near its baseline."""
    code = ("import resource, sys; from flows.cli import main; sys.argv = ['sphere'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr); sys.exit(code)")

    def peak_rss_mb(rows: int, out: Path) -> int:
        res = subprocess.run([sys.executable, "-c", code, "query", f"select range, 'abcdefghij' from range({rows})", "--data-root",
                              str(root), "--format", "json", "--out", str(out), "--memory-limit", "64MB"],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        with open(out, "rb") as f:
            assert sum(1 for _ in f) == rows
        return int(res.stderr.rsplit("RSS", 1)[1])

    small, big = peak_rss_mb(3_000, tmp_path / "small.json"), peak_rss_mb(3_000_000, tmp_path / "big.json")
    assert big < small + 250, f"peak RSS {big} MB for 3M rows, {small} MB for 3k rows"  # was 1,481 MB vs ~190


def test_a_killed_query_leaves_nothing_in_the_temp_directory(root, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([*SPHERE, "query", "select count(*) from range(3000000000) a, range(1000) b", "--data-root", str(root)],
                            env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(8)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert list(tmp.iterdir()) == []


def test_csv_output_ends_with_one_newline_and_the_data_root_comes_from_the_environment(root, monkeypatch):
    monkeypatch.setenv("SPHERE_DATA_ROOT", str(root))
    res = CliRunner().invoke(app, ["query", "select problem_id from problems", "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert res.stdout == '"problem_id"\n"a"\n'  # found through $SPHERE_DATA_ROOT; one newline at the end
    monkeypatch.setenv("SPHERE_DATA_ROOT", str(root) + "-nope")
    res = CliRunner().invoke(app, ["query", "select count(*) as n from problems", "--data-root", str(root), "--format", "json"])
    assert res.exit_code == 0 and res.stdout == '{"n": 1}\n'  # the option wins over the variable
    res = CliRunner().invoke(app, ["query", "select 1"])
    assert res.exit_code == 1 and "-nope" in res.stderr



def test_a_long_path_in_a_message_is_printed_whole_on_an_80_column_terminal(tmp_path, monkeypatch):
    """Rich wrapped messages at the terminal's width, breaking the path a user copies
    (`.../catalog.duck` newline `db`); the CLI's consoles soft-wrap instead."""
    import flows.cli as cli

    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "data"
    monkeypatch.setattr(cli.console, "_width", 80)
    res = CliRunner().invoke(app, ["query", "select 1", "--data-root", str(deep)])
    assert res.exit_code == 1 and str(deep / "catalog.duckdb") in res.stderr, res.stderr
