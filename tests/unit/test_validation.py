from infra.schemas import from_rows
from infra.validation import validate
from tasks.checks import chain_checks


def validate_chains(rows):
    """The chains suite as the stages run it: with the answer re-check of ``tasks.checks``."""
    table = from_rows(rows, "chains")
    return validate("chains", table, chain_checks(table))


def chain(cid, verdict, correct, answer, gold="8", steps=("5+3=8.", "#### 8"), scores=(1.0, 1.0)):
    return {
        "run_id": "r", "chain_id": cid, "problem_id": "p", "stage": "generation", "branch": "max",
        "steps": list(steps), "step_scores": list(scores), "step_rewards": list(scores), "n_steps": len(steps),
        "final_answer": answer, "gold_answer": gold, "correct": correct, "verdict": verdict, "text": "\n\n".join(steps),
    }


def test_chain_suite_quarantines_inconsistent_rows_and_keeps_good_ones():
    rows = [
        chain("good", "correct", True, "8"),
        chain("lies", "correct", True, "9"),  # says correct, answer is not gold
        chain("flag", "wrong", True, "9"),  # correct flag contradicts verdict
        chain("range", "wrong", False, "9", scores=(1.0, 1.5)),  # score out of [0, 1]
        chain("count", "wrong", False, "9", steps=("a",), scores=(0.1, 0.2)),  # n_steps vs lists
        chain("good", "wrong", False, "9"),  # duplicate id
    ]
    out = validate_chains(rows)
    assert out.good.num_rows == 0 or out.good.column("chain_id").to_pylist() == []
    reasons = {b["row"]["chain_id"] + ":" + str(i): b["reason"] for i, b in enumerate(out.bad_rows)}
    assert len(out.bad_rows) == 6
    assert "_verdict_consistent" in reasons["lies:1"] and "_verdict_consistent" in reasons["flag:2"]
    assert "_scores_in_range" in reasons["range:3"] and "_n_steps_ok" in reasons["count:4"]
    assert "unique(chain_id)" in reasons["good:0"]
    ok = validate_chains([chain("a", "correct", True, "8"), chain("b", "no_answer", False, None)])
    assert ok.good.num_rows == 2 and ok.bad_rows == [] and all(r["success"] for r in ok.results)


def test_pair_suite_rejects_identical_and_empty_sides():
    rows = [
        {"run_id": "r", "pair_id": "1", "chosen": "a", "rejected": "b"},
        {"run_id": "r", "pair_id": "2", "chosen": "a", "rejected": "a"},
        {"run_id": "r", "pair_id": "3", "chosen": " ", "rejected": "b"},
    ]
    out = validate("pairs", from_rows(rows, "pairs"))
    assert out.good.column("pair_id").to_pylist() == ["1"]
    assert [b["row"]["pair_id"] for b in out.bad_rows] == ["2", "3"]
