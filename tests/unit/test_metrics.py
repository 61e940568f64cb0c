import math

import numpy as np
import pytest
from vendi_score import vendi as reference

from tasks.metrics import VendiAccumulator, compression_ratio, distinct_n, hashed_ngrams, near_duplicate_rate, vendi


@pytest.mark.parametrize("q", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("shape, seed", [((50, 8), 0), ((200, 32), 1), ((30, 64), 2)])
def test_vendi_equals_the_reference_package(q, shape, seed):
    X = np.random.default_rng(seed).normal(size=shape)
    assert vendi(X, q) == pytest.approx(reference.score_dual(X, q=q), rel=1e-6)


def test_vendi_limits_and_weights():
    assert vendi(np.eye(5), 1.0) == pytest.approx(5.0)
    assert vendi(np.eye(5), 2.0) == pytest.approx(5.0)
    assert vendi(np.tile([[1.0, 2.0, 3.0]], (40, 1)), 1.0) == pytest.approx(1.0)
    # Weights act like repetition: two rows with weights (3, 1) = rows repeated 3 and 1 times.
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    rep = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]])
    assert vendi(X, 1.0, weights=np.array([3.0, 1.0])) == pytest.approx(vendi(rep, 1.0))
    assert vendi(rep, 1.0) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_streaming_batches_give_the_same_value():
    X = np.random.default_rng(3).normal(size=(1000, 16))
    acc = VendiAccumulator(16)
    for k in range(0, 1000, 70):
        acc.add(X[k : k + 70])
    assert acc.score(1.0) == pytest.approx(vendi(X, 1.0), rel=1e-9)


def test_lexical_diversity_moves_the_right_way():
    same = ["He buys 5 more, so 10+5=15."] * 20
    varied = [f"He {v} {i} more, so {i}+{i + 1}={2 * i + 1}." for i, v in zip(range(20), ["buys", "finds", "gets", "makes"] * 5)]
    assert distinct_n(same, 2) < distinct_n(varied, 2)
    assert compression_ratio(same) < compression_ratio(varied)
    assert near_duplicate_rate(same) == 1.0 and near_duplicate_rate(varied) < 0.5
    assert vendi(hashed_ngrams(same), 1.0) == pytest.approx(1.0)
    assert vendi(hashed_ngrams(varied), 1.0) > 3.0
