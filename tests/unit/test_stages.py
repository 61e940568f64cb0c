"""The stage declarations: run order, downstream sets, the graph check, and what a new
declaration shows up in (the CLI's choices, the rerun's superseded outputs)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from flows import stages as declared
from flows.stages import STAGES, Stage, StageGraphError, check_stages, downstream, names, ordered
from infra.config import RunConfig
from infra.schemas import from_rows
from infra.storage import RunStore


TOY_TASK = object()  # graph tests never run a stage


def toy(name, reads=(), writes=(), after=(), enabled=declared.always):
    return Stage(name, task=TOY_TASK, reads=tuple(reads), writes=tuple(writes), config=(), after=tuple(after), enabled=enabled)


def test_the_factory_runs_its_stages_in_the_declared_order():
    factory = ("seeds", "generation", "routing", "self_correction", "diversity", "sft", "step_pairs", "metrics")
    assert names() == (*factory, "train", "evaluate")
    assert downstream("generation") == ("routing", "self_correction", "diversity", "sft", "step_pairs", "metrics", "train", "evaluate")
    assert downstream("self_correction") == ("sft", "step_pairs", "metrics", "train", "evaluate") and downstream("evaluate") == ()
    assert [s.name for s in check_stages(RunConfig())] == list(factory)  # train and evaluate are off unless asked for
    evolve = RunConfig.model_validate({"train": {"enabled": True}, "evaluate": {"enabled": True}})
    assert [s.name for s in check_stages(evolve)] == list(names())
    off = RunConfig.model_validate({"self_correction": {"enabled": False}, "metrics": {"enabled": False}})
    assert [s.name for s in check_stages(off)] == ["seeds", "generation", "routing", "diversity", "sft", "step_pairs"]


def test_a_stage_reading_a_table_no_earlier_stage_writes_is_refused_before_it_runs():
    bad = (*STAGES, toy("judge", reads=("critiques",), after=("sft",)))
    with pytest.raises(StageGraphError, match=r"'judge' reads \['critiques'\]"):
        check_stages(RunConfig(), bad)
    # a reader of chains that is ordered before any chains writer is refused too
    early = (toy("seeds2", writes=("problems",)), toy("peek", reads=("chains",), after=("seeds2",)),
             toy("gen2", reads=("problems",), writes=("chains",), after=("seeds2",)))
    with pytest.raises(StageGraphError, match="'peek' reads"):
        check_stages(RunConfig(), early)


def test_evaluate_declares_that_it_reads_the_models_train_writes_and_runs_without_them():
    """evaluate reads train's ``models`` (the checkpoints it evaluates) when train runs; without
    train it evaluates the starting policy, so the read is optional, not absent."""
    evaluate = declared.get("evaluate")
    assert "models" in evaluate.optional_reads + evaluate.reads and "models" in declared.get("train").writes
    alone = RunConfig.model_validate({"evaluate": {"enabled": True}})  # train off
    assert [s.name for s in check_stages(alone)][-1] == "evaluate"
    # an optional read is still refused when the only enabled writer of the table runs after the reader
    late = (toy("a", writes=("t",)), dataclasses.replace(toy("r", after=("a",)), optional_reads=("m",)),
            toy("w", writes=("m",), after=("r",)))
    with pytest.raises(StageGraphError, match=r"'r' reads \['m'\], which an enabled stage writes only after it"):
        check_stages(RunConfig(), late)
    assert [s.name for s in check_stages(RunConfig(), late[:2])] == ["a", "r"]


def test_unknown_and_circular_after_are_refused():
    with pytest.raises(StageGraphError, match="unknown stage"):
        ordered((toy("a", after=("nope",)),))
    with pytest.raises(StageGraphError, match="circle"):
        ordered((toy("a", after=("b",)), toy("b", after=("a",))))
    with pytest.raises(StageGraphError, match="unique"):
        ordered((toy("a"), toy("a")))


def test_a_new_declaration_is_in_the_graph_the_cli_choices_and_the_rerun(monkeypatch, tmp_path):
    """Adding a stage is one declaration: it is ordered, checked, offered by `sphere rerun
    --stage`, and a rerun of an upstream stage supersedes its outputs."""
    from flows import pipeline
    from flows.cli import app

    critique = toy("critique", reads=("pairs",), writes=("critiques",), after=("sft",))
    with_toy = (*STAGES, critique)
    monkeypatch.setattr(declared, "STAGES", with_toy)
    assert "critique" in declared.names()
    assert "critique" in declared.downstream("sft") and "critique" in declared.downstream("generation")
    assert check_stages(RunConfig())[-1].name == "critique"
    # the CLI accepts it (and fails only because the run does not exist), and still refuses unknown names
    res = CliRunner().invoke(app, ["rerun", "nope-run", "--stage", "critique", "--data-root", str(tmp_path)])
    assert res.exit_code == 2 and "not found" in res.stderr
    res = CliRunner().invoke(app, ["rerun", "nope-run", "--stage", "critiqe", "--data-root", str(tmp_path)])
    assert res.exit_code == 2 and "unknown stage 'critiqe'" in res.output and "critique" in res.output
    # rerun of sft supersedes the toy stage's outputs (it runs after sft), and leaves upstream alone
    store = RunStore(tmp_path, "r")
    store.save_config(RunConfig().model_dump(mode="json"))
    store.write("critiques", "critique", "00000", from_rows([{"run_id": "r"}], "metrics"))
    store.write("sft", "sft", "00000", from_rows([], "sft"))
    store.write("chains", "generation", "00000", from_rows([], "chains"))
    dest = pipeline.supersede(str(store.run_dir), "sft")
    assert (dest / "critiques" / "critique" / "part-00000.parquet").is_file()
    assert (dest / "_done" / "critiques.critique.00000.json").is_file()
    assert not store.is_done("critiques", "critique", "00000") and not store.is_done("sft", "sft", "00000")
    assert store.is_done("chains", "generation", "00000")


# ---------------------------------------------------------------- properties of the graph check

TABLES = ["t0", "t1", "t2", "t3", "t4"]


@st.composite
def stage_sets(draw):
    n = draw(st.integers(1, 7))
    out = []
    for i in range(n):
        after = draw(st.lists(st.sampled_from([f"s{j}" for j in range(i)]), unique=True)) if i else []
        out.append(toy(f"s{i}", reads=draw(st.lists(st.sampled_from(TABLES), unique=True, max_size=2)),
                       writes=draw(st.lists(st.sampled_from(TABLES), unique=True, max_size=2)), after=after,
                       enabled=declared.always if draw(st.booleans()) or i == 0 else (lambda cfg: False)))
    order = draw(st.permutations(out))  # declaration order must not matter beyond ties
    return tuple(order)


@settings(max_examples=150, deadline=None)
@given(stage_sets())
def test_order_respects_after_and_the_check_accepts_exactly_the_runnable_graphs(stages):
    run = ordered(stages)
    pos = {s.name: i for i, s in enumerate(run)}
    assert sorted(pos) == sorted(s.name for s in stages)
    assert all(pos[a] < pos[s.name] for s in stages for a in s.after)
    # oracle: walk the enabled stages in that order, tracking what has been written
    written, ok = set(), True
    for s in run:
        if not s.enabled(None):
            continue
        ok = ok and set(s.reads) <= written
        written |= set(s.writes) | set(declared.IMPLICIT_WRITES)
    if ok:
        assert [s.name for s in check_stages(RunConfig(), stages)] == [s.name for s in run if s.enabled(None)]
    else:
        with pytest.raises(StageGraphError):
            check_stages(RunConfig(), stages)
    # downstream = everything reachable through `after` edges
    for s in stages:
        reach, frontier = set(), {s.name}
        while frontier:
            nxt = {t.name for t in stages if set(t.after) & frontier} - reach
            reach |= nxt
            frontier = nxt
        assert set(downstream(s.name, stages)) == reach


def test_stage_declarations_are_plain_frozen_values():
    for s in STAGES:
        assert dataclasses.is_dataclass(s)
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.name = "x"  # type: ignore[misc]
        assert s.shard_task.name == s.name  # one name everywhere: the Prefect task is named after its stage
