"""The shipped tiny checkpoints are standard Hugging Face directories (infra.tiny.hf).

``transformers`` loads them unchanged and offline, and computes what the project's own
``TinyLM``/``Tokenizer``/sampler compute: same ids, same text, same logits, same greedy output.
"""

import json
import random
import re
import shutil

import pytest
import torch

from infra.backends.base import BackendUnavailable, GenRequest
from infra.backends.tiny import NAMED, TinyGenerator
from infra.config import TinyBackend
from infra.tiny.hf import PY_WHITESPACE, load_pretrained, save_pretrained
from infra.tiny.model import BOS, sample
from infra.tiny.train import PROMPT, REVIEW_PROMPT, corrupt_step

from infra.tiny.worldgen import generate

transformers = pytest.importorskip("transformers")


def texts(n: int, seed: int) -> list[str]:
    """Training-format documents: solved problems and review prompts (one wrong step shown)."""
    rng = random.Random(seed)
    docs = []
    for p in generate(n, seed):
        docs.append(PROMPT.format(question=p.question) + p.solution)
        if p.steps and rng.random() < 0.2:
            docs.append(REVIEW_PROMPT.format(question=p.question, wrong_step=corrupt_step(rng, rng.choice(p.steps))))
    return docs


@pytest.fixture(scope="module", params=["policy", "small"])
def pair(request):
    """(project model, project tokenizer, HF model, HF tokenizer) for one shipped directory."""
    d = NAMED[request.param]
    model, tok, _ = load_pretrained(d)
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, local_files_only=True).eval()
    ht = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
    return model, tok, hf, ht


def test_shipped_directories_are_plain_gpt2(pair):
    _, tok, hf, ht = pair
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.config.model_type == "gpt2"
    assert hf.config.vocab_size == len(ht) == len(tok)
    assert (ht.bos_token_id, ht.eos_token_id, ht.pad_token_id, ht.unk_token_id) == (1, 2, 0, 3)
    assert hf.generation_config.eos_token_id == 2


def test_tokenizer_ids_and_text_equal_the_project_tokenizer(pair):
    _, tok, _, ht = pair
    corpus = texts(1000, 31)
    assert len(corpus) > 1100
    for s in corpus:
        ids = tok.encode(s)
        assert ht(s, add_special_tokens=False).input_ids == ids
        assert ht(s).input_ids == [BOS, *ids]  # the sampler's model input
        assert ht.decode(ht(s).input_ids, skip_special_tokens=True) == s == tok.decode(ids)


def test_tokenizer_agrees_on_arbitrary_text(pair):
    """Unknown words, odd whitespace, literal special tokens: same ids and text as the project."""
    _, tok, _, ht = pair
    rng = random.Random(0)
    alphabet = [*PY_WHITESPACE, *"abZ09#.<>=+-*/?!é٣😀", "<bos>", "<eos>", "####", " \n", "\n\n\n", " Tom", " 7"]
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        ids = tok.encode(s)
        assert ht(s, add_special_tokens=False).input_ids == ids, repr(s)
        assert ht.decode(ids, skip_special_tokens=True) == tok.decode(ids), repr(s)


def test_whitespace_class_is_pythons():
    assert PY_WHITESPACE == "".join(c for c in map(chr, range(0x110000)) if re.fullmatch(r"\s", c))


def test_logits_equal(pair):
    model, tok, hf, _ = pair
    for s in texts(20, 5):
        ids = torch.tensor([[BOS, *tok.encode(s)]])
        t = ids.shape[1]
        ours, _ = model(ids, torch.arange(t)[None], torch.tril(torch.ones(t, t, dtype=torch.bool))[None, None])
        with torch.no_grad():
            theirs = hf(ids).logits
        assert (ours - theirs).abs().max().item() <= 1e-5


def test_greedy_generate_equals_the_project_sampler(pair):
    model, tok, hf, ht = pair
    prompts = [f"Question: {p.question}\nAnswer:\n" for p in generate(3, 8)]
    ours = sample(model, tok, prompts, [0] * 3, temperature=0.0, top_p=1.0, max_tokens=60, stop=[])
    enc = ht(prompts, return_tensors="pt", padding=True)  # left padding
    out = hf.generate(**enc, max_new_tokens=60, do_sample=False)
    theirs = ht.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    assert theirs == [o.text for o in ours]


def test_save_and_load_round_trip(tmp_path):
    model, tok, meta = load_pretrained(NAMED["small"])
    target = tmp_path / "copy"
    target.mkdir()
    (target / "stale.txt").write_text("replaced")
    save_pretrained(target, model, tok, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temporary left behind
    assert not (target / "stale.txt").exists()
    again, tok2, meta2 = load_pretrained(target)
    assert tok2.vocab == tok.vocab and meta2 == meta and meta["role"] == "small"
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.head.weight is again.tok.weight


def _requests() -> list[GenRequest]:
    qs = [f"Question: {p.question}\nAnswer:\n" for p in generate(4, 21)]
    return [
        GenRequest(qs[0], n=3, temperature=1.0, top_p=0.95, max_tokens=40, stop=("\n\n",), seed=5),
        GenRequest(qs[1], n=2, temperature=0.7, max_tokens=40, seed=6),
        GenRequest(qs[2], prefix="He", n=1, temperature=0.0, max_tokens=40, seed=7),
        GenRequest(qs[3], n=2, temperature=1.0, top_p=0.9, max_tokens=40, stop=("\n\n",), seed=5),
    ]


@pytest.mark.parametrize("name", ["policy", "small"])
def test_backend_on_the_hf_directory_is_deterministic_and_named(name):
    cfg = TinyBackend(checkpoint=name, batch_size=3)
    first = TinyGenerator(cfg).generate(_requests())
    again = TinyGenerator(TinyBackend(checkpoint=str(NAMED[name]), batch_size=64)).generate(_requests())
    assert [r.meta["model"] for r in first] == [f"tiny:tiny-{name}"] * 4
    assert [(c.text, c.finish_reason, c.completion_tokens, c.logprob) for r in first for c in r.completions] == [
        (c.text, c.finish_reason, c.completion_tokens, c.logprob) for r in again for c in r.completions
    ]


def test_backend_refuses_missing_and_former_checkpoints(tmp_path):
    with pytest.raises(BackendUnavailable, match="not found"):
        TinyGenerator(TinyBackend(checkpoint=str(tmp_path / "nope")))
    old = tmp_path / "old.pt"
    old.write_bytes(b"")
    with pytest.raises(BackendUnavailable, match="former .pt format"):
        TinyGenerator(TinyBackend(checkpoint=str(old)))



def test_load_refuses_what_tinylm_cannot_represent(tmp_path):
    d = shutil.copytree(NAMED["small"], tmp_path / "gelu_new")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "activation_function": "gelu_new"}))
    with pytest.raises(ValueError, match="activation_function"):
        load_pretrained(d)
    (d / "config.json").write_text(json.dumps({**cfg, "n_layer": cfg["n_layer"] + 1}))
    with pytest.raises(ValueError, match="KeyError"):
        load_pretrained(d)
