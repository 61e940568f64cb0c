"""verify_answer: correct / wrong / unknown with a reason; check_gold; as_number."""

from __future__ import annotations

from fractions import Fraction

import pytest

from tasks.answers import Verdict, Verification, as_number, check_gold, is_equivalent, verify_answer

C, W, U = Verdict.correct, Verdict.wrong, Verdict.unknown


@pytest.mark.parametrize(
    "pred, gold, want",
    [
        # normalisation only
        ("$\\frac{3}{4}$", "\\frac{3}{4}", C),
        ("\\dfrac{3}{4}", "\\frac{3}{4}", C),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", C),
        ("30^\\circ", "30", C),
        ("30^{\\circ}", "30", C),
        ("50\\%", "50", C),
        ("5\\text{ cm}", "5", C),
        ("\\text{Monday}", "Monday", C),
        ("\\boxed{12}.", "12", C),
        ("x^2 + 1", "x^2+1", C),
        # numbers, exactly
        ("\\$18.90", "18.9", C),
        ("18 dollars", "\\$18", C),
        ("32,\\!348", "32348", C),
        ("1\\,000", "1000", C),
        ("-\\frac{1}{2}", "-0.5", C),
        ("\\frac12", "1/2", C),
        ("0.333", "\\frac{1}{3}", W),
        ("0.3333333333", "1/3", W),
        ("100000000000000000001", "100000000000000000000", W),
        ("9", "8", W),
        # MATH's mixed numbers (14 of the 5,000 MATH test golds): 6 1/5, not 6 times 1/5
        ("\\frac{31}{5}", "6\\frac15", C),
        ("6.2", "6 \\frac{1}{5}", C),
        ("\\frac{6}{5}", "6\\frac{1}{5}", W),
        ("-\\frac{7}{4}", "-1\\frac{3}{4}", C),
        # tuples, intervals: bracket types matter
        ("(3,4]", "(3,4)", W),
        ("[3,4]", "(3,4)", W),
        ("(-\\infty, 3]", "(-\\infty,3]", C),
        ("(1,2,3)", "(1,2)", W),
        ("(1,2)", "(2,1)", W),
        ("(6, 31, -1)", "(6,31,-1)", C),
        ("(0.5, 2)", "(\\frac{1}{2}, 2)", C),
        # sets and bare lists: order ignored
        ("\\{1,2\\}", "\\{2,1\\}", C),
        ("2, 1", "1,2", C),
        ("1, 3", "1,2", W),
        # matrices, element-wise
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", C),
        ("\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", W),
        ("\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", W),
        # symbolic (worker pool)
        ("\\sqrt{4}", "2", C),
        ("(x+1)^2", "x^2+2x+1", C),
        ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", C),
        ("p - q", "q - p", W),
        ("\\frac \\pi4 + 2", "\\frac{\\pi}{4}+2", C),
        ("\\frac \\pi4 + 3", "\\frac{\\pi}{4}+2", W),
        ("1,\\!000,\\!001", "1,\\!000,\\!000", W),
        # refused before any symbolic work
        ("9^{9^{9^{9}}}+1", "9^{9^{9^{9}}}", U),
        ("2^{100000}+1", "2^{100000}", U),
        ("(100000)!+1", "(100000)!", U),
        ("1" * 2000, "1" * 1999 + "2", U),
        ("x" * 5000, "8", U),
        ("8", "", U),
        # no answer
        (None, "8", W),
        ("   ", "8", W),
    ],
)
def test_verify_answer(pred, gold, want):
    got = verify_answer(pred, gold)
    assert isinstance(got, Verification)
    assert got.verdict is want, got.reason
    assert got.reason
    assert is_equivalent(pred, gold) is (want is C)


def test_string_identical_is_correct_even_when_out_of_bounds():
    for a in ("9^{9^{9^{9}}}", "1" * 5000, "\\sum_{k=1}^{2000} k^{k}", "x" * 20_000):
        assert verify_answer(a, a).verdict is C


