"""SIGKILL a real `sphere run` mid-stage, resume it, and compare with an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import ROOT

SPHERE = [sys.executable, "-m", "flows.cli"]
SETS = ["--set", "seeds.n=16", "--set", "generation.shard_size=2", "--set", "generation.concurrency=1", "--set", "pool.actors=1"]


def chains_of(root: Path) -> tuple[dict, int, int, str]:
    """(chains of every stage by id, row count, generation row count, run id)."""
    run = next(p for p in (root / "runs").iterdir() if p.name != "_schema")
    rows = [r for f in sorted((run / "chains").rglob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    gen = sum(r["stage"] == "generation" for r in rows)
    return {r["chain_id"]: (r["stage"], r["text"], r["verdict"]) for r in rows}, len(rows), gen, run.name


def test_sigkill_mid_stage_then_resume_gives_the_same_chains(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    a, b = tmp_path / "a", tmp_path / "b"
    done = subprocess.run(SPHERE + ["run", "--data-root", str(a)] + SETS, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    want, want_n, want_gen, _ = chains_of(a)
    assert want_gen == 32 and len(want) == want_n > 32  # generation, then self-correction and diversity

    proc = subprocess.Popen(SPHERE + ["run", "--data-root", str(b)] + SETS, cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        markers = list(b.glob("runs/*/_done/chains.generation.*.json"))
        if 2 <= len(markers) < 8:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = len(markers)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None, "the run finished or stalled before it could be killed mid-stage"
    _, _, partial_gen, run_id = chains_of(b)
    assert partial_gen < 32

    resumed = subprocess.run(SPHERE + ["run", "--resume", run_id, "--data-root", str(b)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, got_n, got_gen, _ = chains_of(b)
    assert got_gen == 32 and got_n == want_n  # none lost, none doubled
    assert got == want  # same ids, same text, same verdicts as the uninterrupted run, in every stage
