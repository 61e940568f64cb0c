"""The evaluate stage and its held-out input: the shard's fingerprint covers the held-out
file's content, so a file changed under the same path is evaluated again."""

from __future__ import annotations

from pathlib import Path

from flows import stages as declared
from flows.pipeline import prepare_run
from infra.config import RunConfig
from infra.storage import RunStore
from tests.conftest import DATA, ROOT


def _held_out(path: Path, n: int) -> None:
    """The first ``n`` rows of the vendored GSM8K test sample."""
    path.write_text("\n".join((DATA / "gsm8k_test_sample.jsonl").read_text().splitlines()[:n]) + "\n")


def _evaluate(run_dir: str) -> int:
    """Run the seeds and evaluate stages' shard tasks; the greedy n the evaluation reports."""
    cfg = RunConfig.model_validate(RunStore.at(run_dir).load_config())
    for name in ("seeds", "evaluate"):
        st = declared.get(name)
        st.task.fn(run_dir, "00000", st.config_hash(cfg))
    (greedy,) = [e for e in RunStore.at(run_dir).read_table("evals").to_pylist() if e["metric"] == "greedy"]
    return greedy["n"]


def test_a_held_out_file_changed_under_the_same_path_is_evaluated_again(ray_local, tmp_path):
    held = tmp_path / "held.jsonl"
    _held_out(held, 3)
    sets = {"seeds.n": 4, "pool.actors": 1, "evaluate.enabled": True, "evaluate.max_tokens": 16,
            "evaluate.problems": {"kind": "file", "paths": [str(held)]}}
    run_dir = prepare_run(str(ROOT / "configs" / "quickstart.yaml"), "r", str(tmp_path / "data"), sets)
    assert _evaluate(run_dir) == 3
    _held_out(held, 5)  # same path, same config: only the content changed
    assert _evaluate(run_dir) == 5


def test_the_evaluate_stage_records_what_its_engine_calls_cost(ray_local, tmp_path):
    from infra.cost import run_cost

    held = tmp_path / "held.jsonl"
    _held_out(held, 3)
    sets = {"seeds.n": 4, "pool.actors": 1, "evaluate.enabled": True, "evaluate.max_tokens": 16, "evaluate.k": 2,
            "evaluate.problems": {"kind": "file", "paths": [str(held)]}}
    run_dir = prepare_run(str(ROOT / "configs" / "quickstart.yaml"), "r", str(tmp_path / "data"), sets)
    assert _evaluate(run_dir) == 3
    cost = run_cost(RunStore.at(run_dir))
    assert list(cost) == ["evaluate"]  # the seeds stage calls no engine
    c = cost["evaluate"]
    # round 0 evaluates the policy alone: per problem one greedy request (1 sample) and one with k=2 samples
    assert (c["requests"], c["completions"], c["shards"]) == (3 * 2, 3 * 3, 1)
    assert 0 < c["completion_tokens"] <= 16 * c["completions"] and c["prompt_tokens"] > 0 and c["engine_seconds"] > 0


def test_the_overlap_with_the_training_problems_is_a_column_of_every_evals_row(ray_local, tmp_path):
    """Held-out problems that are also training problems are dropped and counted on every
    ``evals`` row (``overlap_removed``); no row poses as a metric for the count."""
    seeds, held = tmp_path / "seeds.jsonl", tmp_path / "held.jsonl"
    rows = (DATA / "gsm8k_test_sample.jsonl").read_text().splitlines()
    seeds.write_text("\n".join(rows[:4]) + "\n")
    held.write_text("\n".join(rows[2:7]) + "\n")  # rows 2 and 3 are training problems
    sets = {"seeds": {"kind": "file", "paths": [str(seeds)]}, "pool.actors": 1, "evaluate.enabled": True,
            "evaluate.max_tokens": 16, "evaluate.k": 2, "evaluate.problems": {"kind": "file", "paths": [str(held)]}}
    run_dir = prepare_run(str(ROOT / "configs" / "quickstart.yaml"), "r", str(tmp_path / "data"), sets)
    assert _evaluate(run_dir) == 3
    evals = RunStore.at(run_dir).read_table("evals")
    assert sorted(evals.column("metric").to_pylist()) == ["greedy", "maj@2", "pass@2"]
    assert evals.column("overlap_removed").to_pylist() == [2, 2, 2] and evals.schema.field("overlap_removed").type == "int64"
