"""`sphere evolve`: rounds chain their policies, every checkpoint is recorded once with its
lineage, a resumed evolve redoes nothing finished, and a training killed mid-way resumes
from its last epoch checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from infra.config import TinyBackend
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


def test_kill_during_training_then_resume_finishes_from_the_last_epoch_checkpoint(tmp_path):
    sets = [x for k, v in {**SMALL, "train.epochs": 6, "train.batch_size": 2, "evaluate.n": 20}.items() for x in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "flows.cli", "evolve", str(ROOT / "configs" / "quickstart.yaml"), "--rounds", "1",
           "--data-root", str(tmp_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd + sets, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline, killed = time.time() + 420, None
    while time.time() < deadline and proc.poll() is None:
        done = sorted(tmp_path.glob("runs/*/models/train/*.work/epoch-*"))
        if done and not list(tmp_path.glob("runs/*/models/train/*.work/final")):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = [p.name for p in done]
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert killed, "the evolve finished or stalled before training could be killed"
    evolve_id = next((tmp_path / "evolve").glob("*.json"), None)
    evolve_id = evolve_id.stem if evolve_id else next((tmp_path / "runs").iterdir()).name.rsplit("-r", 1)[0]
    first = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/models/train/*.work/epoch-*") if p.name in killed}
    res = subprocess.run(cmd + ["--resume", evolve_id] + sets, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/models/train/*.work/epoch-*")}
    assert all(after[k] == v for k, v in first.items())  # finished epochs were not recomputed
    assert len(after) == 6
    parts = list(tmp_path.glob("runs/*/models/train/part-*.parquet"))
    ids = [m for p in parts for m in pq.read_table(p).column("model_id").to_pylist()]
    assert len(ids) == 1  # one model, no duplicate


def _evolve_cli(tmp_path: Path, *args: str, sets: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    flags = [x for k, v in {**SMALL, **(sets or {})}.items() for x in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "flows.cli", "evolve", str(ROOT / "configs" / "quickstart.yaml"), "--data-root", str(tmp_path),
           *args, *flags]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=timeout)


def test_a_diverged_model_is_not_promoted_and_the_evolve_stops_with_one_message(tmp_path):
    """train.lr=1000: the loss goes to nan in round 0; the evolve must stop there naming the step,
    keep the starting policy in its record and record no model."""
    res = _evolve_cli(tmp_path, "--rounds", "2", sets={"train.lr": 1000})
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert out.count("diverged at step") == 1 and "Traceback" not in out, out[-3000:]
    line = next(x for x in out.splitlines() if "diverged at step" in x)
    assert line.startswith("evolve ") and "round 0" in line
    record = json.loads(next((tmp_path / "evolve").glob("*.json")).read_text())
    start = TinyBackend(checkpoint="policy").model_dump(mode="json")  # the starting policy, every field
    assert record["policy"] == start and "diverged at step" in record["stopped"]
    (r0,) = record["rounds"]
    assert r0["round"] == 0 and r0["promoted"] is False and r0["next_policy"] == start and not r0.get("finished")
    assert RunStore(tmp_path, r0["run_id"]).read_table("models").num_rows == 0


def test_zero_rounds_is_refused_at_once_in_one_line(tmp_path):
    res = _evolve_cli(tmp_path, "--rounds", "0", timeout=120)
    out = (res.stdout + res.stderr).strip()
    assert res.returncode == 2 and "--rounds must be at least 1, got 0" in out, out[-3000:]
    assert "Traceback" not in out and "resume" not in out and len(out.splitlines()) == 1, out[-3000:]
    assert not (tmp_path / "evolve").exists()


def test_a_model_significantly_worse_than_its_parent_is_not_promoted_unless_the_gate_is_off(prefect_api, ray_local, tmp_path):
    """Plain DPO at a far too high learning rate wrecks the policy without a NaN: the evolve stops
    after round 0 and keeps the starting policy; with evolve.require_not_worse off (a resume
    with --allow-config-change) the same model is promoted."""
    from flows.evolve import RoundRejected, sphere_evolve

    cfg = str(ROOT / "configs" / "quickstart.yaml")
    sets = {**SMALL, "train.method": "dpo", "train.lr": 0.01, "train.batch_size": 2, "train.epochs": 2}
    with pytest.raises(RoundRejected, match="significantly worse than its parent"):
        sphere_evolve(config_path=cfg, rounds=2, evolve_id="worse", data_root=str(tmp_path), overrides=sets)
    record = json.loads((tmp_path / "evolve" / "worse.json").read_text())
    (r0,) = record["rounds"]
    start = TinyBackend(checkpoint="policy").model_dump(mode="json")  # the starting policy, every field
    assert r0["promoted"] is False and record["policy"] == r0["next_policy"] == start and r0["model"]["model_id"]
    assert "significantly worse" in record["stopped"] and {e["round"] for e in r0["evals"]} == {0, 1}

    off = {**sets, "evolve.require_not_worse": False}
    again = sphere_evolve(config_path=cfg, rounds=1, evolve_id="worse", data_root=str(tmp_path), overrides=off,
                          allow_config_change=True)
    (r0,) = again["rounds"]
    assert r0["promoted"] is True and again["policy"] == r0["next_policy"] != start and "stopped" not in again
    assert again["config_changes"][-1]["changes"] == {"evolve.require_not_worse": {"old": True, "new": False}}


def test_rounds_draw_new_problems_filter_to_the_frontier_and_evaluate_in_and_out_of_distribution(prefect_api, ray_local, tmp_path):
    """Issue 21.2-3: each round searches new problems (evolve.new_seeds), only those its policy
    solves sometimes but not always (evolve.frontier); every model is evaluated on the
    in-distribution and the out-of-distribution held-out set, and the reference model once."""
    from flows.evolve import accuracy_by_round, reference_accuracy, sphere_evolve
    from tasks.evaluate import is_ood

    cfg = str(ROOT / "configs" / "quickstart.yaml")
    sets = {**SMALL, "seeds.n": 24, "evolve.frontier": True, "evolve.frontier_samples": 4, "evaluate.n": 30,
            "evaluate.ood": {"kind": "builtin", "n": 20, "seed": 77, "min_steps": 7, "max_steps": 8},
            "evaluate.reference": {"kind": "tiny", "checkpoint": "policy"}}
    record = sphere_evolve(config_path=cfg, rounds=2, evolve_id="fr", data_root=str(tmp_path), overrides=sets)
    stores = [RunStore(tmp_path, f"fr-r{r}") for r in (0, 1)]
    questions = [set(s.read_table("problems").column("question").to_pylist()) for s in stores]
    assert len(questions[0]) == len(questions[1]) == 24 and not questions[0] & questions[1]  # new problems each round
    for store, rnd in zip(stores, record["rounds"]):
        frontier = {r["problem_id"]: r for r in store.read_table("frontier").to_pylist()}
        assert set(frontier) == set(store.read_table("problems").column("problem_id").to_pylist())
        assert all(r["samples"] == 4 and r["kept"] == (0 < r["solved"] < 4) for r in frontier.values())
        kept = {p for p, r in frontier.items() if r["kept"]}
        assert {c["problem_id"] for c in store.read_table("chains", "generation").to_pylist()} == kept
        routes = {r["problem_id"]: r["route"] for r in store.read_table("routes").to_pylist()}
        assert {p for p, r in routes.items() if r == "off_frontier"} == set(frontier) - kept
        assert rnd["frontier"] == {"problems": 24, "kept": len(kept), "share": len(kept) / 24}
    # ID and OOD accuracy of models 0, 1, 2; the reference once (round -1) on both sets
    assert [a["round"] for a in accuracy_by_round(record)] == [0, 1, 2]
    ood = accuracy_by_round(record, ood=True)
    assert [a["round"] for a in ood] == [0, 1, 2] and all(a["n"] == 20 and is_ood(a["dataset"]) for a in ood)
    assert sorted(is_ood(r["dataset"]) for r in reference_accuracy(record)) == [False, True]
    assert [c["to_round"] for c in record["comparisons_ood"]] == [1, 2]
    ood_problems = [p for s in stores for p in s.read_table("eval_items").to_pylist() if is_ood(p["dataset"])]
    assert not {p["problem_id"] for p in ood_problems} & {p for s in stores for p in s.read_table("problems").column("problem_id").to_pylist()}
    report = Path(record["report"]).read_text()
    assert "out-of-distribution" in report and "frontier kept" in report and "reference" in report
