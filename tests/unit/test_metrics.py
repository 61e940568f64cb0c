import hashlib
import math

import numpy as np
import pytest
from vendi_score import vendi as reference

from infra.config import RunConfig
from infra.schemas import from_rows
from infra.storage import RunStore
from infra.embed import HashedEmbedder, hashed_ngrams
from tasks.metrics import (DistinctCounter, TextDiversity, VendiAccumulator, compression_ratio, compute_metrics, count_strategies,
                           distinct_n, near_duplicate_rate, vendi)


@pytest.mark.parametrize("q", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("shape, seed", [((50, 8), 0), ((200, 32), 1), ((30, 64), 2)])
def test_vendi_equals_the_reference_package(q, shape, seed):
    X = np.random.default_rng(seed).normal(size=shape)
    assert vendi(X, q) == pytest.approx(reference.score_dual(X, q=q), rel=1e-6)


def test_vendi_limits_and_weights():
    assert vendi(np.eye(5), 1.0) == pytest.approx(5.0)
    assert vendi(np.eye(5), 2.0) == pytest.approx(5.0)
    assert vendi(np.tile([[1.0, 2.0, 3.0]], (40, 1)), 1.0) == pytest.approx(1.0)
    # Weights act like repetition: two rows with weights (3, 1) = rows repeated 3 and 1 times.
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    rep = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]])
    assert vendi(X, 1.0, weights=np.array([3.0, 1.0])) == pytest.approx(vendi(rep, 1.0))
    assert vendi(rep, 1.0) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_streaming_batches_give_the_same_value():
    X = np.random.default_rng(3).normal(size=(1000, 16))
    acc = VendiAccumulator(16)
    for k in range(0, 1000, 70):
        acc.add(X[k : k + 70])
    assert acc.score(1.0) == pytest.approx(vendi(X, 1.0), rel=1e-9)


def test_lexical_diversity_moves_the_right_way():
    same = ["He buys 5 more, so 10+5=15."] * 20
    varied = [f"He {v} {i} more, so {i}+{i + 1}={2 * i + 1}." for i, v in zip(range(20), ["buys", "finds", "gets", "makes"] * 5)]
    assert distinct_n(same, 2) < distinct_n(varied, 2)
    assert compression_ratio(same) < compression_ratio(varied)
    assert near_duplicate_rate(same) == 1.0 and near_duplicate_rate(varied) < 0.5
    assert vendi(hashed_ngrams(same), 1.0) == pytest.approx(1.0)
    assert vendi(hashed_ngrams(varied), 1.0) > 3.0


def test_distinct_counter_switches_to_hyperloglog_within_two_percent():
    exact, approx = DistinctCounter(exact_limit=10**9), DistinctCounter(exact_limit=1000)
    for k in range(0, 50_000, 500):
        # a fixed hash (not hash(), which PYTHONHASHSEED salts per process: the estimate's error changed run to run)
        hashes = [int.from_bytes(hashlib.blake2b(f"g{i}".encode(), digest_size=8).digest(), "little") for i in range(k, k + 500)] * 2
        exact.add(hashes)
        approx.add(hashes)
    assert exact.count() == 50_000 and approx.exact is None
    assert abs(approx.count() - 50_000) / 50_000 < 0.02


def test_streamed_text_diversity_equals_the_one_shot_functions():
    texts = [f"He {v} {i} more, so {i}+{i + 1}={2 * i + 1}." for i, v in zip(range(60), ["buys", "finds", "gets"] * 20)]
    emb = HashedEmbedder()
    acc = TextDiversity(emb.dim)
    for k in range(0, 60, 7):
        acc.add(texts[k : k + 7], emb.encode(texts[k : k + 7]))
    got = acc.result()
    assert got["distinct_2"] == pytest.approx(distinct_n(texts, 2))
    assert got["vendi_q1"] == pytest.approx(vendi(emb.encode(texts), 1.0), rel=1e-5)
    assert got["compression_ratio"] == pytest.approx(compression_ratio(texts), rel=0.05)


def test_strategies_are_clusters_of_similar_rows():
    assert count_strategies(np.eye(4), 0.9) == 4
    assert count_strategies(np.tile([[0.6, 0.8]], (5, 1)), 0.9) == 1
    two = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0]])
    assert count_strategies(two / np.linalg.norm(two, axis=1, keepdims=True), 0.95) == 2


def _chain(i: int, problem: str, stage: str, text: str, correct: bool) -> dict:
    steps = text.split("\n\n")
    return {"run_id": "r", "chain_id": f"c{i}", "problem_id": problem, "stage": stage, "steps": steps,
            "step_scores": [1.0] * len(steps), "n_steps": len(steps), "text": text, "correct": correct,
            "verdict": "correct" if correct else "wrong", "completion_tokens": 10 * len(steps), "temperature": 1.0}


