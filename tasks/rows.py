"""Row builders shared by the stages: one ``chains`` row per trajectory, one ``pairs`` row per
preference pair, one ``quarantine`` row per rejected row. Every id is a content hash, so a
rerun makes the same ids."""

from __future__ import annotations

import json

import pyarrow as pa

from infra.prompts import Template
from infra.schemas import from_rows, stable_id
from tasks.answers import extract_answer, verify_answer
from tasks.engine import Engine
from tasks.search import Chain


def chain_row(c: Chain, problem: dict, *, stage: str, engine: Engine, template: Template, prompt: str,
              parent: str | None = None, error: str | None = None) -> dict:
    """One ``chains`` row. ``prompt`` is the rendered prompt the chain was grown from;
    ``problem`` needs problem_id and gold_answer. The verdict is ``error`` when the search of
    the problem failed (``error`` or ``c.error`` says why), ``no_answer`` when the chain states
    no final answer (``error`` then says why), else the answer checker's verdict against gold:
    ``correct``, ``wrong`` or ``unknown`` (undecided: refused or timed out; ``error`` holds the
    checker's reason). Only ``correct`` rows have ``correct`` = true."""
    search = engine.search
    error = error or c.error
    answer = extract_answer(c.steps[-1]) if c.steps and not error else None
    check = verify_answer(answer, problem["gold_answer"]) if answer is not None else None
    correct = check is not None and check.correct
    verdict = "error" if error else ("no_answer" if check is None else check.verdict.value)
    if answer is None and not error:
        error = f"no final answer stated (chain ended by {c.finish or 'error'} after {len(c.steps)} steps)"
    elif check is not None and verdict == "unknown":
        error = f"answer check undecided: {check.reason}"
    return {
        "run_id": engine.run_id,
        "chain_id": stable_id("chain", problem["problem_id"], stage, c.branch, template.sha, engine.config_hash, engine.seed),
        "problem_id": problem["problem_id"],
        "stage": stage,
        "branch": c.branch,
        "model": engine.model,
        "scorer": engine.scorer.name,
        "reward_mode": search.reward_mode,
        "template_hash": template.sha,
        "config_hash": engine.config_hash,
        "temperature": search.temperature,
        "top_p": search.top_p,
        "candidates": search.candidates,
        "seed": engine.seed,
        "prompt": prompt,
        "steps": c.steps,
        "step_scores": [engine.unknown_score if s is None else s for s in c.scores],
        "step_candidates": c.candidates,
        "candidate_scores": [[engine.unknown_score if s is None else s for s in node] for node in c.candidate_scores],
        "step_rewards": c.rewards,
        "n_steps": len(c.steps),
        "text": search.step_separator.join(c.steps),
        "final_answer": answer,
        "gold_answer": problem["gold_answer"],
        "correct": bool(correct) and not error,
        "verdict": verdict,
        "finish": c.finish or "error",
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "sampled_tokens": c.sampled_tokens,
        "parent_chain_id": parent,
        "error": error,
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def pair_row(run_id: str, stage: str, route: str, chosen: dict, rejected: dict, prompt: str | None = None) -> dict:
    """A DPO pair with lineage (``chosen``/``rejected`` are chain rows or the same fields);
    scores are the mean step scores of each chain; the prompt is the chosen chain's unless given."""
    cs, rs = _mean(chosen["step_scores"]), _mean(rejected["step_scores"])
    return {
        "run_id": run_id,
        "pair_id": stable_id("pair", chosen["chain_id"], rejected["chain_id"]),
        "problem_id": chosen["problem_id"],
        "stage": stage,
        "route": route,
        "prompt": chosen["prompt"] if prompt is None else prompt,
        "chosen": chosen["text"],
        "rejected": rejected["text"],
        "chosen_chain_id": chosen["chain_id"],
        "rejected_chain_id": rejected["chain_id"],
        "chosen_score": cs,
        "rejected_score": rs,
        "margin": cs - rs,
    }


def quarantine_rows(run_id: str, stage: str, table: str, bad: list[dict]) -> pa.Table:
    """``quarantine`` rows for rows that failed their suite (each: the row, check, reason)."""
    return from_rows(
        [
            {
                "run_id": run_id,
                "stage": stage,
                "table": table,
                "source": b["row"].get("problem_id") or b["row"].get("source"),
                "check": b["check"],
                "reason": b["reason"],
                "row": json.dumps(b["row"], default=str)[:20_000],
            }
            for b in bad
        ],
        "quarantine",
    )
