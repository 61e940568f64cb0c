"""Whole runs with a vLLM policy in the worker environment beside tiny actors in the driver's."""

from __future__ import annotations

from tests.conftest import ROOT
from tests.vllm.conftest import POLICY, policy


def test_a_run_mixes_a_vllm_policy_in_the_worker_environment_with_a_tiny_small_policy(prefect_api, ray_local, tmp_path):
    """Issue 19.6: pool.runtime_env applied to every pool, and tiny cannot start in the vLLM
    environment. Per backend, the vLLM policy runs in the worker environment and the tiny
    small policy in the driver's; greedy search (temperature 0) makes the same chains as tiny."""
    from flows.pipeline import sphere_run
    from infra.storage import RunStore

    common = {"seeds.n": 8, "search.temperature": 0.0, "search.max_depth": 6, "pool.actors": 1, "metrics.enabled": False,
              "pool.startup_timeout_s": 600, "diversity.small_policy": {"kind": "tiny", "checkpoint": "small"}}
    quick = str(ROOT / "configs" / "quickstart.yaml")
    sphere_run(config_path=quick, run_id="tiny", data_root=str(tmp_path), overrides={**common, "policy": {"kind": "tiny", "checkpoint": POLICY}})
    sphere_run(config_path=quick, run_id="vllm", data_root=str(tmp_path), overrides={**common, "policy": policy().model_dump(mode="json")})
    chains = {r: RunStore(tmp_path, r).read_table("chains").to_pylist() for r in ("tiny", "vllm")}
    key = {r: sorted((c["stage"], c["problem_id"], c["branch"], c["text"], c["correct"]) for c in chains[r]
                     if not c["model"].endswith("tiny-small")) for r in chains}
    assert key["vllm"] == key["tiny"] and len(key["tiny"]) >= 16
    assert {c["model"] for c in chains["vllm"]} >= {f"vllm:{POLICY}"}
