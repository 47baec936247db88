"""Calibration of a classifier's confidence: expected calibration error and the reliability diagram's bins.

Guo, Pleiss, Sun & Weinberger, On Calibration of Modern Neural Networks, ICML 2017 (https://arxiv.org/abs/1706.04599),
section 2: the top-1 confidence of every prediction is put into one of ``bins`` equal-width intervals of [0, 1]
(they use 15); the expected calibration error is the mean over the bins of |accuracy - mean confidence|, each bin
weighted by its share of the predictions. Plain NumPy on arrays: no model, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 15  # Guo et al. 2017, section 2 and their tables


@dataclass
class Reliability:
    """The bins of a reliability diagram. Arrays (B,): ``lower``, ``upper`` the bin edges ((lower, upper], the
    first bin also holds 0); ``count`` predictions in the bin; ``accuracy`` and ``confidence`` their accuracy and
    mean top-1 confidence (NaN for an empty bin). ``ece``: the expected calibration error in [0, 1]; ``n``: the
    predictions counted."""

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    ece: float
    n: int


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` (M, K), computed in float64 (probabilities in [0, 1], rows summing to 1)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> Reliability:
    """The reliability bins and the ECE of top-1 ``confidence`` (M,) in [0, 1] and ``correct`` (M,) bool.

    A confidence c falls in bin b when b/bins < c <= (b+1)/bins (c = 0 in the first bin), as in Guo et al.'s
    intervals I_m = ((m-1)/M, m/M]. ECE = sum_b count_b / M * |accuracy_b - confidence_b|; 0 for M = 0."""
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != ok.shape:
        raise ValueError(f"confidence {conf.shape} and correct {ok.shape} must have the same length")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.int64)
    hits = np.bincount(which, weights=ok.astype(np.float64), minlength=bins)
    total = np.bincount(which, weights=conf, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
        mean_conf = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    m = len(conf)
    gaps = np.where(count > 0, np.abs(np.nan_to_num(acc) - np.nan_to_num(mean_conf)), 0.0)
    ece = float((count / m * gaps).sum()) if m else 0.0
    return Reliability(edges[:-1], edges[1:], count, acc, mean_conf, ece, m)


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """ECE in [0, 1] of ``logits`` (M, K) against integer ``labels`` (M,) (Guo et al. 2017, ``bins`` = 15)."""
    probs = softmax(logits)
    return reliability(probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels), bins).ece
