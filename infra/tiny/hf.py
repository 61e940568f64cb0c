"""The ``tiny`` LM as a standard Hugging Face checkpoint directory.

``save_pretrained(directory, model, tok, meta)`` writes what ``transformers`` writes for a
``GPT2LMHeadModel``, so ``AutoModelForCausalLM.from_pretrained(directory)`` and
``AutoTokenizer.from_pretrained(directory)`` load it offline, unchanged:

* ``config.json``: a ``GPT2Config`` (exact GELU, pre-LayerNorm, learned positions, tied head);
  the training record (``meta``) rides along as its ``tiny_meta`` field.
* ``model.safetensors``: float32 weights (``TinyLM``'s ``nn.Linear`` weights transposed into
  GPT-2's ``Conv1D`` layout; the tied head is stored once, as ``transformer.wte.weight``).
* ``tokenizer.json`` (``tokenizers``): WordLevel vocabulary; pre-tokenizers
  ``Split(TOKEN_RE, "isolated")`` then ``Split(SKIPPED_RE, "removed")`` (drops the whitespace
  ``TOKEN_RE.findall`` skips); a ``<bos>`` post-processor; a ``Fuse`` decoder. Through
  ``AutoTokenizer``, ``encode(text, add_special_tokens=False) == Tokenizer.encode(text)`` for
  any text, the default adds ``<bos>`` (the sampler's own model input), and
  ``decode(ids, skip_special_tokens=True) == Tokenizer.decode(ids)``. ``tokenizer_config.json``
  sets ``split_special_tokens`` so a literal ``<bos>`` in text is plain text, as in the project
  (the bare ``tokenizers`` library needs ``encode_special_tokens = True`` for that).
* ``generation_config.json``: bos/eos/pad ids, ``<pad> <bos> <unk>`` suppressed (the sampler
  never emits them), so ``model.generate`` greedy equals ``sample(temperature=0)``.

The directory is written to a sibling temporary directory and renamed into place.

``load_pretrained(directory)`` reads such a directory back into the project's ``TinyLM`` +
``Tokenizer`` + meta (for its batched sampler) without importing ``transformers``; it rejects
a GPT-2 configuration or a tokenizer that ``TinyLM``/``Tokenizer`` cannot represent exactly.

``python -m infra.tiny.hf OLD.pt OUT_DIR`` converts a checkpoint of the former ``.pt`` format.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from infra.storage import atomic_write_dir
from infra.tiny.model import BOS, EOS, PAD, SPECIALS, TOKEN_RE, UNK, TinyConfig, TinyLM, Tokenizer

# Python's ``\s`` on str. Oniguruma's ``\s`` (the ``tokenizers`` regex engine) lacks
# U+001C..U+001F, so SKIPPED_RE spells the class out instead of writing ``\s``.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WS = "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE)
_OTHER_WS = "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE if c not in "\n ")
# What ``TOKEN_RE.findall`` skips: whitespace other than "\n" and " ", and a space that is
# not followed by a non-space character (a token's leading space is the only one kept).
SKIPPED_RE = f"[{_OTHER_WS}]| (?![^{_WS}])"
WEIGHTS = "model.safetensors"

# (TinyLM block module, GPT-2 block module, nn.Linear whose weight GPT-2's Conv1D transposes)
_BLOCK = [
    ("ln1", "ln_1", False),
    ("qkv", "attn.c_attn", True),
    ("proj", "attn.c_proj", True),
    ("ln2", "ln_2", False),
    ("mlp.0", "mlp.c_fc", True),
    ("mlp.2", "mlp.c_proj", True),
]


def _to_hf(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """TinyLM state dict -> GPT2LMHeadModel state dict (without the tied ``lm_head``)."""
    out = {
        "transformer.wte.weight": state["tok.weight"],
        "transformer.wpe.weight": state["pos.weight"],
        "transformer.ln_f.weight": state["ln.weight"],
        "transformer.ln_f.bias": state["ln.bias"],
    }
    for i in range(n_layer):
        for ours, theirs, transpose in _BLOCK:
            for kind in ("weight", "bias"):
                t = state[f"blocks.{i}.{ours}.{kind}"]
                out[f"transformer.h.{i}.{theirs}.{kind}"] = t.t() if transpose and kind == "weight" else t
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def _from_hf(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Inverse of ``_to_hf``; an untied ``lm_head.weight`` is refused."""
    wte = state["transformer.wte.weight"]
    head = state.get("lm_head.weight")
    if head is not None and not torch.equal(head, wte):
        raise ValueError("lm_head.weight differs from transformer.wte.weight; TinyLM ties them")
    out = {
        "tok.weight": wte,
        "head.weight": wte,
        "pos.weight": state["transformer.wpe.weight"],
        "ln.weight": state["transformer.ln_f.weight"],
        "ln.bias": state["transformer.ln_f.bias"],
    }
    for i in range(n_layer):
        for ours, theirs, transpose in _BLOCK:
            for kind in ("weight", "bias"):
                t = state[f"transformer.h.{i}.{theirs}.{kind}"]
                out[f"blocks.{i}.{ours}.{kind}"] = t.t() if transpose and kind == "weight" else t
    return out


