"""Learning dynamics across checkpoints, as plain functions on arrays: representation similarity (linear CKA),
forgetting events, the spectrum of a weight matrix and the rank correlation of two maps.

Every function takes numpy arrays (or anything ``np.asarray`` accepts, a CPU tensor included) and computes in
float64; none imports torch, so the archive index can compare stored snapshots without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def centered_gram(x: Any) -> np.ndarray:
    """The linear kernel of ``x`` (n, ...) (each row flattened to p features) after centering the features:
    K = Xc Xc^T, (n, n) float64, where Xc = X minus its column means. Equivalently H (X X^T) H with the centering
    matrix H = I - 11^T/n (Kornblith et al., ICML 2019, eq. 3). Features are taken 4,096 columns at a time, so that
    a wide layer is never copied whole in float64."""
    x = np.asarray(x)
    x = x.reshape(len(x), -1)
    n, p = x.shape
    k = np.zeros((n, n))
    for start in range(0, p, 4096):
        block = x[:, start:start + 4096].astype(np.float64)
        block -= block.mean(axis=0, keepdims=True)
        k += block @ block.T
    return k


def cka_from_grams(k: Any, l: Any) -> float:
    """Linear CKA from two centered Gram matrices (n, n) of the same n examples (`centered_gram`):
    <K, L>_F / (||K||_F ||L||_F), in [0, 1]. NaN when either is zero (features constant over the examples)."""
    k, l = np.asarray(k, dtype=np.float64), np.asarray(l, dtype=np.float64)
    if k.shape != l.shape or k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"cka_from_grams: Gram matrices of shapes {k.shape} and {l.shape}; give two (n, n)")
    norm = np.linalg.norm(k) * np.linalg.norm(l)
    return float(np.sum(k * l) / norm) if norm > 0 else float("nan")


def linear_cka(x: Any, y: Any) -> float:
    """Linear centered kernel alignment of two representations of the same n examples (Kornblith, Norouzi, Lee &
    Hinton, Similarity of Neural Network Representations Revisited, ICML 2019, https://arxiv.org/abs/1905.00414):

        CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F),   Xc, Yc: X, Y with column means removed.

    ``x`` (n, p...), ``y`` (n, q...): rows are examples (each flattened), p and q may differ. Returns a float in
    [0, 1], 1 when Y is an orthogonal transform or an isotropic scaling of X (plus any offset), NaN when either is
    constant over the examples. Computed through the (n, n) Gram matrices, so its cost does not grow with p * q."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"linear_cka: {len(x)} and {len(y)} examples; give both representations of the same rows")
    return cka_from_grams(centered_gram(x), centered_gram(y))


def forgetting(correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """Forgetting events over an ordered sequence of checkpoints (Toneva et al., An Empirical Study of Example
    Forgetting during Deep Neural Network Learning, ICLR 2019, https://arxiv.org/abs/1812.05159), counted here
    between consecutive checkpoints instead of between mini-batch presentations.

    ``correct`` (T, N) bool: whether checkpoint t classifies image n correctly. Returns ``first`` (N,) int, the
    first checkpoint (0 to T-1) that classifies the image correctly, -1 when none does; and ``events`` (N,) int, how
    many times the image goes from correct at checkpoint t-1 to wrong at checkpoint t."""
    c = np.asarray(correct, dtype=bool)
    if c.ndim != 2:
        raise ValueError(f"forgetting: correct has shape {c.shape}; give (checkpoints, images)")
    first = np.where(c.any(axis=0), c.argmax(axis=0), -1)
    events = (c[:-1] & ~c[1:]).sum(axis=0) if len(c) > 1 else np.zeros(c.shape[1], dtype=np.int64)
    return first.astype(np.int64), events.astype(np.int64)


def spectrum_summary(w: Any) -> dict:
    """Norm and spectrum of a weight tensor ``w`` (out, in...) read as the matrix (out, in * kernel): Frobenius
    norm, largest singular value and stable rank ||W||_F^2 / sigma_max^2 (in [1, rank W]; Rudelson & Vershynin,
    Sampling from large matrices, J. ACM 2007, https://arxiv.org/abs/math/0503442), all float. A zero matrix has
    stable rank NaN."""
    m = np.asarray(w, dtype=np.float64)
    m = m.reshape(m.shape[0], -1)
    fro = float(np.linalg.norm(m))
    sigma = float(np.linalg.norm(m, 2)) if m.size else 0.0
    return {"norm": fro, "sigma max": sigma, "stable rank": fro ** 2 / sigma ** 2 if sigma > 0 else float("nan")}


def rank_correlation(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two maps of the same shape (every value a sample; ties get their mean rank),
    in [-1, 1]; NaN when either map is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"rank_correlation: maps of {a.size} and {b.size} values; give maps of the same shape")
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    norm = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / norm) if norm > 0 else float("nan")


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``v``, ties given the mean of the ranks they share."""
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    # first position of each run of equal values, and the mean rank of that run
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_v)) + 1]
    ends = np.r_[starts[1:], len(v)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(v))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks
