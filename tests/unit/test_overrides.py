import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.config import RunConfig, apply_overrides
from infra.storage import RunStore


def test_dotted_overrides_set_leaves_and_replace_whole_values():
    raw = {"search": {"candidates": 5, "temperature": 0.8}, "self_correction": {"policy": {"kind": "tiny", "checkpoint": "x"}}}
    out = apply_overrides(raw, {"search.candidates": 8, "self_correction.policy": {"kind": "llamacpp", "model_path": "m.gguf"},
                                "diversity.shard_size": 4})
    assert out["search"] == {"candidates": 8, "temperature": 0.8}
    assert out["self_correction"]["policy"] == {"kind": "llamacpp", "model_path": "m.gguf"}  # replaced, not merged
    assert out["diversity"] == {"shard_size": 4}
    assert raw["search"]["candidates"] == 5  # the input is not mutated
    assert apply_overrides({"self_correction": {"policy": None}}, {"self_correction.policy.kind": "tiny"}) == {
        "self_correction": {"policy": {"kind": "tiny"}}}


def test_rerun_can_switch_a_backend_kind_and_logs_the_change(tmp_path):
    from flows.pipeline import record_config_change

    store = RunStore(tmp_path, "r")
    store.save_config(RunConfig.model_validate({"self_correction": {"policy": {"kind": "tiny", "checkpoint": "small"}}}).model_dump(mode="json"))
    entry = record_config_change(str(store.run_dir), "self_correction", {"self_correction.policy": {"kind": "llamacpp", "model_path": "m.gguf"}})
    cfg = RunConfig.model_validate(store.load_config())
    assert cfg.self_correction.policy.kind == "llamacpp" and cfg.self_correction.policy.model_path == "m.gguf"
    assert entry["changes"]["self_correction.policy"]["old"]["checkpoint"] == "small"
    logged = [json.loads(line) for line in (store.run_dir / "reruns.jsonl").read_text().splitlines()]
    assert logged == [entry]


def test_overrides_that_do_not_validate_leave_the_stored_config_alone(tmp_path):
    from pydantic import ValidationError

    from flows.pipeline import record_config_change

    store = RunStore(tmp_path, "r")
    store.save_config(RunConfig().model_dump(mode="json"))
    before = store.load_config()
    with pytest.raises(ValidationError):
        record_config_change(str(store.run_dir), "diversity", {"diversity.candidates": 1})
    assert store.load_config() == before and not (store.run_dir / "reruns.jsonl").exists()


# ---------------------------------------------------------------- properties of override parsing


KEYS = st.lists(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), min_size=1, max_size=3).map(".".join)
LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
VALUES = st.recursive(LEAVES, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), c, max_size=3),
                      max_leaves=6)
TREES = st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), VALUES, max_size=4)


@settings(max_examples=200, deadline=None)
@given(raw=TREES, key=KEYS, value=VALUES)
def test_an_override_sets_exactly_its_leaf_and_leaves_the_input_alone(raw, key, value):
    before = copy.deepcopy(raw)
    out = apply_overrides(raw, {key: value})
    assert raw == before
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
        node = node[p]
    assert node[leaf] == value
    untouched = {k: v for k, v in before.items() if k != key.split(".")[0]}
    assert {k: out[k] for k in untouched} == untouched


@settings(max_examples=200, deadline=None)
@given(key=KEYS, value=VALUES)
def test_set_options_parse_json_values_and_keep_other_text_as_strings(key, value):
    from flows.cli import _parse_sets

    assert _parse_sets([f" {key} ={json.dumps(value)}"]) == {key: value}
    assert _parse_sets([f"{key}=not json: {{"]) == {key: "not json: {"}


def test_resume_with_set_changes_the_stored_config_and_logs_it_and_a_bad_one_changes_nothing(tmp_path):
    from flows.pipeline import prepare_run
    from infra.config import ConfigError
    from tests.conftest import ROOT

    cfg = str(ROOT / "configs" / "quickstart.yaml")
    run_dir = prepare_run(cfg, "r", str(tmp_path), {"seeds.n": 4})
    store = RunStore.at(run_dir)
    assert prepare_run(cfg, "r", str(tmp_path), {"seeds.n": 4}) == run_dir  # the same values: nothing to record
    assert not (store.run_dir / "reruns.jsonl").exists()
    prepare_run(cfg, "r", str(tmp_path), {"seeds.n": 4, "search.candidates": 7})
    assert RunConfig.model_validate(store.load_config()).search.candidates == 7
    log = [json.loads(line) for line in (store.run_dir / "reruns.jsonl").read_text().splitlines()]
    assert log == [{**log[0], "stage": "resume", "changes": {"seeds.n": {"old": 4, "new": 4}, "search.candidates": {"old": 5, "new": 7}}}]
    before = store.load_config()
    with pytest.raises(ConfigError, match="search.candidates"):
        prepare_run(cfg, "r", str(tmp_path), {"search.candidates": 1})
    assert store.load_config() == before


def test_a_whole_section_override_then_a_dotted_one_leave_the_callers_section_alone():
    """sphere evolve passes its stored config whole plus dotted round settings (train.replay_runs):
    the dotted one must land in the copy, not in the evolve record's own section."""
    section = {"enabled": False, "replay_runs": []}
    out = apply_overrides({}, {"train": section, "train.enabled": True, "train.replay_runs": ["ev-r0"]})
    assert out["train"] == {"enabled": True, "replay_runs": ["ev-r0"]}
    assert section == {"enabled": False, "replay_runs": []}
