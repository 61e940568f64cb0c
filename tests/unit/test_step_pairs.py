"""Step-level pairs (tasks/step_pairs.py): one step judged right vs one judged wrong after the
same prompt and prefix, from the search's MAX/MIN chains and from self-correction."""

import pyarrow as pa
import pytest

from infra.schemas import CHAINS
from tasks.step_pairs import NEEDED, step_pairs

SEP = "\n"


def chain(cid, stage, branch, steps, scores, *, pid="p1", correct=False, parent=None, prompt="Q: ?\nA:\n"):
    return {"chain_id": cid, "problem_id": pid, "stage": stage, "branch": branch, "prompt": prompt, "steps": steps,
            "step_scores": scores, "correct": correct, "parent_chain_id": parent}


def pairs(*rows, right_at=0.75, wrong_at=0.25):
    table = pa.Table.from_pylist(list(rows), schema=pa.schema([CHAINS.field(n) for n in NEEDED]))
    return step_pairs(table, right_at=right_at, wrong_at=wrong_at, separator=SEP, run_id="r").to_pylist()


def test_max_and_min_diverging_at_a_right_and_a_wrong_step_make_one_pair_at_that_prefix():
    got = pairs(chain("mx", "generation", "max", ["2+3=5.", "5*4=20.", "#### 20"], [1.0, 1.0, 1.0], correct=True),
                chain("mn", "generation", "min", ["2+3=5.", "5*4=21.", "#### 21"], [1.0, 0.0, 0.0]))
    assert len(got) == 1
    p = got[0]
    assert (p["source"], p["stage"], p["depth"]) == ("search", "generation", 1)
    assert p["prompt"] == "Q: ?\nA:\n" + "2+3=5." + SEP  # the text the policy continued from
    assert (p["chosen"], p["rejected"]) == ("5*4=20.", "5*4=21.")
    assert (p["chosen_score"], p["rejected_score"], p["chosen_chain_id"], p["rejected_chain_id"]) == (1.0, 0.0, "mx", "mn")


@pytest.mark.parametrize("max_score, min_score", [(0.5, 0.0), (1.0, 0.5)])
def test_a_step_the_scorer_does_not_judge_makes_no_pair(max_score, min_score):
    assert pairs(chain("mx", "generation", "max", ["a=1.", "b"], [max_score, 1.0]),
                 chain("mn", "generation", "min", ["a=2.", "b"], [min_score, 1.0])) == []


def test_identical_chains_or_different_prompts_make_no_pair():
    same = ["1+1=2.", "#### 2"]
    assert pairs(chain("mx", "generation", "max", same, [1.0, 1.0]), chain("mn", "generation", "min", same, [1.0, 1.0])) == []
    assert pairs(chain("mx", "diversity", "max", ["1+1=2."], [1.0]),
                 chain("mn", "diversity", "min", ["1+1=3."], [0.0], prompt="other")) == []


def test_a_correction_that_reaches_gold_pairs_its_step_with_the_parents_first_wrong_step_under_the_solve_prompt():
    parent = chain("g", "generation", "max", ["2+3=5.", "5*4=21.", "#### 21"], [1.0, 0.0, 0.0], prompt="SOLVE\n")
    fixed = chain("c", "self_correction", "max", ["2+3=5.", "5*4=20.", "#### 20"], [1.0, 1.0, 1.0], correct=True,
                  parent="g", prompt="REVIEW\n")
    still_wrong = chain("c2", "self_correction", "min", ["2+3=5.", "5*4=22.", "#### 22"], [1.0, 0.0, 0.0], parent="g",
                        prompt="REVIEW\n")
    got = [p for p in pairs(parent, fixed, still_wrong) if p["source"] == "correction"]
    assert len(got) == 1
    p = got[0]
    assert p["prompt"] == "SOLVE\n2+3=5." + SEP and p["stage"] == "self_correction" and p["depth"] == 1
    assert (p["chosen"], p["rejected"], p["chosen_chain_id"], p["rejected_chain_id"]) == ("5*4=20.", "5*4=21.", "c", "g")


def test_thresholds_come_from_the_config_and_must_stay_apart():
    from infra.config import ConfigError, RunConfig, apply_overrides  # noqa: F401

    rows = (chain("mx", "generation", "max", ["a=1."], [0.6]), chain("mn", "generation", "min", ["a=2."], [0.3]))
    assert pairs(*rows) == [] and len(pairs(*rows, right_at=0.6, wrong_at=0.3)) == 1
    with pytest.raises(Exception, match="wrong_at .* must be below"):
        RunConfig.model_validate(apply_overrides({}, {"step_pairs.right_at": 0.2, "step_pairs.wrong_at": 0.3}))


