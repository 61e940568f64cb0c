"""The scheduler (infra/schedule.py) alone: which shard starts next, and where groups of
stages are cut so their engines fit. Pure, so every rule is checked without Prefect or Ray."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.schedule import ShardQueue, keep_after, parts

STREAM = ["generation", "routing", "self_correction", "diversity"]
MODEL = {"generation": True, "routing": False, "self_correction": True, "diversity": True}


def test_later_stages_go_first_and_each_lane_keeps_its_limit():
    q = ShardQueue(STREAM, MODEL, max_model=2, max_cpu=1)
    for s in ("00000", "00001", "00002"):
        q.push("generation", s)
    assert q.take() == [("generation", "00000"), ("generation", "00001")]  # two model slots
    assert q.take() == []
    q.finish("generation")
    q.push("routing", "00000")  # a CPU shard starts beside the model shards, not behind them
    q.push("self_correction", "00000-000")
    assert q.take() == [("self_correction", "00000-000"), ("routing", "00000")]  # the follower before generation 00002
    q.finish("routing")
    q.finish("self_correction")
    q.finish("generation")
    assert q.take() == [("generation", "00002")]
    q.finish("generation")
    assert not q.pending and q.total == {"generation": 3, "routing": 1, "self_correction": 1, "diversity": 0}


def test_a_group_of_one_stage_is_the_barrier_case():
    q = ShardQueue(["sft"], {}, max_model=3, max_cpu=3)
    for s in ("a", "b", "c", "d"):
        q.push("sft", s)
    assert q.take() == [("sft", "a"), ("sft", "b"), ("sft", "c")]  # CPU lane at its limit, in push order


def test_finishing_what_is_not_in_flight_and_zero_limits_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        ShardQueue(STREAM, MODEL, 0, 1)
    with pytest.raises(ValueError, match="no routing shard is in flight"):
        ShardQueue(STREAM, MODEL, 1, 1).finish("routing")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(STREAM), st.booleans()), max_size=60), st.integers(1, 4), st.integers(1, 2))
def test_every_pushed_shard_starts_exactly_once_and_no_lane_passes_its_limit(ops, max_model, max_cpu):
    q = ShardQueue(STREAM, MODEL, max_model, max_cpu)
    pushed, started, inflight = [], [], []
    for k, (stage, finish_one) in enumerate(ops):
        q.push(stage, str(k))
        pushed.append((stage, str(k)))
        if finish_one and inflight:
            q.finish(inflight.pop(0)[0])
        new = q.take()
        started += new
        inflight += new
        assert sum(MODEL[s] for s, _ in inflight) <= max_model and sum(not MODEL[s] for s, _ in inflight) <= max_cpu
    while q.pending:
        q.finish(inflight.pop(0)[0])
        new = q.take()
        started += new
        inflight += new
    assert sorted(started) == sorted(pushed)


def test_parts_cut_a_group_where_its_engines_do_not_fit_and_never_merge_groups():
    backends = {"seeds": [], "generation": ["policy"], "routing": [], "diversity": ["small"], "sft": []}.get
    groups = [["seeds"], ["generation", "routing", "diversity"], ["sft"]]
    assert parts(groups, backends, lambda bs: True) == groups
    one_at_a_time = lambda bs: len(set(bs)) <= 1  # noqa: E731 - the cluster holds one engine pool
    plan = parts(groups, backends, one_at_a_time)
    assert plan == [["seeds"], ["generation", "routing"], ["diversity"], ["sft"]]
    assert keep_after(plan, 1, backends) == ["small"]  # after generation+routing only the small policy is needed
    assert keep_after(plan, 2, backends) == []
