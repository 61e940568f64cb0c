"""Step-level preference pairs (Step-DPO, Lai et al. 2024; Math-Shepherd-style process labels).

Sequence-level DPO is weak where chosen and rejected differ in one early step and the
rejected chain then does correct arithmetic on a wrong number: the loss pushes that correct
arithmetic down too. A step pair holds the context fixed — the same prompt and the same
prefix of steps — and differs in one step only, the one the scorer judges right
(``score >= step_pairs.right_at``) against the one it judges wrong (``<= wrong_at``).

Two sources, both read from the run's committed chains (no engine call):

Which steps may be chosen (``step_pairs.chosen``): ``verified`` (the default) — only a step
of a chain that reached the gold answer, so a chosen step is judged right by the scorer
*and* led to the right outcome (the arithmetic scorer alone calls ``20+22=42`` right even
where 20 is not the current count); ``judged`` — any step the scorer judges right.

* ``search``: a problem's MAX and MIN chains of one stage grow from the same prompt with
  the same seeded candidates per prefix, so they share every step until the depth where
  the search picked a different candidate for each. At that depth, when MAX's step is
  judged right and MIN's wrong: a pair.
* ``candidates`` (``step_pairs.candidates``): every node of the search — one prefix of one
  problem's chain at one depth — holds the E candidates the scorer rated there
  (``chains.step_candidates``). Each candidate judged right is paired with each judged wrong
  at that node (the best-scored right with the worst-scored wrong first, at most
  ``max_per_node`` pairs); never two steps of different prefixes. A node MAX and MIN share
  is one node. With ``verified`` the right candidate is the step the chain took, and only
  on chains that reached gold.
* ``correction``: a self-correction chain keeps its failed parent's steps before the
  parent's first wrong step (``tasks.self_correction``) and continues from there. When the
  corrected chain reaches gold and its step at that depth is judged right while the
  parent's is judged wrong: a pair. Its prompt is the parent's (the solve prompt), not the
  review prompt the correction was grown from, so it trains the policy where it erred.

``prompt`` is the chain's prompt followed by the prefix steps, each ended by the step
separator, exactly the text the policy continued from; ``chosen``/``rejected`` are the two
steps. TRL's DPOTrainer reads ``prompt``, ``chosen``, ``rejected`` unchanged
(``sphere export --format step_dpo``).
"""

from __future__ import annotations

import pyarrow as pa

from infra.schemas import from_rows, require, stable_id
from tasks.runner import ConfigView, Engines
from tasks.search import prefix_text

STAGE = "step_pairs"
NEEDED = ["chain_id", "problem_id", "stage", "branch", "prompt", "steps", "step_scores", "correct", "parent_chain_id"]
TRACE = ["step_candidates", "candidate_scores"]


def _diverge(a: list[str], b: list[str]) -> int | None:
    """The first depth at which both chains have a step and the steps differ (None: no such depth)."""
    for d, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return d
    return None


def _row(run_id: str, source: str, good: dict, bad: dict, depth: int, prompt: str, sep: str) -> dict:
    return {
        "run_id": run_id,
        "pair_id": stable_id("step_pair", good["chain_id"], bad["chain_id"], depth),
        "problem_id": good["problem_id"],
        "stage": good["stage"],
        "source": source,
        "prompt": prompt + prefix_text(good["steps"][:depth], sep),
        "depth": depth,
        "chosen": good["steps"][depth],
        "rejected": bad["steps"][depth],
        "chosen_score": good["step_scores"][depth],
        "rejected_score": bad["step_scores"][depth],
        "chosen_chain_id": good["chain_id"],
        "rejected_chain_id": bad["chain_id"],
    }


