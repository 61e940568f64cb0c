"""`sphere evolve` with the policy on the real engine: the checkpoint each trainer writes in
round 0 is served by vLLM (in the worker environment) in round 1, beside a tiny small policy
in the driver's environment (issue 19.6: a runtime environment per backend)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.storage import RunStore
from tests.conftest import ROOT
from tests.vllm.conftest import policy

SETS = {"seeds.n": 8, "generation.shard_size": 8, "metrics.embedder": "hashed", "evaluate.n": 16, "pool.actors": 1,
        "pool.startup_timeout_s": 600, "train.epochs": 1, "train.batch_size": 4, "train.val_share": 0.0,
        "diversity.small_policy": {"kind": "tiny", "checkpoint": "small"}}


@pytest.mark.parametrize("trainer", ["tiny", "trl"])
def test_round_zeros_checkpoint_is_served_by_vllm_in_round_one(prefect_api, ray_local, tmp_path, trainer):
    from flows.evolve import sphere_evolve

    record = sphere_evolve(config_path=str(ROOT / "configs" / "quickstart.yaml"), rounds=2, evolve_id="ev", data_root=str(tmp_path),
                           overrides={**SETS, "train.kind": trainer, "policy": policy().model_dump(mode="json")})
    r0, r1 = record["rounds"]
    m0 = r0["model"]
    assert m0["trainer"] == trainer and Path(m0["path"]).is_dir() and r1["model"]["parent_model"] == m0["path"]
    # round 1 generated with round 0's checkpoint on vLLM, the small policy on tiny
    models = {c["stage"]: c["model"] for c in RunStore(tmp_path, "ev-r1").read_table("chains").to_pylist()}
    assert models["generation"] == f"vllm:{m0['path']}" and models.get("diversity", "tiny:small").startswith("tiny:")
    assert record["policy"]["kind"] == "vllm" and record["policy"]["model"] == r1["model"]["path"]
    # every round's model was evaluated on vLLM, with a CI
    evals = [e for r in record["rounds"] for e in r["evals"] if e["metric"] == "greedy"]
    assert sorted({e["round"] for e in evals}) == [0, 1, 2] and all(e["n"] == 16 and e["ci_low"] <= e["value"] <= e["ci_high"] for e in evals)
    assert {m for run in ("ev-r0", "ev-r1") for m in RunStore(tmp_path, run).read_table("evals").column("model").to_pylist()} \
        >= {f"vllm:{m0['path']}"}
