"""Data quality: likely label errors (confident learning) and near-duplicate images, as plain functions on arrays.

Label errors: confident learning (Northcutt, Jiang & Chuang, Confident Learning: Estimating Uncertainty in Dataset
Labels, JAIR 2021, https://arxiv.org/abs/1911.00068) on the model's predicted probabilities of each labelled image:
the per-class thresholds, the confident joint and the images counted off its diagonal (`confident_learning`).

Near-duplicates: every image reduced to a small thumbnail (area average to at most 16 x 16 per channel, pixel values
in [0, 1]); two images are near-duplicates when their thumbnails' peak signal-to-noise ratio is at least 30 dB
(`thumbnails`, `near_duplicates`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THUMB = 16  # thumbnail side (pixels per side at most): what the near-duplicate check compares
MIN_PSNR = 30.0  # dB: the low end of the usual quality range of lossy 8-bit image compression (30 to 50 dB)


@dataclass
class LabelIssues:
    """What `confident_learning` finds in M labelled images of K classes.

    ``thresholds`` (K,): t_j, the mean predicted probability of class j over the images labelled j (+inf for a
    class with no labelled image: no image is counted as truly of that class). ``joint`` (K, K) int: the confident
    joint C[i, j], images labelled i whose suspected true class is j. ``suspected`` (M,) int: each image's suspected
    true class (-1 where no class reaches its threshold: not counted). ``flagged`` (F,) int: rows counted off the
    diagonal (suspected != given), lowest self-confidence first. ``self_confidence`` (M,): p(given label)."""

    thresholds: np.ndarray
    joint: np.ndarray
    suspected: np.ndarray
    flagged: np.ndarray
    self_confidence: np.ndarray


def confident_learning(probs: np.ndarray, labels: np.ndarray) -> LabelIssues:
    """Confident learning (Northcutt et al., JAIR 2021, section 3.1) on ``probs`` (M, K), each row a probability
    vector, and the given ``labels`` (M,) int in 0..K-1.

    t_j = mean of p_j(x) over the images labelled j; image x labelled i is counted in C[i, j] where j is the most
    probable class among those with p_l(x) >= t_l (the paper's argmax over the classes above their threshold), and
    not counted where no class reaches its threshold. The images counted off the diagonal (j != i) are the likely
    label errors, ranked by self-confidence p_i(x) (lowest first: Northcutt et al.'s and cleanlab's default
    ranking). The probabilities must be out-of-sample (images the model did not learn from) for the thresholds to
    mean what the paper says."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    m, k = probs.shape
    sums = np.zeros(k)
    np.add.at(sums, labels, probs[np.arange(m), labels])
    counts = np.bincount(labels, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -np.inf)
    suspected = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    joint = np.zeros((k, k), dtype=np.int64)
    counted = suspected >= 0
    np.add.at(joint, (labels[counted], suspected[counted]), 1)
    self_conf = probs[np.arange(m), labels]
    off = np.flatnonzero(counted & (suspected != labels))
    flagged = off[np.lexsort((off, self_conf[off]))]
    return LabelIssues(thresholds=thresholds, joint=joint, suspected=suspected, flagged=flagged,
                       self_confidence=self_conf)


def thumbnails(images, side: int = THUMB) -> np.ndarray:
    """Pixel images (N, C, H, W) in [0, 1] (a torch tensor) -> (N, C * h * w) float32 thumbnails, each channel
    area-averaged to h x w = min(side, H) x min(side, W): small enough to keep thousands, and averaging removes most
    of the noise that re-encoding or resizing adds while keeping the layout that makes two pictures the same."""
    import torch.nn.functional as F

    x = images.detach().float()
    t = F.adaptive_avg_pool2d(x, (min(side, x.shape[-2]), min(side, x.shape[-1])))
    return t.reshape(x.shape[0], -1).cpu().numpy().astype(np.float32)


def psnr(rms: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio in dB of a root-mean-square difference of pixel values in [0, 1]: -20 log10(rms)
    (+inf for identical thumbnails)."""
    with np.errstate(divide="ignore"):
        return -20.0 * np.log10(np.asarray(rms, dtype=np.float64))


def near_duplicates(thumbs: np.ndarray, min_psnr: float = MIN_PSNR, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of rows of ``thumbs`` (N, D) whose root-mean-square difference is at most 10^(-min_psnr / 20)
    (their PSNR at least ``min_psnr`` dB; 30 dB: an RMS difference of 0.032 on pixel values in [0, 1], 8 grey levels
    of 255). Returns (pairs (P, 2) int, i < j, and their RMS differences (P,)), nearest first (ties: by i, then j).

    All N (N - 1) / 2 distances are computed in blocks of ``block`` rows, so memory stays at block x N."""
    x = np.asarray(thumbs, dtype=np.float64)
    n, d = x.shape
    limit = 10.0 ** (-min_psnr / 20.0)
    sq = (x * x).sum(axis=1)
    found_i, found_j, found_r = [], [], []
    for start in range(0, n, block):
        rows = x[start:start + block]
        d2 = sq[start:start + block, None] + sq[None, :] - 2.0 * rows @ x.T
        # the expanded square loses digits for nearly equal rows: recompute the candidates' distances directly
        cand_i, cand_j = np.nonzero(d2 <= (limit * limit * d) * 1.01 + 1e-9)
        cand_i = cand_i + start
        keep = cand_j > cand_i
        cand_i, cand_j = cand_i[keep], cand_j[keep]
        if not len(cand_i):
            continue
        rms = np.sqrt(((x[cand_i] - x[cand_j]) ** 2).mean(axis=1))
        ok = rms <= limit
        found_i.append(cand_i[ok])
        found_j.append(cand_j[ok])
        found_r.append(rms[ok])
    if not found_i:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    i, j, r = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_r)
    order = np.lexsort((j, i, r))
    return np.stack([i[order], j[order]], axis=1).astype(np.int64), r[order]


def duplicate_groups(pairs: np.ndarray, n: int) -> list[list[int]]:
    """The connected groups (two or more members) that the ``pairs`` (P, 2) of ``n`` rows link, each sorted, the
    groups ordered by their first member: three copies of one picture make three pairs and one group."""
    parent = list(range(n))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2):
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for a in np.unique(np.asarray(pairs, dtype=np.int64)):
        groups.setdefault(root(int(a)), []).append(int(a))
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])
