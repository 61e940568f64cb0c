"""The QDC report: one self-contained HTML file per run (or per comparison of runs).

``load_run(run_dir)`` gathers what the report shows with DuckDB aggregates over the run's
Parquet (never the whole table in memory): the ``metrics`` rows, histograms of steps,
tokens and step scores per stage, accuracy by difficulty (operations per problem), route
counts, the settings that distinguish runs (temperature, E, policy) and what each model
stage cost (``infra.cost.run_cost``: tokens, requests, engine-seconds of its committed shards).
``render_html(runs, out)`` draws the plots with matplotlib, embeds them as base64 PNGs
(the file opens without a server or network) and, with more than one run, adds the
quality-diversity plane with each run as a point and the Pareto front.
``summary_tables(runs)`` returns the same numbers as rich tables for the terminal. Each run's
settings that matter are a small table (``choices``); the first run's sampled rows follow
as the data view (``tasks.data_view``: pairs chain by chain with step scores, step pairs,
SFT, error and quarantined rows, with filters and a search box).

The page checks itself: a script draws every plot onto a canvas once loaded and records
how many plots have non-blank pixels in ``#render-check`` (read by the browser test).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from infra.catalog import sql_list
from infra.config import backend_name
from infra.cost import cost_rows, run_cost
from infra.fs import as_path, snapshot
from infra.storage import RunStore, atomic_write_text
from tasks.data_view import data_view_html, sample_records
from tasks.metrics import ops_by_problem_sql

KEY_METRICS = (
    ("accuracy", "accuracy", "Q"),
    ("mean_step_score", "step score", "Q"),
    ("arith_valid_step_share", "arith valid", "Q"),
    ("parse_failure_rate", "parse fail", "Q"),
    ("pair_validity", "pair valid", "Q"),
    ("vendi_q1", "Vendi q1", "D"),
    ("vendi_q2", "Vendi q2", "D"),
    ("distinct_2", "distinct-2", "D"),
    ("near_duplicate_rate", "near-dup", "D"),
    ("strategies_per_problem", "strategies", "D"),
    ("steps_per_chain", "steps", "C"),
    ("tokens_per_chain", "tokens", "C"),
    ("solve_rate", "solve rate", "C"),
)
LABELS = {k: label for k, label, _ in KEY_METRICS}
RUN_TABLE = ("accuracy", "arith_valid_step_share", "vendi_q1", "distinct_2", "near_duplicate_rate", "strategies_per_problem",
             "steps_per_chain", "solve_rate")  # the compact table `sphere run` prints
QD_POINT = ("generation", "chains")  # the dataset whose quality/diversity the compare plane plots


class ReportError(RuntimeError):
    """A run to report on is missing or has no metrics yet."""


@dataclass
class RunData:
    run_id: str
    run_dir: str
    label: str
    metrics: dict[tuple[str, str], dict[str, float]]
    counts: dict[tuple[str, str], int]
    hist: dict[str, dict[str, list[tuple[float, int]]]] = field(default_factory=dict)
    by_difficulty: dict[str, list[tuple[int, float, int]]] = field(default_factory=dict)
    routes: dict[str, int] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    cost: dict[str, dict] = field(default_factory=dict)  # stage -> infra.cost.run_cost's record
    records: list[dict] = field(default_factory=list)  # the data view's sampled rows (tasks.data_view)
    choices: list[tuple[str, str]] = field(default_factory=list)  # the settings table: (setting, value)

    def point(self, stage_table=QD_POINT) -> tuple[float, float] | None:
        m = self.metrics.get(stage_table, {})
        if "accuracy" in m and "vendi_q1" in m:
            return m["vendi_q1"], m["accuracy"]
        return None



def choices(cfg: dict) -> list[tuple[str, str]]:
    """The settings a person compares runs by, from a run's stored config, as (setting, value)."""
    s, seeds, sc = cfg["search"], cfg["seeds"], cfg["scorer"]
    if seeds["kind"] == "builtin":
        source = f"built-in, n={seeds['n']}, generator seed {seeds['seed']}, {seeds['min_steps']}-{seeds['max_steps']} operations"
    else:
        source = f"file {', '.join(seeds['paths'])} ({seeds.get('format')})"
    sc_pol, div = cfg.get("self_correction", {}), cfg.get("diversity", {})
    return [
        ("policy", backend_name(cfg["policy"])),
        ("self-correction policy", backend_name(sc_pol.get("policy") or cfg["policy"]) if sc_pol.get("enabled", True) else "off"),
        ("diversity (small) policy", backend_name(div.get("small_policy")) if div.get("enabled", True) else "off"),
        ("E (candidates per step)", str(s["candidates"])),
        ("T (temperature), top-p", f"{s['temperature']}, {s['top_p']}"),
        ("max depth (D_max), step tokens", f"{s['max_depth']}, {s['max_step_tokens']}"),
        ("scorer, reward", f"{sc['kind']}, {s['reward_mode']}"),
        ("seeds", source),
        ("mixed outcome (MAX wrong, MIN right)", str(cfg.get("generation", {}).get("mixed_outcome"))),
        ("master seed", str(cfg.get("seed"))),
    ]


