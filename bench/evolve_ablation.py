"""Ablation of self-evolution, produced by the product itself: one `sphere evolve` per arm.

Each arm runs under its own data root (`DATA_ROOT/<arm>`); a rerun resumes an arm's evolve.

Every arm runs `sphere evolve CONFIG --rounds R` with the same config, seeds and held-out
sets, changed only by the arm's `--set` values (below). Per arm and round the table shows
the in-distribution and out-of-distribution greedy accuracy of the round's trained model
with 95% CIs, the paired McNemar test against the model the round started from, the pairs
per kind (chain pairs by stage, step pairs) and the QDC of the round's generation chains.
An arm whose evolve stops (a model the not-worse gate refuses) is shown up to where it
stopped, with why. Results: a markdown table on stdout and `bench/out/evolve_ablation.json`.

    python bench/evolve_ablation.py --data-root /tmp/abl --rounds 3 [--arms rs-sft-acc,rs-sft,chain,chain-acc,step,both,frontier,sft]
    python bench/evolve_ablation.py --data-root /tmp/abl --table-only   # re-print from the records
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

from flows.evolve import accuracy_by_round  # noqa: E402  (bench script: the project root goes on sys.path first)
from infra.storage import RunStore  # noqa: E402

ARMS: dict[str, dict[str, str]] = {  # arm -> --set values on top of the config (the config's own arm: "rs-sft-acc")
    "rs-sft-acc": {},  # configs/evolve.yaml: rejection-sampling SFT on every round's verified chains so far
    "rs-sft": {"evolve.accumulate": "false"},  # the same, each round on its own rows only
    "chain": {"train.method": "rpo", "train.sft_source": "chosen", "evolve.accumulate": "false"},  # rpo on chain pairs
    "chain-acc": {"train.method": "rpo", "train.sft_source": "chosen"},
    "step": {"train.method": "rpo", "train.pair_level": "step", "evolve.accumulate": "false"},
    "both": {"train.method": "rpo", "train.pair_level": "both", "evolve.accumulate": "false"},
    "frontier": {"evolve.frontier": "true"},
    "sft": {"train.sft_source": "chosen"},  # SFT on the chosen chains of the pairs
}
QDC = (("vendi_q1", "Vendi q1"), ("distinct_2", "distinct-2"))


def record_of(arm_root: Path) -> Path | None:
    """The arm's evolve record (one evolve per arm folder)."""
    found = sorted((arm_root / "evolve").glob("*.json"))
    return found[0] if found else None


def run_arm(config: Path, data_root: Path, arm: str, rounds: int) -> tuple[Path | None, float, int]:
    """Run (or resume) the arm's evolve under ``data_root/<arm>``; (record path, seconds, exit code)."""
    arm_root = data_root / arm
    record = record_of(arm_root)
    args = [x for k, v in ARMS[arm].items() for x in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "flows.cli", "evolve", str(config), "--rounds", str(rounds), "--data-root", str(arm_root), *args]
    if record is not None:
        cmd += ["--resume", record.stem]
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    arm_root.mkdir(parents=True, exist_ok=True)
    (arm_root / "evolve.log").write_text(res.stdout + res.stderr)
    return record_of(arm_root), time.perf_counter() - t, res.returncode


def rows_of(arm: str, record: dict, data_root: Path) -> list[dict]:
    ood = {a["round"]: a for a in accuracy_by_round(record, ood=True)}
    ind = {a["round"]: a for a in accuracy_by_round(record)}
    tests = {c["to_round"]: c for c in record.get("comparisons", [])}
    out = []
    for rnd in sorted(record["rounds"], key=lambda r: r["round"]):
        r = rnd["round"]
        store = RunStore(data_root, rnd["run_id"])
        m = {x["metric"]: x["value"] for x in store.read_table("metrics").to_pylist() if x["stage"] == "generation" and x["table"] == "chains"}
        out.append({"arm": arm, "round": r, "id": ind.get(r + 1), "ood": ood.get(r + 1), "start": ind.get(r), "test": tests.get(r + 1),
                    "pairs": rnd.get("pairs_by_stage", {}), "step_pairs": (rnd.get("counts") or {}).get("step_pairs"),
                    "sft": (rnd.get("counts") or {}).get("sft"), "trained_on": _trained_on(rnd.get("model")),
                    "frontier": rnd.get("frontier"), "qdc": {k: m.get(k) for k, _ in QDC}, "stopped": rnd.get("stopped")})
    return out


def _trained_on(model: dict | None) -> str:
    """What the round's model trained on: SFT rows or pairs, this round's and replayed ones together."""
    if not model:
        return "-"
    return f"{model['sft_rows']} SFT rows" if model.get("sft_rows") else f"{model.get('pairs', 0)} pairs"


def _acc(a: dict | None) -> str:
    return f"{a['accuracy']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]" if a else "-"


def table(rows: list[dict]) -> str:
    head = ("| arm | round | start acc | trained acc (ID) [95% CI] | vs start: fixed/broken, p | OOD acc [95% CI] | chain pairs | "
            "step pairs | SFT rows | trained on | frontier kept | " + " | ".join(label for _, label in QDC) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        t = r["test"]
        f = r["frontier"]
        cells = [r["arm"], str(r["round"]), f"{r['start']['accuracy']:.3f}" if r["start"] else "-", _acc(r["id"]),
                 f"{t['b_only']}/{t['a_only']}, p = {t['p_value']:.2g}" if t else ("stopped: " + r["stopped"][:60] if r["stopped"] else "-"),
                 _acc(r["ood"]), str(sum(r["pairs"].values())) if r["pairs"] else "-", str(r["step_pairs"] or "-"),
                 str(r["sft"] or "-"), r["trained_on"], f"{f['kept']}/{f['problems']}" if f else "-"]
        cells += ["-" if r["qdc"][k] is None else f"{r['qdc'][k]:.3f}" for k, _ in QDC]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "evolve.yaml")
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--table-only", action="store_true", help="print the table from the records already there")
    a = ap.parse_args()
    root = a.data_root.resolve()
    rows, secs = [], {}
    for arm in a.arms.split(","):
        if arm not in ARMS:
            raise SystemExit(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
        record_path = record_of(root / arm)
        if not a.table_only:
            record_path, secs[arm], rc = run_arm(a.config, root, arm, a.rounds)
            print(f"{arm}: exit {rc} in {secs[arm]:.0f} s", file=sys.stderr)
        if record_path is not None:
            rows += rows_of(arm, json.loads(record_path.read_text()), root / arm)
    print(table(rows))
    out = ROOT / "bench" / "out" / "evolve_ablation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rounds": a.rounds, "seconds": secs, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
