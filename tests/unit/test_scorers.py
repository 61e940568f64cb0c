from fractions import Fraction

import pytest

from tasks.scorers import ArithmeticScorer, evaluate, first_wrong_step, ungrounded_operands


@pytest.mark.parametrize(
    "expr, value",
    [("2+3*4", 14), ("10-4-3", 3), ("48/2", 24), ("7*3-1", 20), ("1/3+1/6", Fraction(1, 2)), ("5/0", None), ("5+", None)],
)
def test_evaluate_respects_precedence_exactly(expr, value):
    assert evaluate(expr) == value


# Hand-made chains with known first wrong steps (None = no wrong step).
CHAINS = [
    (["He buys 5 more, so 10+5=15.", "He sells 3, so 15-3=12.", "#### 12"], None),
    (["He buys 5 more, so 10+5=16.", "He sells 3, so 16-3=13.", "#### 13"], 0),
    (["He buys 5 more, so 10+5=15.", "He sells 3, so 15-3=11.", "#### 11"], 1),
    (["He buys 5 more, so 10+5=15.", "Then he has twice as many, so 15*2=30.", "#### 31"], 2),
    (["Let me think.", "So 2*3+1=7.", "And 7*7=48.", "#### 48"], 2),
    (["Total: 1,200+300=1,500.", "#### 1,500"], None),
]


@pytest.mark.parametrize("steps, want", CHAINS)
def test_first_wrong_step(steps, want):
    assert first_wrong_step(steps) == want


def test_scores_right_wrong_unknown_and_ungrounded():
    s = ArithmeticScorer(ungrounded_score=0.25)
    q = "Tom has 43 apples. Then he has three times as many. He eats 59."
    prefix = ["Then he has three times as many, so 43*3=129."]
    got = s.score(q, prefix, ["He eats 59, so 129-59=70.", "He eats 59, so 129-59=71.", "He eats 59, so 109-59=50.", "Hmm.", "#### 129", "#### 130"])
    assert got == [1.0, 0.0, 0.25, None, 1.0, 0.0]


def test_small_constants_are_grounded():
    assert ungrounded_operands("She gives half away, so 48/2=24.", "She has 48.", []) == []
    assert ungrounded_operands("so 48*37=1776.", "She has 48.", []) == [Fraction(37)]
