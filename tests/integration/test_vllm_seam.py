"""The vllm backend's real code (infra/backends/vllm.py) on real Ray actors, driven through
the engine seam with an engine honouring vllm.LLM's contract (tests/support/tiny_llm.py).
The gpu tier (tests/gpu) runs the same paths on a real vLLM engine."""

import os
import time

import pytest

from infra.backends.base import BackendUnavailable, GenRequest
from infra.config import PoolConfig, TinyBackend, VLLMBackend
from infra.pool import EnginePool, actor_options
from tests.conftest import ROOT

REQS = [GenRequest(f"Question: Tom has {10 + i} pens. He buys 5 more. How many pens does Tom have now?\nAnswer:\n",
                   n=2, temperature=0.8, max_tokens=24, stop=("\n\n",), seed=i, logprobs=True) for i in range(6)]
# the actors run in their own environment: here only PYTHONPATH, so they can import the test engine
POOL = dict(actors=1, num_cpus=1, max_retries=2, batch_timeout_s=120, startup_timeout_s=120,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "VLLM_DP_RANK": "3", "VLLM_DP_SIZE": "4"}})


def _vllm(**kw) -> VLLMBackend:
    return VLLMBackend(model="policy", engine="tests.support.tiny_llm:TinyLLM", gpus_per_engine=0, **kw)


def texts(results):
    return [[c.text for c in r.completions] for r in results]


def test_engine_death_mid_shard_is_retried_on_a_fresh_actor_with_nothing_lost(ray_local, tmp_path):
    want = texts(EnginePool(TinyBackend(), PoolConfig(actors=1, num_cpus=1)).generate(REQS))
    marker = tmp_path / "died"
    pool = EnginePool(_vllm(engine_args={"die_once_file": str(marker)}), PoolConfig(**POOL))
    try:
        first = pool.actors[0]
        got = pool.generate(REQS)
        assert marker.exists()  # the first engine died on its first batch
        assert pool.actors[0] is not first  # ... and its actor was replaced
        assert texts(got) == want  # same samples as the tiny backend: the seam loses nothing
        assert all(c.logprob is not None and c.completion_tokens > 0 for r in got for c in r.completions)
    finally:
        pool.close()


def test_out_of_memory_at_start_fails_fast_with_the_engines_message(ray_local):
    t = time.monotonic()
    with pytest.raises(BackendUnavailable, match="out of GPU memory: ValueError: No available memory for the cache blocks"):
        EnginePool(_vllm(engine_args={"oom_at_start": True}), PoolConfig(**POOL))
    assert time.monotonic() - t < 60  # an error, not a wait for startup_timeout_s


def test_without_gpus_an_engine_asks_for_none_and_the_start_up_error_says_what_it_asked(ray_local):
    """Issue 19.5: on a machine without GPUs a vllm actor asked Ray for a GPU and waited for ever;
    the time-out message named the pool's 0 GPUs, not what the actor asked for."""
    assert actor_options(VLLMBackend(model="m").model_dump(), PoolConfig())["num_gpus"] == 0
    assert actor_options(VLLMBackend(model="m", gpus_per_engine=1).model_dump(), PoolConfig())["num_gpus"] == 1
    with pytest.raises(BackendUnavailable, match=r"asks for 1.0 CPUs / 1.0 GPUs: are they free"):
        EnginePool(_vllm().model_copy(update={"gpus_per_engine": 1}), PoolConfig(actors=1, num_cpus=1, startup_timeout_s=3))


def test_a_request_vllm_refuses_is_invalid_and_the_engine_lives_on():
    """Issue 19.1: VLLMValidationError is not a ValueError, so a refused request (prompt
    longer than the context) marked the engine dead and the pool reloaded it three times."""
    from infra.backends import build_backend
    from infra.backends.base import InvalidRequest

    b = build_backend(_vllm(max_model_len=256))
    with pytest.raises(InvalidRequest, match="VLLMValidationError.*longer than the maximum model length"):
        b.generate([GenRequest("Question: " + "Tom has 5 pens. " * 80, max_tokens=4)])
    assert b.dead is None and b.generate(REQS[:1])[0].completions


