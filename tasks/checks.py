"""Row checks that need answer checking or the problems' gold answers, handed to the GX
suites (``infra.validation``) as derived boolean columns.

``row_checks(table_name, table, problems, solve)`` returns ``{column: [bool per row]}`` for
``chains`` (``_verdict_consistent``: the verdict agrees with a re-check of the final answer),
``pairs`` (chosen reaches gold, rejected does not, prompt is the problem's solve prompt) and
``sft`` (completion reaches gold, prompt is the problem's), or None for other tables.
``problems`` is any table with problem_id, question and gold_answer (a worklist will do).

``process_failures`` is process verification: a chosen chain or SFT completion must be
right step by step, not only in its final answer (two slips can cancel: ``38-32=16 ...
12-1=1 #### 1``); rows with more wrong steps than allowed are quarantined with the first
wrong step named, before the suite runs (a content filter, like deduplication: these rows
do not count towards the stage's failure share).
"""

from __future__ import annotations

import pyarrow as pa

from infra.prompts import Template
from tasks.answers import Verdict, extract_answer, verify_answer
from tasks.scorers import step_verdict


def problem_context(problems: pa.Table, solve: Template) -> tuple[dict[str, str], dict[str, str]]:
    """(gold by problem id, solve prompt by problem id) of ``problems``."""
    rows = problems.select(["problem_id", "question", "gold_answer"]).to_pylist()
    return {r["problem_id"]: r["gold_answer"] for r in rows}, {r["problem_id"]: solve.render(question=r["question"]) for r in rows}


def reaches_gold(text: str | None, gold: str) -> bool:
    """The text's final answer is verified equal to gold."""
    return verify_answer(extract_answer(text or ""), gold).correct


def verified_wrong(text: str | None, gold: str) -> bool:
    """The text fails the problem: it states no final answer, or one verified different from
    gold. An undecided check (``unknown``) is not wrong."""
    answer = extract_answer(text or "")
    return answer is None or verify_answer(answer, gold).verdict is Verdict.wrong


def chain_checks(chains: pa.Table) -> dict[str, list]:
    """``_verdict_consistent``: correct rows re-check as correct against their own gold;
    no_answer rows have no answer and are not correct; other rows are not correct."""
    out = []
    for r in chains.select(["verdict", "correct", "final_answer", "gold_answer"]).to_pylist():
        if r["verdict"] == "correct":
            ok = bool(r["correct"]) and r["final_answer"] is not None and verify_answer(r["final_answer"], r["gold_answer"] or "").correct
        elif r["verdict"] == "no_answer":
            ok = not r["correct"] and r["final_answer"] is None
        else:
            ok = not r["correct"]
        out.append(ok)
    return {"_verdict_consistent": out}


def pair_checks(pairs: pa.Table, gold: dict[str, str], prompts: dict[str, str]) -> dict[str, list]:
    """Re-verify every pair against its problem: chosen right, rejected wrong, prompt = the problem's."""
    rows = pairs.select(["problem_id", "prompt", "chosen", "rejected"]).to_pylist()
    return {
        "_chosen_verified": [reaches_gold(r["chosen"], gold.get(r["problem_id"], "")) for r in rows],
        "_rejected_verified_wrong": [verified_wrong(r["rejected"], gold.get(r["problem_id"], "")) for r in rows],
        "_prompt_matches": [r["prompt"] == prompts.get(r["problem_id"]) for r in rows],
    }


def sft_checks(sft: pa.Table, gold: dict[str, str], prompts: dict[str, str]) -> dict[str, list]:
    """Re-verify every SFT completion against gold and its prompt against the problem's."""
    rows = sft.select(["problem_id", "prompt", "completion"]).to_pylist()
    return {
        "_completion_verified": [reaches_gold(r["completion"], gold.get(r["problem_id"], "")) for r in rows],
        "_prompt_matches": [r["prompt"] == prompts.get(r["problem_id"]) for r in rows],
    }


def wrong_steps(text: str, separator: str) -> list[tuple[int, str]]:
    """(1-based index, step) of every step of ``text`` whose arithmetic is judged wrong."""
    steps = text.split(separator)
    return [(i + 1, s) for i, s in enumerate(steps) if step_verdict(s, steps[:i]) is False]


PROCESS_COLUMN = {"pairs": "chosen", "sft": "completion"}  # the text that must be right step by step


def process_failures(table_name: str, table: pa.Table, max_wrong: int | None, separator: str) -> list[str | None]:
    """Per row, why it fails process verification (its first wrong step named), or None.
    Only pairs (the chosen side) and SFT rows are checked; ``max_wrong`` None checks nothing."""
    column = PROCESS_COLUMN.get(table_name)
    if column is None or max_wrong is None or table.num_rows == 0:
        return [None] * table.num_rows
    out = []
    for text in table.column(column).to_pylist():
        wrong = wrong_steps(text or "", separator)
        out.append(None if len(wrong) <= max_wrong else
                   f"{column} has {len(wrong)} step(s) with wrong arithmetic; first: step {wrong[0][0]}: {wrong[0][1][:200]!r}")
    return out


def row_checks(table_name: str, table: pa.Table, problems: pa.Table | None, solve: Template) -> dict[str, list] | None:
    """The derived check columns of ``table`` (see the module docstring)."""
    if table.num_rows == 0:
        return None
    if table_name == "chains":
        return chain_checks(table)
    if table_name in ("pairs", "sft"):
        if problems is None:
            raise ValueError(f"checking {table_name} needs the problems its rows come from")
        gold, prompts = problem_context(problems, solve)
        return (pair_checks if table_name == "pairs" else sft_checks)(table, gold, prompts)
    return None
