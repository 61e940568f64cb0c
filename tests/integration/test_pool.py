"""The Ray engine pool with real local actors holding the tiny backend."""

import time

import pytest
import ray

from infra.backends import build_backend
from infra.backends.base import BackendUnavailable, GenRequest
from infra.config import PoolConfig, TinyBackend
from infra.cost import Cost
from infra.pool import EnginePool

REQS = [
    GenRequest(f"Question: Tom has {10 + i} pens. He buys 5 more. How many pens does Tom have now?\nAnswer:\n",
               n=2, temperature=0.8, max_tokens=24, stop=("\n\n",), seed=i)
    for i in range(9)
]


@pytest.fixture(scope="module")
def pool(ray_local):
    p = EnginePool(TinyBackend(), PoolConfig(actors=2, num_cpus=1, max_retries=2, batch_timeout_s=120))
    yield p
    p.close()


def texts(results):
    return [[c.text for c in r.completions] for r in results]


def test_pool_matches_the_backend_in_process_and_keeps_order(pool):
    local = build_backend(TinyBackend())
    assert texts(pool.generate(REQS)) == texts(local.generate(REQS))
    assert pool.generate([]) == []


def test_engine_is_built_once_per_actor(pool):
    pids = {ray.get(a.info.remote())["pid"] for a in pool.actors}
    pool.generate(REQS)
    assert {ray.get(a.info.remote())["pid"] for a in pool.actors} == pids and len(pids) == 2


def test_dead_actor_is_replaced_and_its_chunk_resent(pool):
    want = texts(pool.generate(REQS))
    victim = pool.actors[0]
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(victim.crash.remote())
    assert texts(pool.generate(REQS)) == want  # nothing lost, nothing doubled
    assert pool.actors[0] is not victim


def test_cost_counts_what_the_engines_returned_once_and_the_time_they_spent(pool):
    local = build_backend(TinyBackend()).generate(REQS)  # the same requests in process: what the counts must be
    want = {"requests": 9, "completions": 18, "prompt_tokens": sum(r.prompt_tokens for r in local),
            "completion_tokens": sum(c.completion_tokens for r in local for c in r.completions)}
    cost = Cost()
    t0 = time.monotonic()
    pool.generate(REQS, cost=cost)
    wall = time.monotonic() - t0
    pool.generate(REQS)  # a call without this cost adds nothing to it
    got = cost.record()
    assert {k: got[k] for k in want} == want
    assert 0 < got["engine_seconds"] <= len(pool.actors) * wall  # one chunk at a time per actor
    victim = pool.actors[1]
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(victim.crash.remote())
    again = Cost()
    pool.generate(REQS, cost=again)  # its chunk resent on a fresh actor: counted once, not twice
    assert {k: again.record()[k] for k in want} == want and again.engine_seconds > 0


def test_backend_that_cannot_start_fails_fast_with_its_message(ray_local):
    with pytest.raises(BackendUnavailable, match="checkpoint not found"):
        EnginePool(TinyBackend(checkpoint="/nope/missing.pt"), PoolConfig(actors=1, num_cpus=0))


def test_actors_that_cannot_be_placed_fail_fast(ray_local):
    with pytest.raises(BackendUnavailable, match="not ready within"):
        EnginePool(TinyBackend(), PoolConfig(actors=1, num_cpus=64, startup_timeout_s=3))
