"""The self-evolution report: does the model improve, and does its data improve with it?

``write_evolve_report(root, record) -> path`` writes ``<root>/evolve/<id>.html``, one
self-contained page (plots embedded as PNG): held-out greedy accuracy per round with 95%
CIs (and the paired McNemar test of the last round against round 0), the QDC of each
round's data beside it (accuracy, Vendi q1, distinct-2, steps per chain of the generation
chains; pairs per stage) — the QDC survey's question whether self-improvement collapses
diversity — and the training curves (loss, reward accuracy, margin per step) of every round.
"""

from __future__ import annotations

import html
from pathlib import Path

from infra.storage import RunStore, atomic_write_text
from tasks.evaluate import REFERENCE_ROUND, is_ood
from tasks.report import _png

DATA_METRICS = (("accuracy", "data accuracy"), ("vendi_q1", "Vendi q1"), ("distinct_2", "distinct-2"), ("steps_per_chain", "steps"))


def round_rows(root: Path, record: dict) -> list[dict]:
    """Per round: the held-out accuracy (+CI) of the model it starts from and of the model it
    trained, and the QDC of the round's generation chains. Only round 0 evaluates its starting
    policy; round r > 0 starts from round r-1's promoted model (a rejected model stops the
    evolve), so its start is that model's evaluation, measured once."""
    out: list[dict] = []
    for rnd in sorted(record["rounds"], key=lambda r: r["round"]):
        store = RunStore(root, rnd["run_id"])
        m = {r["metric"]: r["value"] for r in store.read_table("metrics").to_pylist()
             if r["stage"] == "generation" and r["table"] == "chains"}
        row = {"round": rnd["round"], "run_id": rnd["run_id"], "data": {k: m.get(k) for k, _ in DATA_METRICS},
               "pairs": rnd.get("pairs_by_stage", {}), "frontier": rnd.get("frontier")}
        for prefix, ood in (("", False), ("ood_", True)):
            greedy = [e for e in rnd["evals"] if e["metric"] == "greedy" and is_ood(e.get("dataset") or "") == ood]
            start = [e for e in greedy if e["round"] == rnd["round"]]
            trained = [e for e in greedy if e["round"] == rnd["round"] + 1]
            previous = out[-1][prefix + "trained"] if out and out[-1]["round"] == rnd["round"] - 1 else None
            row[prefix + "start"] = start[0] if start else previous
            row[prefix + "trained"] = trained[0] if trained else None
        out.append(row)
    return out


def reference_evals(record: dict) -> dict[bool, dict]:
    """The reference model's greedy evals row per set (False: in-distribution, True: OOD)."""
    return {is_ood(e.get("dataset") or ""): e for rnd in record["rounds"] for e in rnd.get("evals", [])
            if e["metric"] == "greedy" and e["round"] == REFERENCE_ROUND}


def value_axis(values: list) -> tuple[float, float]:
    """The y range of a QDC small multiple: from 0 (every QDC value here is non-negative) to
    15% above the largest value, so a change of 0.02 steps looks like what it is, not a cliff."""
    known = [v for v in values if v is not None and v == v]
    if not known or max(known) <= 0:
        return (min([0.0, *known]), 1.0)
    return (min(0.0, *known), max(known) * 1.15)


