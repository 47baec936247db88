"""Learning dynamics across checkpoints: the plain functions against known answers and direct formulas, and the
archive pages that compare its snapshots."""

from __future__ import annotations

import numpy as np
import pytest

from reportgen.methods.dynamics import (centered_gram, forgetting, linear_cka, rank_correlation,
                                        spectrum_summary)


def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA written out as in the paper: HSIC(K, L) = tr(K H L H) / (n - 1)^2 with K = X X^T, L = Y Y^T and the
    centering matrix H, normalised by sqrt(HSIC(K, K) HSIC(L, L))."""
    x, y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(k, l):
        return np.trace(k @ h @ l @ h) / (n - 1) ** 2

    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 12)), rng.normal(size=(40, 3, 2, 5))


def test_cka_of_a_matrix_with_itself_and_its_invariances(features):
    x, _ = features
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))
    assert not np.allclose(x @ q, x)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)  # an orthogonal transform
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)  # an isotropic scaling
    assert linear_cka(x, x + 3.0) == pytest.approx(1.0, abs=1e-12)  # an offset: the features are centered
    # not invariant to an anisotropic scaling: the test can fail
    assert linear_cka(x, x * np.arange(1, 13)) < 0.9


def test_cka_equals_a_direct_hsic_computation(features):
    x, y = features
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), abs=1e-6)
    mixed = x[:, :5] + 0.3 * y.reshape(40, -1)[:, :5]
    assert linear_cka(x, mixed) == pytest.approx(hsic_cka(x, mixed), abs=1e-6)
    assert 0.1 < linear_cka(x, mixed) < 1
    # the Gram form: wide features (more columns than the 4,096-column blocks) give the same Gram matrix
    wide = np.random.default_rng(2).normal(size=(6, 5000))
    assert np.allclose(centered_gram(wide), (wide - wide.mean(0)) @ (wide - wide.mean(0)).T)


def test_forgetting_counts_on_a_constructed_sequence():
    correct = np.array([[0, 1, 1, 0, 0],
                        [1, 0, 1, 0, 1],
                        [0, 1, 1, 0, 1],
                        [1, 0, 1, 0, 0],
                        [1, 1, 1, 0, 1]], dtype=bool)
    first, events = forgetting(correct)
    assert first.tolist() == [1, 0, 0, -1, 1]
    # image 0: learned at 1, forgotten at 2, learned at 3; image 1: forgotten at 1 and at 3; image 4: forgotten at 3
    assert events.tolist() == [1, 2, 0, 0, 1]
    assert forgetting(correct[:1])[1].tolist() == [0] * 5


def test_spectrum_summary_against_numpy_svd():
    w = np.random.default_rng(3).normal(size=(6, 3, 2, 2))
    s = np.linalg.svd(w.reshape(6, -1), compute_uv=False)
    got = spectrum_summary(w)
    assert got["sigma max"] == pytest.approx(s[0], rel=1e-12)
    assert got["norm"] == pytest.approx(np.sqrt((s ** 2).sum()), rel=1e-12)
    assert got["stable rank"] == pytest.approx((s ** 2).sum() / s[0] ** 2, rel=1e-12)
    assert spectrum_summary(np.outer([1.0, 2.0], [3.0, 4.0]))["stable rank"] == pytest.approx(1.0)  # rank one
    assert spectrum_summary(np.eye(5))["stable rank"] == pytest.approx(5.0)


def test_rank_correlation_against_ranks_by_hand():
    a = np.array([[1.0, 5.0], [3.0, 3.0]])
    b = np.array([[2.0, 9.0], [4.0, 1.0]])
    # ranks a: 1, 4, 2.5, 2.5; b: 2, 4, 3, 1
    ra, rb = np.array([1, 4, 2.5, 2.5]), np.array([2, 4, 3, 1.0])
    assert rank_correlation(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-12)
    assert rank_correlation(a, a ** 3) == pytest.approx(1.0)  # monotone: the ranks are the same
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert np.isnan(rank_correlation(a, np.ones((2, 2))))
