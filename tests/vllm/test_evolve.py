"""`sphere evolve` with the policy on the real engine: the checkpoints both trainers write are
served by vLLM (in the worker environment), beside a tiny small policy in the driver's
environment (issue 19.6: a runtime environment per backend)."""

from __future__ import annotations

from pathlib import Path

from infra.storage import RunStore
from tests.conftest import ROOT
from tests.vllm.conftest import policy

SETS = {"seeds.n": 8, "generation.shard_size": 8, "metrics.embedder": "hashed", "evaluate.n": 16, "pool.actors": 1,
        "pool.startup_timeout_s": 600, "train.epochs": 1, "train.batch_size": 4, "train.val_share": 0.0,
        "diversity.small_policy": {"kind": "tiny", "checkpoint": "small"}}


def test_each_trainers_checkpoint_is_served_by_vllm_in_the_next_round_and_its_evaluation(prefect_api, ray_local, tmp_path):
    """Round 0 trains with the tiny trainer; the evolve is resumed with the trl trainer from
    round 1 (an allowed config change). Round 1 generates with round 0's tiny-trained
    checkpoint on vLLM and trains it with TRL; TRL's checkpoint is then evaluated on vLLM."""
    from flows.evolve import sphere_evolve

    cfg, root = str(ROOT / "configs" / "quickstart.yaml"), str(tmp_path)
    sets = {**SETS, "train.kind": "tiny", "policy": policy().model_dump(mode="json")}
    first = sphere_evolve(config_path=cfg, rounds=1, evolve_id="ev", data_root=root, overrides=sets)
    m0 = first["rounds"][0]["model"]
    assert m0["trainer"] == "tiny" and Path(m0["path"]).is_dir()

    record = sphere_evolve(config_path=cfg, rounds=2, evolve_id="ev", data_root=root, overrides={**sets, "train.kind": "trl"},
                           allow_config_change=True)
    r0, r1 = record["rounds"]
    m1 = r1["model"]
    assert r0["model"]["model_id"] == m0["model_id"] and m1["trainer"] == "trl" and m1["parent_model"] == m0["path"]
    # round 1 generated with round 0's checkpoint on vLLM, the small policy on tiny
    models = {(c["stage"], c["model"]) for c in RunStore(tmp_path, "ev-r1").read_table("chains").to_pylist()}
    assert ("generation", f"vllm:{m0['path']}") in models and all(m.startswith("tiny:") for s, m in models if s == "diversity")
    assert record["policy"]["kind"] == "vllm" and record["policy"]["model"] == m1["path"]
    # every round's model was evaluated on vLLM, with a CI: the policy, the tiny-trained and the trl-trained checkpoints
    evals = [e for r in record["rounds"] for e in r["evals"] if e["metric"] == "greedy"]
    assert sorted(e["round"] for e in evals) == [0, 1, 2] and all(e["n"] == 16 and e["ci_low"] <= e["value"] <= e["ci_high"] for e in evals)
    served = {m for run in ("ev-r0", "ev-r1") for m in RunStore(tmp_path, run).read_table("evals").column("model").to_pylist()}
    assert served == {f"vllm:{policy().model}", f"vllm:{m0['path']}", f"vllm:{m1['path']}"}
