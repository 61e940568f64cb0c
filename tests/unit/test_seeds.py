import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.config import BuiltinSeeds, FileSeeds
from tasks.seeds import SeedError, load_seeds
from tests.conftest import DATA


def write_bad_file(path, big_bytes=10_000_000):
    good = {"question": "Tom has 5 pens. He buys 3 more. How many pens?", "answer": "5+3=8\n#### 8"}
    lines = [
        json.dumps(good).encode(),
        json.dumps({"answer": "#### 3"}).encode(),  # missing question
        json.dumps({"question": "   ", "answer": "#### 3"}).encode(),  # empty question
        json.dumps({"question": "What is 2+2?"}).encode(),  # missing answer
        json.dumps({"question": "What is 2+2?", "answer": "four, I think"}).encode(),  # no ####
        b'{"question": "caf\xe9 au lait?", "answer": "#### 1"}',  # latin-1 byte: not UTF-8
        b'{"question": "unclosed", ',  # not JSON
        b"[1, 2, 3]",  # not an object
        json.dumps({"question": "x" * big_bytes, "answer": "#### 1"}).encode(),  # 10 MB row
        json.dumps(good).encode(),  # duplicate of the first row
        json.dumps({"question": "Anna has 9 cards. She loses 4. How many cards?", "answer": "9-4=5\n#### 5"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_malformed_rows_are_quarantined_with_reasons_and_the_rest_load(tmp_path):
    f = tmp_path / "seeds.jsonl"
    write_bad_file(f)
    problems, bad = load_seeds(FileSeeds(paths=[str(f)]), "run1")
    assert problems.column("gold_answer").to_pylist() == ["8", "5"]
    checks = bad.column("check").to_pylist()
    assert checks == [
        "missing_question", "empty_question", "missing_answer", "unparseable_gold", "not_utf8",
        "invalid_json", "not_an_object", "row_too_large", "duplicate_problem",
    ]
    sources = bad.column("source").to_pylist()
    assert sources[0].endswith("seeds.jsonl:2") and sources[-1].endswith("seeds.jsonl:10")
    assert all(len(r) <= 4000 for r in bad.column("row").to_pylist())  # the 10 MB row is kept as a prefix
    assert "10,0" in bad.column("reason").to_pylist()[7]


def test_gsm8k_and_math_formats_with_column_mapping():
    g, gbad = load_seeds(FileSeeds(paths=[str(DATA / "gsm8k_sample.jsonl")]), "r")
    assert g.column("gold_answer").to_pylist() == ["19", "25", "1,500", "60"] and gbad.num_rows == 0
    m, mbad = load_seeds(
        FileSeeds(paths=[str(DATA / "math_sample.jsonl")], format="math", question_field="problem",
                  answer_field="solution", id_field="unique_id"),
        "r",
    )
    assert m.column("gold_answer").to_pylist() == ["\\frac{3}{4}", "56"]
    assert m.column("source_id").to_pylist() == ["m1", "m2"]
    assert mbad.column("check").to_pylist() == ["unparseable_gold"]


def test_parquet_seeds(tmp_path):
    f = tmp_path / "s.parquet"
    pq.write_table(pa.table({"question": ["What is 6*7?", None], "answer": ["#### 42", "#### 1"]}), f)
    problems, bad = load_seeds(FileSeeds(paths=[str(f)]), "r")
    assert problems.column("gold_answer").to_pylist() == ["42"]
    assert bad.column("check").to_pylist() == ["missing_question"]


def test_missing_file_and_unknown_type_are_clear_errors(tmp_path):
    with pytest.raises(SeedError, match="not found"):
        load_seeds(FileSeeds(paths=[str(tmp_path / "nope.jsonl")]), "r")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(SeedError, match="unsupported"):
        load_seeds(FileSeeds(paths=[str(tmp_path / "x.csv")]), "r")


def test_builtin_seeds_are_reproducible_with_unique_ids():
    a, _ = load_seeds(BuiltinSeeds(n=300, seed=5), "r")
    b, _ = load_seeds(BuiltinSeeds(n=300, seed=5), "other-run")
    assert a.column("problem_id").to_pylist() == b.column("problem_id").to_pylist()
    assert len(set(a.column("problem_id").to_pylist())) == 300
