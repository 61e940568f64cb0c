"""Least-loaded dispatch: a batch goes to the actors with the least work in flight."""

from hypothesis import given
from hypothesis import strategies as st

from infra.pool import least_loaded


def test_a_batch_avoids_the_actor_another_stage_keeps_busy():
    assert least_loaded([40, 0], 10) == [(1, (0, 10))]
    assert least_loaded([0, 0], 4) == [(0, (0, 2)), (1, (2, 4))]
    assert least_loaded([3, 0, 1], 4) == [(1, (0, 3)), (2, (3, 4))]


@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.integers(0, 200))
def test_chunks_cover_the_batch_in_order_and_level_the_load(load, n):
    slots = least_loaded(load, n)
    assert [b for _, (a, b) in slots][-1:] in ([n], []) and (n == 0) == (slots == [])
    start = 0
    for i, (a, b) in slots:
        assert a == start and b > a
        start = b
    assert len({i for i, _ in slots}) == len(slots)
    after = list(load)
    for i, (a, b) in slots:
        after[i] += b - a
    used = [i for i, _ in slots]
    # water-filling: no actor was given work while another ended below its starting load + ... i.e. every used actor
    # ends at most one request above the least-loaded actor's final level
    if used:
        assert max(after[i] for i in used) <= min(after) + 1
