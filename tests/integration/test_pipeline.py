"""The whole flow in process: real Prefect API, real local Ray actors, real DuckDB and GX."""

import asyncio

import pytest

from infra import catalog
from infra.storage import RunStore
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def finished_run(prefect_api, ray_local, tmp_path_factory):
    from flows.pipeline import sphere_run

    root = tmp_path_factory.mktemp("data")
    overrides = {"seeds.n": 12, "generation.shard_size": 5, "pool.actors": 2}
    summary = sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="it-run", data_root=str(root), overrides=overrides)
    return root, summary, overrides


def test_every_problem_gets_two_chains_a_route_and_validated_rows(finished_run):
    root, summary, _ = finished_run
    c = summary["counts"]
    assert c["problems"] == 12 and c["chains"] == 24 and c["routes"] == 12
    assert sum(summary["routes"].values()) == 12
    store = RunStore(root, "it-run")
    chains = store.read_table("chains").to_pylist()
    assert {ch["verdict"] for ch in chains} <= {"correct", "wrong", "no_answer"}
    for ch in chains:
        assert ch["n_steps"] == len(ch["steps"]) == len(ch["step_scores"]) and ch["model"].startswith("tiny:")
        assert (ch["error"] is not None) == (ch["verdict"] == "no_answer")
        assert ch["text"] == "\n\n".join(ch["steps"])
    pairs = store.read_table("pairs").to_pylist()
    assert len(pairs) == summary["routes"].get("generation_pair", 0)
    by_id = {ch["chain_id"]: ch for ch in chains}
    for p in pairs:
        assert by_id[p["chosen_chain_id"]]["correct"] and not by_id[p["rejected_chain_id"]]["correct"]
    # Validation results stored with the run, one row per expectation per shard.
    val = store.read_table("validation").to_pylist()
    assert {(v["table"], v["stage"]) for v in val} >= {("problems", "seeds"), ("chains", "generation")}


def test_catalog_answers_across_the_run(finished_run):
    root, summary, _ = finished_run
    got = catalog.query(root, "select stage, count(*) as n from chains group by 1").to_pylist()
    assert got == [{"stage": "generation", "n": 24}]


def test_rerun_of_a_finished_run_recomputes_nothing(finished_run):
    from flows.pipeline import sphere_run

    root, summary, overrides = finished_run
    store = RunStore(root, "it-run")
    markers = {p.name: p.stat().st_mtime_ns for p in (store.run_dir / "_done").glob("chains.*")}
    again = sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="it-run", data_root=str(root), overrides=overrides)
    assert again["counts"] == summary["counts"]
    assert {p.name: p.stat().st_mtime_ns for p in (store.run_dir / "_done").glob("chains.*")} == markers


def test_run_publishes_prefect_artifacts(finished_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read(key):
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    summary_md = asyncio.run(read("sphere-run-summary"))
    counts = asyncio.run(read("sphere-row-counts"))
    assert summary_md and "it-run" in summary_md[0].data
    assert counts and '"chains"' in str(counts[0].data).replace("'", '"')


def test_llamacpp_backend_end_to_end_with_packaged_smollm2(prefect_api, ray_local, tmp_path):
    from flows.pipeline import sphere_run

    summary = sphere_run(config_path=str(ROOT / "configs" / "smollm2.yaml"), run_id="smol", data_root=str(tmp_path),
                         overrides={"seeds.n": 2, "search.max_depth": 2, "search.max_step_tokens": 32})
    assert summary["counts"]["chains"] == 4
    chains = RunStore(tmp_path, "smol").read_table("chains").to_pylist()
    assert all(c["model"] == "llamacpp:SmolLM2-135M-Instruct.Q4_1.gguf" for c in chains)
    assert all(c["n_steps"] >= 1 and c["sampled_tokens"] > 0 for c in chains)
    assert {c["verdict"] for c in chains} <= {"correct", "wrong", "no_answer"}
