"""Damage a finished run's records, then `sphere run --resume` it: export refuses it first,
naming the files; the resume sets them aside, recomputes exactly those shards, and the run
has the same chains and pairs as before."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import ROOT

SPHERE = [sys.executable, "-m", "flows.cli"]
SETS = ["--set", "seeds.n=8", "--set", "generation.shard_size=2", "--set", "pool.actors=1"]


def rows(run: Path, table: str) -> dict:
    return {r[f"{'chain' if table == 'chains' else 'pair'}_id"]: r.get("text") or r.get("chosen")
            for f in sorted((run / table).rglob("part-*.parquet")) if "_superseded" not in f.parts
            for r in pq.read_table(f).to_pylist()}


def test_a_resume_recomputes_damaged_and_missing_shards_and_the_run_is_whole_again(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    root = tmp_path / "data"
    first = subprocess.run(SPHERE + ["run", "--data-root", str(root)] + SETS, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    run = next((root / "runs").iterdir())
    chains, pairs = rows(run, "chains"), rows(run, "pairs")
    done = run / "_done"
    (done / "chains.generation.00001.json").write_text((done / "chains.generation.00001.json").read_text()[:9])  # truncated
    (done / "stages" / "routing.00002.json").write_bytes(b"\x00garbage")
    (done / "seeds.manifest.json").write_text('{"shards": ["00000", ')
    (run / "status.json").write_text("")
    (done / "pairs.routing.00000.json").unlink()  # a deleted table marker

    export = subprocess.run(SPHERE + ["export", run.name, "--format", "dpo", "--to", str(tmp_path / "out"), "--data-root", str(root)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    said = " ".join(export.stderr.split())
    assert export.returncode == 2 and "Traceback" not in export.stderr
    assert "chains.generation.00001.json is damaged" in said and "pairs.routing.00000.json is missing" in said

    resumed = subprocess.run(SPHERE + ["run", "--resume", run.name, "--data-root", str(root)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert rows(run, "chains") == chains and rows(run, "pairs") == pairs  # recomputed, none lost, none doubled
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    kept = {p.name for p in (run / "_superseded").glob("*-damaged/**/*.json")}
    assert {"chains.generation.00001.json", "routing.00002.json", "seeds.manifest.json", "status.json"} <= kept
    export = subprocess.run(SPHERE + ["export", run.name, "--format", "dpo", "--to", str(tmp_path / "out"), "--data-root", str(root)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-2000:]
    assert len((tmp_path / "out" / "dpo.jsonl").read_text().splitlines()) == len(pairs)
