"""How far can the tiny policy get on gold data? The ceiling of a 3-round self-evolution.

A self-evolution round can only teach what its verified chains hold; the best chain a search
can find for a problem is its gold solution. This script trains tiny-small the way
``sphere evolve`` does (the tiny trainer's SFT step: AdamW, linear decay, batch 16, 2 epochs),
round after round, on ``--per-round`` *gold* solutions of new built-in problems (2-6
operations, generator seeds 77, 78, ...), each round from the previous round's weights, and
reports greedy accuracy on the first ``--n-eval`` held-out problems of the evolve's
in-distribution set (generator seed 1,000,003). With ``--accumulate`` round r trains on the
gold rows of rounds 0..r, as ``evolve.accumulate`` does. CPU only::

    PYTHONPATH=. python bench/evolve_ceiling.py --per-round 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent


def greedy_accuracy(model, tok, problems) -> float:
    from infra.tiny.model import sample
    from infra.tiny.train import PROMPT

    model.eval()
    prompts = [PROMPT.format(question=p.question) for p in problems]
    outs = []
    for i in range(0, len(prompts), 500):
        outs += sample(model, tok, prompts[i : i + 500], [0] * len(prompts[i : i + 500]), temperature=0.0, top_p=1.0,
                       max_tokens=320, stop=[])
    return sum(o.text.rstrip().endswith(f"#### {p.answer}") for o, p in zip(outs, problems)) / len(problems)


def sft(start: Path, rows: list[dict], lr: float, epochs: int, batch: int, seed: int):
    """The tiny trainer's SFT recipe (infra.trainers.tiny.train_step) over ``rows`` from ``start``."""
    from infra.tiny.hf import load_pretrained
    from infra.trainers.tiny import _adamw, encode, train_step

    model, tok, _ = load_pretrained(start)
    examples = [encode(tok, r["prompt"], r["completion"], model.config.max_len) for r in rows]
    opt, cfg = _adamw(model, lr), SimpleNamespace(method="sft")
    total, step = epochs * math.ceil(len(examples) / batch), 0
    for epoch in range(1, epochs + 1):
        order = list(range(len(examples)))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        for b in range(0, len(order), batch):
            train_step(model, opt, cfg, [examples[i] for i in order[b : b + batch]], None, lr * (1 - step / total))
            step += 1
    return model, tok, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-round", type=int, default=2000, help="new gold solutions per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--accumulate", action="store_true", help="round r trains on the gold rows of rounds 0..r")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch

    from infra.tiny.hf import save_pretrained
    from infra.tiny.train import PROMPT
    from infra.tiny.worldgen import Difficulty, generate

    torch.set_num_threads(a.threads)
    held_out = generate(a.n_eval, 1_000_003, Difficulty(2, 6))
    seen = {p.question for p in held_out}
    start, work, rows = ROOT / "infra" / "models" / "tiny-small", Path(tempfile.mkdtemp(prefix="ceiling-")), []
    for r in range(a.rounds):
        new = [{"prompt": PROMPT.format(question=p.question), "completion": p.solution}
               for p in generate(a.per_round, 77 + r, Difficulty(2, 6)) if p.question not in seen]
        rows = rows + new if a.accumulate else new
        t = time.perf_counter()
        model, tok, steps = sft(start, rows, a.lr, a.epochs, 16, r)
        acc = greedy_accuracy(model, tok, held_out)
        start = save_pretrained(work / f"r{r}", model, tok, {"role": "ceiling"})
        print(json.dumps({"round": r, "trained_rows": len(rows), "gold_rows_so_far": a.per_round * (r + 1), "steps": steps,
                          "greedy_accuracy": acc, "n": len(held_out), "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
