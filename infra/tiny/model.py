"""The ``tiny`` language model: a word-level tokenizer and a small decoder-only transformer.

It is a real autoregressive LM, trained by ``infra.tiny.train`` on the step format of
``infra.tiny.worldgen``. Its errors are real sampling errors (arithmetic slips, copied wrong
numbers), which is what the SPHERE search, the scorers and the routing need to exercise.

Limits: it only knows its own problem family and vocabulary; out-of-vocabulary words map
to ``<unk>`` and the output is then meaningless (but still well-formed text).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

TOKEN_RE = re.compile(r"\n\n|\n| ?(?:####|[A-Za-z]+|\d|[^\sA-Za-z\d])")
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
PAD, BOS, EOS, UNK = range(4)


class Tokenizer:
    """Reversible word-level tokenizer: a token is a word, a digit or a symbol, with its
    leading space. ``decode(encode(s)) == s`` for any text made of known tokens."""

    eos_token_id = EOS  # as Hugging Face tokenizers name it

    def __init__(self, vocab: list[str]):
        if vocab[: len(SPECIALS)] != SPECIALS:
            raise ValueError("vocab must start with the special tokens")
        self.vocab = vocab
        self.index = {t: i for i, t in enumerate(vocab)}

    @classmethod
    def from_texts(cls, texts: list[str]) -> Tokenizer:
        seen: set[str] = set()
        for t in texts:
            seen.update(TOKEN_RE.findall(t))
        digits = {d for i in range(10) for d in (str(i), f" {i}")}
        return cls(SPECIALS + sorted(seen | digits))

    def encode(self, text: str) -> list[int]:
        return [self.index.get(t, UNK) for t in TOKEN_RE.findall(text)]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids if i >= len(SPECIALS))

    def __len__(self) -> int:
        return len(self.vocab)


@dataclass
class TinyConfig:
    vocab_size: int
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    max_len: int = 320
    dropout: float = 0.0


class Block(nn.Module):
    def __init__(self, c: TinyConfig):
        super().__init__()
        self.n_head = c.n_head
        self.ln1 = nn.LayerNorm(c.n_embd)
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.proj = nn.Linear(c.n_embd, c.n_embd)
        self.ln2 = nn.LayerNorm(c.n_embd)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd))

    def forward(self, x, mask, cache):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x)), (k, v)


class TinyLM(nn.Module):
    def __init__(self, c: TinyConfig):
        super().__init__()
        self.config = c
        self.tok = nn.Embedding(c.vocab_size, c.n_embd)
        self.pos = nn.Embedding(c.max_len, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln = nn.LayerNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.head.weight = self.tok.weight
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, pos, mask, caches=None):
        """``mask`` is a bool (B, 1, T, S) attention mask (True = attend)."""
        x = self.tok(idx) + self.pos(pos.clamp(max=self.config.max_len - 1))
        new = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, mask, None if caches is None else caches[i])
            new.append(kv)
        return self.head(self.ln(x)), new

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad) - self.head.weight.numel()


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length" | "eos"
    prompt_tokens: int


def _truncate_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@torch.inference_mode()
def sample(
    model: TinyLM,
    tok: Tokenizer,
    prompts: list[str],
    seeds: list[int],
    *,
    temperature: float,
    top_p: float,
    max_tokens: int,
    stop: list[str],
) -> list[Sample]:
    """Sample one continuation per prompt (rows are independent given their seed).

    A row's output depends only on its prompt, its seed and the sampling parameters, not
    on the other rows of the batch, so results are reproducible whatever the batching.
    The stop string is not included in ``text`` (OpenAI semantics).
    """
    enc = [[BOS, *tok.encode(p)] for p in prompts]
    # the prompt keeps at least half the context: a budget past the context ends at max_len instead
    max_ctx = max(model.config.max_len - max_tokens, model.config.max_len // 2)
    enc = [e[-max_ctx:] if len(e) > max_ctx else e for e in enc]
    lens = torch.tensor([len(e) for e in enc])
    t0 = int(lens.max())
    b = len(enc)
    idx = torch.full((b, t0), PAD, dtype=torch.long)
    for i, e in enumerate(enc):
        idx[i, t0 - len(e) :] = torch.tensor(e)
    pad = t0 - lens  # left padding per row
    valid = torch.arange(t0)[None, :] >= pad[:, None]  # (B, T)
    pos = (torch.arange(t0)[None, :] - pad[:, None]).clamp(min=0)
    causal = torch.tril(torch.ones(t0, t0, dtype=torch.bool))
    mask = (causal[None] & valid[:, None, :])[:, None]
    mask = mask | torch.eye(t0, dtype=torch.bool)[None, None]  # padded rows attend to themselves
    logits, caches = model(idx, pos, mask)
    gens = [torch.Generator().manual_seed(int(s) & 0x7FFFFFFFFFFFFFFF) for s in seeds]
    out_ids: list[list[int]] = [[] for _ in range(b)]
    out_lp: list[list[float]] = [[] for _ in range(b)]
    finish = ["length"] * b
    active = torch.ones(b, dtype=torch.bool)
    last = logits[:, -1, :]
    cur_pos = lens.clone()
    key_valid = valid
    for _ in range(max_tokens):
        logp = torch.log_softmax(last.float(), dim=-1)
        logp[:, : len(SPECIALS)] = torch.where(
            torch.arange(len(SPECIALS)) == EOS, logp[:, : len(SPECIALS)], torch.tensor(-math.inf)
        )
        if temperature <= 0:
            nxt = logp.argmax(dim=-1)
        else:
            scaled = torch.log_softmax(logp / temperature, dim=-1)
            if top_p < 1.0:
                sp, si = scaled.sort(dim=-1, descending=True)
                cum = sp.exp().cumsum(dim=-1)
                drop = (cum - sp.exp()) > top_p
                scaled = scaled.scatter(1, si, sp.masked_fill(drop, -math.inf))
            u = torch.stack([torch.rand(scaled.shape[1], generator=g) for g in gens]).clamp_(1e-12, 1 - 1e-7)
            nxt = (scaled - torch.log(-torch.log(u))).argmax(dim=-1)
        chosen_lp = logp.gather(1, nxt[:, None])[:, 0]
        for i in torch.nonzero(active).flatten().tolist():
            t = int(nxt[i])
            if t == EOS:
                finish[i] = "eos"
                active[i] = False
                continue
            out_ids[i].append(t)
            out_lp[i].append(float(chosen_lp[i]))
            if stop and _truncate_at_stop(tok.decode(out_ids[i][-32:]), stop)[1]:
                finish[i] = "stop"
                active[i] = False
        if not active.any() or int(cur_pos.max()) >= model.config.max_len:
            break
        key_valid = torch.cat([key_valid, torch.ones(b, 1, dtype=torch.bool)], dim=1)
        step_mask = key_valid[:, None, None, :]
        logits, caches = model(nxt[:, None], cur_pos[:, None], step_mask, caches)
        last = logits[:, -1, :]
        cur_pos = cur_pos + 1
    results = []
    for i in range(b):
        text = tok.decode(out_ids[i])
        if finish[i] == "stop":
            text, _ = _truncate_at_stop(text, stop)
        results.append(Sample(text, out_ids[i], out_lp[i], finish[i], int(lens[i])))
    return results
