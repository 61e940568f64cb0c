"""Resume is driven by the completion markers' fingerprints: a changed stage config recomputes
that stage's shards (and what reads them); everything else is skipped. The config a stage is
computed under includes the settings its commit applies (``validation``)."""

import json

from flows.stages import names
from infra.storage import RunStore
from tests.conftest import ROOT


def _stamps(store: RunStore, stage: str) -> dict[str, float]:
    return {p.name: json.loads(p.read_text())["written_at"] for p in (store.run_dir / "_done" / "stages").glob(f"{stage}.*.json")}


def test_resume_with_a_changed_stage_config_recomputes_that_stage_and_only_what_depends_on_it(prefect_api, ray_local, tmp_path):
    from flows.pipeline import sphere_run

    cfg = str(ROOT / "configs" / "quickstart.yaml")
    base = {"seeds.n": 12, "generation.shard_size": 6, "diversity.shard_size": 3, "metrics.embedder": "hashed"}
    sphere_run(config_path=cfg, run_id="r", data_root=str(tmp_path), overrides=base)
    store = RunStore(tmp_path, "r")
    before = {st: _stamps(store, st) for st in names()}
    assert all(before[st] for st in ("seeds", "generation", "routing", "diversity", "sft", "metrics")), before

    sphere_run(config_path=cfg, run_id="r", data_root=str(tmp_path), overrides=base)  # unchanged: nothing recomputed
    assert {st: _stamps(store, st) for st in names()} == before
    assert not (store.run_dir / "reruns.jsonl").exists()

    sphere_run(config_path=cfg, run_id="r", data_root=str(tmp_path), overrides={**base, "diversity.candidates": 3})
    after = {st: _stamps(store, st) for st in names()}
    for st in ("seeds", "generation", "routing", "self_correction"):
        assert after[st] == before[st], st  # upstream and the sibling stage skipped
    for st in ("diversity", "sft", "metrics"):  # the changed stage, every shard, and what reads its chains
        assert after[st].keys() == before[st].keys() and all(after[st][k] > before[st][k] for k in before[st]), st
    assert {c["candidates"] for c in store.read_table("chains", "diversity").to_pylist()} == {3}
    log = [json.loads(line) for line in (store.run_dir / "reruns.jsonl").read_text().splitlines()]
    assert log[-1]["stage"] == "resume" and log[-1]["changes"]["diversity.candidates"] == {"old": None, "new": 3}

    # A setting the commit reads, not the stage's own code: validation.max_wrong_steps (process
    # verification of pairs and SFT rows) recomputes routing, self-correction, diversity and sft
    # (and metrics, which reads their tables), never seeds or generation.
    before = after
    sphere_run(config_path=cfg, run_id="r", data_root=str(tmp_path),
               overrides={**base, "diversity.candidates": 3, "validation.max_wrong_steps": 2})
    after = {st: _stamps(store, st) for st in names()}
    for st in ("seeds", "generation"):
        assert after[st] == before[st], st
    for st in ("routing", "self_correction", "diversity", "sft", "metrics"):
        assert after[st].keys() == before[st].keys() and all(after[st][k] > before[st][k] for k in before[st]), st
    log = [json.loads(line) for line in (store.run_dir / "reruns.jsonl").read_text().splitlines()]
    assert log[-1]["stage"] == "resume" and log[-1]["changes"]["validation.max_wrong_steps"] == {"old": 0, "new": 2}
