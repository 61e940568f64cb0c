"""SIGKILL a real `sphere run` between a part's upload and its marker on an object store (moto's
S3 server), resume it, and compare with an uninterrupted run on a local folder. (kill -9 of a
run on a local folder, resumed: tests/vllm/test_run.py, tests/integration/test_lifetime.py.)"""

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SPHERE = [sys.executable, "-m", "flows.cli"]
SETS = ["--set", "seeds.n=8", "--set", "generation.shard_size=2", "--set", "generation.concurrency=1", "--set", "pool.actors=1"]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """The uninterrupted run on a local data root that the killed runs are compared with."""
    a = tmp_path_factory.mktemp("local") / "a"
    done = subprocess.run(SPHERE + ["run", "--data-root", str(a)] + SETS, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return a


# The kill on an object-store data root: a real S3 API server (moto's) on 127.0.0.1.
DATA_TABLES = ("problems", "chains", "pairs", "step_pairs", "sft", "routes", "quarantine", "metrics")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from tests.support.s3 import S3Server

    server = S3Server(log_dir=tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


def _sphere(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(SPHERE + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _rows(root: str, env: dict, outputs: list[str]) -> dict[str, list[str]]:
    """Every data table of the root's one run as one `sphere query` returns it (each row as
    JSON, run id left out, sorted), by table."""
    cols = {t: "* exclude (run_id)" for t in DATA_TABLES} | {"quarantine": "* exclude (run_id, row), replace(row, run_id, '<run>') as row"}
    sql = " union all ".join(f"select '{t}' as t, to_json(x)::varchar as j from (select {cols[t]} from {t}) x" for t in DATA_TABLES)
    r = _sphere(["query", f"select t, j from ({sql}) order by all", "--format", "csv", "--data-root", root], env)
    assert r.returncode == 0, r.stderr[-2000:]
    outputs += [r.stdout, r.stderr]
    out: dict[str, list[str]] = {t: [] for t in DATA_TABLES}
    for t, j in list(csv.reader(io.StringIO(r.stdout)))[1:]:
        out[t].append(j)
    return out


def test_sigkill_between_a_part_and_its_marker_on_s3_then_resume_equals_the_local_run(tmp_path, local_run, s3):
    cache = tmp_path / "cache"
    env = {**os.environ, **s3.env, "PYTHONUNBUFFERED": "1", "SPHERE_CACHE": str(cache)}
    root = s3.uri("kill")
    outputs: list[str] = []

    killed = subprocess.run([sys.executable, "-m", "tests.support.kill_after_part", "3", "chains", "generation", "--",
                             "run", "--data-root", root] + SETS, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    outputs += [killed.stdout, killed.stderr]
    assert killed.returncode == -9, killed.stderr[-3000:]
    objects = s3.objects("kill")
    parts = {k.rsplit("part-", 1)[1].removesuffix(".parquet") for k in objects if "/chains/generation/part-" in k}
    marked = {k.rsplit(".", 2)[1] for k in objects if "/_done/chains.generation." in k}
    assert len(parts) == 3 and len(marked) == 2 and marked < parts  # the third part is on the store, its marker is not
    run_id = next(k.split("/runs/")[1].split("/")[0] for k in objects if "/runs/" in k)

    # sphere query shows the two committed shards' rows only, never the uncommitted part
    q = _sphere(["query", "select count(*) as n from chains where stage = 'generation'", "--format", "csv", "--data-root", root], env)
    assert q.returncode == 0, q.stderr[-2000:]
    assert int(q.stdout.split()[-1]) == 2 * 2 * 2  # 2 shards x 2 problems x E=2 chains

    resumed = _sphere(["run", "--resume", run_id, "--data-root", root], env)
    outputs += [resumed.stdout, resumed.stderr]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    local_env = {**os.environ}
    want = _rows(str(local_run), local_env, [])
    got = _rows(root, env, outputs)
    assert len(want["chains"]) > 16 and want["pairs"] and want["sft"]
    assert got == want  # every table: none lost, none doubled, the same rows as the run on a local root

    # a rerun of one stage on the store recomputes it to the same rows
    rerun = _sphere(["rerun", run_id, "--stage", "diversity", "--data-root", root], env)
    outputs += [rerun.stdout, rerun.stderr]
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _rows(root, env, outputs) == want

    # an export from the store is the export of the local run, byte for byte
    local_id = next(p.name for p in (local_run / "runs").iterdir() if p.name != "_schema")
    for where, rid, e, to in ((root, run_id, env, tmp_path / "x-s3"), (str(local_run), local_id, local_env, tmp_path / "x-local")):
        ex = _sphere(["export", rid, "--format", "dpo", "--to", str(to), "--data-root", where], e)
        outputs += [ex.stdout, ex.stderr]
        assert ex.returncode == 0, ex.stderr[-2000:]
    assert (tmp_path / "x-s3" / "dpo.jsonl").read_bytes() == (tmp_path / "x-local" / "dpo.jsonl").read_bytes()

    # no secret in any object the run wrote, any file of its local cache, or any line it printed
    secret = s3.secret.encode()
    leaks = [k for k, v in s3.objects("kill").items() if secret in v]
    leaks += [str(f) for f in cache.rglob("*") if f.is_file() and secret in f.read_bytes()]
    leaks += [f"output {i}" for i, text in enumerate(outputs) if s3.secret in text]
    assert not leaks, leaks
    assert all(s3.key_id not in text for text in outputs)