def test_verification_is_not_a_bool():
    v = verify_answer("1", "1")
    assert v.correct and v.verdict == "correct"
    with pytest.raises(TypeError):
        bool(v)


def test_verdict_values():
    assert [v.value for v in Verdict] == ["correct", "wrong", "unknown"]


def test_timeout_is_unknown_not_correct():
    v = verify_answer("\\sum_{k=1}^{2000} k^{k}", "7", timeout_s=0.5)
    assert v.verdict is U and "time" in v.reason


@pytest.mark.parametrize(
    "gold, fmt, ok",
    [
        ("18", "gsm8k", True),
        ("1,500", "gsm8k", True),
        ("-3.5", "gsm8k", True),
        ("banana", "gsm8k", False),
        ("", "gsm8k", False),
        ("x+1", "gsm8k", False),
        ("\\frac{3}{4}", "math", True),
        ("(3,4]", "math", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "math", True),
        ("90\\text{ square\nunits}", "math", True),
        ("\\text{(C)}", "math", True),
        ("   ", "math", False),
        ("\\frac{1}{2", "math", False),
        ("\\frac{1}}{2}", "math", False),
        ("\\left( 1, 2", "math", False),
        ("\\begin{pmatrix} 1 \\\\ 2", "math", False),
        ("1\x002", "math", False),
        ("x" * 5000, "math", False),
        (None, "math", False),
        ("$$", "math", False),
    ],
)
def test_check_gold(gold, fmt, ok):
    why = check_gold(gold, fmt)
    assert (why is None) is ok, why


def test_check_gold_rejects_an_unknown_format():
    with pytest.raises(ValueError):
        check_gold("1", "aime")


@pytest.mark.parametrize(
    "s, want",
    [
        ("8", Fraction(8)),
        ("1,234", Fraction(1234)),
        ("\\$32,\\!348", Fraction(32348)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("-7/2", Fraction(-7, 2)),
        ("12.50 dollars", Fraction(25, 2)),
        ("45\\%", Fraction(45)),
        ("5 square feet", Fraction(5)),
        ("2x", None),
        ("\\infty", None),
        ("1/0", None),
        ("1" * 2000, None),
        (None, None),
    ],
)
def test_as_number(s, want):
    assert as_number(s) == want


def test_no_symbolic_work_with_a_zero_limit():
    v = verify_answer("\\sqrt{4}", "2", timeout_s=0)
    assert v.verdict is U and "disabled" in v.reason
    assert verify_answer("2.0", "2", timeout_s=0).verdict is C  # numbers never need the pool


def test_deeply_nested_tuples_are_refused_not_crashed():
    deep = "(" * 1000 + "1,2" + ",3)" * 1000
    v = verify_answer(deep, deep.replace("3", "4"))
    assert v.verdict is U and "nested" in v.reason


def test_too_many_symbolic_elements_are_refused():
    roots = "(" + ",".join(f"\\sqrt{{{i}}}" for i in range(40)) + ")"
    powers = "(" + ",".join(f"{i}^{{1/2}}" for i in range(40)) + ")"
    v = verify_answer(roots, powers)
    assert v.verdict is U and "elements" in v.reason


@pytest.mark.parametrize("tower", ["9^{9^{9^{9}}}", "9^9^9", "2^(3^(4^5))", "2**3**4", "e^{e^{e^{x}}}", "x^{100000}"])
def test_towers_and_huge_exponents_are_refused_before_symbolic_work(tower):
    v = verify_answer(f"{tower}+1", tower)
    assert v.verdict is U and "exponent" in v.reason


@pytest.mark.parametrize("fine", ["(2^3)^4", "2^{-3}", "10^{10}", "x^{2}y^{3}", "e^{i\\pi}"])
def test_ordinary_powers_go_to_the_symbolic_check(fine):
    assert verify_answer(f"{fine}+1", fine).verdict is W
