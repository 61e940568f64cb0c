"""The pruned search's selection rules, driven by a scripted generator.

The generator here is a test double of the TextGenerator Protocol that returns fixed
candidates per prefix, so each assertion pins one rule of the search.
"""

from infra.backends.base import Completion, GenResult
from infra.config import SearchConfig
from tasks.scorers import ArithmeticScorer
from tasks.search import SearchProblem, pruned_search

Q = "Tom has 10 apples. He buys 5 more. He sells 3. How many apples does Tom have now?"


def scripted(table: dict[str, list[str]], calls: list):
    def generate(requests):
        calls.append(requests)
        out = []
        for r in requests:
            texts = table[r.prefix]
            out.append(GenResult([Completion(t, "stop", len(t.split())) for t in texts[: r.n]], 7))
        return out

    return generate


def run(table, cfg=None, calls=None):
    calls = [] if calls is None else calls
    cfg = cfg or SearchConfig(candidates=4, max_depth=5)
    p = SearchProblem("p1", Q, "Question: ...")
    return pruned_search([p], scripted(table, calls), ArithmeticScorer(), cfg, seed=0, unknown_score=0.5), calls


S1_OK, S1_BAD = "He buys 5 more, so 10+5=15.", "He buys 5 more, so 10+5=16."
S2_OK, S2_BAD = "He sells 3, so 15-3=12.", "He sells 3, so 16-3=12."


def test_max_keeps_best_min_keeps_worst_plausible():
    table = {
        "": [S1_OK, "", "Let me see.", S1_BAD],
        f"{S1_OK}\n\n": [S2_OK, S2_OK, "He sells 3, so 15-3=11.", "#### 12"],
        f"{S1_BAD}\n\n": ["He sells 3, so 16-3=13."] * 4,
        f"{S1_OK}\n\n{S2_OK}\n\n": ["#### 12"] * 4,
        f"{S1_BAD}\n\nHe sells 3, so 16-3=13.\n\n": ["#### 13"] * 4,
    }
    (mx, mn), calls = run(table)
    assert mx.steps == [S1_OK, S2_OK, "#### 12"] and mx.finish == "answer"
    # MIN skips the empty and the unjudgeable candidate and takes the arithmetic slip.
    assert mn.steps == [S1_BAD, "He sells 3, so 16-3=13.", "#### 13"]
    assert mx.scores == [1.0, 1.0, 1.0] and mn.scores == [0.0, 1.0, 1.0]
    # Depth 0 is shared: one request serves both chains.
    assert len(calls[0]) == 1 and len(calls[1]) == 2


def test_min_differs_from_max_on_shared_prefix_when_it_can():
    table = {"": [S1_OK, S1_OK, S1_OK.replace("10+5", "5+10")], f"{S1_OK}\n\n": ["#### 15"] * 3,
             f"{S1_OK.replace('10+5', '5+10')}\n\n": ["#### 15"] * 3}
    (mx, mn), _ = run(table, SearchConfig(candidates=3, max_depth=3))
    assert mx.steps[0] == S1_OK and mn.steps[0] != S1_OK


def test_stops_at_max_depth_and_when_no_candidate_is_usable():
    loop = {"": ["Hmm."], "Hmm.\n\n": ["Hmm again."], "Hmm.\n\nHmm again.\n\n": ["More."]}
    (mx, _), _ = run(loop, SearchConfig(candidates=2, max_depth=3))
    assert mx.finish == "max_depth" and len(mx.steps) == 3
    (mx, mn), _ = run({"": ["", "  "]}, SearchConfig(candidates=2, max_depth=3))
    assert mx.finish == mn.finish == "no_candidates" and mx.steps == []


def test_delta_reward_is_gain_over_previous_step():
    table = {"": [S1_OK, S1_BAD], f"{S1_OK}\n\n": ["#### 15", "#### 99"], f"{S1_BAD}\n\n": ["#### 16", "#### 99"]}
    (mx, mn), _ = run(table, SearchConfig(candidates=2, max_depth=3, reward_mode="delta"))
    assert mx.rewards == [1.0, 0.0]  # 1.0 - 0.0, then 1.0 - 1.0
    assert mn.steps[-1] == "#### 99" and mn.rewards == [0.0, 0.0]  # the slip, then the worst answer (0.0 - 0.0)


def test_request_seeds_depend_on_prefix_not_on_batch():
    table = {"": [S1_OK, S1_BAD], f"{S1_OK}\n\n": ["#### 15"] * 2, f"{S1_BAD}\n\n": ["#### 16"] * 2}
    _, calls_a = run(table, SearchConfig(candidates=2, max_depth=3))
    _, calls_b = run(table, SearchConfig(candidates=2, max_depth=3))
    assert [r.seed for c in calls_a for r in c] == [r.seed for c in calls_b for r in c]
    assert len({r.seed for c in calls_a for r in c}) == 3
