"""Findings: the report's conclusions first, each a sentence with its numbers, its threshold and its evidence.

The `findings` analysis runs last (it reads every other chosen analysis it draws a conclusion from: `reads`) and
recomputes no map and runs no model: it reads the logits of the one pass (``ctx.predictions``) and the tables,
metrics and ``shared`` values of the analyses it reads (`reportgen.analyses.Upstream`). Each conclusion is a typed
`reportgen.manifest.Finding`: an id, a severity (alert / warning / info, or "not checked" with the reason when its
inputs are missing), one sentence with the numbers, the threshold that decided the severity and its source (a paper,
or "convention of this report" where the field has none), the numbers as numbers, and links to the figures of this
report that show the evidence. The build puts them in the manifest (``findings``), the model card and the console.

Each finding is a plain function on arrays and dicts (``*_findings``), so that it is tested on inputs built to make
it fire and to keep it quiet (tests/test_findings.py).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..artifacts import Plot, Result
from ..manifest import SEVERITIES, Finding, figure_anchor
from ..methods.calibration import BINS, reliability, softmax
from ..site import analysis_page
from . import EVERY_TASK, Analysis, NOTHING, Upstream, all_analyses, get, register
from .influence import AttributionAnalysis

CONVENTION = "convention of this report"

# --- thresholds (each finding states its own in its text) ----------------------------------------------------------
MIN_CLASS_IMAGES = 5  # per-class accuracy is compared only for classes with at least this many labelled images
CLASS_GAP = (0.15, 0.30)  # worst class's accuracy below the overall accuracy by this much: warning, alert
ECE_LEVELS = (0.05, 0.15)  # expected calibration error above: warning, alert
CONFIDENT = 0.9  # a mistake made with at least this top-1 confidence is a confident mistake
CONFUSED_SHARE = 0.2  # warning when one (true, predicted) pair holds at least this share of the true class
CONFUSED_MIN = 2  # ... and at least this many images
IMBALANCE = (3.0, 10.0)  # largest / smallest labelled class count: warning, alert
OBJECT_MASS = 0.5  # "most of the mass": less than this share of the trusted maps' mass on the object
DEAD_SHARE = 0.5  # warning when a ReLU has at least this share of units that never fire
ROBUST_LEVELS = (5.0, 1.0)  # median adversarial change, % of ||x||, below: warning, alert
# share of the labelled images that confident learning flags: warning (the mean share of human-confirmed label
# errors in 10 benchmark test sets, Northcutt, Athalye & Mueller 2021), alert
LABEL_ERROR_LEVELS = (0.033, 0.10)
DUPLICATE_LEVELS = (0.01, 0.10)  # extra copies (near-duplicates beyond the first of each group) / images checked

# the analyses whose results a finding reads, beyond the attribution methods (mask scores)
PRODUCERS = ("predictions", "data-quality", "distributions", "deletion-insertion", "randomization-test",
             "adversarial")


def finding(id: str, title: str, severity: str, sentence: str, threshold: str = "", source: str = "",
            numbers: Optional[dict] = None, links: Optional[list] = None) -> Finding:
    """A `Finding` with its numbers as plain floats / ints / strings (JSON)."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    clean = {k: (float(v) if isinstance(v, (float, np.floating)) else int(v) if isinstance(v, (int, np.integer))
                 and not isinstance(v, bool) else v) for k, v in (numbers or {}).items()}
    return Finding(id=id, severity=severity, title=title, sentence=sentence, threshold=threshold, source=source,
                   numbers=clean, links=list(links or []))


def not_checked(id: str, title: str, reason: str) -> Finding:
    """The finding ``id`` whose inputs are missing: severity "not checked", the sentence says why."""
    return finding(id, title, "not checked", f"Not checked: {reason}.")


def link(page: str, key: Optional[str], label: str) -> dict:
    """Evidence: the figure or table ``key`` of page ``page`` (the whole page when ``key`` is None)."""
    return {"page": page, "anchor": figure_anchor(key) if key else "", "label": label}


def analysis_link(name: str, key: Optional[str], label: str) -> dict:
    return link(analysis_page(name), key, label)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def by_severity(findings: list[Finding]) -> list[Finding]:
    """``findings`` most severe first (alert, warning, info, not checked), otherwise in their order."""
    rank = {s: k for k, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: rank[f.severity])


# --- the predictions ------------------------------------------------------------------------------------------------