def node_pairs(row: dict, *, right_at: float, wrong_at: float, separator: str, run_id: str, most: int,
               verified: bool = True) -> list[dict]:
    """The ``candidates`` pairs of every node along one chain (module docstring). A chain whose
    trace does not line up with its steps (an errored search) has none; with ``verified``, a
    chain that did not reach gold has none and the chosen step is the chain's own."""
    steps, nodes, scores = row["steps"], row.get("step_candidates") or [], row.get("candidate_scores") or []
    if len(nodes) != len(steps) or len(scores) != len(steps) or (verified and not row["correct"]):
        return []
    out = []
    for depth, (texts, values) in enumerate(zip(nodes, scores)):
        first: dict[str, float] = {}
        for t, v in zip(texts, values):
            if t and v is not None and t not in first:
                first[t] = v
        right = sorted(((v, t) for t, v in first.items() if v >= right_at and (not verified or t == steps[depth])),
                       key=lambda x: (-x[0], x[1]))
        wrong = sorted(((v, t) for t, v in first.items() if v <= wrong_at), key=lambda x: (x[0], x[1]))
        pairs = sorted(((g, b) for g in right for b in wrong), key=lambda p: (-(p[0][0] - p[1][0]), p[0][1], p[1][1]))[:most]
        prompt = row["prompt"] + prefix_text(steps[:depth], separator)
        out += [{"run_id": run_id, "pair_id": stable_id("step_pair", row["stage"], row["problem_id"], prompt, g, b),
                 "problem_id": row["problem_id"], "stage": row["stage"], "source": "candidates", "prompt": prompt, "depth": depth,
                 "chosen": g, "rejected": b, "chosen_score": gv, "rejected_score": bv, "chosen_chain_id": row["chain_id"],
                 "rejected_chain_id": row["chain_id"]} for (gv, g), (bv, b) in pairs]
    return out


def step_pairs(chains: pa.Table, *, right_at: float, wrong_at: float, separator: str, run_id: str,
               candidates: bool = False, max_per_node: int = 4, verified: bool = False) -> pa.Table:
    """Every step pair the chains hold (module docstring), in chain order; one row per distinct
    (prompt, chosen, rejected), the first source that made it kept (search, candidates, correction)."""
    require(chains, "chains", NEEDED)
    rows = chains.select(NEEDED + [c for c in TRACE if c in chains.column_names]).to_pylist()
    by_id = {r["chain_id"]: r for r in rows}
    out: list[dict] = []
    by_problem: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        by_problem.setdefault((r["stage"], r["problem_id"]), {})[r["branch"]] = r
    for b in by_problem.values():
        mx, mn = b.get("max"), b.get("min")
        if not mx or not mn or mx["prompt"] != mn["prompt"]:
            continue
        d = _diverge(mx["steps"], mn["steps"])
        if d is not None and mx["step_scores"][d] >= right_at and mn["step_scores"][d] <= wrong_at and (mx["correct"] or not verified):
            out.append(_row(run_id, "search", mx, mn, d, mx["prompt"], separator))
    if candidates:
        for r in rows:
            if r["stage"] != "self_correction":  # a correction's nodes continue from the review prompt, not the solve prompt
                out += node_pairs(r, right_at=right_at, wrong_at=wrong_at, separator=separator, run_id=run_id, most=max_per_node,
                                  verified=verified)
    for r in rows:
        parent = by_id.get(r["parent_chain_id"]) if r["stage"] == "self_correction" else None
        if parent is None or not r["correct"]:
            continue
        d = _diverge(r["steps"], parent["steps"])
        if d is not None and r["steps"][:d] == parent["steps"][:d] and r["step_scores"][d] >= right_at \
                and parent["step_scores"][d] <= wrong_at:
            out.append(_row(run_id, "correction", r, parent, d, parent["prompt"], separator))
    seen: set[tuple] = set()
    unique = [x for x in out if not ((k := (x["prompt"], x["chosen"], x["rejected"])) in seen or seen.add(k))]
    return from_rows(unique, "step_pairs")


def step_pairs_stage(inputs: dict[str, pa.Table], config: ConfigView, engines: Engines) -> dict[str, pa.Table]:
    """The stage function (``tasks.runner``): the step pairs of every stage's chains."""
    section = config.step_pairs
    return {"step_pairs": step_pairs(inputs["chains"], right_at=section.right_at, wrong_at=section.wrong_at,
                                     separator=config.search.step_separator, run_id=engines.run_id,
                                     candidates=section.candidates, max_per_node=section.max_per_node,
                                     verified=section.chosen == "verified")}
