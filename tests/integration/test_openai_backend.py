"""The openai backend against real HTTP servers: llama.cpp's server, and a fault-injecting
server in front of it (429 bursts, 5xx, slow responses, dropped connections, garbled
bodies), with AIMD flow control, retries, timeouts and the API key."""


import pytest

from infra.backends.base import BackendTimeout, BackendUnavailable, GenRequest, sample_seed
from infra.backends.openai import OpenAIGenerator
from infra.config import OpenAIBackend
from tests.support.servers import FaultServer, llamacpp_server

PROMPT = "Question: Tom has 12 pens. He buys 7 more. How many pens does Tom have now?\nAnswer:\n"


@pytest.fixture(scope="module")
def llama():
    server, url = llamacpp_server(n_parallel=1)
    yield url
    del server


def _requests(k=6):
    return [GenRequest(PROMPT, prefix=f"Step {i}.", n=2, temperature=0.9, max_tokens=8, stop=("\n\n",), seed=100 + i)
            for i in range(k)]


def _client(url, **kw):
    # one llama.cpp slot serves requests one by one: the timeout must cover the queue ahead
    base = dict(base_url=url, model="smollm2", reproducible=True, initial_concurrency=4, backoff_base_s=0.05,
                backoff_max_s=0.5, request_timeout_s=8.0, max_retries=8, extra_body={"cache_prompt": False})
    return OpenAIGenerator(OpenAIBackend(**{**base, **kw}))


def test_faults_are_survived_with_the_same_rows_as_a_clean_run(llama):
    clean = _client(llama).generate(_requests())
    # 9 faults in 20 requests, a burst of 429s among them; the schedule cycles in arrival order
    schedule = ["ok", "429", "429", "429", "ok", "500", "ok", "drop", "ok", "ok", "429-retry-after", "ok", "503", "ok",
                "slow", "ok", "garbage", "ok", "ok", "ok"]
    faults = FaultServer(upstream=llama, schedule=schedule, slow_s=9.0)
    try:
        client = _client(faults.base_url)
        got = client.generate(_requests())
    finally:
        faults.close()
    assert [[c.text for c in r.completions] for r in got] == [[c.text for c in r.completions] for r in clean]
    assert [r.prompt_tokens for r in got] == [r.prompt_tokens for r in clean]
    for fault in ("429", "429-retry-after", "500", "503", "drop", "slow", "garbage"):
        assert faults.counts.get(fault, 0) >= 1, fault
    u = client.usage
    assert u.throttled >= 3 and u.server_errors >= 2 and u.timeouts >= 1 and u.connection_errors >= 1
    assert u.requests == 12 and u.attempts == u.requests + u.retries
    assert u.completion_tokens == sum(c.completion_tokens for r in got for c in r.completions)


def test_aimd_backs_off_on_429_and_recovers():
    server = FaultServer(max_in_flight=3, answer_delay_s=0.02)  # a rate limit: 429 past 3 in flight
    client = _client(server.base_url, initial_concurrency=16, max_concurrency=32, backoff_base_s=0.02)
    try:
        reqs = [GenRequest(PROMPT, n=1, max_tokens=4, seed=i) for i in range(150)]
        got = client.generate(reqs)
        assert [r.completions[0].text for r in got] == [f" answer to seed {sample_seed(r.seed, 0)}" for r in reqs]  # order kept
        assert client.usage.throttled > 0
        assert min(client.usage.limit_trace) < 4  # multiplicative decrease under the server's cap
        low, peak_capped = client._limit, server.peak_in_flight
        server.max_in_flight = None  # the limit is lifted
        server.peak_in_flight = 0
        client.generate([GenRequest(PROMPT, n=1, max_tokens=4, seed=i) for i in range(300)])
    finally:
        server.close()
    assert client._limit > low + 3  # additive increase once the server accepts everything
    assert server.peak_in_flight > peak_capped


def test_a_server_that_never_recovers_gives_a_typed_error_not_a_hang():
    down = FaultServer(schedule=["503"])
    try:
        with pytest.raises(BackendUnavailable, match="gave up after 3 attempts; last: HTTP 503"):
            _client(down.base_url, max_retries=2).generate([GenRequest(PROMPT, max_tokens=4)])
    finally:
        down.close()
    slow = FaultServer(schedule=["slow"], slow_s=1.5)
    try:
        with pytest.raises(BackendTimeout):
            _client(slow.base_url, max_retries=1, request_timeout_s=0.3).generate([GenRequest(PROMPT, max_tokens=4)])
    finally:
        slow.close()


def test_api_key_comes_from_the_environment_and_is_never_shown(monkeypatch):
    secured = FaultServer(require_key="sk-test-123")
    try:
        monkeypatch.setenv("SPHERE_TEST_KEY", "sk-test-123")
        ok = _client(secured.base_url, api_key_env="SPHERE_TEST_KEY")
        assert ok.generate([GenRequest(PROMPT, max_tokens=4, seed=1)])[0].completions[0].text == f" answer to seed {sample_seed(1, 0)}"
        assert "sk-test-123" not in repr(ok) and "sk-test-123" not in repr(ok.cfg)
        monkeypatch.delenv("SPHERE_TEST_KEY")
        with pytest.raises(BackendUnavailable, match=r"401 \(set the API key in \$SPHERE_TEST_KEY\)") as e:
            _client(secured.base_url, api_key_env="SPHERE_TEST_KEY").generate([GenRequest(PROMPT, max_tokens=4)])
        assert "sk-test" not in str(e.value)
    finally:
        secured.close()
    assert secured.seen_auth[0] == "Bearer sk-test-123" and secured.seen_auth[-1] is None


def _run(root, run_id: str, url: str) -> list[tuple]:
    from flows.pipeline import sphere_run
    from infra.storage import RunStore
    from tests.conftest import ROOT

    sphere_run(config_path=str(ROOT / "configs" / "openai-local.yaml"), run_id=run_id, data_root=str(root),
               overrides={"policy.base_url": url, "policy.request_timeout_s": 30.0, "policy.backoff_base_s": 0.05,
                          "policy.max_retries": 8, "seeds.n": 2, "search.max_depth": 2, "search.max_step_tokens": 24,
                          "self_correction.enabled": False, "diversity.enabled": False, "metrics.embedder": "hashed",
                          # llama.cpp reuses the previous request's KV cache, which shifts the numerics by
                          # arrival order; without it one slot's output depends only on (prompt, seed)
                          "policy.extra_body": {"cache_prompt": False}})
    rows = RunStore(root, run_id).read_table("chains").select(["problem_id", "branch", "text", "correct", "completion_tokens"])
    return sorted(tuple(r.values()) for r in rows.to_pylist())


def test_a_pipeline_run_over_http_survives_faults_with_the_same_rows(prefect_api, ray_local, llama, tmp_path):
    clean = _run(tmp_path, "clean", llama)
    assert len(clean) == 4 and all(r[4] > 0 for r in clean)  # (problem, branch, text, correct, tokens)
    schedule = ["ok", "429", "429", "ok", "500", "ok", "drop", "ok", "429-retry-after", "ok", "503", "ok", "garbage", "ok"]
    faults = FaultServer(upstream=llama, schedule=schedule)
    try:
        faulty = _run(tmp_path, "faulty", faults.base_url)
    finally:
        faults.close()
    assert sum(faults.counts.get(f, 0) for f in schedule if f != "ok") >= 5
    assert faulty == clean
