"""`sphere evolve`: rounds chain their policies, every checkpoint is recorded once with its
lineage, a resumed evolve redoes nothing finished, and the same evolve on an object store
equals the local one. (Gates and round settings: test_evolve_gates.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.storage import RunStore
from tasks.evolve_record import EvolveConfigChanged
from tests.conftest import ROOT

SMALL = {"seeds.n": 16, "generation.shard_size": 8, "metrics.embedder": "hashed", "evaluate.n": 40,
         "train.epochs": 1, "train.batch_size": 8, "train.val_share": 0.0}


TWO_ROUNDS = {**SMALL, "train.kind": "trl"}


@pytest.fixture(scope="module")
def two_rounds(prefect_api, ray_local, tmp_path_factory) -> tuple[Path, dict]:
    """A 2-round evolve (trl trainer) on a local data root: (root, record as it finished)."""
    from flows.evolve import sphere_evolve

    root = tmp_path_factory.mktemp("two-rounds")
    record = sphere_evolve(config_path=str(ROOT / "configs" / "quickstart.yaml"), rounds=2, evolve_id="ev", data_root=str(root),
                           overrides=TWO_ROUNDS)
    return root, record


def test_two_rounds_chain_their_policies_and_a_resume_redoes_nothing(two_rounds):
    """With the trl trainer: TRL's checkpoint is served by the tiny backend and evaluated by the same stage."""
    from flows.evolve import sphere_evolve

    cfg = str(ROOT / "configs" / "quickstart.yaml")
    sets = TWO_ROUNDS
    tmp_path, record = two_rounds
    r0, r1 = record["rounds"]
    m0, m1 = r0["model"], r1["model"]
    assert Path(m0["path"]).is_dir() and Path(m1["path"]).is_dir() and m0["model_id"] != m1["model_id"]
    assert m0["trainer"] == m1["trainer"] == "trl" and m0["steps"] > 0
    # round 1 generated with round 0's checkpoint, and trained from it (it is the reference too)
    stored = json.loads((tmp_path / "runs" / "ev-r1" / "config.json").read_text())
    assert stored["policy"]["checkpoint"] == m0["path"] and m1["parent_model"] == m0["path"] and m1["round"] == 1
    chains = RunStore(tmp_path, "ev-r1").read_table("chains", "generation").to_pylist()
    assert {c["model"] for c in chains} == {f"tiny:{m0['model_id']}"}
    # held-out accuracy of round 0's policy and of each round's model, with CIs
    rounds = sorted({e["round"] for r in record["rounds"] for e in r["evals"] if e["metric"] == "greedy"})
    assert rounds == [0, 1, 2]
    assert all(e["ci_low"] <= e["value"] <= e["ci_high"] and e["n"] == 40 for r in record["rounds"] for e in r["evals"] if e["metric"] == "greedy")
    assert record["comparison"]["n"] == 40 and Path(record["report"]).is_file()
    models = [r for run in ("ev-r0", "ev-r1") for r in RunStore(tmp_path, run).read_table("models").to_pylist()]
    assert [m["model_id"] for m in models] == [m0["model_id"], m1["model_id"]]
    log = RunStore(tmp_path, "ev-r0").read_table("train_log").to_pylist()
    assert log and all(x["model_id"] == m0["model_id"] for x in log)
    # evolve.accumulate (on by default): round 1 trains on round 0's pairs and its own
    assert stored["train"]["replay_runs"] == ["ev-r0"]
    n0, n1 = (RunStore(tmp_path, run).read_table("pairs").num_rows for run in ("ev-r0", "ev-r1"))
    assert n0 and n1 and m0["pairs"] == n0 and m1["pairs"] == n0 + n1

    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/ev-r*/_done/stages/*.json")}
    again = sphere_evolve(config_path=cfg, rounds=2, evolve_id="ev", data_root=str(tmp_path), overrides=sets)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/ev-r*/_done/stages/*.json")} == stamps
    assert [r["model"]["model_id"] for r in again["rounds"]] == [m0["model_id"], m1["model_id"]]
    assert record["run_config"]["evaluate"]["n"] == 40 and record["policy"] == r1["next_policy"]
    assert [r["config_hash"] for r in record["rounds"]] == [record["config_hash"]] * 2 and all(r["promoted"] for r in record["rounds"])

    # a resume with another config is refused (in the flow and, before any work, in the CLI) ...
    stored = (tmp_path / "evolve" / "ev.json").read_text()
    changed = {**sets, "evaluate.n": 30}
    with pytest.raises(EvolveConfigChanged, match=r"evaluate\.n 40 -> 30"):
        sphere_evolve(config_path=cfg, rounds=3, evolve_id="ev", data_root=str(tmp_path), overrides=changed)
    flags = [x for k, v in changed.items() for x in ("--set", f"{k}={v}")]
    res = subprocess.run([sys.executable, "-m", "flows.cli", "evolve", cfg, "--rounds", "3", "--resume", "ev", "--data-root",
                          str(tmp_path), *flags], cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 2 and "evaluate.n 40 -> 30" in out and "--allow-config-change" in out and "Traceback" not in out, out
    assert (tmp_path / "evolve" / "ev.json").read_text() == stored and not (tmp_path / "runs" / "ev-r2").exists()
    # ... unless allowed: then the change is recorded with the round it applies from
    allowed = sphere_evolve(config_path=cfg, rounds=2, evolve_id="ev", data_root=str(tmp_path), overrides=changed,
                            allow_config_change=True)
    assert allowed["config_changes"] == [{**allowed["config_changes"][0], "from_round": 2,
                                          "changes": {"evaluate.n": {"old": 40, "new": 30}}}]
    assert allowed["run_config"]["evaluate"]["n"] == 30 and allowed["config_hash"] != record["config_hash"]


# The same evolve with its data root on a real S3 API server (moto's, on 127.0.0.1): round 0's
# checkpoint is written to the store, round 1's actors serve it from a verified local copy, and
# every row and accuracy equals the local evolve's (the ``two_rounds`` fixture).
# The content of each table; ids are left out: a chain's id covers its config hash, which covers
# the checkpoint's path (local or s3://), so round 1's ids differ by design.
CONTENT = {"chains": ["problem_id", "stage", "branch", "model", "text", "verdict", "step_scores", "candidate_scores"],
           "pairs": ["problem_id", "stage", "chosen", "rejected", "margin"], "sft": ["problem_id", "prompt", "completion"],
           "eval_items": ["round", "model", "dataset", "problem_id", "answer", "correct"]}


def _content(root, record: dict) -> dict:
    """Each round's rows (``CONTENT``'s columns), model ids (derived from the evolve's run ids) named by round."""
    from infra.fs import as_path

    names = {m["model_id"]: f"<model {i}>" for i, m in enumerate(r["model"] for r in record["rounds"])}
    out = {}
    for rnd in record["rounds"]:
        store = RunStore(as_path(root), rnd["run_id"])
        for t, cols in CONTENT.items():
            texts = []
            for r in store.read_table(t).select(cols).to_pylist():
                text = json.dumps(r, sort_keys=True, default=str)
                for mid, name in names.items():
                    text = text.replace(mid, name)
                texts.append(text)
            out[(rnd["round"], t)] = sorted(texts)
    return out


def test_the_same_evolve_on_s3_serves_its_checkpoint_from_the_store_and_equals_the_local_one(two_rounds, tmp_path):
    from infra.fs import as_path
    from tests.support.s3 import S3Server, restore, use_in_process

    local, want = two_rounds
    s3 = S3Server(log_dir=tmp_path)
    try:
        cache = tmp_path / "cache"
        flags = [x for k, v in TWO_ROUNDS.items() for x in ("--set", f"{k}={v}")]
        res = subprocess.run([sys.executable, "-m", "flows.cli", "evolve", str(ROOT / "configs" / "quickstart.yaml"), "--rounds", "2",
                              "--data-root", s3.uri("ev"), *flags], cwd=ROOT, capture_output=True, text=True, timeout=900,
                             env={**os.environ, **s3.env, "SPHERE_CACHE": str(cache), "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-6000:]
        assert s3.secret not in out and s3.key_id not in out
        old = use_in_process(s3)
        try:
            ((path, raw),) = [(k, v) for k, v in s3.objects("ev/evolve").items() if k.endswith(".json")]
            got = json.loads(raw)
            m0 = got["rounds"][0]["model"]
            assert m0["path"].startswith(s3.uri("ev") + "/runs/") and as_path(m0["path"]).joinpath("_files.json").is_file()
            r1 = RunStore(as_path(s3.uri("ev")), got["rounds"][1]["run_id"])
            assert r1.load_config()["policy"]["checkpoint"] == m0["path"]  # round 1 generated with round 0's model, on the store
            assert {c["model"] for c in r1.read_table("chains", "generation").to_pylist()} == {f"tiny:{m0['model_id']}"}
            assert as_path(got["report"]).is_file()
            got_rows = _content(s3.uri("ev"), got)
            leaks = [k for k, v in s3.objects("ev").items() if s3.secret.encode() in v]
        finally:
            restore(old)
        assert len(list((cache / "models").glob("*/_files.json"))) >= 1  # served from one verified copy in the host's cache
        assert got_rows == _content(local, want)
        assert [[e["value"] for e in r["evals"]] for r in got["rounds"]] == [[e["value"] for e in r["evals"]] for r in want["rounds"]]
        assert not leaks
    finally:
        s3.stop()
