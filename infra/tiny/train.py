"""Train the ``tiny`` policy checkpoints on CPU.

Reproduce the committed checkpoints with::

    python -m infra.tiny.train --minutes 24 --out infra/models

It writes ``tiny-policy/`` (the best greedy accuracy seen) and ``tiny-small/`` (the first
checkpoint whose held-out greedy accuracy reaches ``--small-at``, a weaker policy for
diversity induction), Hugging Face directories (``infra.tiny.hf``), plus
``tiny-train-log.json`` with the accuracy curve.

Training documents are the solution format of ``infra.tiny.worldgen``; a share of them are
"review" documents that show one wrong step before the answer, so the model can condition
on a failed attempt in self-correction. Loss is taken on the answer tokens only.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from infra.tiny.hf import save_pretrained
from infra.tiny.model import BOS, EOS, PAD, TinyConfig, TinyLM, Tokenizer, sample
from infra.tiny.worldgen import Difficulty, WorldProblem, make_problem

PROMPT = "Question: {question}\nAnswer:\n"
REVIEW_PROMPT = "Question: {question}\nReview: {wrong_step} is wrong.\nAnswer:\n"
TRAIN_DIFFICULTIES = [
    Difficulty(min_steps=1, max_steps=3),
    Difficulty(min_steps=2, max_steps=4),
    Difficulty(min_steps=3, max_steps=6, max_value=999),
]


def corrupt_step(rng: random.Random, step: str) -> str:
    """The same step with a wrong result (an arithmetic slip)."""
    head, _, result = step.rstrip(".").rpartition("=")
    value = int(result)
    wrong = value + rng.choice([-10, -2, -1, 1, 2, 10, 100])
    if wrong < 0 or wrong == value:
        wrong = value + 1
    return f"{head}={wrong}."


def document(rng: random.Random, p: WorldProblem, review_share: float) -> tuple[str, str]:
    if p.steps and rng.random() < review_share:
        prompt = REVIEW_PROMPT.format(question=p.question, wrong_step=corrupt_step(rng, rng.choice(p.steps)))
    else:
        prompt = PROMPT.format(question=p.question)
    return prompt, p.solution


def build_tokenizer(seed: int = 0) -> Tokenizer:
    rng = random.Random(seed)
    texts = []
    for _ in range(4000):
        p = make_problem(rng, rng.choice(TRAIN_DIFFICULTIES))
        texts.append(PROMPT.format(question=p.question) + p.solution)
        texts.append(REVIEW_PROMPT.format(question=p.question, wrong_step=corrupt_step(rng, p.steps[0])))
    return Tokenizer.from_texts(texts)


def batch(rng, tok, size, review_share, max_len):
    rows, masks = [], []
    for _ in range(size):
        prompt, answer = document(rng, make_problem(rng, rng.choice(TRAIN_DIFFICULTIES)), review_share)
        a, b = [BOS, *tok.encode(prompt)], [*tok.encode(answer), EOS]
        ids = (a + b)[:max_len]
        rows.append(ids)
        masks.append(([0] * len(a) + [1] * len(b))[:max_len])
    t = max(len(r) for r in rows)
    x = torch.full((size, t), PAD, dtype=torch.long)
    m = torch.zeros((size, t), dtype=torch.bool)
    for i, (r, mk) in enumerate(zip(rows, masks)):
        x[i, : len(r)] = torch.tensor(r)
        m[i, : len(mk)] = torch.tensor(mk, dtype=torch.bool)
    return x, m


def greedy_accuracy(model, tok, problems: list[WorldProblem]) -> float:
    model.eval()
    outs = sample(
        model,
        tok,
        [PROMPT.format(question=p.question) for p in problems],
        [0] * len(problems),
        temperature=0.0,
        top_p=1.0,
        max_tokens=160,
        stop=[],
    )
    model.train()
    ok = sum(o.text.rstrip().endswith(f"#### {p.answer}") for o, p in zip(outs, problems))
    return ok / len(problems)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=24.0)
    ap.add_argument("--out", type=Path, default=Path("infra/models"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--small-at", type=float, default=0.72)
    ap.add_argument("--review-share", type=float, default=0.15)
    ap.add_argument("--eval-every", type=float, default=60.0, help="seconds between held-out evaluations")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    tok = build_tokenizer()
    model = TinyLM(TinyConfig(vocab_size=len(tok)))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    held_out = [make_problem(random.Random(10_000_000 + i), Difficulty()) for i in range(200)]
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.minutes * 60
    start = last_eval = time.time()
    step, best, small_saved, log = 0, -1.0, False, []
    print(f"params={model.n_params()} vocab={len(tok)}", flush=True)
    while (elapsed := time.time() - start) < budget:
        frac = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(frac * 3.14159)).item()))
        for g in opt.param_groups:
            g["lr"] = lr
        x, m = batch(rng, tok, args.batch, args.review_share, model.config.max_len)
        t = x.shape[1]
        pos = torch.arange(t)[None].expand_as(x)
        mask = torch.tril(torch.ones(t, t, dtype=torch.bool))[None, None]
        logits, _ = model(x, pos, mask)
        loss = F.cross_entropy(logits[:, :-1][m[:, 1:]], x[:, 1:][m[:, 1:]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if time.time() - last_eval >= args.eval_every:
            last_eval = time.time()
            acc = greedy_accuracy(model, tok, held_out)
            log.append({"step": step, "minutes": round((last_eval - start) / 60, 2), "loss": round(loss.item(), 4), "acc": acc})
            print(json.dumps(log[-1]), flush=True)
            meta = {"step": step, "held_out_greedy_accuracy": acc, "seed": args.seed, "train_minutes": round((last_eval - start) / 60, 2)}
            if not small_saved and acc >= args.small_at:
                save_pretrained(args.out / "tiny-small", model, tok, {**meta, "role": "small"})
                small_saved = True
            if acc > best:
                best = acc
                save_pretrained(args.out / "tiny-policy", model, tok, {**meta, "role": "policy"})
    (args.out / "tiny-train-log.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "log": log}, indent=1))
    print(f"done: best={best} steps={step}", flush=True)


if __name__ == "__main__":
    main()
