"""Property tests of the verifier (hypothesis)."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.answers import Verdict, as_number, check_gold, extract_answer, is_equivalent, last_boxed, verify_answer

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ints = st.integers(min_value=-(10**12), max_value=10**12)
small = st.integers(min_value=-50, max_value=50)


def thousands(n: int) -> str:
    return f"{n:,}"


def decimal(f: Fraction) -> str | None:
    """``f`` as a terminating decimal, when it has one."""
    d = f.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return None
    s = 0
    while (f * 10**s).denominator != 1:
        s += 1
    q = abs(f.numerator) * 10**s // f.denominator
    body = str(q).rjust(s + 1, "0")
    return ("-" if f < 0 else "") + (body[:-s] + "." + body[-s:] if s else body)


numbers = st.one_of(
    ints.map(str),
    ints.map(thousands),
    st.builds(lambda a, b: f"{a}/{b}", ints, st.integers(1, 10**6)),
    st.builds(lambda a, b: f"\\frac{{{a}}}{{{b}}}", ints, st.integers(1, 10**6)),
    st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**6), max_value=10**6).map(str),
)
atoms = st.one_of(small.map(str), st.sampled_from(["x", "y", "a", "b", "\\pi", "\\sqrt{2}", "\\frac{1}{2}"]))


@st.composite
def expressions(draw, depth=0):
    if depth > 2 or draw(st.booleans()):
        return draw(atoms)
    a, b = draw(expressions(depth=depth + 1)), draw(expressions(depth=depth + 1))
    op = draw(st.sampled_from(["+", "-", "\\cdot", "^"]))
    return f"({a}){op}{{{b}}}" if op == "^" else f"{a} {op} {b}"


tuples = st.lists(numbers, min_size=2, max_size=5).map(lambda xs: "(" + ", ".join(xs) + ")")
intervals = st.builds(
    lambda lo, hi, l, r: f"{l}{lo}, {hi}{r}", small, small, st.sampled_from("(["), st.sampled_from(")]")
)
answers = st.one_of(numbers, tuples, intervals, expressions())


@FAST
@given(answers)
def test_every_well_formed_answer_equals_itself(a):
    assert is_equivalent(a, a)
    assert is_equivalent(f"\\boxed{{{a}}}", a)
    assert is_equivalent(f"${a}$", a)


@FAST
@given(numbers, numbers)
def test_number_checks_are_symmetric_and_exact(a, b):
    va, vb = verify_answer(a, b), verify_answer(b, a)
    assert va.verdict is vb.verdict
    assert va.verdict is not Verdict.unknown
    assert (va.verdict is Verdict.correct) == (as_number(a) == as_number(b))


@FAST
@given(st.fractions(max_denominator=10**6).filter(lambda f: abs(f) < 10**9))
def test_representations_of_one_rational_are_equivalent(f):
    forms = [f"{f.numerator}/{f.denominator}", f"\\frac{{{f.numerator}}}{{{f.denominator}}}"]
    if f.denominator == 1:
        forms += [str(f.numerator), f"{f.numerator}.0", thousands(f.numerator)]
    if decimal(f):
        forms.append(decimal(f))
    for a in forms:
        assert as_number(a) == f, a
        for b in forms:
            assert is_equivalent(a, b), (a, b)
    assert not is_equivalent(forms[0], str(f + Fraction(1, 10**7)))


@FAST
@given(ints, ints)
def test_different_integers_are_wrong(a, b):
    if a != b:
        assert verify_answer(str(a), thousands(b)).verdict is Verdict.wrong


text = st.text(max_size=300) | st.text(alphabet="\\{}()[]^_$#!,.0123456789 xabcfrtsqboxedleft", max_size=300)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text, text)
def test_no_exception_escapes_on_arbitrary_text(a, b):
    extract_answer(a)
    last_boxed(a)
    as_number(a)
    check_gold(a, "math")
    check_gold(a, "gsm8k")
    v = verify_answer(a, b, timeout_s=2)
    assert v.verdict in set(Verdict) and v.reason
    assert is_equivalent(a, b) in (True, False)


def _tuple(xs) -> str:
    return "(" + ", ".join(map(str, xs)) + ")"


@FAST
@given(st.lists(ints, min_size=2, max_size=5), st.data())
def test_a_tuple_with_one_element_changed_is_wrong(xs, data):
    i = data.draw(st.integers(0, len(xs) - 1))
    ys = list(xs)
    ys[i] += data.draw(st.integers(1, 10**6))
    assert verify_answer(_tuple(ys), _tuple(xs)).verdict is Verdict.wrong
    assert verify_answer(_tuple(xs[::-1]), _tuple(xs)).verdict is (Verdict.correct if xs == xs[::-1] else Verdict.wrong)


@FAST
@given(small, small, st.sampled_from("(["), st.sampled_from(")]"), st.sampled_from("(["), st.sampled_from(")]"))
def test_interval_brackets_matter(lo, hi, l1, r1, l2, r2):
    same = (l1, r1) == (l2, r2)
    v = verify_answer(f"{l1}{lo}, {hi}{r1}", f"{l2}{lo},{hi}{r2}")
    assert v.verdict is (Verdict.correct if same else Verdict.wrong)


@FAST
@given(st.lists(ints, min_size=1, max_size=6, unique=True), st.randoms(use_true_random=False))
def test_set_order_does_not_matter(xs, rnd):
    ys = list(xs)
    rnd.shuffle(ys)
    assert is_equivalent("\\{" + ",".join(map(str, ys)) + "\\}", "\\{" + ", ".join(map(str, xs)) + "\\}")
    assert not is_equivalent("\\{" + ",".join(map(str, ys + [max(xs) + 1])) + "\\}", "\\{" + ",".join(map(str, xs)) + "\\}")