def labelled(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """The rows of ``logits`` (M, K) / ``labels`` (M,) with a label (>= 0) and finite logits, and why there are
    none ("" when there are some)."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    keep = (labels >= 0) & np.isfinite(logits).all(axis=1)
    if not (labels >= 0).any():
        return logits[:0], labels[:0], "the image set has no labels"
    if not keep.any():
        return logits[:0], labels[:0], "the logits of every labelled image are NaN or infinite"
    return logits[keep], labels[keep], ""


def accuracy_findings(logits: np.ndarray, labels: np.ndarray, names: list[str],
                      evidence: Optional[list] = None) -> list[Finding]:
    """Accuracy against the majority-class baseline (always predicting the most frequent true class), and the gap of
    the worst class's accuracy (recall, classes with at least `MIN_CLASS_IMAGES` labelled images) below the overall
    accuracy. ``logits`` (M, K), ``labels`` (M,) int (-1 unknown), ``names`` the K class names."""
    logits, labels, why = labelled(logits, labels)
    if why:
        return [not_checked("accuracy", "Accuracy", why), not_checked("class-gaps", "Per-class accuracy", why)]
    preds = logits.argmax(axis=1)
    acc = float((preds == labels).mean())
    counts = np.bincount(labels, minlength=len(names))
    major = int(counts.argmax())
    base = float(counts[major] / len(labels))
    if acc <= base:
        severity = "alert"
    elif acc < base + (1 - base) / 2:
        severity = "warning"
    else:
        severity = "info"
    words = {"alert": "no better than", "warning": "less than half-way from", "info": "well above"}[severity]
    out = [finding(
        "accuracy", "Accuracy", severity,
        f"Accuracy {pct(acc)} on {len(labels)} labelled images is {words} the majority-class baseline "
        f"{pct(base)} (always predicting '{names[major]}').",
        threshold="alert at or below the baseline; warning below half-way from the baseline to 100%",
        source=CONVENTION, numbers={"accuracy": acc, "baseline": base, "images": len(labels),
                                    "majority class": names[major]},
        links=evidence)]
    per = [(c, float((preds[labels == c] == c).mean()), int(counts[c])) for c in range(len(names))
           if counts[c] >= MIN_CLASS_IMAGES]
    if len(per) < 2:
        out.append(not_checked("class-gaps", "Per-class accuracy",
                               f"fewer than two classes have {MIN_CLASS_IMAGES} or more labelled images"))
        return out
    worst = min(per, key=lambda t: (t[1], t[0]))
    best = max(per, key=lambda t: (t[1], -t[0]))
    gap = acc - worst[1]
    severity = "alert" if gap >= CLASS_GAP[1] else "warning" if gap >= CLASS_GAP[0] else "info"
    out.append(finding(
        "class-gaps", "Per-class accuracy", severity,
        f"The worst class, '{names[worst[0]]}', has accuracy {pct(worst[1])} ({worst[2]} images), "
        f"{100 * gap:.1f} points below the overall {pct(acc)}; the best, '{names[best[0]]}', {pct(best[1])}.",
        threshold=f"warning at {100 * CLASS_GAP[0]:.0f} points below the overall accuracy, alert at "
                  f"{100 * CLASS_GAP[1]:.0f}; classes with at least {MIN_CLASS_IMAGES} labelled images",
        source=CONVENTION, numbers={"worst class": names[worst[0]], "worst accuracy": worst[1],
                                    "best class": names[best[0]], "best accuracy": best[1], "gap": gap,
                                    "classes compared": len(per)},
        links=evidence))
    return out


def calibration_findings(logits: np.ndarray, labels: np.ndarray, evidence: Optional[list] = None,
                         diagram: Optional[list] = None) -> tuple[list[Finding], Any]:
    """The expected calibration error (Guo et al. 2017, 15 bins) with its direction (over- or under-confident), and
    the confidence of the wrong predictions. Returns the findings and the `Reliability` bins (None when not
    checked). ``diagram``: links to the reliability diagram."""
    logits, labels, why = labelled(logits, labels)
    if why:
        return [not_checked("calibration", "Calibration", why),
                not_checked("confident-mistakes", "Confidence of the mistakes", why)], None
    probs = softmax(logits)
    conf, preds = probs.max(axis=1), probs.argmax(axis=1)
    right = preds == labels
    rel = reliability(conf, right, BINS)
    gap = float(conf.mean() - right.mean())
    severity = "alert" if rel.ece > ECE_LEVELS[1] else "warning" if rel.ece > ECE_LEVELS[0] else "info"
    direction = "over-confident" if gap > 0 else "under-confident" if gap < 0 else "as confident as it is accurate"
    out = [finding(
        "calibration", "Calibration", severity,
        f"Expected calibration error {rel.ece:.3f} ({BINS} bins){' within the threshold' if severity == 'info' else ''}"
        f": on the whole the model is {direction}, mean top-1 confidence {pct(conf.mean())} against accuracy "
        f"{pct(right.mean())}.",
        threshold=f"warning above {ECE_LEVELS[0]:g}, alert above {ECE_LEVELS[1]:g}",
        source=f"ECE as Guo et al., ICML 2017 ({BINS} equal-width bins of the top-1 confidence, weighted by bin "
               f"size); the thresholds are a {CONVENTION}",
        numbers={"ece": rel.ece, "mean confidence": float(conf.mean()), "accuracy": float(right.mean()),
                 "bins": BINS, "images": len(labels)},
        links=(diagram or []) + (evidence or []))]
    wrong = conf[~right]
    if not len(wrong):
        out.append(finding("confident-mistakes", "Confidence of the mistakes", "info",
                           f"The model makes no mistake on the {len(labels)} labelled images.",
                           numbers={"mistakes": 0}, links=evidence))
        return out, rel
    sure = conf >= CONFIDENT
    # a calibrated model is wrong on at most 1 - CONFIDENT of the predictions it makes with confidence >= CONFIDENT
    error = float((~right[sure]).mean()) if sure.any() else float("nan")
    severity = "warning" if sure.any() and error > 1 - CONFIDENT else "info"
    confident = (f"of the {int(sure.sum())} predictions made with confidence {CONFIDENT:g} or more, {pct(error)} are "
                 f"wrong (calibrated: at most {pct(1 - CONFIDENT)})" if sure.any()
                 else f"no prediction is made with confidence {CONFIDENT:g} or more")
    out.append(finding(
        "confident-mistakes", "Confidence of the mistakes", severity,
        f"The {len(wrong)} wrong predictions have a median confidence of {pct(np.median(wrong))}; {confident}.",
        threshold=f"warning when more than {pct(1 - CONFIDENT)} of the predictions made with confidence "
                  f">= {CONFIDENT:g} are wrong",
        source=f"what calibration means (Guo et al. 2017: P(right | confidence p) = p), read at p >= {CONFIDENT:g}; "
               f"the level {CONFIDENT:g} is a {CONVENTION}",
        numbers={"mistakes": len(wrong), "median confidence": float(np.median(wrong)),
                 "confident predictions": int(sure.sum()), "error when confident": error},
        links=(diagram or []) + (evidence or [])))
    return out, rel


def confusion_findings(logits: np.ndarray, labels: np.ndarray, names: list[str],
                       evidence: Optional[list] = None, top: int = 3) -> list[Finding]:
    """The most confused (true, predicted) class pairs: the ``top`` largest off-diagonal counts of the confusion
    matrix, each as a share of its true class's labelled images."""
    logits, labels, why = labelled(logits, labels)
    if why:
        return [not_checked("confused-pairs", "Most confused classes", why)]
    preds = logits.argmax(axis=1)
    k = len(names)
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (labels, preds), 1)
    off = m.copy()
    np.fill_diagonal(off, 0)
    if not off.any():
        return [finding("confused-pairs", "Most confused classes", "info",
                        f"No class is mistaken for another on the {len(labels)} labelled images.",
                        numbers={"mistakes": 0}, links=evidence)]
    rows = m.sum(axis=1)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = [(int(f // k), int(f % k)) for f in flat if off.flat[f] > 0]
    shares = [float(off[t, p] / rows[t]) for t, p in pairs]
    t0, p0 = pairs[0]
    severity = "warning" if shares[0] >= CONFUSED_SHARE and off[t0, p0] >= CONFUSED_MIN else "info"
    listed = "; ".join(f"'{names[t]}' taken for '{names[p]}' {off[t, p]} times ({pct(s)} of '{names[t]}')"
                       for (t, p), s in zip(pairs, shares))
    return [finding(
        "confused-pairs", "Most confused classes", severity, f"Most confused: {listed}.",
        threshold=f"warning when one pair holds at least {pct(CONFUSED_SHARE)} of its true class (and at least "
                  f"{CONFUSED_MIN} images)",
        source=CONVENTION,
        numbers={"pairs": [[names[t], names[p], int(off[t, p]), s] for (t, p), s in zip(pairs, shares)],
                 "top share": shares[0], "top count": int(off[t0, p0])},
        links=evidence)]


# what the predictions page scores for each task beyond classify and binary, and the source of its definition
TASK_SCORES = {"multilabel": ("Multi-label AP and F1", "scikit-learn's average_precision_score and f1_score"),
               "regress": ("Regression R²", "the coefficient of determination (sklearn.metrics.r2_score)"),
               "segment": ("Segmentation IoU", "PASCAL VOC's intersection over union (Everingham et al., IJCV 2010)"),
               "detect": ("Detection AP", "COCO's AP at IoU 0.5 (Lin et al., ECCV 2014; pycocotools)"),
               "embed": ("Same-class retrieval", "recall@k and mean average precision (Musgrave et al., ECCV 2020)")}


def task_score_findings(task: str, headline: Optional[dict], why: str = "") -> list[Finding]:
    """The predictions page's headline score of a ``task`` other than classify and binary (``headline``: its
    ``shared["headline"]``, {"sentence", "numbers", "key", "label"}; None when it could not score: ``why``), as
    information: the report sets no threshold on these scores."""
    title, source = TASK_SCORES[task]
    if headline is None:
        return [not_checked("task-score", title, why or "the predictions page did not run")]
    return [finding("task-score", title, "info", headline["sentence"], threshold="reported, not judged",
                    source=source, numbers=headline["numbers"],
                    links=[analysis_link("predictions", headline["key"], headline["label"])])]


def collapse_findings(task: str, pred: Any, names: list[str]) -> list[Finding]:
    """Whether a segmenter's or detector's output over the image set is degenerate, from the pass's own record
    (``pred``: `reportgen.context.Predictions`): a segmenter that predicts one class at every pixel of every image,
    a detector that returns no detection on any image, or one whose detections all have the same score (it does not
    rank its boxes). Each is what an untrained or collapsed head gives (a random RetinaNet's class prior of 0.01 is
    under its score threshold; a random SSDlite scores every box 1/K), and each empties pages: IoU and the maps of
    every other class, the boxes a box-score target explains. [] for the other tasks."""
    if task == "segment":
        pixels = np.asarray(getattr(pred, "seg_pixels", np.zeros((0, 0))), dtype=np.int64)
        if not pixels.size or not pixels.sum():
            return []
        per_class = pixels.sum(axis=0)
        top = int(per_class.argmax())
        share = float(per_class[top] / per_class.sum())
        title = "One class everywhere"
        numbers = {"class": names[top] if top < len(names) else str(top), "pixel share": share,
                   "images": int(len(pixels))}
        link = [analysis_link("predictions", None, "predictions")]
        threshold = "alert when one class is predicted at every pixel of every image"
        if share >= 1.0:
            return [finding("output-collapse", title, "alert",
                            f"The model predicts '{numbers['class']}' at every pixel of all {len(pixels)} images: the "
                            "IoU of every other class is 0 and the maps of another class's predicted pixels have no "
                            "region to explain.", threshold=threshold, source=CONVENTION, numbers=numbers,
                            links=link)]
        return [finding("output-collapse", title, "info",
                        f"The most predicted class, '{numbers['class']}', holds {pct(share)} of the predicted pixels "
                        f"of the {len(pixels)} images.", threshold=threshold, source=CONVENTION, numbers=numbers,
                        links=link)]
    if task == "detect":
        dets = list(getattr(pred, "detections", []) or [])
        if not dets:
            return []
        counts = np.array([len(d["scores"]) for d in dets])
        link = [analysis_link("predictions", "detections-per-image", "detections per image")]
        title = "Detections"
        threshold = ("alert when no image has a detection; warning when every detection has the same score "
                     "(within 1e-6)")
        numbers = {"images": int(len(dets)), "images with a detection": int((counts > 0).sum()),
                   "detections": int(counts.sum())}
        if not counts.any():
            return [finding("output-collapse", title, "alert",
                            f"The model returns no detection on any of the {len(dets)} images: the predictions "
                            "page has no box, and a box-score target has nothing to explain unless --target "
                            "box=x0,y0,x1,y1:CLASS gives one.", threshold=threshold, source=CONVENTION,
                            numbers=numbers, links=link)]
        scores = np.concatenate([np.asarray(d["scores"], dtype=np.float64) for d in dets])
        numbers.update({"lowest score": float(scores.min()), "highest score": float(scores.max())})
        if len(scores) > 1 and scores.max() - scores.min() <= 1e-6:
            return [finding("output-collapse", title, "warning",
                            f"All {len(scores)} detections on the {len(dets)} images have the same score "
                            f"{scores[0]:.4g}: the model does not rank its boxes, so its top detection is a tie "
                            "broken by order and AP does not measure it.", threshold=threshold, source=CONVENTION,
                            numbers=numbers, links=link)]
        return [finding("output-collapse", title, "info",
                        f"The model returns {len(scores)} detections on {int((counts > 0).sum())} of the "
                        f"{len(dets)} images, scores {scores.min():.3g} to {scores.max():.3g}.",
                        threshold=threshold, source=CONVENTION, numbers=numbers, links=link)]
    return []


def imbalance_findings(labels: np.ndarray, names: list[str], evidence: Optional[list] = None) -> list[Finding]:
    """Class imbalance of the labelled images: the largest class's count over the smallest's, among the classes
    that have labelled images (a model may have classes the image set does not hold: those are counted apart)."""
    labels = np.asarray(labels)
    labels = labels[labels >= 0]
    if not len(labels):
        return [not_checked("imbalance", "Class balance", "the image set has no labels")]
    counts = np.bincount(labels, minlength=len(names))
    present = np.flatnonzero(counts)
    absent = len(names) - len(present)
    if len(present) < 2:
        return [finding("imbalance", "Class balance", "alert",
                        f"All {len(labels)} labelled images are of one class, '{names[int(present[0])]}': the "
                        "report cannot tell this model's classes apart on this set.",
                        threshold="alert when one class holds every labelled image", source=CONVENTION,
                        numbers={"classes present": 1, "images": len(labels)}, links=evidence)]
    big, small = int(present[counts[present].argmax()]), int(present[counts[present].argmin()])
    ratio = float(counts[big] / counts[small])
    severity = "alert" if ratio >= IMBALANCE[1] else "warning" if ratio >= IMBALANCE[0] else "info"
    more = f"; {absent} of the model's {len(names)} classes have no labelled image" if absent else ""
    if counts[big] == counts[small]:
        sentence = f"Balanced: each of the {len(present)} classes present has {counts[big]} labelled images{more}."
    else:
        sentence = (f"The largest class, '{names[big]}' ({counts[big]} images), has {ratio:.1f}x the images of the "
                    f"smallest, '{names[small]}' ({counts[small]}){more}.")
    return [finding(
        "imbalance", "Class balance", severity, sentence,
        threshold=f"warning at a ratio of {IMBALANCE[0]:g}, alert at {IMBALANCE[1]:g}", source=CONVENTION,
        numbers={"ratio": ratio, "largest": int(counts[big]), "smallest": int(counts[small]),
                 "classes present": len(present), "classes without images": absent},
        links=evidence)]


def label_error_findings(issues: Optional[dict], why: str = "", evidence: Optional[list] = None) -> list[Finding]:
    """Likely label errors: the share of the labelled images whose given label confident learning (Northcutt et al.,
    JAIR 2021) finds confidently contradicted by the model's predicted probabilities. ``issues``: the data-quality
    analysis's ``shared["label issues"]`` ({"checked", "flagged", "share", "accuracy", "top": [{"image", "given",
    "suspected", "self-confidence"}]}, or {"why"} when it could not check); ``why``: why that analysis has no
    result."""
    title = "Likely label errors"
    if why or not issues:
        return [not_checked("label-errors", title, why or "the data-quality analysis has no result")]
    if issues.get("why"):
        return [not_checked("label-errors", title, issues["why"])]
    m, f, share = int(issues["checked"]), int(issues["flagged"]), float(issues["share"])
    numbers = {"flagged": f, "checked": m, "share": share, "accuracy": float(issues["accuracy"])}
    if not f:
        return [finding("label-errors", title, "info",
                        f"Confident learning flags none of the {m} labelled images: no given label is confidently "
                        "contradicted by the model's predicted probabilities.",
                        threshold=f"warning at {pct(LABEL_ERROR_LEVELS[0])} of the labelled images flagged, alert at "
                                  f"{pct(LABEL_ERROR_LEVELS[1])}",
                        source="confident learning, Northcutt, Jiang & Chuang, JAIR 2021", numbers=numbers,
                        links=evidence)]
    severity = "alert" if share >= LABEL_ERROR_LEVELS[1] else "warning" if share >= LABEL_ERROR_LEVELS[0] else "info"
    listed = "; ".join(f"{t['image']}: given '{t['given']}', suspected '{t['suspected']}' (p(given) "
                       f"{t['self-confidence']:.2f})" for t in issues["top"][:3])
    return [finding(
        "label-errors", title, severity,
        f"Confident learning flags {f} of the {m} labelled images ({pct(share)}) as likely label errors, their given "
        f"label confidently contradicted by the model (e.g. {listed}); each is either a wrong label or a confident "
        f"mistake of the model (accuracy {pct(issues['accuracy'])}): look at the pictures.",
        threshold=f"warning at {pct(LABEL_ERROR_LEVELS[0])} of the labelled images flagged, alert at "
                  f"{pct(LABEL_ERROR_LEVELS[1])}",
        source="confident learning, Northcutt, Jiang & Chuang, JAIR 2021; the warning level is the mean share of "
               "human-confirmed label errors in the test sets of 10 common benchmarks (Northcutt, Athalye & Mueller, "
               f"NeurIPS 2021 Datasets and Benchmarks: 3.3%); the alert level is a {CONVENTION}",
        numbers=numbers, links=evidence)]


def duplicate_findings(dups: Optional[dict], why: str = "", evidence: Optional[list] = None) -> list[Finding]:
    """Near-duplicate images (16x16 thumbnails whose PSNR reaches the data-quality analysis's ``min_psnr``), within
    and across classes. ``dups``: that analysis's ``shared["duplicates"]`` ({"checked", "seen", "pairs",
    "identical", "different labels", "groups", "images", "extra copies", "min psnr", "examples"}, or {"why"});
    ``why``: why that analysis has no result. The share that decides is of the extra copies (members of a group of
    near-duplicates beyond its first) among the images checked: how much the set counts the same picture again."""
    title = "Near-duplicates"
    if why or not dups:
        return [not_checked("duplicates", title, why or "the data-quality analysis has no result")]
    if dups.get("why"):
        return [not_checked("duplicates", title, dups["why"])]
    n, pairs, extra = int(dups["checked"]), int(dups["pairs"]), int(dups["extra copies"])
    differ = int(dups["different labels"])
    share = extra / n
    which = f"the {n} images checked" if dups["seen"] <= n else f"a seeded sample of {n} of the {dups['seen']} images"
    threshold = (f"warning when a near-duplicate pair carries two different labels or when extra copies are at least "
                 f"{pct(DUPLICATE_LEVELS[0])} of the images checked, alert at {pct(DUPLICATE_LEVELS[1])}")
    source = (f"near-duplicate: {dups['min psnr']:g} dB PSNR of 16x16 thumbnails, the low end of the usual PSNR "
              f"range of lossy 8-bit image compression (30 to 50 dB); the levels are a {CONVENTION}")
    numbers = {"pairs": pairs, "identical pairs": int(dups["identical"]), "pairs with different labels": differ,
               "groups": int(dups["groups"]), "images in groups": int(dups["images"]), "extra copies": extra,
               "extra share": share, "checked": n}
    if not pairs:
        return [finding("duplicates", title, "info", f"No two of {which} are near-duplicates.", threshold=threshold,
                        source=source, numbers=numbers, links=evidence)]
    severity = ("alert" if share >= DUPLICATE_LEVELS[1] else
                "warning" if differ or share >= DUPLICATE_LEVELS[0] else "info")
    sentence = (f"{pairs} near-duplicate pairs ({dups['identical']} identical) among {which}: {dups['images']} images "
                f"in {dups['groups']} groups, {extra} of them extra copies ({pct(share)} of the images checked)")
    if differ:
        ex = next((e for e in dups["examples"] if e["label a"] is not None and e["label b"] is not None
                   and e["label a"] != e["label b"]), None)
        sentence += (f"; {differ} {'pair carries' if differ == 1 else 'pairs carry'} two different labels, so one of "
                     "the two is wrong for what is the same picture"
                     + (f" (e.g. {ex['a']} '{ex['label a']}' and {ex['b']} '{ex['label b']}')" if ex else ""))
    else:
        sentence += "; every pair has one label (or none)"
    return [finding("duplicates", title, severity, sentence + ".", threshold=threshold, source=source,
                    numbers=numbers, links=evidence)]


# --- the trust checks and the maps ----------------------------------------------------------------------------------


def trust_verdicts(deletion: Optional[dict], randomization: Optional[dict]) -> dict[str, dict]:
    """Per method, what each trust check says: {"randomization": True/False/None, "deletion": ..., "insertion":
    ...} (None = that check did not judge it). ``deletion``: the deletion-insertion analysis's ``shared["trust"]``
    (method -> mean areas, and the random order's); ``randomization``: the randomization test's (method -> last
    Spearman correlation, and the threshold)."""
    out: dict[str, dict] = {}
    if deletion:
        rnd = deletion["random"]
        for name, v in deletion["methods"].items():
            out.setdefault(name, {})["deletion"] = bool(v["deletion"] < rnd["deletion"])
            out[name]["insertion"] = bool(v["insertion"] > rnd["insertion"])
    if randomization:
        for name, rho in randomization["methods"].items():
            out.setdefault(name, {})["randomization"] = bool(rho <= randomization["threshold"])
    for v in out.values():
        for k in ("deletion", "insertion", "randomization"):
            v.setdefault(k, None)
    return out


def trusted_methods(verdicts: dict[str, dict]) -> list[str]:
    """The methods that pass every check that judged them, and that both checks judged."""
    return [n for n, v in verdicts.items() if all(v[k] is True for k in ("deletion", "insertion", "randomization"))]


def trust_findings(deletion: Optional[dict], randomization: Optional[dict], why_not: dict[str, str],
                   evidence: Optional[list] = None) -> list[Finding]:
    """Which maps to trust: the methods that pass the randomization check (Adebayo et al. 2018) and beat a random
    pixel order on both deletion and insertion (Petsiuk et al. 2018), and those that do not. ``why_not``: why a
    check has no result ({analysis name: reason})."""
    title = "Which maps to trust"
    if not deletion and not randomization:
        reasons = "; ".join(why_not.values()) or "neither trust check ran"
        return [not_checked("trust", title, reasons)]
    verdicts = trust_verdicts(deletion, randomization)
    good = trusted_methods(verdicts)
    failed = {n: [k for k in ("randomization", "deletion", "insertion") if v[k] is False]
              for n, v in verdicts.items()}
    failed = {n: ks for n, ks in failed.items() if ks}
    unjudged = [n for n, v in verdicts.items() if n not in good and n not in failed]
    left_out = list((randomization or {}).get("left out", []))
    parts = [f"{len(good)} of {len(verdicts)} methods pass every check"
             + (f" ({', '.join(good)})" if good else "")]
    if failed:
        parts.append("failing: " + ", ".join(f"{n} ({', '.join(ks)})" for n, ks in failed.items()))
    if unjudged or left_out:
        parts.append("not judged by both checks: " + ", ".join(dict.fromkeys(unjudged + left_out)))
    missing = list(why_not.values())
    both = bool(deletion) and bool(randomization)
    if not both:  # one check alone trusts nothing: it can only find failures
        parts.append(f"only the {'deletion-insertion' if deletion else 'randomization'} check ran")
    severity = "alert" if both and not good else "warning" if failed else "info"
    rnd = (deletion or {}).get("random", {})
    return [finding(
        "trust", title, severity, "; ".join(parts) + "." + (" " + "; ".join(missing) + "." if missing else ""),
        threshold=("a method is trusted when its maps change under randomization (last Spearman correlation at "
                   f"most {randomization['threshold']:g})" if randomization else "a method is trusted when")
        + (" and " if randomization and deletion else " ") + (
            "its deletion area is below and its insertion area above the random order's" if deletion else "")
        + "; alert when both checks ran and no method is trusted, warning when some fail",
        source="Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018 (randomization; its threshold is "
               "the check's parameter); Petsiuk et al., RISE, BMVC 2018 (deletion, insertion; the random order as "
               "the baseline is a " + CONVENTION + ")",
        numbers={"trusted": good, "failed": {n: ks for n, ks in failed.items()}, "methods": len(verdicts),
                 "random deletion AUC": rnd.get("deletion"), "random insertion AUC": rnd.get("insertion")},
        links=evidence)]


def evidence_findings(scores: dict[str, dict], trusted: Optional[list[str]], why: str = "",
                      links: Optional[dict] = None) -> list[Finding]:
    """Where the evidence lies: the mean share of each method's predicted-class map on the object (mass) and how
    often its maximum is on it (pointing game, Zhang et al. 2016), over the sample images, against the object's
    area (what a uniform map scores). ``scores``: method -> {image: (mass, hit, area, figure key)} (the attribution
    pages' ``shared["mask scores"]``); ``trusted``: the methods the trust checks trust (None: the checks did not
    run, every method is read); ``why``: why there are no scores; ``links``: method -> its figure links."""
    title = "Where the evidence lies"
    if why:
        return [not_checked("evidence-location", title, why)]
    if trusted is not None:
        if not trusted:
            return [not_checked("evidence-location", title, "no attribution method passed the trust checks, so "
                                "no map is trusted to show where the evidence lies")]
        scores = {n: s for n, s in scores.items() if n in trusted}
        if not scores:
            return [not_checked("evidence-location", title, "the trusted methods have no mask scores")]
    per = {}
    for name, s in scores.items():
        rows = np.array([v[:3] for v in s.values()], dtype=np.float64)
        per[name] = {"mass": float(np.nanmean(rows[:, 0])), "pointing": float(np.nanmean(rows[:, 1])),
                     "area": float(rows[:, 2].mean()), "images": len(rows)}
    mass = float(np.mean([v["mass"] for v in per.values()]))
    area = float(np.mean([v["area"] for v in per.values()]))
    pointing = float(np.mean([v["pointing"] for v in per.values()]))
    if mass <= area:
        severity, what = "alert", ("relies on context / background: no more of the maps' mass lies on the object "
                                   "than a uniform map would put there")
    elif mass < OBJECT_MASS:
        severity, what = "warning", "relies on context / background: most of the maps' mass lies outside the object"
    else:
        severity, what = "info", "most of the maps' mass lies on the object"
    which = "trusted " if trusted is not None else ""
    which += "maps with a page in this report" if trusted is not None else "maps"
    listed = ", ".join(f"{n} {v['mass']:.2f} (pointing game {v['pointing']:.2f})" for n, v in per.items())
    return [finding(
        "evidence-location", title, severity,
        f"The {which} put a mean {mass:.2f} of their mass on the object ({what}; the object covers "
        f"{area:.2f} of the image), and their maximum lies on it in {pct(pointing)} of the images: {listed}."
        + ("" if trusted is not None else " The trust checks did not run: every method with mask scores is read."),
        threshold=f"warning below {OBJECT_MASS:g} of the mass on the object (most of it outside), alert at or below "
                  "the object's area share (a uniform map's score)",
        source="mass on object and pointing game (Zhang et al., Top-down Neural Attention by Excitation Backprop, "
               f"ECCV 2016, without its tolerance margin); the thresholds are a {CONVENTION}",
        numbers={"mass on object": mass, "object area": area, "pointing game": pointing,
                 "methods": {n: v for n, v in per.items()}},
        links=[lk for n in per for lk in (links or {}).get(n, [])])]


# --- robustness, units, budget --------------------------------------------------------------------------------------


def robustness_findings(robust: Optional[dict], why: str = "", evidence: Optional[list] = None) -> list[Finding]:
    """The median adversarial change that flips the prediction (% of the image norm, normalized inputs) against the
    random-sphere control at the same norm: around each flipped image, random changes as large as its own
    adversarial change, and the share of them that flip the label (the adversarial change flips every one of these
    images by construction). ``robust``: the adversarial analysis's ``shared["robustness"]`` ("sphere scale": the
    sphere's radius as a multiple of the adversarial change; the comparison is like with like only at 1; "flips":
    what a flip does for a task other than classify, e.g. "loses the top detection", counted alike by the attack
    and the sphere)."""
    title = "Robustness"
    if why or not robust:
        return [not_checked("robustness", title, why or "the adversarial analysis has no result")]
    change = np.asarray(robust["change %"], dtype=np.float64)
    ok = np.asarray(robust["changed"], dtype=bool)
    flips = robust.get("flips")
    if not len(ok):  # only a detector's images can all lack what the attack flips
        return [not_checked("robustness", title, "no sample image has a top detection scoring at least the "
                                                 "attack's threshold, so none has one to lose")]
    if not ok.any():
        return [finding("robustness", title, "info",
                        f"No label of the {len(ok)} sample images changed within {robust['steps']} gradient steps."
                        if not flips else f"No gradient attack of at most {robust['steps']} steps {flips} on any of "
                                          f"the {len(ok)} sample images.",
                        numbers={"images": len(ok), "changed": 0}, links=evidence)]
    median = float(np.median(change[ok]))
    severity = "alert" if median < ROBUST_LEVELS[1] else "warning" if median < ROBUST_LEVELS[0] else "info"
    sentence = (f"A median change of {median:.2f}% of the image's norm {flips or 'flips the prediction'} "
                f"({int(ok.sum())} of {len(ok)} sample images)")
    numbers = {"median change %": median, "images": len(ok), "changed": int(ok.sum())}
    if robust.get("sphere fraction"):
        frac = float(np.mean(robust["sphere fraction"]))
        scale = float(robust.get("sphere scale", 1.0))
        flipped, drawn = int(sum(robust.get("sphere changed", []))), int(sum(robust.get("sphere drawn", [])))
        if drawn:
            from ..methods.adversarial import wilson_interval

            upper = wilson_interval(flipped, drawn)[1]  # of the pooled points (95%, Wilson 1927)
            numbers.update({"random points drawn": drawn, "random points flipped": flipped,
                            "random flip share 95% upper bound": upper})
        if scale == 1:
            numbers["random flip share at the same norm"] = frac
            pooled = f"; {flipped} of {drawn} points in all, 95% upper bound {pct(upper)}" if drawn else ""
            sentence += (f"; random changes of the same norm (around each of these images, as large as its own "
                         f"adversarial change) {'do so' if flips else 'flip it'} for {pct(frac)} of the points drawn "
                         "(the random-sphere "
                         f"control, mean over the images{pooled}), against 100% for the adversarial direction: ")
            if frac > 0:
                sentence += (f"at equal norm the adversarial change {'does so' if flips else 'flips the label'} "
                             f"about {1 / frac:,.0f} times as often as random noise")
            elif drawn:
                sentence += (f"at equal norm no random change {'did so' if flips else 'flipped the label'}, so the "
                             f"adversarial change {'does so' if flips else 'flips it'} at least {1 / upper:,.0f} "
                             "times as often as random noise (against the upper bound)")
            else:
                sentence += (f"at equal norm no random change {'did so' if flips else 'flipped the label'}; the "
                             "adversarial one always did")
        else:
            numbers[f"random flip share at {scale:g}x"] = frac
            sentence += (f"; random changes {scale:g} times as large {'do so' if flips else 'flip it'} for "
                         f"{pct(frac)} of the points drawn (the random-sphere control, not at the same norm: set "
                         "analysis.adversarial.sphere_scale = 1 to compare like with like)")
    else:
        sentence += "; the random-sphere control did not run"
    return [finding(
        "robustness", title, severity, sentence + ".",
        threshold=f"warning below {ROBUST_LEVELS[0]:g}% of the image norm, alert below {ROBUST_LEVELS[1]:g}%",
        source="adversarial examples, Szegedy et al., ICLR 2014; random noise against adversarial changes of the "
               "same norm, Fawzi et al., NeurIPS 2016; the thresholds are a " + CONVENTION,
        numbers=numbers, links=evidence)]


def unit_findings(units: Optional[dict], why: str = "", evidence: Optional[list] = None) -> list[Finding]:
    """Dead units (never positive on the image set) of each ReLU and layers constant over the image set.
    ``units``: the distributions analysis's ``shared["units"]`` ({"dead": {relu: (dead, units)}, "constant":
    [layers]})."""
    title = "Dead and constant units"
    if why or units is None:
        return [not_checked("units", title, why or "the distributions analysis has no result")]
    dead = {n: (d / u if u else 0.0, d, u) for n, (d, u) in units["dead"].items()}
    constant = list(units["constant"])
    heavy = {n: v for n, v in dead.items() if v[0] >= DEAD_SHARE}
    worst = max(dead.items(), key=lambda kv: kv[1][0], default=None)
    parts = []
    if constant:
        parts.append(f"constant over the image set: {', '.join(constant)}")
    if heavy:
        parts.append("ReLUs with most units dead: " + ", ".join(f"{n} {d} of {u}" for n, (_, d, u) in heavy.items()))
    if not parts:
        parts.append("no selected layer is constant; " + (
            "no ReLU was measured" if worst is None else "no ReLU has a dead unit" if worst[1][1] == 0 else
            f"the most dead units: {worst[0]}, {worst[1][1]} of {worst[1][2]}"))
    severity = "alert" if constant else "warning" if heavy else "info"
    return [finding(
        "units", title, severity, parts[0][:1].upper() + "; ".join(parts)[1:] + ".",
        threshold=f"alert when a selected layer is constant; warning when a ReLU has at least {pct(DEAD_SHARE)} of "
                  "its units dead",
        source="dead ReLU units, Glorot et al., AISTATS 2011; the thresholds are a " + CONVENTION,
        numbers={"constant layers": constant, "dead share": {n: v[0] for n, v in dead.items()}},
        links=evidence)]


def degenerate_map_findings(counts: dict[str, tuple[int, int]], why: str = "") -> list[Finding]:
    """Attribution maps that show nothing: zero at every pixel, or with NaN / infinite values. ``counts``: method ->
    (degenerate maps, maps) of each attribution page that ran (its ``shared["degenerate maps"]``)."""
    title = "Degenerate maps"
    if why or not counts:
        return [not_checked("degenerate-maps", title, why or "no attribution method ran")]
    bad = {n: (d, m) for n, (d, m) in counts.items() if d}
    total = sum(m for _, m in counts.values())
    if not bad:
        sentence = (f"None of the {total} maps of the {len(counts)} attribution methods is zero at every pixel or "
                    "has non-finite values.")
    else:
        sentence = ("Some maps show nothing (zero at every pixel, or NaN / infinite values drawn as 0): "
                    + ", ".join(f"{n} {d} of {m}" for n, (d, m) in bad.items())
                    + ". Their pages say what such a map means for each method.")
    return [finding(
        "degenerate-maps", title, "warning" if bad else "info", sentence,
        threshold="warning when any map of a method is zero at every pixel or not finite", source=CONVENTION,
        numbers={"degenerate maps": {n: d for n, (d, _) in counts.items()},
                 "maps": {n: m for n, (_, m) in counts.items()}},
        links=[analysis_link(n, None, n) for n in bad])]


def budget_findings(missing: dict[str, str]) -> list[Finding]:
    """What the compute budget (or a failure) left out of the analyses the findings read: ``missing`` name -> why."""
    title = "Left out"
    if not missing:
        return [finding("left-out", title, "info", "Every analysis the findings read ran.")]
    return [finding(
        "left-out", title, "warning",
        "Did not run, so the findings that read them say 'not checked': "
        + "; ".join(f"{n} ({why})" for n, why in missing.items()) + ".",
        threshold="warning when an analysis the findings read did not run", source=CONVENTION,
        numbers={"analyses": sorted(missing)},
        links=[analysis_link(n, None, n) for n in missing])]


# --- the analysis ---------------------------------------------------------------------------------------------------


def chosen(name: str, config: Any) -> bool:
    return (not config.only or name in config.only) and name not in config.skip


@register
class Findings(Analysis):
    name = "findings"
    tasks = EVERY_TASK  # another task gets the predictions page's own score only (`task_score_findings`)
    title = "Findings"
    section = "findings"
    summary = ("the report's conclusions first: each a sentence with its numbers, the threshold that decided it and "
               "links to the evidence")
    paper = "Mitchell et al., Model Cards for Model Reporting, FAT* 2019"
    paper_url = "https://arxiv.org/abs/1810.03993"
    order = 10
    needs_images = False
    nothing_to_read = "none of the analyses it reads applies to this model"

    def reads(self, params: Any, config: Any) -> list[str]:
        return [a.name for a in all_analyses() if chosen(a.name, config) and (
            a.name in PRODUCERS or isinstance(a, AttributionAnalysis))]

    def run(self, ctx: Any, params: Any, reduced: dict, upstream: Upstream = NOTHING) -> Result:
        result = Result()
        config = ctx.config
        pred = ctx.predictions
        names = list(ctx.class_names)

        def why_not(name: str) -> str:
            if name in upstream.missing:
                return f"'{name}' did not run: {upstream.missing[name]}"
            if not chosen(name, config):
                return f"'{name}' was not chosen (--only / --skip)"
            if name not in upstream.params:
                return f"'{name}' does not apply to this model"
            return ""

        def shown(name: str, key: str, label: str, table: bool = True) -> list:
            """A link to figure ``key`` of analysis ``name`` when that analysis ran and (for a table, whose key the
            kept result shows) drew it; plots are not kept, so a plot's key is the analysis's to keep."""
            r = upstream.results.get(name)
            if r is None or (table and key not in {i.key for i in r.items}):
                return []
            return [analysis_link(name, key, label)]

        task = getattr(pred, "task", "classify")
        if task not in ("classify", "binary"):
            # the page's own score of the task; the classifier's findings (accuracy, calibration...) do not apply
            r = upstream.results.get("predictions")
            findings = task_score_findings(task, r.shared.get("headline") if r is not None else None,
                                           why_not("predictions") or (r.shared.get("no score", "") if r else ""))
            findings += collapse_findings(task, pred, names)
            # the adversarial page counts the task's own flip (its shared "flips" says which)
            adv = upstream.results.get("adversarial")
            findings += robustness_findings(adv.shared.get("robustness") if adv is not None else None,
                                            why_not("adversarial"), shown("adversarial", "summary", "untargeted attack")
                                            + shown("adversarial", "sphere", "random-sphere control"))
            findings = by_severity(findings)  # an alert first, as for a classifier
            result.shared["findings"] = findings
            for s in SEVERITIES:
                result.metrics[f"findings: {s}"] = sum(f.severity == s for f in findings)
            return result
        if task == "binary":  # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]: every finding below holds as stated
            from .predictions import two_classes

            pred = two_classes(pred)
        evidence = shown("predictions", "per-class", "per-class accuracy") + shown(
            "predictions", "confusion", "confusion matrix", table=False)
        diagram = [analysis_link(self.name, "reliability", "reliability diagram")]
        findings = accuracy_findings(pred.logits, pred.labels, names, evidence)
        cal, rel = calibration_findings(pred.logits, pred.labels, shown("predictions", "per-class",
                                                                        "per-class accuracy"), diagram)
        findings += cal
        findings += confusion_findings(pred.logits, pred.labels, names, shown("predictions", "confusion",
                                                                              "confusion matrix", table=False))
        findings += imbalance_findings(pred.labels, names, [link("data.html", None, "the image set")])
        quality = upstream.results.get("data-quality")
        page = [analysis_link("data-quality", None, "label errors and near-duplicates")] if quality else []
        findings += label_error_findings(
            quality.shared.get("label issues") if quality else None, why_not("data-quality"),
            shown("data-quality", "label-errors", "likely label errors") or page)
        findings += duplicate_findings(
            quality.shared.get("duplicates") if quality else None, why_not("data-quality"),
            shown("data-quality", "duplicate-pairs", "near-duplicate pairs") or page)
        if rel is not None:
            result.items.append(Plot(
                key="reliability", kind="reliability", label="Reliability diagram",
                caption=f"The {rel.n} labelled images' predictions in {len(rel.count)} equal-width bins of their "
                        "top-1 confidence (Guo et al. 2017): bar = accuracy of the bin, red outline = its mean "
                        f"confidence, dashed = a calibrated model, numbers = images per bin. ECE {rel.ece:.4f}.",
                data={"lower": rel.lower.tolist(), "upper": rel.upper.tolist(), "count": rel.count.tolist(),
                      "accuracy": [None if np.isnan(v) else float(v) for v in rel.accuracy],
                      "confidence": [None if np.isnan(v) else float(v) for v in rel.confidence],
                      "ece": rel.ece, "title": f"Reliability: ECE {rel.ece:.3f}"}))
            result.metrics["expected calibration error"] = rel.ece

        def shared(name: str, key: str) -> Optional[dict]:
            r = upstream.results.get(name)
            return r.shared.get(key) if r is not None else None

        # which maps to trust
        trust_why = {n: why_not(n) for n in ("deletion-insertion", "randomization-test") if why_not(n)}
        deletion, randomization = shared("deletion-insertion", "trust"), shared("randomization-test", "trust")
        trust_links = shown("deletion-insertion", "trust", "deletion and insertion") + shown(
            "randomization-test", "trust", "randomization check")
        findings += trust_findings(deletion, randomization, trust_why, trust_links)
        trusted = trusted_methods(trust_verdicts(deletion, randomization)) if deletion and randomization else None

        # where the evidence lies
        methods = [n for n in upstream.params if isinstance(get(n), AttributionAnalysis)]
        scores = {n: s for n in methods if (s := shared(n, "mask scores"))}
        if not methods:
            why = "no attribution method was chosen or applies to this model"
        elif not any(n in upstream.results for n in methods):
            why = "no attribution method ran: " + "; ".join(why_not(n) for n in methods if why_not(n))
        elif not scores:
            masks = ctx.images.masks
            why = ("the image set has no object masks (give a folder of them with --masks; the zoo's shapes have "
                   "them)" if masks is None else
                   "none of the sample images has a mask (the data page lists the images without one)"
                   if all(masks.get(i) is None for i in ctx.samples) else
                   "no attribution map has the image's size, so none is scored against the masks")
        else:
            why = ""
        map_links = {n: [analysis_link(n, v[3], f"{n}: {ctx.images.names[i]}") for i, v in list(s.items())[:2]]
                     for n, s in scores.items()}
        findings += evidence_findings(scores, trusted, why, map_links)
        ran = [n for n in methods if n in upstream.results]
        findings += degenerate_map_findings(
            {n: c for n in ran if (c := shared(n, "degenerate maps")) is not None},
            "" if ran else "no attribution method ran" if methods else
            "no attribution method was chosen or applies to this model")

        findings += robustness_findings(shared("adversarial", "robustness"), why_not("adversarial"),
                                        shown("adversarial", "summary", "untargeted attack")
                                        + shown("adversarial", "sphere", "random-sphere control"))
        findings += unit_findings(shared("distributions", "units"), why_not("distributions"),
                                  shown("distributions", "dead", "dead units of the ReLUs")
                                  + shown("distributions", "summary", "per-layer statistics"))
        findings += budget_findings(dict(upstream.missing))

        findings = by_severity(findings)
        result.shared["findings"] = findings
        for s in SEVERITIES:
            result.metrics[f"findings: {s}"] = sum(f.severity == s for f in findings)
        return result
