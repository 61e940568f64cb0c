"""The evolve record's rules: the stored config a resume must match, and the promotion gate."""

from __future__ import annotations

import pytest

from infra.config import RunConfig
from tasks.evolve_record import EvolveConfigChanged, config_changes, promotion_refusal, settle_config


def _cfg(**sets) -> dict:
    from infra.config import apply_overrides

    return RunConfig.model_validate(apply_overrides({"seeds": {"kind": "builtin"}}, sets)).model_dump(mode="json")


def test_a_model_that_breaks_significantly_more_than_it_fixes_is_refused():
    parent = {f"p{i}": i < 30 for i in range(40)}
    worse = {f"p{i}": i < 10 for i in range(40)}  # breaks 20 the parent solves, fixes none
    why = promotion_refusal(parent, worse, 0.05)
    assert why and "breaks 20" in why and "fixes 0" in why and "McNemar" in why
    assert promotion_refusal(parent, worse, 1e-9) is None  # not significant at that level
    slightly = {**parent, "p0": False, "p1": False, "p35": True}  # breaks 2, fixes 1: not significant
    assert promotion_refusal(parent, slightly, 0.05) is None
    better = {f"p{i}": i < 38 for i in range(40)}
    assert promotion_refusal(parent, better, 0.05) is None and promotion_refusal({}, better, 0.05) is None


def test_config_changes_name_the_fields_and_a_changed_kind_is_one_field():
    old, new = _cfg(**{"seeds.n": 16}), _cfg(**{"seeds.n": 24, "evaluate.temperature": 0.5})
    assert config_changes(old, new) == {"evaluate.temperature": {"old": 0.8, "new": 0.5}, "seeds.n": {"old": 16, "new": 24}}
    other = _cfg(**{"seeds.n": 16, "policy": {"kind": "openai", "model": "m"}})
    assert list(config_changes(old, other)) == ["policy"]


def test_a_resume_with_another_config_is_refused_unless_allowed_and_then_recorded():
    record = {"evolve_id": "ev", "rounds": []}
    settle_config(record, _cfg(**{"seeds.n": 16}), allow=False, next_round=0)
    stored = dict(record)
    settle_config(record, _cfg(**{"seeds.n": 16}), allow=False, next_round=1)  # the same config: nothing changes
    assert record == stored
    with pytest.raises(EvolveConfigChanged, match=r"seeds\.n 16 -> 24.*--allow-config-change"):
        settle_config(record, _cfg(**{"seeds.n": 24}), allow=False, next_round=1)
    assert record == stored
    settle_config(record, _cfg(**{"seeds.n": 24}), allow=True, next_round=1)
    assert record["run_config"]["seeds"]["n"] == 24 and record["config_hash"] != stored["config_hash"]
    (change,) = record["config_changes"]
    assert change["from_round"] == 1 and change["changes"] == {"seeds.n": {"old": 16, "new": 24}}


def test_a_resumed_round_is_given_only_what_differs_from_its_stored_config():
    from tasks.evolve_record import round_overrides

    run_config = _cfg(**{"seeds.n": 16})
    sets = {"round": 1, "policy": {"kind": "tiny", "checkpoint": "/m1"}}
    new = round_overrides(run_config, sets, None)
    assert new["seeds"] == run_config["seeds"] and new["round"] == 1
    stored = RunConfig.model_validate(new).model_dump(mode="json")
    assert round_overrides(run_config, sets, stored) == {}
    changed = {**run_config, "seeds": {**run_config["seeds"], "n": 24}}
    assert round_overrides(changed, sets, stored) == {"seeds.n": 24}


def test_each_round_starts_from_the_previous_rounds_model_and_is_tested_against_it(tmp_path):
    """Issue 21.5: the report's "start acc" was blank after round 0 (only round 0 evaluates its
    starting policy), and McNemar compared only the last model with round 0."""
    from flows.evolve import round_by_round
    from tasks.evolve_report import round_rows, value_axis

    def ev(rnd, value):
        return {"metric": "greedy", "round": rnd, "value": value, "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 100}

    record = {"rounds": [{"round": 0, "run_id": "r0", "evals": [ev(0, 0.5), ev(1, 0.6)]},
                         {"round": 1, "run_id": "r1", "evals": [ev(2, 0.7)]},
                         {"round": 2, "run_id": "r2", "evals": [ev(3, 0.65)]}]}
    rows = round_rows(tmp_path, record)
    assert [r["start"]["value"] for r in rows] == [0.5, 0.6, 0.7] and [r["trained"]["value"] for r in rows] == [0.6, 0.7, 0.65]
    by_round = {0: {"a": False, "b": False, "c": True}, 1: {"a": True, "b": False, "c": True}, 2: {"a": True, "b": True, "c": False}}
    steps = round_by_round(by_round)
    assert [(c["from_round"], c["to_round"], c["b_only"], c["a_only"]) for c in steps] == [(0, 1, 1, 0), (1, 2, 1, 1)]
    assert value_axis([2.81, 2.83]) == (0.0, 2.83 * 1.15) and value_axis([None]) == (0.0, 1.0)


def test_each_round_draws_new_builtin_problems_and_file_seeds_must_say_they_repeat():
    import pytest

    from flows.evolve import EvolveError, round_seeds

    builtin = {"seeds": {"kind": "builtin", "n": 600, "seed": 1}, "evolve": {"new_seeds": True}}
    assert [round_seeds(builtin, r)["seeds"]["seed"] for r in range(3)] == [1, 2, 3]
    assert round_seeds(builtin, 2)["seeds"]["n"] == 600
    assert round_seeds({**builtin, "evolve": {"new_seeds": False}}, 2) == {}
    files = {"seeds": {"kind": "file", "paths": ["a.jsonl"]}, "evolve": {"new_seeds": True}}
    with pytest.raises(EvolveError, match="evolve.new_seeds: false"):
        round_seeds(files, 0)
    assert round_seeds({**files, "evolve": {"new_seeds": False}}, 1) == {}


def test_each_round_replays_the_earlier_rounds_when_accumulating_and_a_record_from_before_the_setting_does_not():
    from flows.evolve import replay_runs

    on = {"evolve": {"accumulate": True}}
    assert [replay_runs(on, "ev", r) for r in range(3)] == [
        {"train.replay_runs": []}, {"train.replay_runs": ["ev-r0"]}, {"train.replay_runs": ["ev-r0", "ev-r1"]}]
    assert replay_runs({"evolve": {"accumulate": False}}, "ev", 2) == {}
    assert replay_runs({"evolve": {"new_seeds": True}}, "ev", 2) == {}  # stored before evolve.accumulate existed: as it ran


def test_replay_runs_must_name_earlier_runs_under_the_data_root(tmp_path):
    import pytest
    from pydantic import ValidationError

    from infra.config import RunConfig
    from infra.storage import RunStore
    from infra.trainers import TrainError
    from tasks.train import replay_stores

    for bad in ("../elsewhere", "a/b", "..", ".hidden", ""):
        with pytest.raises(ValidationError, match="is not a run id"):
            RunConfig.model_validate({"train": {"replay_runs": [bad]}})
    (tmp_path / "runs" / "r0").mkdir(parents=True)
    (tmp_path / "runs" / "r0" / "config.json").write_text("{}")
    here = RunStore(tmp_path, "r1")
    assert [s.run_id for s in replay_stores(here, ["r0"])] == ["r0"]
    with pytest.raises(TrainError, match=r"run 'gone' not found under .*runs"):
        replay_stores(here, ["r0", "gone"])
    with pytest.raises(TrainError, match="names this run itself"):
        replay_stores(here, ["r1"])