def load_run(run_dir: str | Path) -> RunData:
    """What the report shows of one run (on an object store, read from one snapshot of it)."""
    with snapshot(run_dir):
        return _load_run(run_dir)


def _load_run(run_dir: str | Path) -> RunData:
    import duckdb

    store = RunStore.at(run_dir)
    cfg = store.load_config()
    parts = store.committed_parts("metrics")
    if not parts:
        raise ReportError(f"run {store.run_id} has no metrics yet (run `sphere run --resume {store.run_id}` to finish it)")
    con = duckdb.connect()
    metrics: dict[tuple[str, str], dict[str, float]] = {}
    counts: dict[tuple[str, str], int] = {}
    for stage, table, metric, value, n in con.sql(f"SELECT stage, \"table\", metric, value, n FROM read_parquet({sql_list(parts)})").fetchall():
        metrics.setdefault((stage, table), {})[metric] = value
        counts[(stage, table)] = n
    s = cfg["search"]
    settings = {"temperature": s["temperature"], "E": s["candidates"], "policy": backend_name(cfg["policy"]),
                "scorer": cfg["scorer"]["kind"], "seeds": cfg["seeds"].get("n") or cfg["seeds"].get("paths")}
    data = RunData(store.run_id, str(store.run_dir), f"{store.run_id}", metrics, counts, settings=settings, cost=run_cost(store),
                   records=sample_records(store, cfg), choices=choices(cfg))
    chains = store.committed_parts("chains")
    if chains:
        src = f"read_parquet({sql_list(chains)})"
        for col, expr in (("steps", "n_steps"), ("tokens", "(completion_tokens // 4) * 4")):
            for stage, v, k in con.sql(f"SELECT stage, {expr} AS v, count(*) FROM {src} GROUP BY 1, 2 ORDER BY 1, 2").fetchall():
                data.hist.setdefault(col, {}).setdefault(stage, []).append((float(v), k))
        q = f"SELECT stage, round(unnest(step_scores), 2) AS v, count(*) FROM {src} GROUP BY 1, 2 ORDER BY 1, 2"
        for stage, v, k in con.sql(q).fetchall():
            data.hist.setdefault("step score", {}).setdefault(stage, []).append((float(v), k))
        problems = store.committed_parts("problems")
        if problems:
            q = (f"SELECT c.stage, p.n_ops, avg(c.correct::INT), count(*) FROM {src} c JOIN ({ops_by_problem_sql(problems)}) p "
                 "USING (problem_id) WHERE p.n_ops IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2")
            for stage, ops, acc, k in con.sql(q).fetchall():
                data.by_difficulty.setdefault(stage, []).append((int(ops), float(acc), int(k)))
    routes = store.committed_parts("routes")
    if routes:
        data.routes = dict(con.sql(f"SELECT route, count(*) FROM read_parquet({sql_list(routes)}) GROUP BY 1 ORDER BY 1").fetchall())
    con.close()
    return data


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher is better), by x."""
    front = [i for i, (x, y) in enumerate(points)
             if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def runs_on_front(runs: list[RunData]) -> tuple[list[tuple[float, float] | None], set[int]]:
    """(each run's quality-diversity point or None, indices of the runs on the Pareto front)."""
    pts = [r.point() for r in runs]
    valid = [i for i, p in enumerate(pts) if p is not None]
    return pts, {valid[i] for i in pareto_front([pts[i] for i in valid])}


# ---------------------------------------------------------------- plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(runs: list[RunData]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    main = runs[0]
    if main.hist:
        fig, axes = plt.subplots(1, len(main.hist), figsize=(5 * len(main.hist), 3.4))
        axes = axes if len(main.hist) > 1 else [axes]
        for ax, (name, per_stage) in zip(axes, sorted(main.hist.items())):
            for stage, pts in sorted(per_stage.items()):
                total = sum(k for _, k in pts) or 1
                ax.plot([v for v, _ in pts], [k / total for _, k in pts], drawstyle="steps-mid", label=stage)
            ax.set_xlabel(name)
            ax.set_ylabel("share of chains")
            ax.legend(fontsize=7)
        fig.suptitle(f"Distributions ({main.run_id})")
        out.append(("Distributions of steps, tokens and step scores per stage", _png(fig)))
    if main.by_difficulty:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for stage, pts in sorted(main.by_difficulty.items()):
            ax.plot([o for o, _, _ in pts], [a for _, a, _ in pts], marker="o", label=stage)
        ax.set_xlabel("operations per problem (difficulty)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
        out.append(("Accuracy by difficulty", _png(fig)))
    if main.routes:
        fig, ax = plt.subplots(figsize=(6, 3))
        names = list(main.routes)
        ax.barh(names, [main.routes[n] for n in names], color="#4c72b0")
        ax.set_xlabel("problems")
        out.append(("Route counts", _png(fig)))
    if len(runs) > 1:
        pts = [(r, r.point()) for r in runs]
        pts = [(r, p) for r, p in pts if p is not None]
        if pts:
            fig, ax = plt.subplots(figsize=(6.5, 4.5))
            xy = [p for _, p in pts]
            ax.scatter([x for x, _ in xy], [y for _, y in xy], s=50, color="#4c72b0", zorder=3)
            for r, (x, y) in pts:
                ax.annotate(_short(r), (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
            front = pareto_front(xy)
            ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], color="#dd8452", lw=2, label="Pareto front", zorder=2)
            ax.set_xlabel(f"diversity: Vendi q=1 ({'/'.join(QD_POINT)})")
            ax.set_ylabel(f"quality: accuracy ({'/'.join(QD_POINT)})")
            ax.legend(fontsize=8)
            out.append(("Quality-diversity plane (one point per run)", _png(fig)))
    return out


def _short(r: RunData) -> str:
    s = r.settings
    return f"T={s.get('temperature')} E={s.get('E')} {s.get('policy')}"


# ---------------------------------------------------------------- html


def _qdc_table_html(r: RunData) -> str:
    keys = [(k, lbl, g) for k, lbl, g in KEY_METRICS if any(k in m for m in r.metrics.values())]
    head = "".join(f"<th title='{g}'>{html.escape(lbl)}</th>" for _, lbl, g in keys)
    rows = []
    for (stage, table), m in sorted(r.metrics.items()):
        cells = "".join(f"<td>{m[k]:.3f}</td>" if k in m else "<td></td>" for k, _, _ in keys)
        rows.append(f"<tr><td>{html.escape(stage)}</td><td>{html.escape(table)}</td><td>{r.counts[(stage, table)]}</td>{cells}</tr>")
    return f"<table><tr><th>stage</th><th>table</th><th>rows</th>{head}</tr>{''.join(rows)}</table>"


def _settings_html(r: RunData) -> str:
    """The settings that matter as a small table, and the route counts."""
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>{html.escape(v)}</td></tr>"
                   for k, v in r.choices)
    routes = "".join(f"<tr><td style='text-align:left'>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in r.routes.items())
    return (f"<div style='display:flex;gap:24px;align-items:flex-start'><table class='settings'>{rows}</table>"
            + (f"<table class='routes'><tr><th>route</th><th>problems</th></tr>{routes}</table>" if routes else "") + "</div>")


def _cost_table_html(r: RunData) -> str:
    """The run's "What each stage cost" table (empty string when no stage called an engine)."""
    rows = cost_rows(r.cost)
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(k.replace('_', ' '))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>" for row in rows)
    return (f"<h2>What each stage cost: {html.escape(r.run_id)}</h2><p>Summed over the committed shards of each model stage "
            "(every invocation that made them); engine seconds: the time actors spent on the stage's batches.</p>"
            f"<table class='stage-cost'><tr>{head}</tr>{body}</table>")


CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.plot'), ok = 0;
  imgs.forEach(function (img) {
    var c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
    if (!c.width) return;
    var g = c.getContext('2d'); g.drawImage(img, 0, 0);
    var d = g.getImageData(0, 0, c.width, c.height).data, ink = 0;
    for (var i = 0; i < d.length; i += 4) { if (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200) ink++; }
    img.dataset.inkPixels = ink;
    if (ink > 500) ok++;
  });
  document.getElementById('render-check').textContent = ok + '/' + imgs.length + ' plots rendered';
});
"""


def render_html(runs: list[RunData], out: Path) -> Path:
    """Write the self-contained report of ``runs`` (first = main run) to ``out``."""
    plots = _plots(runs)
    main = runs[0]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>SPHERE QDC report - {html.escape(main.run_id)}</title>",
        "<style>body{font-family:sans-serif;margin:24px;max-width:1300px}table{border-collapse:collapse;font-size:12px;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}img.plot{max-width:100%;display:block;margin:8px 0}"
        "#render-check{color:#888;font-size:11px}</style></head><body>",
        f"<h1>QDC report: {html.escape(main.run_id)}</h1>",
        "<p>Quality, diversity and complexity of every dataset the run made (QDC survey, arXiv 2412.02980). "
        "Q = quality, D = diversity, C = complexity (hover the headers).</p>",
    ]
    if len(runs) > 1:
        parts.append("<h2>Runs compared</h2><table><tr><th>run</th><th>temperature</th><th>E</th><th>policy</th><th>accuracy</th><th>Vendi q1</th><th>Pareto</th></tr>")
        pts, front = runs_on_front(runs)
        for i, r in enumerate(runs):
            p = pts[i]
            acc, ven = (f"{p[1]:.3f}", f"{p[0]:.3f}") if p else ("", "")
            parts.append(f"<tr><td>{html.escape(r.run_id)}</td><td>{r.settings.get('temperature')}</td><td>{r.settings.get('E')}</td>"
                         f"<td>{html.escape(str(r.settings.get('policy')))}</td><td>{acc}</td><td>{ven}</td><td>{'yes' if i in front else ''}</td></tr>")
        parts.append("</table>")
    for r in runs:
        parts.append(f"<h2>QDC per stage: {html.escape(r.run_id)}</h2>")
        parts.append(_settings_html(r))
        parts.append(_qdc_table_html(r))
        parts.append(_cost_table_html(r))
    for title, png in plots:
        parts.append(f"<h2>{html.escape(title)}</h2><img class='plot' alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    parts.append(data_view_html(main.records))
    parts.append(f"<div id='render-check'>not checked</div><script>{CHECK_JS}</script></body></html>")
    return atomic_write_text(as_path(out), "".join(parts))


def qdc_rows(r: RunData) -> list[dict]:
    """The QDC table as rows (for Prefect table artifacts and the terminal)."""
    rows = []
    for (stage, table), m in sorted(r.metrics.items()):
        row = {"stage": stage, "table": table, "rows": r.counts[(stage, table)]}
        row.update({lbl: round(m[k], 4) for k, lbl, _ in KEY_METRICS if k in m})
        rows.append(row)
    return rows


def summary_tables(runs: list[RunData]):
    """Rich tables: QDC per stage of each run, then the comparison with the Pareto front."""
    from rich.table import Table

    tables = []
    for r in runs:
        keys = [(k, lbl) for k, lbl, _ in KEY_METRICS if any(k in m for m in r.metrics.values())]
        t = Table(title=f"QDC of {r.run_id}")
        for col in ("stage", "table", "rows", *[lbl for _, lbl in keys]):
            t.add_column(col, justify="left" if col in ("stage", "table") else "right")
        for (stage, table), m in sorted(r.metrics.items()):
            t.add_row(stage, table, str(r.counts[(stage, table)]), *[f"{m[k]:.3f}" if k in m else "" for k, _ in keys])
        tables.append(t)
    if len(runs) > 1:
        pts, front = runs_on_front(runs)
        t = Table(title="Quality-diversity trade-off (generation chains)")
        for col in ("run", "T", "E", "policy", "accuracy", "Vendi q1", "Pareto"):
            t.add_column(col)
        for i, r in enumerate(runs):
            p = pts[i]
            t.add_row(r.run_id, str(r.settings.get("temperature")), str(r.settings.get("E")), str(r.settings.get("policy")),
                      f"{p[1]:.3f}" if p else "", f"{p[0]:.3f}" if p else "", "*" if i in front else "")
        tables.append(t)
    return tables


def build_report(run_dirs: list[str | Path], out: Path | None = None) -> tuple[Path, list[RunData]]:
    """Load runs and write their report; default path ``<first run>/report.html``."""
    runs = [load_run(d) for d in run_dirs]
    if out is None:
        out = as_path(runs[0].run_dir) / ("report.html" if len(runs) == 1 else f"compare-{len(runs)}-runs.html")
    return render_html(runs, out), runs
