"""Ablation of one self-evolution round, produced by the product itself.

On one finished round (a run with train/evaluate enabled, e.g. round 0 of `sphere evolve
configs/evolve.yaml`), re-train and re-evaluate with `sphere rerun RUN --stage train --set
...` for every arm: the training method (dpo, rpo, sft on the chosen) with pairs from every
SPHERE stage, then the best method with pairs from generation only, + self-correction, +
diversity. Same data, same seed, same held-out problems; each rerun moves the previous
train/evaluate outputs to `_superseded/` and leaves the data stages untouched. Prints one
markdown table (held-out greedy accuracy with 95% CIs, McNemar against the starting policy).

    python bench/ablation.py --data-root /tmp/evo --run sphere-evolve-...-r0 [--arms dpo,rpo,sft]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.storage import RunStore  # noqa: E402  (bench script: the project root goes on sys.path first)
from tasks.evaluate import is_ood, mcnemar  # noqa: E402

ALL = '["generation","self_correction","diversity"]'
ARMS = {
    "dpo": {"train.method": "dpo", "train.pair_stages": ALL},
    "rpo": {"train.method": "rpo", "train.pair_stages": ALL},
    "sft": {"train.method": "sft", "train.sft_source": "chosen", "train.pair_stages": ALL},
}
STAGE_ARMS = {
    "generation only": '["generation"]',
    "+ self-correction": '["generation","self_correction"]',
    "+ diversity (all)": ALL,
}


def rerun(data_root: Path, run: str, sets: dict) -> float:
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "flows.cli", "rerun", run, "--stage", "train", "--data-root", str(data_root), *args],
                         cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"rerun {sets} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return time.perf_counter() - t


def results(store: RunStore) -> tuple[dict, dict, dict, dict]:
    evals = [e for e in store.read_table("evals").to_pylist() if e["metric"] == "greedy" and not is_ood(e["dataset"])]
    items = [i for i in store.read_table("eval_items").to_pylist() if not is_ood(i["dataset"])]  # in-distribution only
    start = next(e for e in evals if e["round"] == 0)
    trained = next(e for e in evals if e["round"] == 1)
    by = {r: {i["problem_id"]: i["correct"] for i in items if i["round"] == r} for r in (0, 1)}
    return start, trained, by[0], by[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--run", required=True, help="a finished round's run id (train and evaluate enabled)")
    ap.add_argument("--arms", default="dpo,rpo,sft", help="methods to compare (all pair stages)")
    ap.add_argument("--stages-method", default=None, help="method of the pair-stage ablation (default: the best of --arms)")
    a = ap.parse_args()
    store = RunStore(a.data_root.resolve(), a.run)
    rows = []
    start, _, base, _ = results(store)
    rows.append(("no training (starting policy)", "-", start, None, 0.0))
    best = None
    for name in a.arms.split(","):
        secs = rerun(a.data_root, a.run, ARMS[name])
        _, trained, b0, b1 = results(store)
        rows.append((name, "all", trained, mcnemar(b0, b1), secs))
        best = name if best is None or trained["value"] > next(r[2]["value"] for r in rows if r[0] == best) else best
    method = a.stages_method or best
    for label, stages in STAGE_ARMS.items():
        if stages == ALL and method in a.arms.split(","):
            continue  # already measured above
        secs = rerun(a.data_root, a.run, {**ARMS[method], "train.pair_stages": stages})
        _, trained, b0, b1 = results(store)
        rows.append((method, label, trained, mcnemar(b0, b1), secs))
    print(f"Ablation on {a.run} ({start['n']} held-out problems, 95% Wilson CIs; McNemar vs the starting policy)\n")
    print("| method | pairs from | held-out accuracy | 95% CI | fixed / broken | McNemar p | train+eval s |")
    print("|---|---|---|---|---|---|---|")
    for name, stages, e, mc, secs in rows:
        mcs = f"{mc['b_only']} / {mc['a_only']} | {mc['p_value']:.2g}" if mc else "- | -"
        print(f"| {name} | {stages} | {e['value']:.3f} | [{e['ci_low']:.3f}, {e['ci_high']:.3f}] | {mcs} | {secs:.0f} |")
    print(json.dumps({"base": start, "rows": [(r[0], r[1], r[2]["value"]) for r in rows]}, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()
