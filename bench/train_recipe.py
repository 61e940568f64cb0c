"""Which training recipe improves the tiny policy: greedy accuracy before/after dpo, rpo, sft.

1. pairs: for ``--n-train`` built-in problems (``builtin-1k``'s difficulty: 2-6 steps,
   generator seed 1), sample ``--samples`` completions from ``--policy`` at T=0.8; a
   problem with a correct and a wrong completion gives one pair (first correct = chosen,
   first wrong = rejected; margin 1, stage generation).
2. held-out: ``--n-eval`` problems from generator seed 2024, none whose question is in the
   training set; greedy accuracy (answer line ``#### <gold>``) of the starting policy and
   of each trained ``final/`` checkpoint, with a 95% Wilson interval.
3. each recipe (``--recipe NAME:field=value,...`` over ``TrainConfig``) trains with the tiny
   trainer from ``--policy`` (reference = the same checkpoint).

Prints one JSON line per result; ``--out`` keeps the pairs and checkpoints. CPU only::

    PYTHONPATH=. nice -n 19 python bench/train_recipe.py --out /tmp/recipe \\
        --recipe dpo:method=dpo,lr=2e-4 --recipe rpo:method=rpo,alpha=20,lr=1e-4 --recipe sft:method=sft,lr=1e-4
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

DIFFICULTY = {"min_steps": 2, "max_steps": 6}
TRAIN_SEED, EVAL_SEED = 1, 2024
CHUNK = 500


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n."""
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def _sample(model, tok, prompts, seeds, temperature):
    from infra.tiny.model import sample

    out = []
    for i in range(0, len(prompts), CHUNK):
        out += sample(model, tok, prompts[i : i + CHUNK], seeds[i : i + CHUNK], temperature=temperature, top_p=1.0,
                      max_tokens=200, stop=[])
    return out


def _correct(text: str, answer: int) -> bool:
    return text.rstrip().endswith(f"#### {answer}")


def make_pairs(policy: Path, n: int, samples: int) -> tuple[list[dict], dict]:
    from infra.tiny.hf import load_pretrained
    from infra.tiny.train import PROMPT
    from infra.tiny.worldgen import Difficulty, generate

    model, tok, _ = load_pretrained(policy)
    problems = generate(n, TRAIN_SEED, Difficulty(**DIFFICULTY))
    prompts = [PROMPT.format(question=p.question) for p in problems for _ in range(samples)]
    outs = _sample(model, tok, prompts, list(range(len(prompts))), 0.8)
    pairs, n_correct = [], 0
    for i, p in enumerate(problems):
        texts = [o.text for o in outs[i * samples : (i + 1) * samples]]
        good = [t for t in texts if _correct(t, p.answer)]
        bad = [t for t in texts if not _correct(t, p.answer)]
        n_correct += len(good)
        if good and bad:
            pairs.append({"prompt": PROMPT.format(question=p.question), "chosen": good[0], "rejected": bad[0],
                          "problem_id": f"w{i}", "stage": "generation", "margin": 1.0})
    return pairs, {"problems": n, "samples": len(outs), "sample_accuracy": n_correct / len(outs), "pairs": len(pairs)}


def held_out(n: int, exclude: set[str]):
    from infra.tiny.worldgen import Difficulty, generate

    problems = [p for p in generate(n * 2, EVAL_SEED, Difficulty(**DIFFICULTY)) if p.question not in exclude]
    return problems[:n]


def greedy(checkpoint: Path, problems) -> dict:
    from infra.tiny.hf import load_pretrained
    from infra.tiny.train import PROMPT

    model, tok, _ = load_pretrained(checkpoint)
    outs = _sample(model, tok, [PROMPT.format(question=p.question) for p in problems], [0] * len(problems), 0.0)
    ok = [_correct(o.text, p.answer) for o, p in zip(outs, problems)]
    k = sum(ok)
    lo, hi = wilson(k, len(problems))
    return {"accuracy": k / len(problems), "correct": k, "n": len(problems), "ci95": [round(lo, 4), round(hi, 4)], "ok": ok}


def paired(base: list[bool], new: list[bool]) -> dict:
    """Paired comparison on the same problems: accuracy gain with a 95% normal interval, and
    the exact two-sided McNemar p-value (discordant problems only)."""
    n = len(base)
    b = sum(x and not y for x, y in zip(base, new))  # lost
    c = sum(y and not x for x, y in zip(base, new))  # gained
    d = (c - b) / n
    se = math.sqrt(max(b + c - (c - b) ** 2 / n, 0)) / n
    m = b + c
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2**m if m else 1.0
    return {"gain": round(d, 4), "gain_ci95": [round(d - 1.96 * se, 4), round(d + 1.96 * se, 4)], "lost": b, "gained": c,
            "mcnemar_p": round(min(1.0, 2 * tail), 5)}


def _parse_recipe(spec: str) -> tuple[str, dict]:
    name, _, fields = spec.partition(":")
    out = {}
    for kv in filter(None, fields.split(",")):
        k, _, v = kv.partition("=")
        out[k] = v if k in ("method", "kind", "sft_source") else float(v) if "." in v or "e" in v else int(v)
    return name, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, default=Path("infra/models/tiny-small"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipe", action="append", default=[], help="NAME:field=value,... (TrainConfig fields)")
    args = ap.parse_args()

    import torch

    from infra.config import TrainConfig
    from infra.tiny.worldgen import Difficulty, generate
    from infra.trainers import TrainJob, train

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    pairs_file = args.out / "pairs.jsonl"
    t = time.time()
    if pairs_file.exists():
        pairs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
        info = {"pairs": len(pairs), "cached": True}
    else:
        pairs, info = make_pairs(args.policy, args.n_train, args.samples)
        pairs_file.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    print(json.dumps({"what": "pairs", **info, "seconds": round(time.time() - t, 1)}), flush=True)
    train_questions = {p.question for p in generate(args.n_train, TRAIN_SEED, Difficulty(**DIFFICULTY))}
    problems = held_out(args.n_eval, train_questions)
    baseline = args.out / "baseline.json"
    if not baseline.exists():
        t = time.time()
        baseline.write_text(json.dumps({**greedy(args.policy, problems), "seconds": round(time.time() - t, 1)}))
    base = json.loads(baseline.read_text())
    print(json.dumps({"what": "start", "checkpoint": str(args.policy), **{k: v for k, v in base.items() if k != "ok"}}), flush=True)
    for spec in args.recipe:
        name, fields = _parse_recipe(spec)
        cfg = TrainConfig(**fields)
        t = time.time()
        r = train(TrainJob(policy_dir=args.policy, reference_dir=args.policy, pairs=pairs, cfg=cfg, out_dir=args.out / name))
        train_s = time.time() - t
        val = [x for x in r.rows if x["split"] == "val"]
        t = time.time()
        acc = greedy(r.final_dir, problems)
        ok = acc.pop("ok")
        print(json.dumps({"what": "trained", "recipe": name, "cfg": cfg.model_dump(mode="json"), **acc,
                          "vs_start": paired(base["ok"], ok), "eval_seconds": round(time.time() - t, 1),
                          "n_train": r.n_train, "n_val": r.n_val, "steps": r.steps, "train_seconds": round(train_s, 1),
                          "step_seconds": r.step_seconds and round(r.step_seconds, 4), "last_val": val[-1] if val else None}),
              flush=True)


if __name__ == "__main__":
    main()
