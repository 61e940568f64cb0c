"""`sphere rerun --stage`: break a stage on purpose, rerun it, upstream stays byte-identical."""

import hashlib
import json

from infra.storage import RunStore
from tests.conftest import ROOT


def digests(run_dir, table, stage):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run_dir / table / stage).glob("part-*.parquet"))}


def test_failed_stage_is_rerun_alone_after_a_config_fix(prefect_api, ray_local, tmp_path):
    from flows.pipeline import StageFailed, sphere_rerun, sphere_run

    broken = {"seeds.n": 16, "generation.shard_size": 8, "self_correction.policy": {"kind": "tiny", "checkpoint": "/nope/broken.pt"},
              "pool.startup_timeout_s": 30}
    try:
        sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="broken", data_root=str(tmp_path), overrides=broken)
        raise AssertionError("the broken self-correction backend should have failed the run")
    except StageFailed as e:
        assert "checkpoint not found" in str(e)
    store = RunStore(tmp_path, "broken")
    run_dir = store.run_dir
    before = {t: digests(run_dir, t, s) for t, s in (("chains", "generation"), ("problems", "seeds"), ("routes", "routing"))}
    assert before["chains"] and store.read_table("chains", "self_correction").num_rows == 0

    summary = sphere_rerun(run_dir=str(run_dir), stage="self_correction", overrides={"self_correction.policy": None})
    after = {t: digests(run_dir, t, s) for t, s in (("chains", "generation"), ("problems", "seeds"), ("routes", "routing"))}
    assert after == before  # upstream untouched, byte for byte
    assert store.read_table("chains", "self_correction").num_rows == 2 * summary["routes"]["self_correction"] > 0
    assert summary["counts"]["sft"] > 0
    log = [json.loads(line) for line in (run_dir / "reruns.jsonl").read_text().splitlines()]
    assert log[-1]["stage"] == "self_correction" and log[-1]["changes"]["self_correction.policy"]["new"] is None

    # A config change to a finished stage: its old outputs are kept aside, the new ones differ.
    old_div = digests(run_dir, "chains", "diversity")
    sphere_rerun(run_dir=str(run_dir), stage="diversity", overrides={"diversity.candidates": 3})
    moved = list((run_dir / "_superseded").glob("*-diversity/chains/diversity/part-*.parquet"))
    assert {p.name for p in moved} == set(old_div)
    assert digests(run_dir, "chains", "diversity") != old_div
    assert {c["candidates"] for c in store.read_table("chains", "diversity").to_pylist()} == {3}  # the small policy's E, on every row
    assert digests(run_dir, "chains", "generation") == before["chains"]
