"""One writer per run, evolve and sweep: a second one is refused at once naming the holder,
readers are never refused, and a killed holder leaves nothing locked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from flows.cli import app
from infra.query import query as run_query
from infra.storage import RunStore
from tests.conftest import ROOT
from tests.unit.test_damaged_runs import QUICKSTART, finished_run, said


@pytest.fixture
def holder():
    """``hold(path)``: a real process that takes the writer lock at ``path`` and keeps it; killed at the end."""
    procs = []

    def hold(path) -> subprocess.Popen:
        code = ("import sys, time; from infra.locks import writer_lock; cm = writer_lock(sys.argv[1], 'x'); cm.__enter__(); "
                "print('up', flush=True); time.sleep(300)")
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "up"
        return proc

    yield hold
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(10)


def _refused(res, pid: int) -> bool:
    text = said(res)
    return (res.exit_code == 3 and f"pid {pid} on host {socket.gethostname()}" in text and "one writer at a time" in text
            and "Traceback" not in res.output)


def test_a_second_writer_of_a_run_is_refused_naming_the_holder_and_readers_are_not(tmp_path, holder):
    root = tmp_path / "data"
    store = finished_run(root)
    left = store.run_dir / "pairs" / "routing" / ".part-00009.parquet.4242.tmp"  # a live writer's temp file
    left.write_bytes(b"half")
    proc = holder(store.run_dir / "writer.lock")

    res = CliRunner().invoke(app, ["run", "--resume", "r", "--data-root", str(root)])
    assert _refused(res, proc.pid), res.output
    res = CliRunner().invoke(app, ["rerun", "r", "--stage", "sft", "--data-root", str(root)])
    assert _refused(res, proc.pid), res.output
    assert left.exists() and store.stage_marker_path("sft", "00000").is_file()  # refused before touching anything
    assert store.read_status()["status"] == "finished"

    res = CliRunner().invoke(app, ["export", "r", "--format", "dpo", "--to", str(tmp_path / "out"), "--data-root", str(root)])
    assert res.exit_code == 0  # readers never take the lock
    assert run_query(root, "select status from runs").to_pylist() == [{"status": "finished"}]


def test_the_flows_take_the_lock_too(tmp_path, holder):
    from flows.pipeline import prepare_run, sphere_rerun
    from infra.locks import WriterLocked

    root = tmp_path / "data"
    store = finished_run(root)
    proc = holder(store.run_dir / "writer.lock")
    with pytest.raises(WriterLocked, match=f"run r is being written by pid {proc.pid}"):
        prepare_run(None, "r", str(root))
    with pytest.raises(WriterLocked):
        sphere_rerun.fn(str(store.run_dir), "sft")
    assert store.stage_marker_path("sft", "00000").is_file() and not (store.run_dir / "_superseded").exists()


def test_a_killed_holder_leaves_the_run_free(tmp_path, holder):
    from infra.locks import WriterLocked, run_lock

    root = tmp_path / "data"
    store = finished_run(root)
    proc = holder(store.run_dir / "writer.lock")
    with pytest.raises(WriterLocked):
        with run_lock(store.run_dir):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    with run_lock(store.run_dir):  # free at once: the kernel dropped the dead process's lock
        with run_lock(store.run_dir):  # and reentrant within one process
            pass
    res = CliRunner().invoke(app, ["rerun", "r", "--stage", "nonsense", "--data-root", str(root)])
    assert res.exit_code == 2  # past the lock: the stage name is what is refused now


def test_a_second_evolve_or_sweep_is_refused_naming_the_holder(tmp_path, holder):
    root = tmp_path / "data"
    (root / "evolve").mkdir(parents=True)
    (root / "evolve" / "e1.json").write_text('{"evolve_id": "e1", "rounds": []}')
    proc = holder(root / "evolve" / "e1.lock")
    res = CliRunner().invoke(app, ["evolve", QUICKSTART, "--resume", "e1", "--data-root", str(root)])
    assert _refused(res, proc.pid) and "evolve e1 is being written" in said(res), res.output
    proc = holder(root / "sweeps" / "s1.lock")
    res = CliRunner().invoke(app, ["sweep", QUICKSTART, "--grid", "search.temperature=0.3", "--resume", "s1",
                                   "--data-root", str(root)])
    assert _refused(res, proc.pid) and "sweep s1 is being written" in said(res), res.output
    assert not (root / "runs").exists()


def test_a_new_run_that_never_started_leaves_no_directory(tmp_path):
    from infra.locks import run_lock

    run_dir = tmp_path / "runs" / "new"
    with run_lock(run_dir):
        assert (run_dir / "writer.lock").is_file()
    assert not run_dir.exists()
    store = finished_run(tmp_path / "data")
    with run_lock(store.run_dir):
        pass
    assert RunStore.at(store.run_dir).exists() and (store.run_dir / "writer.lock").is_file()
