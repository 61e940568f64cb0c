"""`sphere evolve`'s gates and its round settings: a training killed mid-way resumes from its
last epoch checkpoint, a diverged or significantly worse model is not promoted, rounds draw
new problems, filter to the frontier and evaluate in and out of distribution. (Split from
test_evolve.py so the parallel suite can hand the two halves to different workers.)"""

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
from tests.conftest import ROOT
from tests.integration.test_evolve import SMALL


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
