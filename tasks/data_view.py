"""The report's data view: sampled rows of what the run made, to look at before training on it.

``sample_records(store, cfg) -> list[dict]`` reads, with DuckDB over the committed parts,
a deterministic sample (the first rows by id, so the same run always shows the same rows):
per stage ``report.pairs_per_stage`` pairs with both chains step by step (each step's
score, the first step judged wrong: score <= ``step_pairs.wrong_at``), the verdicts and the
route; and ``report.rows_per_kind`` step pairs, SFT rows, error rows (chains with verdict
``error`` or ``no_answer``) and quarantined rows with their check and reason. Every record
carries ``kind``, ``stage``, ``route``, ``verdict``, ``difficulty`` (the problem's
operations) and ``question``, the fields the page filters on.

``data_view_html(records) -> str`` is the HTML section: filter buttons per field, a search
box over the question text, and the cards, drawn by a small script from the records
embedded as JSON (model output is put into the page as text nodes, never as markup).
"""

from __future__ import annotations

import json

from infra.catalog import sql_list, sql_string
from infra.storage import RunStore

FILTERS = (("kind", "kind"), ("stage", "stage"), ("route", "route"), ("verdict", "verdict"), ("difficulty", "operations"))
TEXT_LIMIT = 4000  # characters of one quarantined row or prompt shown


def _first_wrong(scores: list[float] | None, wrong_at: float) -> int | None:
    for i, s in enumerate(scores or []):
        if s is not None and s <= wrong_at:
            return i
    return None


def _chain(c: dict | None, wrong_at: float) -> dict | None:
    if c is None:
        return None
    return {"chain_id": c["chain_id"], "model": c["model"], "branch": c["branch"], "steps": list(c["steps"] or []),
            "scores": [round(s, 3) for s in (c["step_scores"] or [])], "verdict": c["verdict"], "answer": c["final_answer"],
            "first_wrong": _first_wrong(c["step_scores"], wrong_at)}


def _rows(con, sql: str) -> list[dict]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _sample(parts, n: int, order: str, where: str = "TRUE", per: str | None = None) -> str:
    """SQL of the first ``n`` rows by ``order`` (per ``per`` group when given) of ``parts``."""
    part = f"PARTITION BY {per} " if per else ""
    return (f"SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER ({part}ORDER BY {order}) AS rn "
            f"FROM read_parquet({sql_list(parts)}, union_by_name = true) WHERE {where}) WHERE rn <= {int(n)} ORDER BY {order}")


