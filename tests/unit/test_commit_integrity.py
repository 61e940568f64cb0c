"""Committed data is trustworthy: a shard's tables appear together, a part changed after its
commit fails every read of the run loudly (the catalog leaves it out and names it), and a
killed run is not mistaken for a finished one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from infra import catalog
from infra.config import RunConfig
from infra.query import query as run_query
from infra.schemas import from_rows
from infra.storage import PartCorrupt, RunStore
from tasks.common import RunContext

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _problems(n: int, run_id: str = "r1"):
    return from_rows([{"run_id": run_id, "problem_id": f"p{i}", "question": f"q{i}", "gold_answer": str(i)} for i in range(n)],
                     "problems")


def _committed(tmp_path, n=5) -> RunStore:
    store = RunStore(tmp_path, "r1")
    store.save_config({"name": "t"})
    store.write("problems", "seeds", "00000", _problems(n), commit="seeds.00000")
    store.mark_stage_done("seeds", "00000", {"f": 1}, ["problems"])
    return store


@pytest.mark.parametrize("same_size", [False, True])
def test_a_part_changed_after_its_commit_fails_every_run_read_and_the_catalog_names_it(tmp_path, same_size):
    store = _committed(tmp_path)
    part = store.part_path("problems", "seeds", "00000")
    assert store.read_table("problems").num_rows == 5 and run_query(tmp_path, "select count(*) n from problems").to_pylist() == [{"n": 5}]
    if same_size:  # one byte flipped in place: the size matches, the hash does not
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0xFF
        part.write_bytes(bytes(data))
    else:  # replaced by other rows, as a COPY ... TO the part path would
        pq.write_table(_problems(3), part)
    with pytest.raises(PartCorrupt, match="part-00000.parquet.*changed after its commit.*sphere rerun r1 --stage seeds"):
        store.read_table("problems")
    with pytest.raises(PartCorrupt):
        store.read_part("problems", "seeds", "00000")
    # the catalog leaves the shard out (a damaged run never blocks the others) and names it in the runs view
    assert run_query(tmp_path, "select count(*) n from problems").to_pylist() == [{"n": 0}]
    run = run_query(tmp_path, "select status, error from runs").to_pylist()[0]
    assert run["status"] == "damaged" and "part-00000.parquet was changed after its commit" in run["error"]
    assert catalog.refresh(tmp_path).is_file()
    from flows.cli import app

    res = CliRunner().invoke(app, ["query", "select status from runs", "--data-root", str(tmp_path)])
    assert res.exit_code == 0 and "damaged" in res.stdout


def test_a_shard_counts_only_once_its_stage_marker_commits_all_its_tables(tmp_path):
    store = RunStore(tmp_path, "r1")
    store.save_config({"name": "t"})
    store.write("problems", "self_correction", "00000", _problems(4), commit="self_correction.00000")
    store.write("problems", "diversity", "00000", _problems(2), commit="self_correction.00000")
    # killed here, before the stage marker: neither table of the shard is visible to anyone
    assert store.read_table("problems").num_rows == 0
    assert not store.is_done("problems", "self_correction", "00000")
    assert run_query(tmp_path, "select count(*) n from problems").to_pylist() == [{"n": 0}]
    store.mark_stage_done("self_correction", "00000", {"f": 1}, ["problems"])
    assert store.read_table("problems").num_rows == 6
    assert run_query(tmp_path, "select count(*) n from problems").to_pylist() == [{"n": 6}]


def test_a_shard_being_recomputed_withdraws_its_old_commit_first(tmp_path):
    store = _committed(tmp_path)
    ctx = RunContext(store, RunConfig())
    assert ctx.is_done("seeds", "00000", {"f": 1})
    assert not ctx.is_done("seeds", "00000", {"f": 2})  # a changed fingerprint: the caller recomputes it
    assert store.read_table("problems").num_rows == 0  # the old rows no longer count while it does


def test_the_runs_view_tells_running_finished_failed_and_killed_runs_apart(tmp_path):
    for rid, status in (("done", "finished"), ("bad", "failed"), ("live", "running")):
        store = RunStore(tmp_path, rid)
        store.save_config({"name": rid})
        store.set_status("running")
        if status != "running":
            store.set_status(status, "ValueError: boom" if status == "failed" else None)
    killed = RunStore(tmp_path, "killed")
    killed.save_config({"name": "killed"})
    code = f"from infra.storage import RunStore; RunStore.at({str(tmp_path / 'runs' / 'killed')!r}).set_status('running'); print('up', flush=True); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    assert killed.read_status()["status"] == "running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    time.sleep(0.1)
    got = {r["run_id"]: r for r in run_query(tmp_path, "select * from runs").to_pylist()}
    assert {k: v["status"] for k, v in got.items()} == {"done": "finished", "bad": "failed", "live": "running", "killed": "interrupted"}
    assert got["bad"]["error"] == "ValueError: boom" and got["done"]["finished_at"] is not None
    assert got["live"]["finished_at"] is None and got["killed"]["pid"] == proc.pid


def test_a_full_disk_is_one_clear_line_naming_the_data_root(tmp_path):
    import errno

    from flows.cli import _failure
    from flows.pipeline import StageFailed

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/runs/r/chains/generation/.part-00000.parquet.7.tmp")
        except OSError as inner:
            raise StageFailed("2 of 4 generation shards failed (finished ones kept):\nOSError: [Errno 28] ...") from inner
    except StageFailed as e:
        line = _failure(e, tmp_path)
    assert line == f"the disk holding {tmp_path} is full (No space left on device); free space there" and "\n" not in line
    assert _failure(ValueError("bad"), tmp_path) == "ValueError: bad"
