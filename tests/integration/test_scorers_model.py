"""Scorers that use the policy, on the real tiny model."""

import pytest

from infra.backends import build_backend
from infra.config import TinyBackend
from tasks.scorers import LogprobScorer, RolloutScorer, ScoreItem

Q = "Tom has 10 apples. He buys 5 more. He sells 3. How many apples does Tom have now?"
PROMPT = f"Question: {Q}\nAnswer:\n"


@pytest.fixture(scope="module")
def policy():
    return build_backend(TinyBackend())


def test_rollout_values_are_monotone_in_the_prefix(policy):
    scorer = RolloutScorer(policy.generate, k=8, temperature=0.8, max_tokens=80, separator="\n\n", seed=0)
    item = ScoreItem(Q, "12", PROMPT, (), ("He buys 5 more, so 10+5=15.", "He buys 5 more, so 10+5=25.", "#### 12", "#### 13", ""))
    right, wrong, final_right, final_wrong, empty = scorer.score_batch([item])[0]
    assert right > wrong  # a prefix that forces the right answer beats one that forces a wrong one
    assert right >= 0.5 and wrong <= 0.25
    assert (final_right, final_wrong, empty) == (1.0, 0.0, None)


def test_logprob_scores_are_probabilities_and_unknown_without_logprobs():
    item = ScoreItem(Q, "12", PROMPT, (), ("a", "b", ""), (-0.1, -2.0, -0.5))
    a, b, empty = LogprobScorer().score_batch([item])[0]
    assert 0 < b < a <= 1 and empty is None
    assert LogprobScorer().score_batch([ScoreItem(Q, "12", PROMPT, (), ("a",), (None,))]) == [[None]]