def test_greedy_n_samples_and_token_counts_match_the_tiny_backend():
    """Issue 19.2/19.3: vLLM refuses greedy sampling with n > 1, and counts the EOS id in a
    completion's tokens; the backend answers both as every other backend does."""
    from infra.backends import build_backend

    reqs = [GenRequest(r.prompt, n=3, temperature=0.0, max_tokens=60, seed=r.seed) for r in REQS]
    want = build_backend(TinyBackend()).generate(reqs)
    got = build_backend(_vllm()).generate(reqs)
    assert texts(got) == texts(want) and all(len(set(t)) == 1 and len(t) == 3 for t in texts(got))
    assert [[c.completion_tokens for c in r.completions] for r in got] == [[c.completion_tokens for c in r.completions] for r in want]
    assert any(c.finish_reason == "eos" for r in got for c in r.completions)  # the EOS case is exercised


def test_actor_options_size_engines_by_tensor_parallelism(ray_local, monkeypatch):
    import infra.pool

    monkeypatch.setattr(infra.pool, "has_gpus", lambda: True)  # sized as on a GPU cluster
    pool = PoolConfig(num_cpus=2, runtime_env={"pip": ["vllm>=0.32"]})
    one = actor_options(VLLMBackend(model="m").model_dump(), pool)
    assert one["num_gpus"] == 1 and one["runtime_env"] == {"pip": ["vllm>=0.32"]} and "scheduling_strategy" not in one
    half = actor_options(VLLMBackend(model="m", gpus_per_engine=0.5).model_dump(), pool)
    assert half["num_gpus"] == 0.5
    tp = actor_options(VLLMBackend(model="m", tensor_parallel_size=4).model_dump(), pool)
    pg = tp["scheduling_strategy"].placement_group
    try:
        assert tp["num_gpus"] == 4 and pg.bundle_specs == [{"GPU": 4.0, "CPU": 2.0}]
    finally:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)


def test_actor_options_carry_custom_resources_and_the_spread_strategy(ray_local, monkeypatch):
    import infra.pool

    monkeypatch.setattr(infra.pool, "has_gpus", lambda: True)  # sized as on a GPU cluster
    pool = PoolConfig(num_cpus=2, placement="spread", resources={"sphere_worker": 1})
    tiny = actor_options(TinyBackend().model_dump(), pool)
    assert tiny["resources"] == {"sphere_worker": 1} and tiny["scheduling_strategy"] == "SPREAD"
    assert "resources" not in actor_options(TinyBackend().model_dump(), PoolConfig())
    tp = actor_options(VLLMBackend(model="m", tensor_parallel_size=2).model_dump(), pool)
    pg = tp["scheduling_strategy"].placement_group  # tensor parallel: its placement group, not SPREAD
    try:
        assert pg.bundle_specs == [{"GPU": 2.0, "CPU": 2.0, "sphere_worker": 1.0}] and tp["resources"] == {"sphere_worker": 1}
    finally:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)


def test_data_parallel_variables_are_cleared_before_the_engine_starts(monkeypatch):
    from infra.backends.vllm import VLLMGenerator

    monkeypatch.setenv("VLLM_DP_RANK", "1")
    monkeypatch.setenv("VLLM_DP_MASTER_PORT", "29500")
    VLLMGenerator(_vllm())
    assert not [k for k in os.environ if k.startswith("VLLM_DP_")]


def test_a_missing_vllm_install_is_a_clear_error():
    from infra.backends.vllm import VLLMGenerator

    with pytest.raises(BackendUnavailable, match="GPU workers' environment"):
        VLLMGenerator(VLLMBackend(model="m", engine="vllm_not_installed_here:LLM"))


def test_a_pipeline_on_the_vllm_backend_makes_the_same_chains_as_tiny(prefect_api, ray_local, tmp_path):
    from flows.pipeline import sphere_run
    from infra.storage import RunStore

    common = {"seeds.n": 6, "self_correction.enabled": False, "diversity.enabled": False, "metrics.enabled": False,
              "pool.actors": 1}
    sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="tiny", data_root=str(tmp_path), overrides=common)
    sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="vllm", data_root=str(tmp_path),
               overrides={**common, "policy": _vllm(engine_args={"die_once_file": str(tmp_path / "died")}).model_dump(),
                          "pool.runtime_env": POOL["runtime_env"]})
    rows = {r: sorted((c["problem_id"], c["branch"], c["text"], c["correct"])
                      for c in RunStore(tmp_path, r).read_table("chains").to_pylist()) for r in ("tiny", "vllm")}
    assert rows["vllm"] == rows["tiny"] and len(rows["tiny"]) == 12
    assert (tmp_path / "died").exists()
    assert {c["model"] for c in RunStore(tmp_path, "vllm").read_table("chains").to_pylist()} == {"vllm:policy"}