def gpt2_config(c: TinyConfig, meta: dict):
    """The ``GPT2Config`` that computes exactly what ``TinyLM(c)`` computes."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.max_len,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=4 * c.n_embd,
        activation_function="gelu",
        resid_pdrop=0.0,  # TinyLM has no dropout
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=True,
        architectures=["GPT2LMHeadModel"],
        tiny_meta=meta,
    )


def hf_tokenizer(tok: Tokenizer, max_len: int):
    """A ``PreTrainedTokenizerFast`` whose ids and text equal ``tok``'s (see module doc)."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast

    rust = RustTokenizer(models.WordLevel(dict(tok.index), unk_token=SPECIALS[UNK]))
    rust.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(TOKEN_RE.pattern), behavior="isolated"),
            pre_tokenizers.Split(Regex(SKIPPED_RE), behavior="removed"),
        ]
    )
    bos = SPECIALS[BOS]
    rust.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, BOS)]
    )
    rust.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=rust,
        pad_token=SPECIALS[PAD],
        bos_token=bos,
        eos_token=SPECIALS[EOS],
        unk_token=SPECIALS[UNK],
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=max_len,
    )


def save_pretrained(directory: str | Path, model: TinyLM, tok: Tokenizer, meta: dict | None = None) -> Path:
    """Write ``model`` + ``tok`` (+ ``meta``) as a Hugging Face directory; return its path.

    Written into ``.<name>.<pid>.tmp`` beside ``directory`` and then renamed onto it; an
    existing ``directory`` is replaced (it is moved aside first, then deleted).
    """
    from transformers import GenerationConfig, GPT2LMHeadModel

    c = model.config
    hf = GPT2LMHeadModel(gpt2_config(c, meta or {}))
    missing, unexpected = hf.load_state_dict(_to_hf(model.state_dict(), c.n_layer), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"weight mapping incomplete: missing={missing} unexpected={unexpected}")
    hf.tie_weights()
    hf.generation_config = GenerationConfig(
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        suppress_tokens=[i for i in range(len(SPECIALS)) if i != EOS],
    )

    def write(tmp: Path) -> None:
        hf.save_pretrained(tmp, safe_serialization=True)
        hf_tokenizer(tok, c.max_len).save_pretrained(tmp)
        for f in tmp.iterdir():
            f.chmod(0o644)  # transformers writes the weights 0600

    return atomic_write_dir(Path(directory), write)


def _check_config(cfg: dict) -> TinyConfig:
    expect = {
        "model_type": "gpt2",
        "activation_function": "gelu",
        "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
    }
    bad = {k: cfg.get(k) for k, v in expect.items() if cfg.get(k, v) != v}
    if cfg.get("n_inner") not in (None, 4 * cfg["n_embd"]):
        bad["n_inner"] = cfg["n_inner"]
    if not cfg.get("tie_word_embeddings", True):
        bad["tie_word_embeddings"] = False
    if bad:
        raise ValueError(f"not a TinyLM-compatible GPT-2 config: {bad}")
    return TinyConfig(
        vocab_size=cfg["vocab_size"],
        n_layer=cfg["n_layer"],
        n_embd=cfg["n_embd"],
        n_head=cfg["n_head"],
        max_len=cfg["n_positions"],
    )


def _read_tokenizer(path: Path) -> Tokenizer:
    spec = json.loads(path.read_text(encoding="utf-8"))
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None:
        raise ValueError(f"{path}: has a normalizer; Tokenizer cannot reproduce it")
    if model.get("type") != "WordLevel":
        raise ValueError(f"{path}: expected a WordLevel model, got {model.get('type')}")
    splits = [(p.get("type"), (p.get("pattern") or {}).get("Regex")) for p in pre.get("pretokenizers", [pre])]
    if splits != [("Split", TOKEN_RE.pattern), ("Split", SKIPPED_RE)]:
        raise ValueError(f"{path}: pre-tokenizer is not the one hf_tokenizer writes; Tokenizer cannot reproduce it")
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise ValueError(f"{path}: vocabulary ids are not 0..n-1")
    return Tokenizer([t for t, _ in vocab])


def load_pretrained(directory: str | Path) -> tuple[TinyLM, Tokenizer, dict]:
    """Read a directory written by ``save_pretrained`` into ``(TinyLM, Tokenizer, meta)``.

    Raises ``FileNotFoundError`` if a file is missing and ``ValueError`` if the config,
    weights or tokenizer are not exactly representable by ``TinyLM``/``Tokenizer``.
    """
    from safetensors.torch import load_file

    d = Path(directory)
    cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    try:
        c = _check_config(cfg)
        tok = _read_tokenizer(d / "tokenizer.json")
        if len(tok) != c.vocab_size:
            raise ValueError(f"tokenizer has {len(tok)} tokens, config.vocab_size is {c.vocab_size}")
        model = TinyLM(c)
        model.load_state_dict(_from_hf(load_file(d / WEIGHTS), c.n_layer), strict=True)
    except (KeyError, RuntimeError) as e:  # a missing field or tensor, a shape mismatch
        raise ValueError(f"{d}: {type(e).__name__}: {e}") from e
    return model.eval(), tok, cfg.get("tiny_meta", {})


def is_pretrained_dir(path: str | Path) -> bool:
    """True if ``path`` is a directory holding ``config.json`` and single-file weights."""
    p = Path(path)
    return (p / "config.json").is_file() and (p / WEIGHTS).is_file()


def convert_legacy(pt_path: str | Path, directory: str | Path) -> Path:
    """Convert a checkpoint of the former ``torch.save`` format into an HF directory."""
    blob = torch.load(pt_path, map_location="cpu", weights_only=True)
    model = TinyLM(TinyConfig(**blob["config"]))
    model.load_state_dict(blob["state"])
    return save_pretrained(directory, model.eval(), Tokenizer(blob["vocab"]), blob.get("meta", {}))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Convert a former .pt tiny checkpoint to an HF directory.")
    ap.add_argument("pt", type=Path)
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    print(convert_legacy(a.pt, a.out))
