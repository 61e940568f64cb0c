"""Issue 22.3: what ``sphere run`` prints (rows per table, routes, pairs by stage, the QDC of
chains) reads whole in an 80-column terminal: no line past 80 characters, no header or value
cut (no "…"), every value the metric's own, formatted."""

from __future__ import annotations

import math

from rich.console import Console

from flows.cli import _print_run_summary, _qdc_tables, _qdc_value
from infra.schemas import from_rows
from infra.storage import RunStore
from tasks.report import RUN_TABLE

STAGES = ("generation", "self_correction", "diversity")


def _metrics(stages=STAGES) -> list[dict]:
    """Hand-built ``metrics`` rows: every RUN_TABLE metric of every stage's chains, with values
    of every width (a Vendi of 123.457, a NaN, one metric missing), and pairs rows that must
    not show."""
    rows = []
    for i, stage in enumerate(stages):
        for j, metric in enumerate(RUN_TABLE):
            if (i, metric) == (2, "solve_rate"):
                continue  # missing
            value = {"vendi_q1": 123.4567 + i}.get(metric, (j + 1) / (i + 7))
            if (i, metric) == (1, "strategies_per_problem"):
                value = math.nan
            rows.append({"run_id": "r", "stage": stage, "table": "chains", "metric": metric, "value": value, "n": 10})
        rows.append({"run_id": "r", "stage": stage, "table": "pairs", "metric": "accuracy", "value": 0.999, "n": 3})
    return rows


def _render(*tables) -> str:
    console = Console(width=80, record=True)
    for t in tables:
        console.print(t)
    return console.export_text()


def _fits(text: str) -> None:
    assert "…" not in text and "..." not in text
    assert max(len(line) for line in text.splitlines()) <= 80


def _shown(text: str) -> dict[str, list[str]]:
    """metric -> the cells of its row, per table in order, concatenated."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0] in RUN_TABLE:
            out.setdefault(cells[0], []).extend(cells[1:])
    return out


def test_the_qdc_table_reads_whole_at_80_columns_with_each_metric_s_own_value():
    rows = _metrics()
    text = _render(*_qdc_tables(rows, 80))
    _fits(text)
    header = next(line.split() for line in text.splitlines() if line.split()[:1] == ["metric"])
    assert header == ["metric", *sorted(STAGES)]  # every stage named whole, in order
    want = {(r["stage"], r["metric"]): r["value"] for r in rows if r["table"] == "chains"}
    shown = _shown(text)
    assert list(shown) == list(RUN_TABLE)  # one row per metric, every name whole
    for metric, cells in shown.items():
        assert cells == [_qdc_value(want.get((stage, metric))) for stage in sorted(STAGES)]
    assert shown["vendi_q1"][0] == "125.457" and shown["strategies_per_problem"][2] == "-" and shown["solve_rate"][0] == "-"
    assert "0.999" not in text  # the pairs' metrics are not the chains'


def test_stages_that_do_not_fit_beside_each_other_go_to_another_table_still_whole():
    stages = [f"round_{k}_self_correction" for k in range(5)] + ["generation"]
    rows = _metrics(stages)
    tables = _qdc_tables(rows, 80)
    assert len(tables) > 1
    text = _render(*tables)
    _fits(text)
    headers = [line.split()[1:] for line in text.splitlines() if line.split()[:1] == ["metric"]]
    assert [s for h in headers for s in h] == sorted(stages)  # each stage once, whole
    want = {(r["stage"], r["metric"]): r["value"] for r in rows if r["table"] == "chains"}
    assert _shown(text)["accuracy"] == [_qdc_value(want[(s, "accuracy")]) for s in sorted(stages)]


def test_no_chains_metric_prints_no_qdc_table():
    assert _qdc_tables([r for r in _metrics() if r["table"] != "chains"], 80) == []


def test_the_run_summary_reads_whole_at_80_columns(tmp_path):
    store = RunStore(tmp_path, "r")
    store.write("metrics", "metrics", "00000", from_rows(_metrics(), "metrics"))
    counts = {"problems": 40, "chains": 160, "pairs": 17, "routes": 40, "quarantine": 0, "validation": 312, "step_pairs": 1234,
              "sft": 55, "metrics": 96}
    routes = {"diversity_induction": 11, "generation_pair": 9, "self_correction": 14, "off_frontier": 3, "mixed_outcome_dropped": 2,
              "no_route_because_the_search_failed": 1}
    summary = {"run_dir": str(store.run_dir), "counts": counts, "routes": routes,
               "pairs_by_stage": {"generation": 9, "self_correction": 5, "diversity": 3}}
    console = Console(width=80, record=True, soft_wrap=True)  # as the CLI's stdout: soft wrap on
    _print_run_summary(summary, console)
    text = console.export_text()
    _fits(text)
    lines = [line.split() for line in text.splitlines()]
    assert ["┃", "table", "┃", "rows", "┃"] in lines
    for name, n in counts.items():
        assert ["│", name, "│", str(n), "│"] in lines
    words = text.split()
    for k, v in routes.items():  # wrapped between entries, never inside one
        assert f"{k}={v}," in words or f"{k}={v}" in words
    assert "generation=9," in words and "diversity=3" in words
    assert _shown(text)["vendi_q1"][0] == "125.457"
