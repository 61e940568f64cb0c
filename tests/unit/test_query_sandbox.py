"""`sphere query` is read-only in fact: no statement but SELECT/EXPLAIN runs, no file outside
the data root is read or written, the configuration cannot be lifted, a runaway query stops."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app
from infra import catalog
from infra.catalog import CatalogError, QueryRefused
from infra.schemas import from_rows
from infra.storage import RunStore


@pytest.fixture
def root(tmp_path):
    store = RunStore(tmp_path / "data", "r1")
    store.write("problems", "seeds", "00000", from_rows([{"run_id": "r1", "problem_id": "a", "question": "q", "gold_answer": "1"}], "problems"))
    catalog.refresh(store.data_root)
    return store.data_root


@pytest.mark.parametrize("sql", [
    "COPY (select 42) TO '{outside}/x.csv'",
    "COPY (select * from problems) TO '{root}/runs/r1/problems/seeds/part-00000.parquet' (FORMAT parquet)",
    "ATTACH '{outside}/other.db'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "CREATE TABLE t AS SELECT 1",
    "PRAGMA version",
    "select 1; COPY (select 1) TO '{outside}/y.csv'",
])
def test_statements_other_than_select_are_refused_and_write_nothing(root, tmp_path, sql):
    outside = tmp_path / "outside"
    outside.mkdir()
    before = RunStore(root, "r1").part_path("problems", "seeds", "00000").read_bytes()
    with pytest.raises(QueryRefused, match="read-only SELECT"):
        catalog.query(root, sql.format(outside=outside, root=root))
    assert list(outside.iterdir()) == []
    assert RunStore(root, "r1").part_path("problems", "seeds", "00000").read_bytes() == before


@pytest.mark.parametrize("sql", ["select * from read_text('/etc/passwd')", "select * from read_csv('/etc/hostname')",
                                 "select * from read_parquet('{outside}/*.parquet')"])
def test_files_outside_the_data_root_cannot_be_read(root, tmp_path, sql):
    with pytest.raises(CatalogError, match="disabled by configuration|Permission"):
        catalog.query(root, sql.format(outside=tmp_path))


def test_reads_inside_the_data_root_and_explain_still_work(root):
    assert catalog.query(root, "select problem_id from problems").to_pylist() == [{"problem_id": "a"}]
    part = RunStore(root, "r1").part_path("problems", "seeds", "00000")
    assert catalog.query(root, f"select count(*) as n from read_parquet('{part}')").to_pylist() == [{"n": 1}]
    assert catalog.query(root, "explain select * from problems").num_rows >= 1


def test_a_runaway_query_is_stopped_at_its_time_limit(root):
    import time

    t = time.perf_counter()
    with pytest.raises(CatalogError, match="stopped after 1s"):
        catalog.query(root, "select count(*) from range(3000000000) a, range(1000) b", timeout_s=1)
    assert time.perf_counter() - t < 20


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
