"""A real `sphere run` leaves no process behind however it ends (issue 13): after kill -9 of
the driver, the Prefect server, Ray's daemons and workers and the verifier's workers are gone
within 10 s; SIGTERM stops the run within seconds and prints the resume command, and the
resumed run finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process reaping is Linux-only")

SPHERE = [sys.executable, "-m", "flows.cli"]
SETS = ["--set", "seeds.n=8", "--set", "generation.shard_size=1", "--set", "generation.concurrency=1",
        "--set", "pool.actors=1", "--set", "self_correction.enabled=false", "--set", "metrics.enabled=false"]


def _start(root: Path, log: Path) -> subprocess.Popen:
    # the driver's own ephemeral Prefect server (not the session's shared one) is part of what must not survive
    env = {**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
           "COLUMNS": "400"}
    return subprocess.Popen(SPHERE + ["run", "--data-root", str(root)] + SETS, cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _in_model_stage(proc: subprocess.Popen, root: Path) -> list:
    """Wait until the run has committed a generation shard; then every descendant of the driver."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if list(root.glob("runs/*/_done/chains.generation.*.json")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it reached generation"
    kids = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(" ".join(_cmdline(k)) for k in kids)
    assert "prefect.server.api.server:create_app" in names and "raylet" in names, names  # the test sees the tree
    return kids


def _cmdline(p) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _survivors(procs: list, within: float) -> list:
    deadline = time.time() + within
    while True:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.1)


def _cleanup(procs: list) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def test_no_process_of_a_run_survives_kill_9_of_the_driver(tmp_path):
    root = tmp_path / "data"
    proc = _start(root, tmp_path / "out.log")
    kids = []
    try:
        kids = _in_model_stage(proc, root)
        t0 = time.time()
        proc.kill()
        proc.wait(timeout=10)
        left = _survivors(kids, within=10 - (time.time() - t0))
        assert not left, "still alive 10 s after kill -9 of the driver: " + "; ".join(" ".join(_cmdline(p))[:120] for p in left)
    finally:
        proc.kill()
        _cleanup(kids)


def test_sigterm_stops_a_run_within_seconds_and_it_resumes(tmp_path):
    root, log = tmp_path / "data", tmp_path / "out.log"
    proc = _start(root, log)
    kids = []
    try:
        kids = _in_model_stage(proc, root)
        run_id = next(p.name for p in (root / "runs").iterdir() if p.name != "_schema")
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        took = time.time() - t0
        out = log.read_text()
        assert took < 8, f"SIGTERM took {took:.1f} s to stop the run"
        assert proc.returncode == 143, out[-2000:]
        assert f"sphere run --resume {run_id} --data-root {root}" in out, out[-2000:]
        left = _survivors(kids, within=10)
        assert not left, "alive 10 s after the driver stopped: " + "; ".join(" ".join(_cmdline(p))[:120] for p in left)
    finally:
        proc.kill()
        _cleanup(kids)
    resumed = subprocess.run(SPHERE + ["run", "--resume", run_id, "--data-root", str(root)], cwd=ROOT, capture_output=True,
                             text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run {run_id} finished" in resumed.stdout