def _plots(root: Path, record: dict, rows: list[dict]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    ref = reference_evals(record)
    for ood, title in ((False, "Held-out accuracy per round (in-distribution)"), (True, "Held-out accuracy per round (out-of-distribution)")):
        prefix = "ood_" if ood else ""
        points = {e["round"]: e for r in rows for e in (r[prefix + "start"], r[prefix + "trained"]) if e}
        if not points:
            continue
        ks = sorted(points)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ys = [points[k]["value"] for k in ks]
        err = [[points[k]["value"] - points[k]["ci_low"] for k in ks], [points[k]["ci_high"] - points[k]["value"] for k in ks]]
        ax.errorbar(ks, ys, yerr=err, marker="o", capsize=4, label="evolved policy")
        if ood in ref:
            e = ref[ood]
            ax.axhline(e["value"], color="grey", linestyle="--", label=f"reference {e['model']}")
            ax.axhspan(e["ci_low"], e["ci_high"], color="grey", alpha=0.15)
            ax.legend(fontsize=7)
        ax.set_xlabel("model of round (0 = starting policy)")
        ax.set_ylabel("greedy accuracy (95% CI)")
        ax.set_xticks(ks)
        plots.append((title, _png(fig)))
    if rows:
        fig, axes = plt.subplots(1, len(DATA_METRICS), figsize=(12, 3))
        for ax, (k, label) in zip(axes, DATA_METRICS):
            ys = [r["data"][k] for r in rows]
            ax.plot([r["round"] for r in rows], ys, marker="o")
            ax.set_ylim(*value_axis(ys))
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("round")
            ax.set_xticks([r["round"] for r in rows])
        plots.append(("QDC of each round's generation chains", _png(fig)))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    drew = False
    for rnd in record["rounds"]:
        log = [x for x in RunStore(root, rnd["run_id"]).read_table("train_log").to_pylist() if x["split"] == "train"]
        if not log:
            continue
        drew = True
        for ax, key in zip(axes, ("loss", "reward_accuracy", "margin")):
            ax.plot([x["step"] for x in log], [x[key] for x in log], label=f"round {rnd['round']}")
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step")
    if drew:
        axes[0].legend(fontsize=7)
        plots.append(("Training curves", _png(fig)))
    else:
        plt.close(fig)
    return plots


def write_evolve_report(root: Path, record: dict) -> Path:
    rows = round_rows(root, record)
    steps = {c["to_round"]: c for c in record.get("comparisons", [])}  # each model against the one it started from
    ood_steps = {c["to_round"]: c for c in record.get("comparisons_ood", [])}
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>SPHERE self-evolution - {html.escape(record['evolve_id'])}</title>",
             "<style>body{font-family:sans-serif;margin:24px;max-width:1300px}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}img{max-width:100%}</style></head><body>",
             f"<h1>Self-evolution: {html.escape(record['evolve_id'])}</h1>",
             "<table><tr><th>round</th><th>run</th><th>start acc</th><th>trained acc [95% CI]</th><th>vs start: fixed/broken, p</th>"
             "<th>OOD start</th><th>OOD trained [95% CI]</th><th>OOD vs start</th><th>frontier kept</th>"
             + "".join(f"<th>{html.escape(label)}</th>" for _, label in DATA_METRICS) + "<th>pairs by stage</th></tr>"]

    def acc(e: dict | None) -> str:
        return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}] (n={e['n']})" if e else ""

    def test(m: dict | None) -> str:
        return f"{m['b_only']}/{m['a_only']}, p = {m['p_value']:.2g}" if m else ""

    for r in rows:
        f = r.get("frontier")
        cells = [str(r["round"]), html.escape(r["run_id"]), f"{r['start']['value']:.3f}" if r["start"] else "", acc(r["trained"]),
                 test(steps.get(r["round"] + 1)), f"{r['ood_start']['value']:.3f}" if r["ood_start"] else "", acc(r["ood_trained"]),
                 test(ood_steps.get(r["round"] + 1)), f"{f['kept']}/{f['problems']}" if f else ""]
        cells += ["" if r["data"][k] is None else f"{r['data'][k]:.3f}" for k, _ in DATA_METRICS]
        cells.append(html.escape(", ".join(f"{k}={v}" for k, v in r["pairs"].items())))
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    for ood, e in sorted(reference_evals(record).items()):
        parts.append(f"<tr><td>ref</td><td>{html.escape(e['model'])}</td><td></td><td>{acc(e) if not ood else ''}</td><td></td><td></td>"
                     f"<td>{acc(e) if ood else ''}</td><td colspan='{3 + len(DATA_METRICS)}' style='text-align:left'>reference model "
                     f"on {html.escape(e['dataset'])} (evaluate.reference; not trained)</td></tr>")
    parts.append("</table>")
    c = record.get("comparison") or {}
    if c:
        parts.append(f"<p>Paired McNemar, round {c['from_round']} vs round {c['to_round']} on {c['n']} held-out problems: "
                     f"{c['b_only']} fixed, {c['a_only']} broken, p = {c['p_value']:.3g}.</p>")
    for title, png in _plots(root, record, rows):
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    parts.append("</body></html>")
    return atomic_write_text(root / "evolve" / f"{record['evolve_id']}.html", "".join(parts))
