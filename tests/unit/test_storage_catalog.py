import pytest

from infra import catalog
from infra.catalog import CatalogError
from infra.query import query as run_query
from infra.schemas import from_rows
from infra.storage import RunStore


def problems(run_id, ids):
    return from_rows([{"run_id": run_id, "problem_id": i, "question": f"q{i}", "gold_answer": "1"} for i in ids], "problems")


def test_write_is_atomic_marked_and_read_back_only_when_finished(tmp_path):
    store = RunStore(tmp_path, "r1")
    assert not store.is_done("problems", "seeds", "00000")
    store.write("problems", "seeds", "00000", problems("r1", ["a", "b"]))
    assert store.is_done("problems", "seeds", "00000")
    # A part file without its marker (a crash between rename and marker) is not read.
    store.part_path("problems", "seeds", "00001").write_bytes(store.part_path("problems", "seeds", "00000").read_bytes())
    assert store.read_table("problems").column("problem_id").to_pylist() == ["a", "b"]
    assert not list(store.run_dir.rglob("*.tmp"))
    assert store.read_table("chains").num_rows == 0  # empty, with the schema


def test_catalog_views_span_runs_and_queries_are_read_only(tmp_path):
    catalog.refresh(tmp_path)  # before any run: views exist and are empty
    assert run_query(tmp_path, "select count(*) as n from chains").to_pylist() == [{"n": 0}]
    RunStore(tmp_path, "r1").write("problems", "seeds", "00000", problems("r1", ["a", "b"]))
    RunStore(tmp_path, "r2").write("problems", "seeds", "00000", problems("r2", ["c"]))
    got = run_query(tmp_path, "select run_id, count(*) as n from problems group by 1 order by 1").to_pylist()
    assert got == [{"run_id": "r1", "n": 2}, {"run_id": "r2", "n": 1}]
    with pytest.raises(CatalogError, match="read-only|read only"):
        run_query(tmp_path, "create table t as select 1")
    with pytest.raises(CatalogError, match="query failed"):
        run_query(tmp_path, "select nope from problems")


def test_query_without_catalog_says_what_to_do(tmp_path):
    with pytest.raises(CatalogError, match="sphere run"):
        run_query(tmp_path, "select 1")


def test_catalog_shows_only_committed_parts_and_refresh_never_waits_for_readers(tmp_path):
    import duckdb

    store = RunStore(tmp_path, "r1")
    store.write("problems", "seeds", "00000", problems("r1", ["a", "b"]))
    # a part written but never marked (killed before its marker, or stopped by its validation gate)
    store.part_path("problems", "seeds", "00001").write_bytes(store.part_path("problems", "seeds", "00000").read_bytes())
    catalog.refresh(tmp_path)
    assert run_query(tmp_path, "select count(*) as n from problems").to_pylist() == [{"n": 2}]
    reader = duckdb.connect(str(catalog.catalog_path(tmp_path)), read_only=True)  # another client holding the file
    try:
        assert reader.sql("select count(*) from problems").fetchall() == [(2,)]
        RunStore(tmp_path, "r2").write("problems", "seeds", "00000", problems("r2", ["c"]))
        catalog.refresh(tmp_path)  # does not block on the open reader
    finally:
        reader.close()
    assert run_query(tmp_path, "select count(*) as n from problems").to_pylist() == [{"n": 3}]


def test_a_fingerprint_marks_what_a_shard_was_computed_from(tmp_path):
    store = RunStore(tmp_path, "r1")
    fp = {"config": "c1", "code": "v1", "inputs": "i1"}
    store.write("problems", "seeds", "00000", problems("r1", ["a"]), fingerprint=fp)
    store.mark_stage_done("seeds", "00000", fp, ["problems"])
    assert store.stage_done("seeds", "00000", fp) and store.is_done("problems", "seeds", "00000", fp)
    assert not store.stage_done("seeds", "00000", {**fp, "config": "c2"})  # another config: recompute
    assert not store.stage_done("seeds", "00000", {**fp, "inputs": "i2"})  # other inputs: recompute
    store.marker_path("problems", "seeds", "00000").unlink()
    assert not store.stage_done("seeds", "00000", fp)  # a table of the shard is gone: recompute
