"""The openai backend against real HTTP servers: llama.cpp's server, and a fault-injecting
server in front of it (429 bursts, 5xx, slow responses, dropped connections, garbled
bodies), with AIMD flow control, retries, timeouts and the API key."""

import os

import pytest

from infra.backends.base import BackendTimeout, BackendUnavailable, GenRequest
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
                backoff_max_s=0.5, request_timeout_s=8.0, max_retries=8)
    return OpenAIGenerator(OpenAIBackend(**{**base, **kw}))


def test_faults_are_survived_with_the_same_rows_as_a_clean_run(llama):
    clean = _client(llama).generate(_requests())
    faults = FaultServer(upstream=llama, schedule=["ok", "429", "429", "429-retry-after", "500", "ok", "drop", "503",
                                                   "slow", "garbage", "ok"], slow_s=9.0)
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
    capped = FaultServer(max_in_flight=3, answer_delay_s=0.02)
    client = _client(capped.base_url, initial_concurrency=16, max_concurrency=32, backoff_base_s=0.02)
    try:
        reqs = [GenRequest(PROMPT, n=1, max_tokens=4, seed=i) for i in range(150)]
        got = client.generate(reqs)
    finally:
        capped.close()
    assert [r.completions[0].text for r in got] == [f" answer to seed {r.seed}" for r in reqs]  # order kept, none lost
    assert client.usage.throttled > 0
    assert min(client.usage.limit_trace) < 4  # multiplicative decrease under the server's cap
    low = client._limit
    free = FaultServer(answer_delay_s=0.01)
    try:
        client.generate([GenRequest(PROMPT, n=1, max_tokens=4, seed=i) for i in range(300)])
    finally:
        free.close()
    assert client._limit > low + 3  # additive increase once the server accepts everything
    assert free.peak_in_flight > 3


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
        assert ok.generate([GenRequest(PROMPT, max_tokens=4, seed=1)])[0].completions[0].text == " answer to seed 2"
        assert "sk-test-123" not in repr(ok) and "sk-test-123" not in repr(ok.cfg)
        monkeypatch.delenv("SPHERE_TEST_KEY")
        with pytest.raises(BackendUnavailable, match=r"401 \(set the API key in \$SPHERE_TEST_KEY\)") as e:
            _client(secured.base_url, api_key_env="SPHERE_TEST_KEY").generate([GenRequest(PROMPT, max_tokens=4)])
        assert "sk-test" not in str(e.value)
    finally:
        secured.close()
    assert secured.seen_auth[0] == "Bearer sk-test-123" and secured.seen_auth[-1] is None
