"""A 2-round `sphere evolve` with its data root on a real S3 API server (moto's, on 127.0.0.1):
round 0's checkpoint is written to the store, round 1's actors serve it from a verified local
copy, and every row and accuracy equals the same evolve on a local data root."""

import json
import os
import subprocess
import sys

import pytest

from infra.fs import as_path
from infra.storage import RunStore
from tests.conftest import ROOT
from tests.support.s3 import S3Server, restore, use_in_process

SETS = {"seeds.n": 8, "generation.shard_size": 8, "metrics.embedder": "hashed", "evaluate.n": 20,
        "train.epochs": 1, "train.batch_size": 8, "train.val_share": 0.0}
# The content of each table; ids are left out: a chain's id covers its config hash, which covers
# the checkpoint's path (local or s3://), so round 1's ids differ by design.
TABLES = {"chains": ["problem_id", "stage", "branch", "model", "text", "verdict", "step_scores", "candidate_scores"],
          "pairs": ["problem_id", "stage", "chosen", "rejected", "margin"], "sft": ["problem_id", "prompt", "completion"],
          "eval_items": ["round", "model", "dataset", "problem_id", "answer", "correct"]}


@pytest.fixture
def s3(tmp_path):
    server = S3Server(log_dir=tmp_path)
    yield server
    server.stop()


def _evolve(root: str, env: dict) -> subprocess.CompletedProcess:
    flags = [x for k, v in SETS.items() for x in ("--set", f"{k}={v}")]
    return subprocess.run([sys.executable, "-m", "flows.cli", "evolve", str(ROOT / "configs" / "quickstart.yaml"), "--rounds", "2",
                           "--data-root", root, *flags], cwd=ROOT, env={**env, "COLUMNS": "200"}, capture_output=True, text=True,
                          timeout=900)


def _record(root) -> dict:
    root = as_path(root)
    (path,) = [p for p in (root / "evolve").glob("*.json")]
    return json.loads(path.read_text())


def _rows(root, record: dict) -> dict:
    """Each round's rows (``TABLES``' columns), model ids (derived from the evolve's run ids) named by round."""
    names = {m["model_id"]: f"<model {i}>" for i, m in enumerate(r["model"] for r in record["rounds"])}
    out = {}
    for rnd in record["rounds"]:
        store = RunStore(as_path(root), rnd["run_id"])
        for t, cols in TABLES.items():
            texts = []
            for r in store.read_table(t).select(cols).to_pylist():
                text = json.dumps(r, sort_keys=True, default=str)
                for mid, name in names.items():
                    text = text.replace(mid, name)
                texts.append(text)
            out[(rnd["round"], t)] = sorted(texts)
    return out


def test_a_two_round_evolve_on_s3_serves_its_checkpoint_from_the_store_and_equals_a_local_one(tmp_path, s3):
    local = tmp_path / "local"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    res = _evolve(str(local), env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    cache = tmp_path / "cache"
    s3env = {**env, **s3.env, "SPHERE_CACHE": str(cache)}
    res = _evolve(s3.uri("ev"), s3env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert s3.secret not in out and s3.key_id not in out

    old = use_in_process(s3)
    try:
        got = _record(s3.uri("ev"))
        m0 = got["rounds"][0]["model"]
        assert m0["path"].startswith(s3.uri("ev") + "/runs/") and as_path(m0["path"]).joinpath("_files.json").is_file()
        r1 = RunStore(as_path(s3.uri("ev")), got["rounds"][1]["run_id"])
        assert r1.load_config()["policy"]["checkpoint"] == m0["path"]  # round 1 generated with round 0's model, on the store
        assert {c["model"] for c in r1.read_table("chains", "generation").to_pylist()} == {f"tiny:{m0['model_id']}"}
        assert as_path(got["report"]).is_file()
        got_rows = _rows(s3.uri("ev"), got)
        # the actors served the checkpoint from one verified copy in this host's cache
        assert len(list((cache / "models").glob("*/_files.json"))) >= 1
        leaks = [k for k, v in s3.objects("ev").items() if s3.secret.encode() in v]
    finally:
        restore(old)
    want = _record(local)
    assert got_rows == _rows(local, want)
    assert ([[e["value"] for e in r["evals"]] for r in got["rounds"]] == [[e["value"] for e in r["evals"]] for r in want["rounds"]])
    assert not leaks
