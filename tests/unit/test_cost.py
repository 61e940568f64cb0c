"""Per-stage cost: a shard's ``Cost`` adds what the engines returned; ``run_cost`` sums the
records of the shards committed now, so a recomputed shard replaces its old record."""

from __future__ import annotations

import pyarrow as pa

from infra.backends.base import Completion, GenResult
from infra.cost import Cost, cost_rows, run_cost
from infra.storage import RunStore


def _result(prompt: int, *tokens: int) -> GenResult:
    return GenResult([Completion("x", "stop", t) for t in tokens], prompt)


def test_a_cost_adds_every_sample_and_each_prompt_once():
    cost = Cost()
    cost.add_generation([_result(10, 3, 4, 5), _result(7, 1)], 0.5)
    cost.add_generation([], 0.0)
    cost.add_reward([[0.1, 0.2], [0.3]], 0.25)
    assert cost.record() == {"requests": 4, "completions": 4, "prompt_tokens": 10 + 7 + 3, "completion_tokens": 13,
                             "engine_seconds": 0.75}


def _commit(store: RunStore, stage: str, shard: str, cost: dict | None) -> None:
    store.write("scratch", stage, shard, pa.table({"x": [1]}), commit=f"{stage}.{shard}")
    store.mark_stage_done(stage, shard, {"f": 1}, ["scratch"], **({"cost": cost} if cost else {}))


def test_run_cost_sums_committed_shards_only_and_leaves_out_stages_without_engines(tmp_path):
    store = RunStore(tmp_path, "r")
    one = {"requests": 2, "completions": 10, "prompt_tokens": 40, "completion_tokens": 50, "engine_seconds": 1.5}
    _commit(store, "generation", "0000", one)
    _commit(store, "generation", "0001", {**one, "completion_tokens": 7})
    _commit(store, "routing", "0000", None)  # a CPU stage records no cost
    _commit(store, "diversity", "0000-000", one)
    store.unmark_stage("diversity", "0000-000")  # withdrawn (being recomputed): no longer counts
    got = run_cost(store)
    assert got == {"generation": {"requests": 4, "completions": 20, "prompt_tokens": 80, "completion_tokens": 57,
                                  "engine_seconds": 3.0, "shards": 2}}
    _commit(store, "generation", "0001", {**one, "completion_tokens": 9})  # recomputed: replaces, does not add
    assert run_cost(store)["generation"]["completion_tokens"] == 59
    assert cost_rows(run_cost(store))[0] == {"stage": "generation", "requests": 4, "completions": 20, "prompt_tokens": 80,
                                             "completion_tokens": 59, "engine_seconds": 3.0, "shards": 2}
