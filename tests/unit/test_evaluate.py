"""Held-out evaluation: intervals, the paired test, the overlap check, maj@k / pass@k."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.backends.base import Completion, GenResult
from infra.config import BuiltinSeeds, ConfigError, EvaluateConfig, FileSeeds, load_config
from infra.schemas import from_rows
from tasks.evaluate import NoHeldOutProblems, evaluate_policy, held_out, mcnemar, wilson


def test_wilson_interval_matches_known_values_and_contains_the_estimate():
    lo, hi = wilson(74, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.6463, 0.816)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)


@given(st.integers(0, 500), st.integers(1, 500))
def test_wilson_brackets_the_proportion(k, n):
    k = min(k, n)
    lo, hi = wilson(k, n)
    assert 0 <= lo <= k / n <= hi <= 1


def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs():
    a = {f"p{i}": i < 50 for i in range(100)}
    b = {f"p{i}": i < 60 for i in range(100)}  # 10 fixed, none broken
    r = mcnemar(a, b)
    assert (r["n"], r["b_only"], r["a_only"]) == (100, 10, 0) and r["p_value"] == pytest.approx(2 / 2**10)
    assert mcnemar(a, a)["p_value"] == 1.0
    c = {**b, "p0": False}  # 10 fixed, 1 broken: p = 2 * P(X <= 1), X ~ Bin(11, 1/2)
    assert mcnemar(a, c)["p_value"] == pytest.approx(2 * (1 + 11) / 2**11)


def test_held_out_problems_never_include_a_training_question():
    seeds = BuiltinSeeds(n=50, seed=1)
    section = EvaluateConfig(seed=2, n=200)
    everything, overlap = held_out(section, seeds, set(), run_id="r")
    assert overlap == 0 and everything.num_rows == 200
    training = {q.strip() for q in everything.column("question").to_pylist()[:30]} | {"a question nobody asks"}
    problems, overlap = held_out(section, seeds, training, run_id="r")
    assert overlap == 30 and problems.num_rows == 170
    assert not training & {q.strip() for q in problems.column("question").to_pylist()}


def test_greedy_maj_and_pass_at_k_are_scored_against_gold():
    problems = from_rows([{"problem_id": f"p{i}", "question": f"q{i}", "gold_answer": "7"} for i in range(4)], "problems")
    # greedy: right on p0, p1; samples: p0 [7,7,1] maj right, p1 [1,1,7] pass only, p2 [2,2,2] none, p3 [7,1,1] pass only
    greedy = {"q0": "7", "q1": "7", "q2": "5", "q3": "5"}
    samples = {"q0": ["7", "7", "1"], "q1": ["1", "1", "7"], "q2": ["2", "2", "2"], "q3": ["7", "1", "1"]}

    def generate(requests):
        out = []
        for r in requests:
            q = r.prompt.split("Question: ")[1].split("\n")[0]
            texts = [greedy[q]] if r.temperature == 0 else samples[q]
            out.append(GenResult([Completion(f"so.\n\n#### {t}", "eos", 3) for t in texts[: r.n]], 5))
        return out

    evals, items = evaluate_policy(problems, generate, EvaluateConfig(k=3), "solve_v1", run_id="r", round=0, model="m", dataset="d")
    got = {e["metric"]: e["value"] for e in evals}
    assert got == {"greedy": 0.5, "pass@3": 0.75, "maj@3": 0.25}
    assert [i["correct"] for i in items] == [True, True, False, False] and all(e["n"] == 4 for e in evals)
    g = next(e for e in evals if e["metric"] == "greedy")
    assert (g["ci_low"], g["ci_high"]) == pytest.approx(wilson(2, 4))


@pytest.mark.parametrize("yaml_text, field", [  # the train section's own cases are in test_trainers.py
    ("evaluate:\n  k: 0\n", "evaluate.k"),
    ("evaluate:\n  n: 0\n", "evaluate.n"),
    ("evaluate:\n  problems: {kind: file}\n", "evaluate.problems"),
])
def test_a_bad_evaluation_config_stops_with_one_message_naming_the_field(tmp_path, yaml_text, field):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(f)


def test_wilson_is_symmetric():
    for k, n in ((3, 10), (17, 40)):
        lo, hi = wilson(k, n)
        lo2, hi2 = wilson(n - k, n)
        assert math.isclose(lo, 1 - hi2) and math.isclose(hi, 1 - lo2)


def _file_section(path, n: int = 500) -> EvaluateConfig:
    return EvaluateConfig(problems=FileSeeds(paths=[str(path)]), n=n)


@pytest.mark.parametrize("content, counts", [
    ('{"question": "no answer"}\nnot json\n', "2 rows quarantined"),  # malformed
    ("", "0 rows quarantined"),  # empty (a rerun --set can name one; check_inputs only runs on new runs)
])
def test_a_held_out_file_with_no_usable_problem_is_an_error_naming_it_and_the_counts(tmp_path, content, counts):
    f = tmp_path / "held.jsonl"
    f.write_text(content)
    with pytest.raises(NoHeldOutProblems, match="held.jsonl") as e:
        held_out(_file_section(f), BuiltinSeeds(), set(), run_id="r")
    assert counts in str(e.value) and "0 overlapping" in str(e.value)


def test_held_out_problems_that_all_are_training_questions_are_an_error(tmp_path):
    f = tmp_path / "held.jsonl"
    rows = [{"question": f"How many apples are {i} and 1?", "answer": f"so.\n#### {i + 1}"} for i in range(3)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    training = {r["question"] for r in rows}
    with pytest.raises(NoHeldOutProblems, match=r"held\.jsonl.*0 rows quarantined, 3 overlapping a training question"):
        held_out(_file_section(f), BuiltinSeeds(), training, run_id="r")
    problems, overlap = held_out(_file_section(f), BuiltinSeeds(), training - {rows[0]["question"]}, run_id="r")
    assert problems.num_rows == 1 and overlap == 2


def test_every_evals_row_carries_the_overlap_count_and_no_metric_is_made_up_for_it():
    """The held-out problems dropped for overlapping training questions are a column of every
    ``evals`` row (``overlap_removed``), not an extra row posing as a metric."""
    seeds = BuiltinSeeds(n=50, seed=0)
    section = EvaluateConfig(seed=0, n=50)
    training = {q.strip() for q in held_out(section, seeds, set(), run_id="r")[0].column("question").to_pylist()[:7]}
    problems, overlap = held_out(section, seeds, training, run_id="r")
    assert overlap == 7

    def generate(requests):
        return [GenResult([Completion("so.\n\n#### 1", "eos", 3)] * r.n, 5) for r in requests]

    evals, _ = evaluate_policy(problems, generate, EvaluateConfig(k=2), "solve_v1", run_id="r", round=0, model="m",
                               dataset="d", overlap_removed=overlap)
    assert sorted(e["metric"] for e in evals) == ["greedy", "maj@2", "pass@2"]
    assert all(e["overlap_removed"] == 7 and e["n"] == 43 for e in evals)
    table = from_rows(evals, "evals")
    assert table.schema.field("overlap_removed").type == "int64" and table.column("overlap_removed").null_count == 0


def test_the_ood_set_lies_outside_the_training_range_and_shares_no_question_with_training():
    from infra.config import RunConfig, apply_overrides
    from tasks.evaluate import held_out_sets, is_ood
    from tasks.seeds import load_seeds

    cfg = RunConfig.model_validate(apply_overrides({}, {"seeds": {"kind": "builtin", "n": 300, "max_steps": 4}, "evaluate.n": 200,
                                                        "evaluate.ood": {"kind": "builtin", "n": 150, "min_steps": 5, "max_steps": 6}}))
    training, _ = load_seeds(cfg.seeds, "r")
    sets = held_out_sets(cfg.evaluate, cfg.seeds, set(training.column("question").to_pylist()), run_id="r")
    (id_name, id_problems, _), (ood_name, ood_problems, _) = sets
    assert not is_ood(id_name) and is_ood(ood_name) and ood_problems.num_rows == 150
    assert min(ood_problems.column("n_ops").to_pylist()) > max(training.column("n_ops").to_pylist())
    assert not set(ood_problems.column("question").to_pylist()) & set(training.column("question").to_pylist())
    with pytest.raises(Exception, match="evaluate.ood.min_steps .* must exceed seeds.max_steps"):
        RunConfig.model_validate(apply_overrides({}, {"seeds": {"kind": "builtin", "max_steps": 6}, "evaluate.ood": {"kind": "builtin", "min_steps": 6, "max_steps": 8}}))


def test_the_evolve_table_shows_ood_beside_each_round_and_the_reference_last():
    from rich.console import Console

    from flows.cli import _accuracy_table

    def ev(rnd, dataset, value, model="tiny:m1-0e35f82f"):
        return {"round": rnd, "model": model, "dataset": dataset, "metric": "greedy", "value": value, "ci_low": value - 0.01,
                "ci_high": value + 0.01, "n": 100}

    record = {"rounds": [{"evals": [ev(0, "builtin:seed=1", 0.5), ev(1, "builtin:seed=1", 0.6), ev(0, "ood:builtin:seed=2", 0.01),
                                    ev(1, "ood:builtin:seed=2", 0.03), ev(-1, "builtin:seed=1", 0.83, "tiny:tiny-policy"),
                                    ev(-1, "ood:builtin:seed=2", 0.07, "tiny:tiny-policy")]}]}
    console = Console(width=80, record=True)  # a plain terminal: every model on one line, nothing cut
    console.print(_accuracy_table(record, "ev"))
    text = console.export_text()
    rows = [ln.split() for ln in text.splitlines() if ln.split() and ln.split()[0] in ("0", "1", "ref")]
    assert [r[0] for r in rows] == ["0", "1", "ref"] and max(len(ln) for ln in text.splitlines()) <= 80
    assert rows[1] == ["1", "tiny:m1-0e35f82f", "0.600", "(0.590-0.610)", "100", "0.030", "(0.020-0.040)"]
    assert rows[2][:3] == ["ref", "tiny:tiny-policy", "0.830"] and rows[2][-2:] == ["0.070", "(0.060-0.080)"]
