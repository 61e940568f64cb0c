"""The verifier on vendored samples of the public GSM8K and MATH-500 test sets
(tests/data/LICENSES.md). The full sets: bench/verify_public_sets.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.answers import ANSWER_RE, check_gold, is_equivalent, last_boxed, normalize_gold

DATA = Path(__file__).resolve().parent.parent / "data"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


GSM8K = [normalize_gold(ANSWER_RE.findall(r["answer"])[-1]) for r in _rows("gsm8k_test_sample.jsonl")]
MATH = _rows("math_test_sample.jsonl")


def test_samples_are_there():
    assert len(GSM8K) == 100 and len(MATH) == 100


@pytest.mark.parametrize("gold", GSM8K)
def test_gsm8k_gold(gold):
    assert check_gold(gold, "gsm8k") is None
    assert is_equivalent(gold, gold)
    assert is_equivalent(f"\\boxed{{{gold}}}", gold)


@pytest.mark.parametrize("row", MATH, ids=[r["unique_id"] for r in MATH])
def test_math_gold(row):
    gold = row["answer"]
    assert check_gold(gold, "math") is None
    assert is_equivalent(gold, gold)
    assert is_equivalent(f"\\boxed{{{gold}}}", gold)
    assert is_equivalent(f"${gold}$", gold)
    assert is_equivalent(last_boxed(row["solution"]), gold)  # the solution's own boxed answer
