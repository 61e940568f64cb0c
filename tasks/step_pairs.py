"""Step-level preference pairs (Step-DPO, Lai et al. 2024; Math-Shepherd-style process labels).

Sequence-level DPO is weak where chosen and rejected differ in one early step and the
rejected chain then does correct arithmetic on a wrong number: the loss pushes that correct
arithmetic down too. A step pair holds the context fixed — the same prompt and the same
prefix of steps — and differs in one step only, the one the scorer judges right
(``score >= step_pairs.right_at``) against the one it judges wrong (``<= wrong_at``).

Two sources, both read from the run's committed chains (no engine call):

* ``search``: a problem's MAX and MIN chains of one stage grow from the same prompt with
  the same seeded candidates per prefix, so they share every step until the depth where
  the search picked a different candidate for each. At that depth, when MAX's step is
  judged right and MIN's wrong: a pair.
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


def step_pairs(chains: pa.Table, *, right_at: float, wrong_at: float, separator: str, run_id: str) -> pa.Table:
    """Every step pair the chains hold (module docstring), in chain order."""
    require(chains, "chains", NEEDED)
    rows = chains.select(NEEDED).to_pylist()
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
        if d is not None and mx["step_scores"][d] >= right_at and mn["step_scores"][d] <= wrong_at:
            out.append(_row(run_id, "search", mx, mn, d, mx["prompt"], separator))
    for r in rows:
        parent = by_id.get(r["parent_chain_id"]) if r["stage"] == "self_correction" else None
        if parent is None or not r["correct"]:
            continue
        d = _diverge(r["steps"], parent["steps"])
        if d is not None and r["steps"][:d] == parent["steps"][:d] and r["step_scores"][d] >= right_at \
                and parent["step_scores"][d] <= wrong_at:
            out.append(_row(run_id, "correction", r, parent, d, parent["prompt"], separator))
    seen: set[str] = set()
    unique = [x for x in out if not (x["pair_id"] in seen or seen.add(x["pair_id"]))]
    return from_rows(unique, "step_pairs")


def step_pairs_stage(inputs: dict[str, pa.Table], config: ConfigView, engines: Engines) -> dict[str, pa.Table]:
    """The stage function (``tasks.runner``): the step pairs of every stage's chains."""
    section = config.step_pairs
    return {"step_pairs": step_pairs(inputs["chains"], right_at=section.right_at, wrong_at=section.wrong_at,
                                     separator=config.search.step_separator, run_id=engines.run_id)}
