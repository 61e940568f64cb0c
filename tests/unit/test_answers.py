import pytest

from tasks.answers import extract_answer, is_equivalent


@pytest.mark.parametrize(
    "text, want",
    [
        ("He buys 3, so 5+3=8.\n\n#### 8", "8"),
        ("so the total is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),
        ("#### 1,234.", "1,234"),
        ("The answer is 42.", "42"),
        ("He buys 3, so 5+3=8.", None),
        ("", None),
    ],
)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


@pytest.mark.parametrize(
    "pred, gold, want",
    [
        ("8", "8", True),
        ("8.0", "8", True),
        ("1,234", "1234", True),
        ("1/2", "0.5", True),
        ("\\frac{1}{2}", "0.5", True),
        ("9", "8", False),
        (None, "8", False),
        ("", "8", False),
        ("x" * 5000, "8", False),
    ],
)
def test_is_equivalent(pred, gold, want):
    assert is_equivalent(pred, gold) is want


# Issue 10, bug 1: string-identical answers were judged wrong (plain text without `$` or
# `\`, escaped dollar amounts). 14 of 500 MATH-500 golds were not equal to themselves.
@pytest.mark.parametrize(
    "answer",
    [
        "(6,31,-1)",
        "(3,4]",
        "p - q",
        "x^3+3x-6",
        "(a+5)(b+2)",
        "\\$18.90",
        "\\$32,\\!348",
        "[-2,7]",
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        "\\text{(C)}",
    ],
)
def test_string_identical_answers_are_equivalent(answer):
    assert is_equivalent(answer, answer)
    assert is_equivalent(answer, f"\\boxed{{{answer}}}")


# Issue 10, bug 2: a false positive on huge values.
def test_huge_tower_plus_one_is_not_equivalent():
    assert not is_equivalent("9^{9^{9^{9}}}", "9^{9^{9^{9}}}+1")
    assert not is_equivalent("9^{9^{9^{9}}}+1", "9^{9^{9^{9}}}")
