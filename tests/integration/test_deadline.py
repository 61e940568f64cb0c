"""A hung backend (a server that accepts and never answers) fails within its deadline, with a
typed error naming the backend, and that error is final: not retried by the pool, not
retried by Prefect. Without the deadlines the defaults multiply to over an hour a shard."""

import time

import pytest
import ray
from pydantic import ValidationError

from infra.backends.base import (
    BackendError,
    BackendTimeout,
    DeadlineExceeded,
    GenRequest,
)
from infra.backends.openai import OpenAIGenerator
from infra.config import OpenAIBackend, PoolConfig
from infra.pool import EnginePool
from tasks.common import is_transient
from tests.support.servers import HungServer

PROMPT = "Question: Tom has 12 pens. He buys 7 more. How many pens does Tom have now?\nAnswer:\n"
REQS = [GenRequest(PROMPT, n=2, max_tokens=4, seed=i) for i in range(3)]
SLACK = 1.5  # event-loop and process noise on a loaded 2-core machine


@pytest.fixture
def hung():
    server = HungServer()
    yield server
    server.close()


def _cfg(url, **kw):
    base = {"base_url": url, "model": "wedged", "api_key_env": None, "request_timeout_s": 0.5, "max_retries": 6,
            "backoff_base_s": 0.5, "backoff_max_s": 20.0, "deadline_s": 2.0}
    return OpenAIBackend(**{**base, **kw})


def test_a_hung_server_fails_the_call_at_its_deadline_naming_the_backend(hung):
    # without the deadline: 7 attempts x 0.5 s + up to 15.75 s of backoff, before any error
    client = OpenAIGenerator(_cfg(hung.base_url))
    t = time.monotonic()
    with pytest.raises(DeadlineExceeded) as e:
        client.generate(REQS)
    elapsed = time.monotonic() - t
    assert 2.0 <= elapsed < 2.0 + SLACK
    msg = str(e.value)
    assert f"openai backend {hung.base_url}/completions (model 'wedged')" in msg
    assert "deadline_s=2.0s" in msg and "last error: no response within 0.5s" in msg
    assert "0 of the batch's 6 samples had finished" in msg
    assert hung.accepted >= 6  # every sample reached the server: the deadline, not a connect failure, ended it


def test_a_deadline_shorter_than_one_request_timeout_still_ends_the_call(hung):
    client = OpenAIGenerator(_cfg(hung.base_url, request_timeout_s=60.0, deadline_s=1.0))
    t = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"1 attempts .* last error: none \(attempt 1 still waiting for an answer\)"):
        client.generate(REQS[:1])
    assert time.monotonic() - t < 1.0 + SLACK


def test_the_pool_raises_a_backend_deadline_once_without_retrying_it(ray_local, hung):
    pool = EnginePool(_cfg(hung.base_url), PoolConfig(actors=1, num_cpus=1, max_retries=2, batch_timeout_s=60))
    try:
        pid = ray.get(pool.actors[0].info.remote())["pid"]
        t = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=f"openai backend {hung.base_url}/completions"):
            pool.generate(REQS)
        assert time.monotonic() - t < 2 * 2.0  # one deadline, not (pool.max_retries + 1) of them
        assert ray.get(pool.actors[0].info.remote())["pid"] == pid  # the actor was not replaced for a retry
    finally:
        pool.close()


def test_the_pool_call_deadline_bounds_an_engine_that_never_answers(ray_local, hung):
    # the backend has no deadline of its own: the pool's batch timeout x retries would be 6 s + 5 respawns
    pool = EnginePool(_cfg(hung.base_url, request_timeout_s=60.0, max_retries=0, deadline_s=None),
                      PoolConfig(actors=1, num_cpus=1, max_retries=5, batch_timeout_s=1.0, call_deadline_s=2.5))
    try:
        stuck = pool.actors[0]
        t = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=rf"engine pool openai:wedged at {hung.base_url}: generate did not finish "
                                                   r"within pool.call_deadline_s=2.5s"):
            pool.generate(REQS)
        elapsed = time.monotonic() - t
        assert 2.5 <= elapsed < 2.5 + 15  # at most one actor respawn past it (without it: 6 x 1 s + 5 respawns)
        assert pool.actors[0] is not stuck  # the actor still on the chunk was replaced
        assert ray.get(pool.actors[0].info.remote(), timeout=60)["model"] == "openai:wedged"
    finally:
        pool.close()


class _State:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


def test_prefect_does_not_retry_a_deadline():
    assert is_transient(None, None, _State(BackendTimeout("one request timed out")))
    assert not is_transient(None, None, _State(DeadlineExceeded("openai backend x: deadline")))
    assert issubclass(DeadlineExceeded, BackendError)  # a stage still aborts the shard on it (Engine.search_chains)


def test_a_pool_deadline_shorter_than_its_batch_timeout_is_rejected():
    assert PoolConfig().call_deadline_s == 1800 and OpenAIBackend(model="m").deadline_s == 300
    PoolConfig(call_deadline_s=None, batch_timeout_s=3600)
    with pytest.raises(ValidationError, match="call_deadline_s .* is shorter than batch_timeout_s"):
        PoolConfig(call_deadline_s=60, batch_timeout_s=600)


def test_a_stage_past_its_deadline_fails_naming_the_stage_and_backend_and_keeps_the_run(prefect_api, ray_local, hung, tmp_path):
    """No backend deadline at all (deadline_s off, long timeouts): only pool.stage_deadline_s bounds the stage."""
    from flows.pipeline import StageDeadlineExceeded, sphere_run
    from infra.storage import RunStore
    from tests.conftest import ROOT

    policy = {"kind": "openai", "base_url": hung.base_url, "model": "wedged", "api_key_env": None,
              "request_timeout_s": 600, "max_retries": 0, "deadline_s": None}
    t = time.monotonic()
    with pytest.raises(StageDeadlineExceeded, match=r"generation\+routing.*stage_deadline_s=4.*openai:wedged"):
        sphere_run(config_path=str(ROOT / "configs" / "quickstart.yaml"), run_id="stuck", data_root=str(tmp_path),
                   overrides={"seeds.n": 4, "policy": policy, "pool.actors": 1, "pool.stage_deadline_s": 4,
                              "metrics.enabled": False, "self_correction.enabled": False, "diversity.enabled": False})
    assert time.monotonic() - t < 60  # the stage's 4 s plus the run's start-up, not 600 s x retries
    store = RunStore(tmp_path, "stuck")
    assert store.read_status()["status"] == "failed" and "StageDeadlineExceeded" in store.read_status()["error"]
    assert store.read_table("problems").num_rows == 4  # what finished before the stuck stage is kept