def test_a_reward_model_pool_serves_per_token_rewards(ray_local):
    pool = EnginePool(_vllm(task="reward", actors=2), PoolConfig(**POOL))
    try:
        assert len(pool.actors) == 2  # sized by the backend's own `actors`
        texts = [f"Tom has {k} pens. He buys 5 more, so {k}+5={k + 5}." for k in range(5)]
        got = pool.reward(texts)
        assert len(got) == 5 and all(len(r) > 5 and all(v <= 0 for v in r) for r in got)
        with pytest.raises(Exception, match="serves task 'reward', not generation"):
            pool.generate(REQS[:1])
    finally:
        pool.close()


def test_prm_scorer_on_a_reward_pool_reads_the_step_pooling_rows(ray_local):
    from infra.config import ScorerConfig
    from tasks.scorers import ScoreItem, build_scorer

    cfg = ScorerConfig(kind="prm", prm_backend=_vllm(task="reward", engine_args={"step_tag": "<extra_0>"}))
    scorer = build_scorer(cfg, pool_cfg=PoolConfig(**POOL))
    q = "Tom has 12 pens. He buys 7 more. How many pens does Tom have now?"
    items = [ScoreItem(question=q, gold="19", prompt=q, prefix_steps=(),
                       candidates=("He buys 7 more, so 12+7=19.", "zq xv qq zz zz kk", ""))]
    from infra.pool import close_pools

    try:
        (good, bad, empty), = scorer.score_batch(items)
    finally:
        close_pools()  # the scorer's pool is the process's cached reward pool
    assert 0.0 <= bad < good <= 1.0 and empty is None


def test_a_run_scored_by_a_prm_on_a_reward_pool_owns_it_and_frees_it_before_exclusive_training(
        prefect_api, ray_local, tmp_path, monkeypatch):
    """Issue 20: the PRM's reward pool was built with no owner, so the run neither counted it
    (``fits``) nor freed it before an exclusive (GPU) training stage, where its actors kept
    their CPUs/GPUs while TRL trained. Here the train stage is declared exclusive and its task
    is a probe that reads what the run's actors hold while it runs."""
    import dataclasses

    import ray
    from prefect import task

    from flows import stages as declared
    from flows.pipeline import sphere_run
    from infra.storage import RunStore

    held_before = ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0)
    seen: dict = {}

    @task(name="train")
    def probe(run_dir: str, shard: str, config_hash: str) -> str:
        end = time.monotonic() + 20  # a killed actor's CPU comes back within moments
        while True:
            held = ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0)
            if held <= held_before or time.monotonic() > end:
                seen["held"] = held
                return ""
            time.sleep(0.2)

    exclusive = dataclasses.replace(declared.get("train"), task=probe, exclusive=lambda cfg: True)
    monkeypatch.setattr(declared, "STAGES", tuple(exclusive if s.name == "train" else s for s in declared.STAGES))
    prm = _vllm(task="reward", engine_args={"step_tag": "<extra_0>"}).model_dump()
    summary = sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="prm", data_root=str(tmp_path),
               # one policy actor + one PRM actor: the two CPUs of the test's Ray
               overrides={"seeds.n": 3, "scorer.kind": "prm", "scorer.prm_backend": prm, "pool.runtime_env": POOL["runtime_env"],
                          "pool.actors": 1, "pool.startup_timeout_s": 120, "train.enabled": True, "evaluate.enabled": False,
                          "self_correction.enabled": False, "diversity.enabled": False, "metrics.enabled": False})
    assert summary["pool_builds"] == 2  # the policy's pool and the PRM's, both the run's
    assert seen["held"] <= held_before  # while "training": no actor of the run holds a CPU, the PRM's included
    chains = RunStore(tmp_path, "prm").read_table("chains").to_pylist()
    assert len(chains) == 6 and {c["scorer"] for c in chains} == {"prm"}
    # step scores are the stand-in PRM's P(positive), not the arithmetic scorer's 0/0.5/1
    scores = [s for c in chains for s in c["step_scores"]]
    assert scores and all(0.0 <= s <= 1.0 for s in scores) and not set(scores) <= {0.0, 0.25, 0.5, 1.0}
