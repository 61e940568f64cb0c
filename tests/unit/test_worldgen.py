from fractions import Fraction

from tasks.scorers import equations, first_wrong_step
from infra.tiny.worldgen import Difficulty, generate


def test_same_seed_same_problems_and_different_seed_differs():
    a, b, c = generate(50, 7), generate(50, 7), generate(50, 8)
    assert a == b
    assert a != c


def test_reference_solutions_are_arithmetically_right_and_end_in_gold():
    for p in generate(300, 3, Difficulty(min_steps=1, max_steps=6)):
        steps = p.solution.split("\n\n")
        assert steps[-1] == f"#### {p.answer}"
        assert first_wrong_step(steps) is None
        assert equations(steps[-2])[-1][1] == Fraction(p.answer)


def test_difficulty_knob_bounds_steps_and_values():
    d = Difficulty(min_steps=5, max_steps=5, max_value=200, allow_mul=False)
    for p in generate(100, 1, d):
        assert p.n_ops == 5 and len(p.steps) == 5
        assert 0 <= p.answer <= 200
        assert "*" not in p.solution and "/" not in p.solution
