"""One contract every backend passes: tiny, llamacpp (in process), openai (llama.cpp's real
HTTP server on 127.0.0.1) and vllm (its real generator code over an engine that honours
vllm.LLM's generate contract, here backed by the tiny model; the gpu tier runs real vLLM)."""

import pytest

from infra.backends import build_backend
from infra.backends.base import GenRequest, InvalidRequest
from infra.config import LlamaCppBackend, OpenAIBackend, TinyBackend, VLLMBackend

PROMPT = "Question: Tom has 12 pens. He buys 7 more. How many pens does Tom have now?\nAnswer:\n"


def _openai():
    from tests.support.servers import llamacpp_server

    server, url = llamacpp_server(n_parallel=1)
    # one slot: the server's output depends only on (prompt, seed), so it promises reproducibility
    return build_backend(OpenAIBackend(base_url=url, model="smollm2", reproducible=True, initial_concurrency=4,
                                       extra_body={"cache_prompt": False})), server


BACKENDS = {
    "tiny": lambda: (build_backend(TinyBackend(checkpoint="policy")), None),
    "llamacpp": lambda: (build_backend(LlamaCppBackend(model_path="smollm2", n_parallel=4, threads=2, n_ctx=2048)), None),
    "openai": _openai,
    "vllm": lambda: (build_backend(VLLMBackend(model="policy", engine="tests.support.tiny_llm:TinyLLM")), None),
}


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def backend(request):
    b, keep_alive = BACKENDS[request.param]()
    yield b
    b.close()
    del keep_alive


def test_results_are_well_formed_in_order_and_honour_n_and_max_tokens(backend):
    reqs = [
        GenRequest(PROMPT, n=3, temperature=0.8, max_tokens=12, seed=1),
        GenRequest(PROMPT, prefix="He buys 7 more, so 12+7=19.\n\n", n=1, temperature=0.8, max_tokens=12, seed=2),
    ]
    res = backend.generate(reqs)
    assert [len(r.completions) for r in res] == [3, 1]
    for r in res:
        assert r.prompt_tokens > 0
        for c in r.completions:
            assert isinstance(c.text, str)
            assert c.finish_reason in ("stop", "eos", "length")
            assert 0 <= c.completion_tokens <= 12
    assert isinstance(backend.model_name, str) and backend.model_name


def test_stop_string_is_honoured(backend):
    res = backend.generate([GenRequest(PROMPT, n=4, temperature=1.0, max_tokens=40, stop=("\n\n", "."), seed=5)])
    for c in res[0].completions:
        assert "\n\n" not in c.text and "." not in c.text


def test_greedy_samples_agree_and_seeds_reproduce_where_promised(backend):
    g = backend.generate([GenRequest(PROMPT, n=2, temperature=0.0, max_tokens=10, seed=1)])[0]
    assert g.completions[0].text == g.completions[1].text
    if backend.reproducible:
        req = GenRequest(PROMPT, n=3, temperature=1.0, max_tokens=10, seed=42)
        a, b = backend.generate([req])[0], backend.generate([req, GenRequest(PROMPT, seed=7)])[0]
        assert [c.text for c in a.completions] == [c.text for c in b.completions]


@pytest.mark.parametrize("bad", [dict(n=0), dict(max_tokens=0), dict(top_p=0.0), dict(temperature=-1.0)])
def test_malformed_requests_raise_a_typed_error(backend, bad):
    with pytest.raises(InvalidRequest):
        backend.generate([GenRequest(PROMPT, **bad)])


def test_token_counts_and_logprobs_are_returned_when_asked(backend):
    res = backend.generate([GenRequest(PROMPT, n=2, temperature=0.8, max_tokens=8, seed=3, logprobs=True)])[0]
    for c in res.completions:
        assert c.completion_tokens >= 1
        assert c.logprob is not None and c.logprob <= 0.0
