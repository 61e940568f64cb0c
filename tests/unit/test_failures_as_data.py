"""Row-level failures become data (error rows, the shard commits the rest); infrastructure
failures are raised; a scorer gets what it declares it needs."""

from __future__ import annotations

import pyarrow as pa
import pytest

from infra.backends.base import BackendUnavailable, Completion, GenResult
from infra.config import GenerationStage, RunConfig, SearchConfig
from infra.query import query as run_query
from infra.schemas import from_rows
from infra.storage import RunStore
from tasks.common import RunContext
from tasks.engine import Engine
from tasks.generation import self_generate
from tasks.scorers import ArithmeticScorer, LogprobScorer
from tasks.search import SearchProblem, pruned_search


def scripted(poison: str | None = None, fail_backend: bool = False, log: list | None = None):
    """A generator that answers every request with two steps toward the answer 8, returns
    log-probs only when a request asks for them (as the openai/vllm backends do), raises
    ValueError on a prompt containing ``poison`` and BackendUnavailable when told to."""

    def generate(requests):
        if fail_backend:
            raise BackendUnavailable("server gone")
        out = []
        for r in requests:
            if log is not None:
                log.append(r)
            if poison and poison in r.prompt:
                raise ValueError(f"cannot parse {poison!r}")
            text = "So 5+3=8." if not r.prefix else "#### 8"
            out.append(GenResult([Completion(text, "stop", 4, -0.4 if r.logprobs else None) for _ in range(r.n)], 10))
        return out

    return generate


def problems(*questions: str) -> pa.Table:
    return from_rows([{"run_id": "r", "problem_id": f"p{i}", "question": q, "gold_answer": "8"} for i, q in enumerate(questions)],
                     "problems")


def engine(generate, scorer=None) -> Engine:
    return Engine(generate, scorer or ArithmeticScorer(), SearchConfig(candidates=2, max_depth=3), 0, 0.5, "scripted", "r", "h")


def test_a_problem_whose_search_raises_becomes_one_error_row_and_the_others_keep_theirs():
    out = self_generate(problems("Tom has 5 and gets 3.", "POISON here", "Ann has 5 and gets 3."), GenerationStage(),
                        engine(scripted("POISON")))["chains"].to_pylist()
    by = {}
    for r in out:
        by.setdefault(r["problem_id"], []).append(r)
    assert [len(by[p]) for p in ("p0", "p1", "p2")] == [2, 1, 2]
    bad = by["p1"][0]
    assert bad["verdict"] == "error" and bad["finish"] == "error" and not bad["correct"] and bad["steps"] == []
    assert bad["error"].startswith("ValueError: cannot parse 'POISON'")
    assert all(r["verdict"] == "correct" for p in ("p0", "p2") for r in by[p])
    # the same problems without the poisoned one give the same rows (isolation changes no result)
    clean = self_generate(problems("Tom has 5 and gets 3.", "x", "Ann has 5 and gets 3."), GenerationStage(), engine(scripted()))
    assert [r["text"] for r in out if r["problem_id"] != "p1"] == [r["text"] for r in clean["chains"].to_pylist() if r["problem_id"] != "p1"]


def test_a_backend_failure_is_not_a_row_failure():
    with pytest.raises(BackendUnavailable):
        self_generate(problems("Tom has 5 and gets 3."), GenerationStage(), engine(scripted(fail_backend=True)))


def test_the_shard_with_an_error_row_commits_and_the_catalog_and_metrics_show_it(tmp_path):
    from infra.embed import HashedEmbedder
    from tasks.metrics import compute_metrics

    store = RunStore(tmp_path, "r")
    store.save_config(RunConfig().model_dump(mode="json"))
    ctx = RunContext.open(str(store.run_dir))
    chains = self_generate(problems("Tom has 5 and gets 3.", "POISON here"), GenerationStage(), engine(scripted("POISON")))
    ctx.commit("generation", "00000", chains, {"config": "h"})
    assert store.is_done("chains", "generation", "00000") and store.read_table("quarantine").num_rows == 0
    got = run_query(tmp_path, "select verdict, count(*) as n, any_value(error) as error from chains group by 1 order by 1").to_pylist()
    assert [(g["verdict"], g["n"]) for g in got] == [("correct", 2), ("error", 1)] and "ValueError" in got[1]["error"]
    m = {(r["stage"], r["metric"]): r["value"] for r in compute_metrics(store, RunConfig().metrics.model_copy(update={"embedder": "hashed"}),
                                                                        RunConfig().dedup, HashedEmbedder()).to_pylist()}
    assert m[("generation", "parse_failure_rate")] == pytest.approx(1 / 3)


@pytest.mark.parametrize("scorer, wants", [(LogprobScorer(), True), (ArithmeticScorer(), False)])
def test_the_search_asks_for_log_probs_exactly_when_the_scorer_needs_them(scorer, wants):
    log: list = []
    p = SearchProblem("p0", "q", "Question: q\n", "8")
    chains = pruned_search([p], scripted(log=log), scorer, SearchConfig(candidates=2, max_depth=3), seed=0, unknown_score=0.5)
    assert log and {r.logprobs for r in log} == {wants}
    if wants:  # the scores come from the returned log-probs, not the unknown score
        import math

        assert all(s == pytest.approx(math.exp(-0.1)) for c in chains for s in c.scores)


def test_a_chosen_chain_with_cancelling_slips_is_quarantined_with_its_wrong_step_named(tmp_path):
    from tasks.rows import pair_row

    store = RunStore(tmp_path, "r")
    store.save_config(RunConfig().model_dump(mode="json"))
    ctx = RunContext.open(str(store.run_dir))
    probs = from_rows([{"run_id": "r", "problem_id": p, "question": "She has 38 and gives 32. Then 12 more, then 1 less.",
                        "gold_answer": "1" if p == "slip" else "17"} for p in ("slip", "clean")], "problems")
    prompt = "Question: She has 38 and gives 32. Then 12 more, then 1 less.\nAnswer:\n"

    def chain(cid, pid, text):
        return {"chain_id": cid, "problem_id": pid, "text": text, "step_scores": [1.0], "prompt": prompt}

    slip = "She gives 32, so 38-32=16.\n\nThen 12 more, so 16-12=4... no: 12-1=1.\n\n#### 1"  # 38-32=16 is wrong; the answer is right
    pairs = from_rows([
        pair_row("r", "generation", "generation_pair", chain("a", "slip", slip), chain("b", "slip", "#### 7")),
        pair_row("r", "generation", "generation_pair", chain("c", "clean", "38-32=6.\n\n6+12=18.\n\n18-1=17.\n\n#### 17"),
                 chain("d", "clean", "#### 9")),
    ], "pairs")
    ctx.commit("routing", "00000", {"pairs": pairs}, {"config": "h"}, problems=probs)
    kept = store.read_table("pairs").to_pylist()
    assert [p["chosen_chain_id"] for p in kept] == ["c"]
    q = store.read_table("quarantine").to_pylist()
    assert [(x["check"], x["source"]) for x in q] == [("process_verification", "slip")]
    assert "step 1" in q[0]["reason"] and "38-32=16" in q[0]["reason"]
    # the gate is not tripped by it (a content filter, like deduplication), and nothing else was quarantined
    assert all(v["success"] for v in store.read_table("validation").to_pylist())
