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