def test_train_pair_level_picks_chain_step_or_both_with_step_margins():
    from infra.schemas import PAIRS, STEP_PAIRS
    from tasks.train import training_pairs

    chain_pairs = pa.Table.from_pylist([{"prompt": "P", "chosen": "whole right", "rejected": "whole wrong", "problem_id": "p1",
                                         "stage": "generation", "margin": 0.4, "pair_id": "a"}], schema=PAIRS)
    steps = pa.Table.from_pylist([{"prompt": "P\n2+3=5.\n", "chosen": "5*4=20.", "rejected": "5*4=21.", "problem_id": "p1",
                                   "stage": "generation", "chosen_score": 1.0, "rejected_score": 0.0, "pair_id": "b",
                                   "source": "search", "depth": 1}], schema=STEP_PAIRS)
    chain = training_pairs(chain_pairs, steps, "chain", SEP).to_pylist()
    assert [(r["chosen"], r["continues"]) for r in chain] == [("whole right", False)]
    step = training_pairs(chain_pairs, steps, "step", SEP).to_pylist()
    assert step == [{"prompt": "P\n2+3=5.\n", "chosen": "5*4=20." + SEP, "rejected": "5*4=21." + SEP, "problem_id": "p1",
                     "stage": "generation", "margin": 1.0, "continues": True}]  # the policy goes on after the step
    assert training_pairs(chain_pairs, steps, "both", SEP).column("continues").to_pylist() == [False, True]


def test_a_step_is_trained_without_an_end_of_sequence_token_and_trl_refuses_step_pairs(tmp_path):
    """Trained with <eos> after the step, RPO taught tiny-small to stop after one step: a 1-round
    evolve with train.pair_level=step broke 1,187 of 2,000 held-out problems its parent solved."""
    from infra.backends.tiny import NAMED
    from infra.config import TrainConfig
    from infra.tiny.hf import load_pretrained
    from infra.trainers import TrainError, TrainJob
    from infra.trainers.base import prepare
    from infra.trainers.tiny import EOS, encode
    from infra.trainers.trl import train_here

    rows = [{"prompt": "P", "chosen": "a=1.\n", "rejected": "a=2.\n", "problem_id": f"p{i}", "continues": True} for i in range(4)]
    data = prepare(TrainJob(policy_dir=tmp_path, reference_dir=tmp_path, pairs=rows, cfg=TrainConfig(val_share=0.0),
                            out_dir=tmp_path / "o"))
    assert data.train_pairs and all(p["continues"] for p in data.train_pairs)
    tok = load_pretrained(NAMED["small"])[1]
    ids, mask = encode(tok, "P", "a=1.\n", 64, eos=False)
    assert ids[-1] != EOS and mask[-1] and encode(tok, "P", "a=1.\n", 64)[0][-1] == EOS
    with pytest.raises(TrainError, match="end-of-sequence token.*train.kind tiny"):
        train_here(TrainJob(policy_dir=tmp_path, reference_dir=tmp_path, pairs=rows, cfg=TrainConfig(kind="trl", val_share=0.0),
                            out_dir=tmp_path / "t"))


# --- pairs from every scored candidate of the search (step_pairs.candidates) ---------------------

def traced(cid, branch, steps, nodes, *, stage="generation", pid="p1", prompt="Q: ?\nA:\n"):
    """A chain row with its search trace: ``nodes[d]`` = [(candidate, score), ...] at step d's node."""
    row = chain(cid, stage, branch, steps, [dict(n)[s] for s, n in zip(steps, nodes)], pid=pid, prompt=prompt)
    return {**row, "step_candidates": [[t for t, _ in n] for n in nodes], "candidate_scores": [[v for _, v in n] for n in nodes]}


def node_pairs_of(*rows, most=64):
    cols = NEEDED + ["step_candidates", "candidate_scores"]
    table = pa.Table.from_pylist(list(rows), schema=pa.schema([CHAINS.field(n) for n in cols]))
    got = step_pairs(table, right_at=0.75, wrong_at=0.25, separator=SEP, run_id="r", candidates=True, max_per_node=most)
    return got.to_pylist()


def test_every_right_candidate_pairs_with_every_wrong_one_at_its_node_and_never_across_prefixes():
    # depth 0: one node shared by MAX and MIN (3 right-ish/wrong candidates); depth 1: MAX's and MIN's own nodes
    root = [("a=5.", 1.0), ("a=6.", 0.0), ("a=7.", 0.1), ("a=?", 0.5)]
    mx_node = [("b=10.", 0.9), ("b=11.", 0.2)]
    mn_node = [("b=12.", 1.0), ("b=13.", 0.0), ("b=14.", 0.0)]
    mx = traced("mx", "max", ["a=5.", "b=10."], [root, mx_node])
    mn = traced("mn", "min", ["a=6.", "b=13."], [root, mn_node])
    got = node_pairs_of(mx, mn)  # the divergence pair (a=5. vs a=6.) comes as a search pair, the rest as candidates pairs
    by_prompt = {}
    for p in got:
        by_prompt.setdefault(p["prompt"], set()).add((p["chosen"], p["rejected"]))
    p0 = "Q: ?\nA:\n"
    assert by_prompt == {
        p0: {("a=5.", "a=6."), ("a=5.", "a=7.")},  # the shared node once; 'a=?' (0.5) is neither right nor wrong
        p0 + "a=5." + SEP: {("b=10.", "b=11.")},  # MAX's prefix
        p0 + "a=6." + SEP: {("b=12.", "b=13."), ("b=12.", "b=14.")},  # MIN's prefix: its own candidates only
    }
    assert all(p["chosen_score"] >= 0.75 and p["rejected_score"] <= 0.25 for p in got)
    assert {p["depth"] for p in got if p["prompt"] == p0} == {0}
    # the MAX/MIN divergence pair is kept once, as a search pair, not again as a candidates pair
    search = [p for p in node_pairs_of(mx, mn) if p["source"] == "search"]
    assert [(p["chosen"], p["rejected"]) for p in search] == [("a=5.", "a=6.")]
    assert len(node_pairs_of(mx, mn)) == 5


