"""Streaming vs the stage barrier: the same rows, engines built once per backend, and a
shard's follow-up stages start while other shards still generate."""

import json

import pytest

from infra.storage import RunStore
from tests.conftest import ROOT

OVERRIDES = {"seeds.n": 30, "generation.shard_size": 5, "self_correction.shard_size": 2, "diversity.shard_size": 4,
             "pool.actors": 1, "metrics.enabled": False, "generation.concurrency": 2}


def _markers(store: RunStore, stage: str) -> list[float]:
    return sorted(json.loads(p.read_text())["written_at"] for p in (store.run_dir / "_done" / "stages").glob(f"{stage}.*.json"))


def _rows(store: RunStore, table: str, key: list[str]) -> list[tuple]:
    return sorted(tuple(str(r[k]) for k in key) for r in store.read_table(table).to_pylist())


@pytest.fixture(scope="module")
def both_modes(prefect_api, ray_local, tmp_path_factory):
    from flows.pipeline import sphere_run

    root = tmp_path_factory.mktemp("data")
    out = {}
    for mode in ("streaming", "barrier"):
        out[mode] = sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id=mode, data_root=str(root),
                               overrides={**OVERRIDES, "scheduling": mode})
    return root, out


def test_streaming_and_barrier_runs_write_identical_rows(both_modes):
    root, _ = both_modes
    s, b = RunStore(root, "streaming"), RunStore(root, "barrier")
    for table, key in (("chains", ["chain_id", "stage", "text", "verdict"]), ("pairs", ["pair_id", "chosen_chain_id", "rejected_chain_id"]),
                       ("sft", ["sft_id", "completion"]), ("routes", ["problem_id", "route"])):
        assert _rows(s, table, key) == _rows(b, table, key), table
    assert len(_rows(s, "chains", ["chain_id"])) > 60  # generation plus the self-correction and diversity chains


def test_streaming_builds_one_pool_per_backend_and_overlaps_the_stages(both_modes):
    root, summaries = both_modes
    assert summaries["streaming"]["pool_builds"] == 2  # the policy (generation + self-correction) and the small policy
    assert summaries["barrier"]["pool_builds"] == 3  # the policy is loaded again for self-correction
    assert summaries["streaming"]["engine_loads"] == 2 and summaries["barrier"]["engine_loads"] == 3
    s, b = RunStore(root, "streaming"), RunStore(root, "barrier")
    gen = _markers(s, "generation")
    followers = [t for st in ("routing", "self_correction", "diversity") for t in _markers(s, st)]
    assert min(followers) < gen[-1]  # a shard's follow-up stages ran before the last generation shard committed
    gen_b = _markers(b, "generation")
    followers_b = [t for st in ("routing", "self_correction", "diversity") for t in _markers(b, st)]
    assert min(followers_b) > gen_b[-1]  # the barrier: nothing follows until generation is done
