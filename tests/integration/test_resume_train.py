"""Resume of a run with a train stage: a finished trained run resumes with nothing recomputed,
and a changed train config retrains (in a new work directory) instead of failing."""

from __future__ import annotations

import json

import pytest

from infra.storage import RunStore
from tests.conftest import ROOT

CFG = str(ROOT / "configs" / "quickstart.yaml")
BASE = {"seeds.n": 16, "generation.shard_size": 8, "metrics.embedder": "hashed", "train.enabled": True,
        "train.epochs": 1, "train.batch_size": 8, "train.val_share": 0.0}


def _stamps(store: RunStore) -> dict[str, float]:
    return {p.name: json.loads(p.read_text())["written_at"] for p in (store.run_dir / "_done" / "stages").glob("*.json")}


@pytest.fixture(scope="module")
def trained(prefect_api, ray_local, tmp_path_factory):
    from flows.pipeline import sphere_run

    root = tmp_path_factory.mktemp("trained")
    sphere_run(config_path=CFG, run_id="r", data_root=str(root), overrides=BASE)
    store = RunStore(root, "r")
    assert store.read_table("models").num_rows == 1
    return store


def test_resuming_a_finished_trained_run_recomputes_nothing(trained):
    from flows.pipeline import sphere_run

    before = _stamps(trained)
    assert {k.split(".")[0] for k in before} >= {"seeds", "generation", "sft", "metrics", "train"}
    sphere_run(config_path=CFG, run_id="r", data_root=str(trained.data_root), overrides=BASE)
    assert _stamps(trained) == before


def test_resuming_with_a_changed_train_config_retrains_and_keeps_the_rest(trained):
    from flows.pipeline import sphere_run

    before = _stamps(trained)
    (old,) = trained.read_table("models").to_pylist()
    sphere_run(config_path=CFG, run_id="r", data_root=str(trained.data_root), overrides={**BASE, "train.epochs": 2})
    after = _stamps(trained)
    (new,) = trained.read_table("models").to_pylist()
    assert new["steps"] == 2 * old["steps"] and new["train_config_hash"] != old["train_config_hash"]
    assert after["train.00000.json"] > before["train.00000.json"]
    assert {k: v for k, v in after.items() if not k.startswith("train.")} == {k: v for k, v in before.items() if not k.startswith("train.")}
    work = sorted(p.name for p in (trained.run_dir / "models" / "train").glob("*.work"))
    assert len(work) == 1, work  # the stale work directory of the old config is gone
    log = [x for x in trained.read_table("train_log").to_pylist() if x["split"] == "train"]
    assert [x["step"] for x in log] == list(range(1, new["steps"] + 1))