def test_max_per_node_keeps_the_widest_score_gaps_first():
    node = [("x=1.", 0.8), ("x=2.", 1.0), ("x=3.", 0.2), ("x=4.", 0.0)]
    got = node_pairs_of(traced("mx", "max", ["x=2."], [node]), most=2)
    assert [(p["chosen"], p["rejected"]) for p in got] == [("x=2.", "x=4."), ("x=1.", "x=4.")]


def test_a_trace_that_does_not_line_up_with_the_steps_makes_no_candidate_pair():
    row = traced("mx", "max", ["a=5."], [[("a=5.", 1.0), ("a=6.", 0.0)]])
    row = {**row, "steps": ["a=5.", "b"], "step_scores": [1.0, 1.0]}  # an errored search: steps without nodes
    assert node_pairs_of(row) == []


def test_the_search_records_every_scored_candidate_of_each_pick():
    from infra.backends.base import GenResult
    from infra.config import SearchConfig
    from tasks.search import SearchProblem, pruned_search
    from tasks.scorers import ScoreItem

    class Gen:
        def __call__(self, requests):
            out = []
            for r in requests:
                depth = r.prefix.count(SEP)
                texts = [f"s{depth}={i}." if depth < 1 else f"#### {i}" for i in range(r.n)]
                out.append(GenResult(completions=[_completion(t) for t in texts], prompt_tokens=3))
            return out

    class Scorer:
        name, needs_logprobs = "fixed", False

        def score_batch(self, items: list[ScoreItem]):
            return [[1.0 - i / 4 for i in range(len(it.candidates))] for it in items]

    cfg = SearchConfig(candidates=3, max_depth=4, step_separator=SEP)
    chains = pruned_search([SearchProblem("p", "q", "P:", "0")], Gen(), Scorer(), cfg, seed=0, unknown_score=0.5)
    mx = next(c for c in chains if c.branch == "max")
    assert len(mx.candidates) == len(mx.steps) == 2
    assert mx.candidates[0] == ["s0=0.", "s0=1.", "s0=2."] and mx.candidate_scores[0] == [1.0, 0.75, 0.5]
    assert mx.steps[0] in mx.candidates[0] and mx.steps[1] in mx.candidates[1]


def _completion(text):
    from infra.backends.base import Completion

    return Completion(text=text, completion_tokens=2, finish_reason="stop")


def test_verified_chosen_steps_come_only_from_chains_that_reached_gold_and_are_the_steps_they_took():
    """step_pairs.chosen = verified (the default): the arithmetic scorer also passes a step that
    computes right from a wrong number, so a right-judged candidate the chain did not take, or
    one on a chain that ended wrong, is not a chosen step."""
    node = [("a=5.", 1.0), ("a=9.", 1.0), ("a=6.", 0.0)]
    right = {**traced("mx", "max", ["a=5."], [node]), "correct": True}
    wrong = {**traced("mn", "min", ["a=9."], [node], pid="p2", prompt="Q2: ?\nA:\n"), "correct": False}
    cols = NEEDED + ["step_candidates", "candidate_scores"]
    table = pa.Table.from_pylist([right, wrong], schema=pa.schema([CHAINS.field(n) for n in cols]))

    def got(verified):
        rows = step_pairs(table, right_at=0.75, wrong_at=0.25, separator=SEP, run_id="r", candidates=True, verified=verified)
        return sorted((p["problem_id"], p["chosen"], p["rejected"]) for p in rows.to_pylist())

    assert got(True) == [("p1", "a=5.", "a=6.")]
    assert got(False) == [("p1", "a=5.", "a=6."), ("p1", "a=9.", "a=6."), ("p2", "a=5.", "a=6."), ("p2", "a=9.", "a=6.")]
    # a MAX/MIN divergence pair needs MAX to have reached gold, too
    mx = chain("mx", "generation", "max", ["a=5.", "#### 5"], [1.0, 1.0])
    mn = chain("mn", "generation", "min", ["a=6.", "#### 6"], [0.0, 0.0])
    search = pa.Table.from_pylist([mx, mn], schema=pa.schema([CHAINS.field(n) for n in NEEDED]))
    assert step_pairs(search, right_at=0.75, wrong_at=0.25, separator=SEP, run_id="r", verified=True).num_rows == 0
    assert step_pairs(search, right_at=0.75, wrong_at=0.25, separator=SEP, run_id="r", verified=False).num_rows == 1
