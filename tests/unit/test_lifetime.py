"""infra.lifetime without the pipeline: the reaper, stale clean-up at start-up, and a signal
that stops a process whose SIGTERM handler would block (as Prefect's unwinding does)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from infra import lifetime
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux /proc needed")


def _gone(pid: int, ident: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not lifetime.alive(ident):
            return True
        time.sleep(0.05)
    return False


def _driver(body: str, tmp_path) -> subprocess.Popen:
    """A python process that enters ``guard()`` and then runs ``body``."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import subprocess, sys, time, signal
        from infra import lifetime
        with lifetime.guard("resume with: sphere run --resume R1", grace_s=1.0):
        """) + textwrap.indent(textwrap.dedent(body), "    "))
    return subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _read_pids(proc: subprocess.Popen, n: int) -> list[int]:
    return [int(proc.stdout.readline()) for _ in range(n)]


def test_children_and_orphaned_grandchildren_die_with_a_killed_driver(tmp_path):
    # a child, and a grandchild whose environment is wiped (as setproctitle does to Ray's
    # agents) and whose parent exits after a second, so that it is orphaned (under PID 1)
    proc = _driver("""
        child = subprocess.Popen(["sleep", "300"])
        orphan = subprocess.Popen(["sh", "-c", "env -i sleep 301 & echo $!; sleep 1"], stdout=subprocess.PIPE, text=True)
        print(child.pid, flush=True); print(orphan.stdout.readline().strip(), flush=True)
        time.sleep(300)
    """, tmp_path)
    try:
        pids = _read_pids(proc, 2)
        idents = [lifetime.identity(p) for p in pids]
        assert all(idents)
        time.sleep(2.5)  # the reaper has seen the tree, and the grandchild's parent has exited
        os.kill(proc.pid, signal.SIGKILL)
        for p, i in zip(pids, idents):
            assert _gone(p, i, 10), f"{p} ({lifetime._cmdline(p)}) outlived the killed driver"
    finally:
        proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_driver_stuck_in_unwinding_within_the_grace(tmp_path, sig):
    # Prefect swaps in its own SIGTERM handler during a flow and then waits for the tasks in
    # flight; this driver does the same (its handler raises, its unwinding blocks).
    proc = _driver("""
        def stuck(*a):
            raise RuntimeError("unwinding")
        signal.signal(signal.SIGTERM, stuck)
        child = subprocess.Popen(["sleep", "300"])
        print(child.pid, flush=True)
        try:
            time.sleep(300)
        finally:
            time.sleep(300)  # waits for 'tasks in flight'
    """, tmp_path)
    try:
        (child,) = _read_pids(proc, 1)
        ident = lifetime.identity(child)
        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=15)
        took = time.monotonic() - t0
        assert proc.returncode == 128 + sig, err
        assert took < 5, took
        assert f"interrupted ({signal.Signals(sig).name}); resume with: sphere run --resume R1" in err
        assert _gone(child, ident, 10)
    finally:
        proc.kill()


def test_a_signal_during_an_unwinding_that_finishes_exits_with_the_signal_code(tmp_path):
    proc = _driver("""
        print(0, flush=True)
        time.sleep(300)
    """, tmp_path)
    try:
        _read_pids(proc, 1)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 143 and "resume with: sphere run --resume R1" in err
    finally:
        proc.kill()


def _orphan_server(home) -> int:
    """A stand-in for an ephemeral Prefect server left by an older version: untagged,
    orphaned, started with ``PREFECT__SERVER_EPHEMERAL=1`` and ``PREFECT_HOME=home``."""
    env = {k: v for k, v in os.environ.items() if k != lifetime.OWNER_ENV}
    cmd = (f"{sys.executable} -c 'import time; time.sleep(300)' -m uvicorn --factory "
           "prefect.server.api.server:create_app >/dev/null 2>&1 & echo $!")
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                         env={**env, "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT_HOME": str(home)}, check=True)
    return int(out.stdout.strip())


def test_stale_processes_of_dead_drivers_are_stopped_at_start_up(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = lifetime.identity(dead.pid)
    dead.wait()
    home = tmp_path / "prefect-home"
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
    tagged = subprocess.Popen(sleeper, env={**os.environ, lifetime.OWNER_ENV: owner}, start_new_session=True).pid
    mine = subprocess.Popen(sleeper, env={**os.environ, lifetime.OWNER_ENV: lifetime.identity()}, start_new_session=True).pid
    legacy, other_home = _orphan_server(home), _orphan_server(tmp_path / "another-home")
    pids = (tagged, mine, legacy, other_home)
    try:
        time.sleep(0.5)  # the orphans have been adopted, and exec'd
        idents = {p: lifetime.identity(p) for p in pids}
        orphaned_to_init = lifetime._stat(legacy)[0] == 1
        killed = lifetime.reap_stale(str(home))
        assert tagged in killed and _gone(tagged, idents[tagged], 5)
        assert mine not in killed and lifetime.alive(idents[mine])  # its owner (this process) lives
        assert other_home not in killed and lifetime.alive(idents[other_home])  # another PREFECT_HOME's
        if orphaned_to_init:  # else a subreaper adopted it: not an orphan by this rule
            assert legacy in killed and _gone(legacy, idents[legacy], 5)
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