def sample_records(store: RunStore, cfg: dict) -> list[dict]:
    """The sampled records of the run in ``store`` (module docstring); ``cfg`` is its stored config."""
    import duckdb

    pairs_n = cfg.get("report", {}).get("pairs_per_stage", 12)
    rows_n = cfg.get("report", {}).get("rows_per_kind", 12)
    wrong_at = cfg.get("step_pairs", {}).get("wrong_at", 0.25)
    con = duckdb.connect()
    try:
        problems = {r["problem_id"]: r for r in _rows(con, f"SELECT problem_id, question, gold_answer, n_ops FROM read_parquet("
                                                            f"{sql_list(store.committed_parts('problems'))})")} \
            if store.committed_parts("problems") else {}
        routes = {r["problem_id"]: r["route"] for r in _rows(con, f"SELECT problem_id, route FROM read_parquet("
                                                                    f"{sql_list(store.committed_parts('routes'))})")} \
            if store.committed_parts("routes") else {}
        chains_parts = store.committed_parts("chains")

        def chains(ids: set[str]) -> dict[str, dict]:
            if not ids or not chains_parts:
                return {}
            listed = ", ".join(sql_string(i) for i in sorted(ids))
            return {c["chain_id"]: c for c in _rows(con, f"SELECT chain_id, stage, branch, model, steps, step_scores, verdict, "
                                                         f"final_answer, error, problem_id FROM read_parquet({sql_list(chains_parts)}) "
                                                         f"WHERE chain_id IN ({listed})")}

        def base(kind: str, stage: str, pid: str, verdict: str, route: str | None = None) -> dict:
            p = problems.get(pid, {})
            return {"kind": kind, "stage": stage, "route": route or routes.get(pid) or "", "verdict": verdict,
                    "difficulty": "" if p.get("n_ops") is None else str(p["n_ops"]), "question": p.get("question") or "",
                    "gold": p.get("gold_answer") or "", "problem_id": pid}

        out: list[dict] = []
        if store.committed_parts("pairs"):
            pairs = _rows(con, _sample(store.committed_parts("pairs"), pairs_n, "stage, pair_id", per="stage"))
            held = chains({p["chosen_chain_id"] for p in pairs} | {p["rejected_chain_id"] for p in pairs})
            for p in pairs:
                good, bad = _chain(held.get(p["chosen_chain_id"]), wrong_at), _chain(held.get(p["rejected_chain_id"]), wrong_at)
                verdict = f"rejected {bad['verdict']}" if bad else ""
                out.append({**base("pair", p["stage"], p["problem_id"], verdict, p["route"]), "id": p["pair_id"],
                            "margin": p["margin"], "chosen": good, "rejected": bad})
        if store.committed_parts("step_pairs"):
            for p in _rows(con, _sample(store.committed_parts("step_pairs"), rows_n, "pair_id")):
                out.append({**base("step pair", p["stage"], p["problem_id"], f"step pair ({p['source']})"), "id": p["pair_id"],
                            "prefix": p["prompt"][-TEXT_LIMIT:], "depth": p["depth"], "chosen_step": p["chosen"],
                            "rejected_step": p["rejected"], "chosen_score": p["chosen_score"], "rejected_score": p["rejected_score"]})
        if store.committed_parts("sft"):
            sft = _rows(con, _sample(store.committed_parts("sft"), rows_n, "sft_id"))
            held = chains({r["chain_id"] for r in sft})
            for r in sft:
                c = _chain(held.get(r["chain_id"]), wrong_at)
                out.append({**base("sft", r["stage"], r["problem_id"], "correct"), "id": r["sft_id"], "chain": c,
                            "completion": r["completion"]})
        if chains_parts:
            errors = _rows(con, _sample(chains_parts, rows_n, "chain_id", where="verdict IN ('error', 'no_answer')"))
            for c in errors:
                out.append({**base("error", c["stage"], c["problem_id"], c["verdict"]), "id": c["chain_id"],
                            "chain": _chain(c, wrong_at), "error": c["error"] or ""})
        quarantine = store.committed_parts("quarantine")
        if quarantine:
            for q in _rows(con, _sample(quarantine, rows_n, "stage, \"table\", \"check\", row")):
                try:
                    pid = json.loads(q["row"]).get("problem_id") or ""
                except (ValueError, AttributeError):
                    pid = ""
                out.append({**base("quarantined", q["stage"], pid, f"quarantined: {q['check']}"), "id": f"{q['stage']}/{q['table']}",
                            "table": q["table"], "check": q["check"], "reason": q["reason"], "row": (q["row"] or "")[:TEXT_LIMIT]})
    finally:
        con.close()
    return out


STYLE = """
#data-view .dv-filters{margin:6px 0}#data-view .dv-group{margin:3px 0}#data-view .dv-group b{display:inline-block;width:90px;font-size:12px}
#data-view button{font-size:11px;margin:1px;padding:2px 6px;border:1px solid #bbb;background:#fafafa;border-radius:3px;cursor:pointer}
#data-view button.active{background:#2b6cb0;color:#fff;border-color:#2b6cb0}
#dv-search{width:360px;font-size:12px;padding:3px}#dv-count{color:#555;font-size:12px;margin:6px 0}
.dv-card{border:1px solid #ddd;border-radius:4px;padding:8px;margin:8px 0;font-size:12px;text-align:left}
.dv-meta{color:#555;margin-bottom:4px}.dv-q{font-weight:bold;margin:4px 0}
.dv-cols{display:flex;gap:10px}.dv-col{flex:1;min-width:0}.dv-col h4{margin:4px 0;font-size:12px}
.dv-step{font-family:monospace;white-space:pre-wrap;padding:1px 4px;margin:1px 0;border-left:3px solid #cde}
.dv-step .sc{color:#777;margin-right:6px}.dv-step.wrong-step{background:#fde2e2;border-left-color:#d33}
.dv-pre{font-family:monospace;white-space:pre-wrap;background:#f7f7f7;padding:4px;max-height:220px;overflow:auto}
"""

