"""The tiny LM's tokenizer and sampler contracts (on the committed checkpoint)."""

import pytest

from infra.backends.tiny import NAMED
from infra.tiny.hf import load_pretrained
from infra.tiny.model import sample
from infra.tiny.worldgen import generate


@pytest.fixture(scope="module")
def lm():
    return load_pretrained(NAMED["policy"])


def test_tokenizer_round_trips_the_problem_family(lm):
    _, tok, _ = lm
    for p in generate(50, 11):
        text = f"Question: {p.question}\nAnswer:\n{p.solution}"
        assert tok.decode(tok.encode(text)) == text


def test_row_output_does_not_depend_on_the_rest_of_the_batch(lm):
    model, tok, _ = lm
    prompts = [f"Question: {p.question}\nAnswer:\n" for p in generate(6, 2)]
    kw = dict(temperature=1.0, top_p=0.95, max_tokens=30, stop=["\n\n"])
    alone = sample(model, tok, prompts[2:3], [99], **kw)[0]
    batched = sample(model, tok, prompts, [1, 2, 99, 4, 5, 6], **kw)[2]
    assert alone.text == batched.text and alone.token_ids == batched.token_ids


def test_stop_is_honoured_and_excluded(lm):
    model, tok, _ = lm
    outs = sample(model, tok, ["Question: Tom has 5 pens. He buys 3 more. How many pens does Tom have now?\nAnswer:\n"] * 8,
                  list(range(8)), temperature=1.0, top_p=1.0, max_tokens=60, stop=["\n\n"])
    for o in outs:
        assert "\n\n" not in o.text
        assert o.finish_reason in ("stop", "eos", "length")
        assert len(o.logprobs) == len(o.token_ids) and all(lp <= 0 for lp in o.logprobs)


def test_a_budget_past_the_context_keeps_the_prompt_and_stops_at_the_context_end(lm):
    """Before: max_tokens > max_len made the prompt crop negative, so every prompt was cut to
    nothing and sampling raised IndexError (the frontier filter's first budget hit it)."""
    model, tok, _ = lm
    prompt = "Question: Tom has 5 pens. He buys 3 more. How many pens does Tom have now?\nAnswer:\n"
    for budget in (model.config.max_len, model.config.max_len + 200):
        out = sample(model, tok, [prompt], [1], temperature=0.0, top_p=1.0, max_tokens=budget, stop=[])[0]
        assert out.text and out.prompt_tokens == len(tok.encode(prompt)) + 1  # the whole prompt (and BOS), not cropped
        assert out.prompt_tokens + len(out.token_ids) <= model.config.max_len
