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


def test_golds_that_cannot_match_are_quarantined_by_format_and_real_ones_are_not(tmp_path):
    rows = [{"question": "Tom has 5 pens and buys 3. How many?", "answer": "#### banana"},
            {"question": "Tom has 5 pens and buys 3 more. How many?", "answer": "#### 8"},
            {"question": "Sam has $5 and gets $3. How much?", "answer": "#### $8.00"},
            {"question": "Empty after marker?", "answer": "so 8\n#### "}]
    f = tmp_path / "g.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    problems, bad = load_seeds(FileSeeds(paths=[str(f)]), "r")
    assert problems.column("gold_answer").to_pylist() == ["8", "$8.00"]
    got = {(b["check"], b["source"].rsplit(":", 1)[1]) for b in bad.to_pylist()}
    assert got == {("invalid_gold", "1"), ("unparseable_gold", "4")}
    assert "not a number" in bad.to_pylist()[0]["reason"] and "banana" in bad.to_pylist()[0]["reason"]
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"problem": "p", "solution": "so \\boxed{\\frac{1}{2}"}) + "\n"
                 + json.dumps({"problem": "q", "solution": "so \\boxed{(3,4]}"}) + "\n", encoding="utf-8")
    problems, bad = load_seeds(FileSeeds(paths=[str(m)], format="math", question_field="problem", answer_field="solution"), "r")
    assert problems.column("gold_answer").to_pylist() == ["(3,4]"] and bad.column("check").to_pylist() == ["unparseable_gold"]


@pytest.mark.parametrize("name, fmt", [("gsm8k_test_sample.jsonl", "gsm8k"), ("math_test_sample.jsonl", "math")])
def test_no_real_public_row_is_wrongly_quarantined(name, fmt):
    first = json.loads((DATA / name).read_text().splitlines()[0])
    fields = {"gsm8k": ("question", "answer"), "math": ("problem", "solution")}[fmt]
    if fields[0] not in first:
        pytest.skip(f"{name} has columns {sorted(first)}")
    problems, bad = load_seeds(FileSeeds(paths=[str(DATA / name)], format=fmt, question_field=fields[0], answer_field=fields[1]), "r")
    assert bad.num_rows == 0 and problems.num_rows == len((DATA / name).read_text().splitlines())


def test_a_byte_order_mark_and_crlf_line_ends_are_not_errors(tmp_path):
    rows = [{"question": "Tom has 5 pens and buys 3 more. How many?", "answer": "#### 8"},
            {"question": "Ann has 9 cards and loses 4. How many?", "answer": "#### 5"}]
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\r\n" for r in rows))
    problems, bad = load_seeds(FileSeeds(paths=[str(f)]), "r")
    assert bad.num_rows == 0 and problems.column("gold_answer").to_pylist() == ["8", "5"]
    assert problems.column("question").to_pylist()[0] == rows[0]["question"]