SCRIPT = """
(function () {
  var DATA = JSON.parse(document.getElementById('sphere-data').textContent);
  var FIELDS = %s;
  var active = {}, query = '';
  function el(tag, cls, text) { var e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
  function chainBox(title, c) {
    var col = el('div', 'dv-col'); col.appendChild(el('h4', '', title + (c ? ' (' + c.verdict + ', answer ' + c.answer + ', ' + c.model + ')' : '')));
    if (!c) { col.appendChild(el('div', '', 'chain not found')); return col; }
    c.steps.forEach(function (s, i) {
      var d = el('div', 'dv-step' + (i === c.first_wrong ? ' wrong-step' : ''));
      d.appendChild(el('span', 'sc', (c.scores[i] === undefined ? '' : c.scores[i].toFixed(2))));
      d.appendChild(document.createTextNode(s)); col.appendChild(d);
    });
    return col;
  }
  function card(r) {
    var c = el('div', 'dv-card'); c.dataset.kind = r.kind;
    c.appendChild(el('div', 'dv-meta', r.kind + ' | stage ' + r.stage + ' | route ' + (r.route || '-') + ' | ' + r.verdict +
      ' | ' + (r.difficulty || '?') + ' operations | gold ' + r.gold + (r.margin !== undefined ? ' | margin ' + r.margin.toFixed(3) : '')));
    c.appendChild(el('div', 'dv-q', r.question));
    if (r.kind === 'pair') { var cols = el('div', 'dv-cols'); cols.appendChild(chainBox('chosen', r.chosen)); cols.appendChild(chainBox('rejected', r.rejected)); c.appendChild(cols); }
    else if (r.kind === 'step pair') {
      c.appendChild(el('div', 'dv-pre', '... ' + r.prefix.slice(-600)));
      var cols2 = el('div', 'dv-cols'), a = el('div', 'dv-col'), b = el('div', 'dv-col');
      a.appendChild(el('h4', '', 'chosen step (score ' + r.chosen_score.toFixed(2) + ', depth ' + r.depth + ')')); a.appendChild(el('div', 'dv-step', r.chosen_step));
      b.appendChild(el('h4', '', 'rejected step (score ' + r.rejected_score.toFixed(2) + ')')); b.appendChild(el('div', 'dv-step wrong-step', r.rejected_step));
      cols2.appendChild(a); cols2.appendChild(b); c.appendChild(cols2);
    }
    else if (r.kind === 'sft') { if (r.chain) c.appendChild(chainBox('completion', r.chain)); else c.appendChild(el('div', 'dv-pre', r.completion)); }
    else if (r.kind === 'error') { c.appendChild(el('div', 'dv-meta', 'error: ' + r.error)); if (r.chain) c.appendChild(chainBox('chain', r.chain)); }
    else if (r.kind === 'quarantined') { c.appendChild(el('div', 'dv-meta', r.table + ' row failed ' + r.check + ': ' + r.reason)); c.appendChild(el('div', 'dv-pre', r.row)); }
    return c;
  }
  function matches(r) {
    for (var f in active) { if (active[f] !== null && String(r[f]) !== active[f]) return false; }
    return !query || r.question.toLowerCase().indexOf(query) >= 0;
  }
  function render() {
    var box = document.getElementById('dv-cards'); box.textContent = '';
    var shown = DATA.filter(matches);
    shown.forEach(function (r) { box.appendChild(card(r)); });
    document.getElementById('dv-count').textContent = shown.length + ' of ' + DATA.length + ' sampled rows shown';
  }
  var filters = document.getElementById('dv-filters');
  FIELDS.forEach(function (f) {
    var values = []; DATA.forEach(function (r) { var v = String(r[f[0]]); if (v && values.indexOf(v) < 0) values.push(v); });
    values.sort(function (a, b) { return isNaN(a) || isNaN(b) ? (a < b ? -1 : a > b ? 1 : 0) : a - b; });
    var g = el('div', 'dv-group'); g.appendChild(el('b', '', f[1]));
    active[f[0]] = null;
    ['all'].concat(values).forEach(function (v) {
      var btn = el('button', v === 'all' ? 'active' : '', v); btn.dataset.field = f[0]; btn.dataset.value = v;
      btn.addEventListener('click', function () {
        active[f[0]] = v === 'all' ? null : v;
        g.querySelectorAll('button').forEach(function (x) { x.classList.toggle('active', x === btn); });
        render();
      });
      g.appendChild(btn);
    });
    filters.appendChild(g);
  });
  document.getElementById('dv-search').addEventListener('input', function (e) { query = e.target.value.toLowerCase(); render(); });
  render();
})();
"""


def data_view_html(records: list[dict]) -> str:
    """The data view section (module docstring); empty records give a section saying so."""
    payload = json.dumps(records, default=str, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (f"<style>{STYLE}</style><h2 id='data'>Data view</h2><div id='data-view'>"
            "<p>A deterministic sample of what the run made (the first rows by id; sizes: <code>report.pairs_per_stage</code>, "
            "<code>report.rows_per_kind</code>). Step scores precede each step; the first step judged wrong is highlighted.</p>"
            "<div id='dv-filters' class='dv-filters'></div><input id='dv-search' type='search' placeholder='search question text'>"
            "<div id='dv-count'></div><div id='dv-cards'></div></div>"
            f"<script type='application/json' id='sphere-data'>{payload}</script>"
            f"<script>{SCRIPT % json.dumps([list(f) for f in FILTERS])}</script>")