def _store(tmp_path) -> RunStore:
    store = RunStore(tmp_path, "r")
    rng = np.random.default_rng(0)
    rows = []
    for p in range(30):
        for k in range(int(rng.integers(1, 7))):
            a, b = int(rng.integers(1, 50)), int(rng.integers(1, 50))
            text = f"She has {a} and gets {b}, so {a}+{b}={a + b}.\n\n#### {a + b}" if k % 3 else f"Start {p}.\n\n#### {p}"
            rows.append(_chain(len(rows), f"p{p:02d}", ["generation", "diversity"][p % 2], text, bool(k % 3)))
    # Two shards per stage (a shard holds all rows of its problems, as the stages write them);
    # batches of 64 rows split problems across batch boundaries.
    for shard in range(2):
        part = [r for r in rows if int(r["problem_id"][1:]) // 2 % 2 == shard]
        for stage in ("generation", "diversity"):
            store.write("chains", stage, f"0000{shard}", from_rows([r for r in part if r["stage"] == stage], "chains"))
    store.write("problems", "seeds", "00000", from_rows([{"problem_id": f"p{p:02d}", "n_ops": p % 4 + 1} for p in range(30)], "problems"))
    return store


def test_metrics_do_not_depend_on_the_batch_size(tmp_path):
    store = _store(tmp_path)
    chains = store.read_table("chains").to_pylist()
    got = {}
    for rows in (64, 100_000):
        cfg = RunConfig.model_validate({"metrics": {"embedder": "hashed", "batch_rows": rows}})
        got[rows] = {(r["stage"], r["metric"]): r["value"] for r in compute_metrics(store, cfg.metrics, cfg.dedup, HashedEmbedder()).to_pylist()}
    assert got[64].keys() == got[100_000].keys()
    for k, v in got[64].items():
        assert v == pytest.approx(got[100_000][k], rel=1e-6, abs=1e-9), k
    gen = [c for c in chains if c["stage"] == "generation"]
    assert got[64][("generation", "accuracy")] == pytest.approx(sum(c["correct"] for c in gen) / len(gen))
    # wrong chains "Start p" are one text per problem; every correct chain of a problem is its own template
    by_problem = {}
    for c in gen:
        by_problem.setdefault(c["problem_id"], []).append(c)
    ops = [int(p[1:]) % 4 + 1 for p in by_problem]
    assert got[64][("generation", "ops_per_problem")] == pytest.approx(sum(ops) / len(ops))
    dups = sum(1 for cs in by_problem.values() for c in cs if sum(d["text"] == c["text"] for d in cs) > 1)
    assert got[64][("generation", "near_duplicate_rate")] >= dups / len(gen)


def test_the_metrics_stage_commits_like_every_stage_and_its_fingerprint_covers_the_validation_gate(tmp_path):
    """The metrics table goes through ``RunContext.commit``: its suite's results are stored in
    ``validation``, its stage marker records the fingerprint (and the embedder), and the failure
    share its commit gates on is part of its config hash, so changing it recomputes the stage."""
    import json

    from flows import stages as declared

    store = _store(tmp_path)
    cfg = RunConfig.model_validate({"metrics": {"embedder": "hashed"}})
    store.save_config(cfg.model_dump(mode="json"))
    stage = declared.get("metrics")
    assert "validation.max_failure_share" in stage.config_paths
    stage.task.fn(str(store.run_dir), "00000", stage.config_hash(cfg))
    marker = store.stage_marker("metrics", "00000")
    assert marker["tables"] == ["metrics"] and marker["embedder"] == "hashed"
    assert marker["fingerprint"]["config"] == stage.config_hash(cfg)
    part = json.loads(store.marker_path("metrics", "metrics", "00000").read_text())
    assert part["commit"] == "metrics.00000" and part["fingerprint"] == marker["fingerprint"]
    val = store.read_table("validation").to_pylist()
    assert val and {(v["stage"], v["table"]) for v in val} == {("metrics", "metrics")} and all(v["success"] for v in val)
    assert store.read_table("quarantine", "metrics-metrics").num_rows == 0
    assert store.read_table("metrics").num_rows > 0

    stricter = RunConfig.model_validate({**cfg.model_dump(mode="json"), "validation": {"max_failure_share": 0.01}})
    store.save_config(stricter.model_dump(mode="json"))
    assert stage.config_hash(stricter) != stage.config_hash(cfg)
    stage.task.fn(str(store.run_dir), "00000", stage.config_hash(stricter))  # recomputed under the new gate
    again = store.stage_marker("metrics", "00000")
    assert again["fingerprint"]["config"] == stage.config_hash(stricter) and again["written_at"] > marker["written_at"]
