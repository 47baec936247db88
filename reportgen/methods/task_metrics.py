"""What a model's outputs score against their truths, for each task beyond the single-label classifier (issue 30).

Plain numpy functions, batch in, numbers out; no torch, no drawing. Each follows a published definition and the tests
compare it with an independent implementation of that definition (tests/test_task_metrics.py):

- multi-label: per-label average precision as scikit-learn's ``average_precision_score`` (the non-interpolated
  sum over thresholds of (R_n - R_{n-1}) P_n), precision, recall and F1 at a threshold on the sigmoid as
  ``precision_recall_fscore_support`` (0 where a ratio is 0 / 0, its ``zero_division=0``), micro and macro means;
- regression: per-output MAE, RMSE, R^2 (the coefficient of determination, ``sklearn.metrics.r2_score``), Pearson r
  and the residuals;
- semantic segmentation: per-class intersection over union, pixel accuracy and their mean (mIoU) from a confusion
  matrix, as the PASCAL VOC and Cityscapes benchmarks define them (Everingham et al., IJCV 2010; Cordts et al.,
  CVPR 2016);
- object detection: per-class average precision at IoU 0.5 with COCO's 101-point interpolated precision, as
  pycocotools' ``COCOeval`` computes AP50 (area "all", 100 detections per image) (Lin et al., Microsoft COCO,
  ECCV 2014, https://cocodataset.org/#detection-eval);
- embedding retrieval: each image's nearest neighbours by cosine similarity, recall@k and the mean average precision
  of same-class retrieval (the measures of deep metric learning, e.g. Musgrave, Belongie & Lim, A Metric Learning
  Reality Check, ECCV 2020), in blocks of rows so that memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# --- multi-label ----------------------------------------------------------------------------------------------------


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function of ``logits`` (any shape), in (0, 1), without overflow for large |logits|."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """The average precision of ranking ``scores`` (M,) against binary ``truth`` (M,) (1 positive, 0 negative), as
    scikit-learn's ``average_precision_score`` defines it: AP = sum_n (R_n - R_{n-1}) P_n over the distinct score
    thresholds, highest first (no interpolation; tied scores form one threshold). In [0, 1]; NaN when ``truth`` has
    no positive (recall is undefined)."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth) > 0
    positives = int(truth.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    tp = np.cumsum(t)
    # one point per distinct score: the last row of each run of ties
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = tp[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_recall_curve(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall (each (T,), in [0, 1]) at every distinct score threshold of ``scores`` (M,), highest
    first, against binary ``truth`` (M,); the points `average_precision` sums over. Empty when there is no
    positive."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth) > 0
    if not truth.any():
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(t)[last]
    return tp / (last + 1), tp / truth.sum()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's ``zero_division=0``)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


@dataclass
class MultilabelScores:
    """Per label (K,): ``ap`` average precision (NaN without a known positive), ``precision``, ``recall``, ``f1`` at
    ``threshold`` on the sigmoid, ``positives`` known positive truths, ``predicted`` images predicted positive among
    the known, ``known`` images whose truth is known. Means: ``macro_ap`` over the labels with a known positive;
    ``macro_precision``, ``macro_recall``, ``macro_f1`` over the labels with at least one known truth (a label with
    no positive truth and no positive prediction counts 0, as in scikit-learn); ``micro_*`` from the true and false
    positives and negatives summed over every known (image, label) entry."""

    ap: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    positives: np.ndarray
    predicted: np.ndarray
    known: np.ndarray
    threshold: float
    macro_ap: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    micro_precision: float
    micro_recall: float
    micro_f1: float


def multilabel_scores(logits: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> MultilabelScores:
    """Scores of independent sigmoid outputs ``logits`` (M, K) against ``labels`` (M, K) (1 present, 0 absent, -1
    unknown: left out of that label's numbers only). A label is predicted present when sigmoid(logit) > ``threshold``
    (in (0, 1)); AP ranks the logits (the sigmoid keeps their order). Definitions: `MultilabelScores`."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.shape != labels.shape or logits.ndim != 2:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} must both be (M, K)")
    known = labels >= 0
    truth = (labels == 1) & known
    pred = (sigmoid(logits) > threshold) & known
    k = logits.shape[1]
    ap = np.array([average_precision(logits[known[:, j], j], truth[known[:, j], j]) for j in range(k)])
    tp = (pred & truth).sum(axis=0)
    fp = (pred & ~truth).sum(axis=0)
    fn = (~pred & truth).sum(axis=0)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    some = known.any(axis=0)
    ttp, tfp, tfn = tp.sum(), fp.sum(), fn.sum()

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else float("nan")

    return MultilabelScores(
        ap=ap, precision=precision, recall=recall, f1=f1, positives=truth.sum(axis=0), predicted=pred.sum(axis=0),
        known=known.sum(axis=0), threshold=float(threshold),
        macro_ap=mean(ap[np.isfinite(ap)]), macro_precision=mean(precision[some]), macro_recall=mean(recall[some]),
        macro_f1=mean(f1[some]), micro_precision=float(_ratio(ttp, ttp + tfp)),
        micro_recall=float(_ratio(ttp, ttp + tfn)), micro_f1=float(_ratio(2 * ttp, 2 * ttp + tfp + tfn)))


# --- regression -----------------------------------------------------------------------------------------------------


@dataclass
class RegressionScores:
    """Per output (D,): ``n`` images with a known truth, ``mae`` mean absolute error, ``rmse`` root mean squared
    error (both in the output's unit), ``r2`` the coefficient of determination 1 - SS_res / SS_tot (1 perfect, 0 as
    good as predicting the mean, negative worse; NaN when the truth is constant or n < 2), ``pearson`` Pearson's r of
    prediction and truth (NaN when either is constant or n < 2). ``residuals`` (M, D): prediction - truth, NaN where
    the truth is unknown."""

    n: np.ndarray
    mae: np.ndarray
    rmse: np.ndarray
    r2: np.ndarray
    pearson: np.ndarray
    residuals: np.ndarray


def regression_scores(outputs: np.ndarray, truth: np.ndarray) -> RegressionScores:
    """Scores of real ``outputs`` (M, D) against ``truth`` (M, D) (NaN unknown: left out of that output's numbers;
    a non-finite output is left out too). Definitions: `RegressionScores`."""
    outputs = np.asarray(outputs, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if outputs.shape != truth.shape or outputs.ndim != 2:
        raise ValueError(f"outputs {outputs.shape} and truth {truth.shape} must both be (M, D)")
    residuals = outputs - truth
    d = outputs.shape[1]
    n, mae, rmse, r2, r = (np.full(d, np.nan) for _ in range(5))
    for j in range(d):
        ok = np.isfinite(truth[:, j]) & np.isfinite(outputs[:, j])
        n[j] = ok.sum()
        if not ok.any():
            continue
        y, p, e = truth[ok, j], outputs[ok, j], residuals[ok, j]
        mae[j] = np.abs(e).mean()
        rmse[j] = np.sqrt((e ** 2).mean())
        if len(y) < 2:
            continue
        ss_tot = ((y - y.mean()) ** 2).sum()
        if ss_tot > 0:
            r2[j] = 1.0 - (e ** 2).sum() / ss_tot
        dy, dp = y - y.mean(), p - p.mean()
        den = np.sqrt((dy ** 2).sum() * (dp ** 2).sum())
        if den > 0:
            r[j] = (dy * dp).sum() / den
    return RegressionScores(n=n.astype(np.int64), mae=mae, rmse=rmse, r2=r2, pearson=r,
                            residuals=np.where(np.isfinite(truth), residuals, np.nan))


# --- semantic segmentation ------------------------------------------------------------------------------------------

IGNORE = 255  # the label of pixels left out of every count (PASCAL VOC's object borders, "void")


def confusion_from_masks(truth: np.ndarray, pred: np.ndarray, k: int, ignore: int = IGNORE) -> np.ndarray:
    """The (K, K) int64 pixel counts of true class (rows) against predicted class (columns) of ``truth`` and
    ``pred``, both (N, H, W) (or any equal shapes) of class indices in [0, K); pixels whose truth is ``ignore`` are
    left out. Add the matrices of several batches to accumulate a whole set in bounded memory."""
    truth = np.asarray(truth).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if truth.shape != pred.shape:
        raise ValueError(f"truth and prediction differ in size: {truth.size} and {pred.size} pixels")
    keep = truth != ignore
    truth, pred = truth[keep], pred[keep]
    bad = (truth < 0) | (truth >= k) | (pred < 0) | (pred >= k)
    if bad.any():
        raise ValueError(f"class indices must lie in [0, {k}) (or be {ignore}, ignored): found "
                         f"{int(np.r_[truth[bad], pred[bad]].max())}")
    return np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)


@dataclass
class SegmentationScores:
    """From a (K, K) confusion matrix: per class (K,) ``iou`` = TP / (TP + FP + FN) (NaN for a class absent from
    both truth and prediction), ``true_pixels`` and ``predicted_pixels``; ``pixel_accuracy`` = correct pixels / all
    counted pixels; ``miou`` the mean IoU over the ``classes`` classes present in the truth or the prediction
    (classes absent from both are left out of the mean, as PASCAL VOC's and Cityscapes' evaluations leave them out
    of theirs)."""

    iou: np.ndarray
    true_pixels: np.ndarray
    predicted_pixels: np.ndarray
    pixel_accuracy: float
    miou: float
    classes: int


def segmentation_scores(confusion: np.ndarray) -> SegmentationScores:
    """Scores of the pixel ``confusion`` matrix (K, K) (rows true class, columns predicted class; counts >= 0).
    Definitions: `SegmentationScores`."""
    m = np.asarray(confusion, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"the confusion matrix must be square (K, K), got {m.shape}")
    tp = np.diag(m)
    true, predicted = m.sum(axis=1), m.sum(axis=0)
    union = true + predicted - tp
    iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
    present = union > 0
    total = m.sum()
    return SegmentationScores(
        iou=iou, true_pixels=true.astype(np.int64), predicted_pixels=predicted.astype(np.int64),
        pixel_accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
        miou=float(iou[present].mean()) if present.any() else float("nan"), classes=int(present.sum()))


# --- object detection -----------------------------------------------------------------------------------------------

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's recall thresholds 0, 0.01, ..., 1


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``a`` (n, 4) and ``b`` (m, 4), both x0, y0, x1, y1 in pixels (continuous
    coordinates: a box's width is x1 - x0, as COCO's): (n, m) in [0, 1]; 0 where a union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class DetectionScores:
    """Per class (K,): ``ap`` average precision at IoU ``iou_threshold`` (NaN for a class without a true box),
    ``truths`` true boxes, ``detections`` detections counted (at most ``max_dets`` per image and class),
    ``true_positives`` of them matched to a truth; ``map`` the mean AP over the ``classes`` classes with a true box
    (NaN when none has)."""

    ap: np.ndarray
    truths: np.ndarray
    detections: np.ndarray
    true_positives: np.ndarray
    map: float
    classes: int
    iou_threshold: float


def _match(det_boxes: np.ndarray, truth_boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """For detections (n, 4) already in descending score order and truths (m, 4) of one image and class: (n,) bool,
    whether each detection is matched. Greedy as COCOeval.evaluateImg: each detection in turn takes the unmatched
    truth of highest IoU, if that IoU is at least the threshold (on equal IoU the later truth); a truth is matched
    once, so a second detection of the same object is a false positive."""
    hit = np.zeros(len(det_boxes), dtype=bool)
    if not len(det_boxes) or not len(truth_boxes):
        return hit
    ious = box_iou(det_boxes, truth_boxes)
    taken = np.zeros(len(truth_boxes), dtype=bool)
    for d in range(len(det_boxes)):
        best, m = min(iou_threshold, 1 - 1e-10), -1
        for g in range(len(truth_boxes)):
            if taken[g] or ious[d, g] < best:
                continue
            best, m = ious[d, g], g
        if m >= 0:
            taken[m] = True
            hit[d] = True
    return hit


def interpolated_ap(hits: np.ndarray, scores: np.ndarray, truths: int) -> float:
    """COCO's AP of detections pooled over images: ``hits`` (n,) bool (matched to a truth), ``scores`` (n,), against
    ``truths`` true boxes (> 0). The detections are ranked by descending score (stable); precision is made
    non-increasing in recall (each point takes the best precision at any higher recall) and read at the 101 recall
    points 0, 0.01, ..., 1 (the first rank that reaches each; 0 beyond the highest recall reached); AP is their
    mean. In [0, 1]."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = np.asarray(hits, dtype=bool)[order]
    tp = np.cumsum(hits).astype(np.float64)
    fp = np.cumsum(~hits).astype(np.float64)
    if not len(tp):
        return 0.0
    recall = tp / truths
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0)
    return float(q.mean())


def detection_scores(detections: Sequence[dict], truths: Sequence[dict], k: int, iou_threshold: float = 0.5,
                     max_dets: int = 100) -> DetectionScores:
    """Per-class AP of ``detections`` (a list of N dicts {'boxes' (j, 4) x0 y0 x1 y1, 'labels' (j,) class indices
    in [0, K), 'scores' (j,)}) against ``truths`` (N dicts {'boxes', 'labels'}), image by image, as pycocotools'
    COCOeval computes AP at one IoU threshold for area "all" (no crowd regions): within each image and class the
    detections are taken by descending score (at most ``max_dets``) and matched greedily (`_match`); the matches of
    all images are pooled and scored by `interpolated_ap`. Definitions: `DetectionScores`."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} images of detections but {len(truths)} of truths")
    pooled_hits: list[list] = [[] for _ in range(k)]
    pooled_scores: list[list] = [[] for _ in range(k)]
    n_truth = np.zeros(k, dtype=np.int64)
    for det, gt in zip(detections, truths):
        d_boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        d_labels = np.asarray(det["labels"]).reshape(-1).astype(np.int64)
        d_scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        g_boxes = np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4)
        g_labels = np.asarray(gt["labels"]).reshape(-1).astype(np.int64)
        for c in np.union1d(d_labels, g_labels):
            if not 0 <= c < k:
                raise ValueError(f"class index {int(c)} outside [0, {k})")
            g = g_boxes[g_labels == c]
            n_truth[c] += len(g)
            sel = np.nonzero(d_labels == c)[0]
            sel = sel[np.argsort(-d_scores[sel], kind="mergesort")][:max_dets]
            pooled_hits[c].append(_match(d_boxes[sel], g, iou_threshold))
            pooled_scores[c].append(d_scores[sel])
    ap = np.full(k, np.nan)
    dets = np.zeros(k, dtype=np.int64)
    tps = np.zeros(k, dtype=np.int64)
    for c in range(k):
        hits = np.concatenate(pooled_hits[c]) if pooled_hits[c] else np.zeros(0, dtype=bool)
        scores = np.concatenate(pooled_scores[c]) if pooled_scores[c] else np.zeros(0)
        dets[c], tps[c] = len(hits), int(hits.sum())
        if n_truth[c]:
            ap[c] = interpolated_ap(hits, scores, int(n_truth[c]))
    has = n_truth > 0
    return DetectionScores(ap=ap, truths=n_truth, detections=dets, true_positives=tps,
                           map=float(ap[has].mean()) if has.any() else float("nan"), classes=int(has.sum()),
                           iou_threshold=float(iou_threshold))


# --- embedding retrieval --------------------------------------------------------------------------------------------

# similarities held at once: 16 MiB of float32 and 32 MiB of their int64 ranking; a block is at most 1024 rows of N
BLOCK_ENTRIES = 1 << 22


@dataclass
class RetrievalScores:
    """Nearest neighbours by cosine similarity, each image's own row left out: ``neighbours`` (N, k) indices and
    ``similarity`` (N, k) in [-1, 1], most similar first. With class ``labels`` (-1 unknown: neither query nor
    found): ``recall_at`` {k': share of the queries with a same-class image among their k' nearest}, ``map`` the
    mean over queries of the average precision of their full ranking (relevant = same class), ``queries`` the
    labelled images with at least one other image of their class (the others have nothing to find and are left
    out of both). Without labels: ``recall_at`` empty, ``map`` NaN, ``queries`` 0."""

    neighbours: np.ndarray
    similarity: np.ndarray
    recall_at: dict
    map: float
    queries: int


def retrieval_scores(embeddings: np.ndarray, labels: Optional[np.ndarray] = None, k: int = 5,
                     recall_ks: Sequence[int] = (1, 5), block: Optional[int] = None) -> RetrievalScores:
    """Same-class retrieval by cosine similarity among ``embeddings`` (N, D) with ``labels`` (N,) int (-1 unknown;
    None: no scores, only the neighbours). Similarities are computed ``block`` query rows at a time (default: at
    most 1024 rows and `BLOCK_ENTRIES` similarities), so memory grows with N, not N^2; ties rank the lower index
    first. A zero embedding has similarity 0 to every image. Definitions: `RetrievalScores`."""
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0).astype(np.float32)
    kk = max(0, min(k, n - 1))
    rows = block or max(1, min(1024, BLOCK_ENTRIES // max(n, 1)))
    lab = None if labels is None else np.asarray(labels).astype(np.int64).reshape(-1)
    if lab is not None and len(lab) != n:
        raise ValueError(f"{len(lab)} labels for {n} embeddings")
    ks = sorted({int(v) for v in recall_ks if v >= 1})
    gallery = np.ones(n, dtype=bool) if lab is None else lab >= 0
    # the queries: labelled images with another image of their class
    counts = np.bincount(lab[gallery], minlength=1) if lab is not None and gallery.any() else np.zeros(1, np.int64)
    neighbours = np.zeros((n, kk), dtype=np.int64)
    similarity = np.zeros((n, kk), dtype=np.float32)
    found = {v: 0 for v in ks}
    ap_sum, queries = 0.0, 0
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sim = x[start:stop] @ x.T  # (rows, N) float32
        sim[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # itself
        order = np.argsort(-sim, axis=1, kind="stable")
        neighbours[start:stop] = order[:, :kk]
        similarity[start:stop] = np.take_along_axis(sim, order[:, :kk], axis=1)
        if lab is None:
            continue
        for r, i in enumerate(range(start, stop)):
            if lab[i] < 0 or counts[lab[i]] < 2:
                continue
            ranked = order[r, : n - 1]  # itself last (-inf)
            ranked = ranked[gallery[ranked]]
            relevant = lab[ranked] == lab[i]
            queries += 1
            for v in ks:
                found[v] += bool(relevant[:v].any())
            hits = np.nonzero(relevant)[0]
            ap_sum += float(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
    if lab is None or not queries:
        return RetrievalScores(neighbours, similarity, {}, float("nan"), 0)
    return RetrievalScores(neighbours, similarity, {v: found[v] / queries for v in ks}, ap_sum / queries, queries)
