"""GPU tier: the vllm backend on a real vLLM engine inside Ray GPU actors.

Needs a CUDA GPU, vLLM in the environment (`pip install 'sphere-factory[gpu-worker]'`, on
the GPU worker image, never next to the Prefect driver in production) and a model on disk:
    SPHERE_VLLM_MODEL=/models/Qwen2.5-0.5B-Instruct pytest -m gpu tests/gpu
It runs the same contract as every other backend, then engine death mid-batch and an
out-of-memory start-up.
"""

import os
import time

import pytest

from infra.backends.base import BackendUnavailable, GenRequest, InvalidRequest
from infra.config import PoolConfig, VLLMBackend

pytestmark = pytest.mark.gpu
PROMPT = "Question: Tom has 12 pens. He buys 7 more. How many pens does Tom have now?\nAnswer:\n"


@pytest.fixture(scope="module")
def model():
    path = os.environ.get("SPHERE_VLLM_MODEL")
    if not path:
        pytest.skip("set SPHERE_VLLM_MODEL to a local model directory")
    return path


@pytest.fixture(scope="module")
def pool(model, ray_local_gpu):
    from infra.pool import EnginePool

    p = EnginePool(VLLMBackend(model=model, gpu_memory_utilization=0.5, max_model_len=2048, enforce_eager=True),
                   PoolConfig(actors=1, num_cpus=1, startup_timeout_s=600, batch_timeout_s=300))
    yield p
    p.close()


@pytest.fixture(scope="module")
def ray_local_gpu():
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    yield ray


def test_contract_on_a_real_engine(pool):
    res = pool.generate([GenRequest(PROMPT, n=3, temperature=0.8, max_tokens=12, seed=1, logprobs=True),
                         GenRequest(PROMPT, prefix="He buys 7 more, so 12+7=19.\n\n", n=1, max_tokens=12, seed=2)])
    assert [len(r.completions) for r in res] == [3, 1]
    assert all(r.prompt_tokens > 0 for r in res)
    assert all(0 < c.completion_tokens <= 12 and c.finish_reason in ("stop", "eos", "length") for r in res for c in r.completions)
    assert all(c.logprob is not None and c.logprob <= 0 for c in res[0].completions)
    stopped = pool.generate([GenRequest(PROMPT, n=4, temperature=1.0, max_tokens=40, stop=("\n\n", "."), seed=5)])[0]
    assert all("\n\n" not in c.text and "." not in c.text for c in stopped.completions)
    g = pool.generate([GenRequest(PROMPT, n=2, temperature=0.0, max_tokens=10, seed=1)])[0]
    assert g.completions[0].text == g.completions[1].text
    with pytest.raises(InvalidRequest):
        pool.generate([GenRequest(PROMPT, n=0)])


def test_engine_death_mid_batch_is_retried_on_a_fresh_actor(pool):
    import ray

    want = len(pool.generate([GenRequest(PROMPT, n=2, max_tokens=8, seed=3)])[0].completions)
    victim = pool.actors[0]
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(victim.crash.remote())
    assert len(pool.generate([GenRequest(PROMPT, n=2, max_tokens=8, seed=3)])[0].completions) == want
    assert pool.actors[0] is not victim


def test_out_of_memory_at_start_fails_fast(model, ray_local_gpu):
    from infra.pool import EnginePool

    t = time.monotonic()
    with pytest.raises(BackendUnavailable, match="vLLM engine"):
        EnginePool(VLLMBackend(model=model, gpu_memory_utilization=0.01, max_model_len=32768),
                   PoolConfig(actors=1, num_cpus=1, startup_timeout_s=600))
    assert time.monotonic() - t < 300
