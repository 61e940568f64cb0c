import pytest

from infra.config import DedupConfig, RunConfig
from infra.prompts import load_template
from infra.schemas import from_rows
from tasks.self_correction import correction_pairs, correction_start
from tasks.sft import distinct_correct, jaccard_matrix


@pytest.mark.parametrize(
    "scores, want",
    [
        ([1.0, 0.0, 1.0], ("b", ("a",), (1.0,))),  # first wrong step located: keep the steps before it
        ([1.0, 0.25, 0.0], ("b", ("a",), (1.0,))),  # an ungrounded step counts as wrong
        ([1.0, 0.5, 1.0], ("c", (), ())),  # nothing located: show the final step, restart
    ],
)
def test_correction_starts_after_the_last_good_step(scores, want):
    assert correction_start(["a", "b", "c"], scores, 0.5) == want


def chain(pid, cid, stage, branch, text, correct):
    return {"run_id": "r", "chain_id": cid, "problem_id": pid, "stage": stage, "branch": branch, "text": text,
            "correct": correct, "step_scores": [1.0], "prompt": "p"}


def test_correction_pairs_only_when_exactly_one_is_right():
    solve = load_template("solve_v1")
    rows = [chain("a", "a1", "self_correction", "max", "x #### 1", True), chain("a", "a2", "self_correction", "min", "y #### 2", False),
            chain("b", "b1", "self_correction", "max", "x #### 1", True), chain("b", "b2", "self_correction", "min", "z #### 1", True),
            chain("c", "c1", "self_correction", "max", "x #### 3", False), chain("c", "c2", "self_correction", "min", "w #### 1", True)]
    pairs = correction_pairs(from_rows(rows, "chains"), solve, {"a": "qa", "b": "qb", "c": "qc"}, run_id="r").to_pylist()
    assert [(p["problem_id"], p["chosen_chain_id"], p["rejected_chain_id"]) for p in pairs] == [("a", "a1", "a2"), ("c", "c2", "c1")]
    assert pairs[0]["prompt"] == solve.render(question="qa")


BASE = "He buys 5 more, so 10+5=15.\n\nHe sells 3, so 15-3=12.\n\nThen he has twice as many, so 12*2=24.\n\n#### 24"


def test_sft_keeps_distinct_correct_chains_and_drops_duplicates():
    near = BASE.replace("He sells 3", "He loses 3")  # one word differs
    other = "He sells 3 first, so 10-3=7.\n\nHe buys 5 more, so 7+5=12.\n\nThen he has twice as many, so 12*2=24.\n\n#### 24"
    rows = [chain("p", "c1", "generation", "max", BASE, True), chain("p", "c2", "generation", "min", BASE, True),
            chain("p", "c3", "diversity", "max", near, True), chain("p", "c4", "diversity", "min", other, True),
            chain("p", "c5", "self_correction", "max", "#### 25", False), chain("q", "c6", "generation", "max", BASE, True)]
    sft = distinct_correct(from_rows(rows, "chains"), {"p": "P", "q": "Q"}, DedupConfig(near_duplicate_threshold=0.6), run_id="r")
    assert sft.column("chain_id").to_pylist() == ["c1", "c4", "c6"]  # exact dup c2 and near dup c3 dropped; wrong c5 never in
    assert sft.column("prompt").to_pylist() == ["P", "P", "Q"]
    j = jaccard_matrix([BASE, near, other], DedupConfig())
    assert j[0, 1] >= 0.6 > j[0, 2]


def test_every_stage_section_has_defaults():
    cfg = RunConfig()
    assert cfg.diversity.small_policy.checkpoint == "small" and cfg.self_correction.policy is None
