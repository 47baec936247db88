"""Predictions over the whole image set: accuracy, per-class accuracy, confusion matrix, the worst predictions; for
the other tasks (issue 30) what their outputs score against the truths given (`reportgen.methods.task_metrics`):
AP and F1 per label, predicted against true values, IoU per class, AP per class at IoU 0.5, same-class retrieval;
and, with or without truths, a summary of the outputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..artifacts import Grid, NotApplicable, Picture, Plot, Result, Table
from ..config import doc
from . import EVERY_TASK, Analysis, NOTHING, register


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy (natural log) of ``logits`` (M, K) against integer ``labels`` (M,)."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts: rows = true class, columns = predicted class."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (labels, preds), 1)
    return m


# Bar charts and confusion matrices of more classes than this show the busiest classes (an ImageNet model has 1,000)
SHOWN_CLASSES = 30


def busiest_classes(k: int, *class_arrays: np.ndarray, limit: int = SHOWN_CLASSES) -> np.ndarray:
    """The at most ``limit`` classes (of ``k``) that occur most often in ``class_arrays`` (ties: lower index first),
    in ascending order; only classes that occur at all."""
    counts = sum(np.bincount(a, minlength=k) for a in class_arrays)
    order = np.lexsort((np.arange(k), -counts))
    return np.sort(order[: min(limit, int((counts > 0).sum()))])


@dataclass
class PredictionParams:
    worst: int = field(default=12, metadata=doc("How many of the worst predictions (highest loss) to show.",
                                               min=0, max=100))


@register
class Predictions(Analysis):
    name = "predictions"
    title = "Predictions"
    section = "model"
    summary = ("the model's predictions over the whole image set scored against its labels: accuracy, confusion matrix "
               "and worst predictions of a classifier; AP and F1 per label, errors per output, IoU per class, AP per "
               "class at IoU 0.5 or same-class retrieval for the other tasks")
    order = 10
    needs_images = False
    needs_logits = True
    Params = PredictionParams
    tasks = EVERY_TASK

    def cost(self, ctx, params, upstream=NOTHING):
        # a segmentation model runs again on the few sample images whose masks are drawn
        if getattr(ctx, "task", "classify") == "segment":
            return float(min(len(ctx.samples), SAMPLE_FIGURES) * (ctx.facts.macs or 0))
        return 0.0

    def run(self, ctx, params, reduced, upstream=NOTHING):
        predictions = ctx.predictions
        task = getattr(predictions, "task", "classify")
        if task not in ("classify", "binary"):
            return TASK_PAGES[task](ctx, params, finite_rows(ctx, predictions))
        if task == "binary":
            predictions = two_classes(predictions)
        finite = np.isfinite(predictions.logits).all(axis=1)
        if not finite.any():
            raise NotApplicable(f"the model's logits are NaN or infinite for all {len(finite)} images (a diverged "
                                "or broken checkpoint): there are no predictions")
        notes = []
        if not finite.all():
            notes.append(f"The logits are NaN or infinite for {int((~finite).sum())} of the {len(finite)} images "
                         f"(e.g. {ctx.images.names[int(predictions.indices[~finite][0])]}): they are left out of "
                         "every number on this page.")
            predictions = type(predictions)(predictions.indices[finite], predictions.logits[finite],
                                            predictions.labels[finite])
        names = ctx.class_names
        k = len(names)
        preds = predictions.preds
        probs = predictions.probs
        result = Result(notes=notes)
        result.metrics["images"] = int(len(preds))
        counts = np.bincount(preds, minlength=k)
        shown = busiest_classes(k, preds) if k > SHOWN_CLASSES else np.arange(k)
        rest = int(len(preds) - counts[shown].sum())
        result.items.append(Plot(
            key="predicted-classes", kind="bars", label="Predicted classes",
            caption="How often each class is predicted over the image set (arg-max of the logits)"
                    + (f"; the {len(shown)} most predicted of the {k} classes"
                       + (f" ({rest} images are predicted as other classes)" if rest else "") if k > SHOWN_CLASSES
                       else "") + ".",
            data={"names": [names[c] for c in shown], "values": counts[shown].tolist(), "ylabel": "images"}))
        known = predictions.labels >= 0
        if not known.any():
            result.notes.append("The image set has no labels, so accuracy cannot be measured.")
            return result
        labels = predictions.labels[known]
        p = preds[known]
        acc = float((labels == p).mean())
        loss = cross_entropy(predictions.logits[known], labels)
        result.metrics.update({"accuracy": acc, "loss": float(loss.mean()), "labelled images": int(known.sum())})
        per_class = []
        for c in range(k):
            sel = labels == c
            per_class.append(float((p[sel] == c).mean()) if sel.any() else float("nan"))
        listed = [c for c in range(k) if k <= SHOWN_CLASSES or (labels == c).any()]
        result.items.append(Table(
            key="per-class", label="Per-class accuracy",
            caption="Accuracy of each true class (recall); n = labelled images of that class"
                    + (f"; the {len(listed)} of the {k} classes that have labelled images" if len(listed) < k else "")
                    + ".",
            columns=["class", "n", "accuracy"],
            rows=[[names[c], int((labels == c).sum()), per_class[c]] for c in listed]))
        matrix = confusion_matrix(labels, p, k)
        caption = ("Rows are true classes, columns predicted classes; colour = fraction of the row, numbers = image "
                   "counts.")
        if k > SHOWN_CLASSES:
            shown = busiest_classes(k, labels, p)
            # the other classes' predictions in one column, so that each row still holds all its images
            other = matrix[shown].sum(axis=1) - matrix[np.ix_(shown, shown)].sum(axis=1)
            matrix = np.concatenate([matrix[np.ix_(shown, shown)], other[:, None]], axis=1)
            caption += (f" Only the {len(shown)} classes of the {k} that occur most often as true or predicted class "
                        "are drawn; the last column counts predictions of all other classes.")
            cm_names = [names[c] for c in shown]
            cm_data = {"class_names": cm_names, "col_names": [*cm_names, "other"]}
        else:
            cm_data = {"class_names": list(names)}
        result.items.append(Plot(
            key="confusion", kind="confusion", label="Confusion matrix", caption=caption,
            data={"matrix": matrix.tolist(), **cm_data}))
        if params.worst and ctx.is_image_model:
            rows = np.argsort(-loss, kind="stable")[: params.worst]
            image_idx = predictions.indices[known][rows]
            for rank, (r, i) in enumerate(zip(rows, image_idx)):
                disp = ctx.images.display(int(i)).astype(np.float64) / 255.0
                t, q = int(labels[r]), int(p[r])
                result.items.append(Picture(
                    key=f"worst-{rank:02d}", array=disp, style="rgb", group="Worst predictions",
                    label=f"#{rank + 1} {ctx.images.names[int(i)]}", image=None,
                    caption=f"true {names[t]} (p={probs[known][r, t]:.2f}), predicted {names[q]} "
                            f"(p={probs[known][r, q]:.2f}), loss {loss[r]:.2f}"))
        return result


# --- the other tasks (issue 30) -------------------------------------------------------------------------------------

SAMPLE_FIGURES = 4  # sample images drawn with their detections, masks or nearest neighbours
MAX_POINTS = 5000  # points of a predicted-against-true scatter (a seeded pick beyond it)
MAX_OUTPUTS = 6  # outputs of a regression drawn (the table lists all)
DRAWN_SCORE = 0.5  # detections drawn on the sample images: those scoring at least this (at most MAX_DRAWN)
MAX_DRAWN = 20
NEIGHBOURS = 5  # nearest neighbours per query image
# a multi-label prediction: sigmoid above this (Predictions.preds' 0.5; the contract of issue 30)
THRESHOLD = 0.5
NO_LABELS = "No labels given: give --labels {what} to score the predictions; what is shown is the outputs alone."


def two_classes(predictions: Any) -> Any:
    """A binary model's predictions as a two-class classifier's: logits (M, 2) = [0, z], whose softmax is exactly
    [1 - sigmoid(z), sigmoid(z)] and whose cross-entropy is the binary cross-entropy; the arg-max is 1 where z > 0
    (p > 0.5)."""
    z = np.asarray(predictions.logits, dtype=np.float32)[:, :1]
    return type(predictions)(predictions.indices, np.concatenate([np.zeros_like(z), z], axis=1), predictions.labels)


def finite_rows(ctx: Any, predictions: Any) -> tuple[Any, list]:
    """``predictions`` without the rows whose per-image scores are NaN or infinite, and the note saying so;
    `NotApplicable` when no row is left."""
    finite = np.isfinite(predictions.logits).all(axis=1)
    if not finite.any():
        raise NotApplicable(f"the model's outputs are NaN or infinite for all {len(finite)} images (a diverged or "
                            "broken checkpoint): there are no predictions")
    if finite.all():
        return predictions, []
    note = (f"The outputs are NaN or infinite for {int((~finite).sum())} of the {len(finite)} images (e.g. "
            f"{ctx.images.names[int(predictions.indices[~finite][0])]}): they are left out of every number on this "
            "page.")
    keep = np.flatnonzero(finite)
    change: dict = {"indices": predictions.indices[keep], "logits": predictions.logits[keep],
                    "labels": predictions.labels[keep]}
    for name in ("detections", "truth_boxes"):
        if getattr(predictions, name, None) is not None:
            change[name] = [getattr(predictions, name)[i] for i in keep]
    if getattr(predictions, "seg_pixels", None) is not None:
        change["seg_pixels"] = predictions.seg_pixels[keep]
    return dataclasses.replace(predictions, **change), [note]


def top_classes(counts: np.ndarray, limit: int = SHOWN_CLASSES) -> np.ndarray:
    """The at most ``limit`` classes of highest ``counts`` (K,) that are above 0 (ties: lower index first), in
    ascending order."""
    order = np.lexsort((np.arange(len(counts)), -counts))
    return np.sort(order[: min(limit, int((counts > 0).sum()))])


def shown_samples(ctx: Any, predictions: Any) -> list:
    """The first `SAMPLE_FIGURES` sample images that have a row in ``predictions`` (finite outputs)."""
    rows = set(np.asarray(predictions.indices).tolist())
    return [int(i) for i in ctx.samples if int(i) in rows][:SAMPLE_FIGURES]


def _none(x: Any) -> Any:
    """A float for a table or a chart; None where it is NaN (no value)."""
    return None if x is None or not np.isfinite(x) else float(x)


def _display(ctx: Any, i: int) -> np.ndarray:
    arr = ctx.images.display(int(i)).astype(np.float64) / 255.0
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def multilabel_page(ctx: Any, params: Any, rows: tuple) -> Result:
    from ..methods.task_metrics import multilabel_scores, precision_recall_curve, sigmoid

    predictions, notes = rows
    names = list(ctx.class_names)
    logits, labels = predictions.logits.astype(np.float64), np.asarray(predictions.labels)
    result = Result(notes=notes)
    result.metrics["images"] = int(len(logits))
    on = sigmoid(logits) > THRESHOLD
    counts = on.sum(axis=0)
    shown = top_classes(counts) if len(names) > SHOWN_CLASSES else np.arange(len(names))
    frequency = Plot(
        key="predicted-labels", kind="bars", label="Predicted labels",
        caption=f"How many images each label is predicted present in (sigmoid above {THRESHOLD:g}); "
                f"{float(on.sum(axis=1).mean()):.2f} labels per image on average"
                + (f"; the {len(shown)} most predicted of the {len(names)} labels" if len(shown) < len(names) else "")
                + ".",
        data={"names": [names[c] for c in shown], "values": counts[shown].tolist(), "ylabel": "images"})
    known = labels >= 0
    if not known.any():
        result.items.append(frequency)
        result.notes.append(NO_LABELS.format(what="with a CSV of labels per image (header image,<label names>)"))
        result.shared["no score"] = "no labels were given (--labels)"
        return result
    s = multilabel_scores(logits, labels, THRESHOLD)
    scored = int(np.isfinite(s.ap).sum())
    result.metrics.update({"mean average precision": s.macro_ap, f"micro F1 at {THRESHOLD:g}": s.micro_f1,
                           f"macro F1 at {THRESHOLD:g}": s.macro_f1,
                           "labelled images": int(known.any(axis=1).sum())})
    result.items.append(Plot(
        key="label-scores", kind="label-scores", label="AP and F1 per label",
        caption=f"Average precision of each label's ranking of the images (threshold-free) and F1 of its "
                f"predictions at sigmoid > {THRESHOLD:g}; the mean AP over the {scored} labels with a known "
                f"positive is {s.macro_ap:.3f}" + (f" ({len(names) - scored} labels have no known positive: AP "
                                                    "undefined)" if scored < len(names) else "") + ".",
        data={"names": names, "series": {"AP": [_none(v) for v in s.ap],
                                         f"F1 at {THRESHOLD:g}": [_none(v) for v in s.f1]},
              "sort_by": "AP", "xlabel": "score", "title": "per label, highest AP first"}))
    curves = []
    for j in range(len(names)):
        p, r = precision_recall_curve(logits[known[:, j], j], labels[known[:, j], j] == 1)
        if len(p):
            curves.append({"name": names[j], "precision": p, "recall": r})
    p, r = precision_recall_curve(logits[known], labels[known] == 1)
    result.items.append(Plot(
        key="pr-curves", kind="pr-curves", label="Precision-recall curves",
        caption="Precision against recall as the threshold falls, one curve per label"
                + (" (grey)" if len(curves) > 10 else "") + "; black: every known (image, label) pair pooled "
                "(micro-average). A curve high and to the right ranks that label's images well.",
        data={"curves": curves, "micro": {"precision": p, "recall": r} if len(p) else None}))
    result.items.append(Table(
        key="per-label", label="Per-label scores",
        caption=f"n = images whose label is known; positives among them; predicted = sigmoid above "
                f"{THRESHOLD:g}; AP as scikit-learn's average_precision_score (empty: no known positive).",
        columns=["label", "n", "positives", "predicted", "AP", "precision", "recall", "F1"],
        rows=[[names[j], int(s.known[j]), int(s.positives[j]), int(s.predicted[j]), _none(s.ap[j]),
               float(s.precision[j]), float(s.recall[j]), float(s.f1[j])] for j in range(len(names))]))
    result.items.append(frequency)
    result.shared["headline"] = {
        "sentence": f"Mean average precision {s.macro_ap:.3f} over {scored} labels; micro F1 {s.micro_f1:.3f} at "
                    f"sigmoid > {THRESHOLD:g}.",
        "numbers": {"mean average precision": s.macro_ap, "micro F1": s.micro_f1, "labels": scored},
        "key": "label-scores", "label": "AP and F1 per label"}
    return result


def regress_page(ctx: Any, params: Any, rows: tuple) -> Result:
    from ..methods.task_metrics import regression_scores

    predictions, notes = rows
    names = list(ctx.class_names) or [f"output {j}" for j in range(predictions.logits.shape[1])]
    out = predictions.logits.astype(np.float64)
    truth = np.asarray(predictions.labels, dtype=np.float64)
    result = Result(notes=notes)
    result.metrics["images"] = int(len(out))
    drawn = list(range(min(MAX_OUTPUTS, out.shape[1])))
    more = f" (the first {len(drawn)} of {out.shape[1]} outputs)" if len(drawn) < out.shape[1] else ""
    histograms = Plot(
        key="outputs", kind="output-histograms", label="Predicted values",
        caption=f"The distribution of each output over the {len(out)} images{more}.",
        data={"series": [{"name": names[j], "values": out[:, j]} for j in drawn], "xlabel": "predicted value"})
    if not np.isfinite(truth).any():
        result.items.append(histograms)
        result.notes.append(NO_LABELS.format(what="with a CSV of values per image (header image,<output names>)"))
        result.shared["no score"] = "no labels were given (--labels)"
        return result
    s = regression_scores(out, truth)
    if out.shape[1] == 1:
        result.metrics.update({"MAE": _none(s.mae[0]), "RMSE": _none(s.rmse[0]), "R²": _none(s.r2[0]),
                               "Pearson r": _none(s.pearson[0])})
    elif np.isfinite(s.r2).any():
        result.metrics[f"mean R² over {int(np.isfinite(s.r2).sum())} outputs"] = float(np.nanmean(s.r2))
    result.metrics["labelled images"] = int(np.isfinite(truth).any(axis=1).sum())
    rng = ctx.rng("predictions/scatter")
    panels = []
    for j in drawn:
        ok = np.flatnonzero(np.isfinite(truth[:, j]))
        if not len(ok):
            continue
        pick = np.sort(rng.choice(ok, MAX_POINTS, replace=False)) if len(ok) > MAX_POINTS else ok
        panels.append({"name": names[j], "true": truth[pick, j], "pred": out[pick, j], "r2": _none(s.r2[j]),
                       "mae": float(s.mae[j])})
    picked = " (a seeded pick of 5,000 per output)" if any(s.n[j] > MAX_POINTS for j in drawn) else ""
    result.items.append(Plot(
        key="predicted-vs-true", kind="predicted-vs-true", label="Predicted against true",
        caption=f"Left: each labelled image's prediction against its true value{picked}; a perfect model lies on "
                f"the dashed line. Right: the residuals (predicted − true); a shifted histogram is a bias{more}.",
        data={"outputs": panels}))
    result.items.append(Table(
        key="per-output", label="Per-output scores",
        caption="n = images with a known value; MAE and RMSE in the output's unit; R² = 1 − SS_res / SS_tot "
                "(1 perfect, 0 as good as the mean, empty for a constant truth); r = Pearson correlation.",
        columns=["output", "n", "MAE", "RMSE", "R²", "r"],
        rows=[[names[j], int(s.n[j]), _none(s.mae[j]), _none(s.rmse[j]), _none(s.r2[j]), _none(s.pearson[j])]
              for j in range(out.shape[1])]))
    result.items.append(histograms)
    if not np.isfinite(s.r2).any():
        result.shared["no score"] = "R² is undefined for every output (a constant truth or a single value)"
    else:
        r2 = float(s.r2[0]) if out.shape[1] == 1 else float(np.nanmean(s.r2))
        result.shared["headline"] = {
            "sentence": (f"R² {r2:.3f} and MAE {s.mae[0]:.3g} on {int(s.n[0])} labelled images."
                         if out.shape[1] == 1 else
                         f"Mean R² {r2:.3f} over {int(np.isfinite(s.r2).sum())} outputs."),
            "numbers": {"R2": r2, "outputs": int(out.shape[1])},
            "key": "predicted-vs-true", "label": "predicted against true"}
    return result


def predicted_masks(ctx: Any, indices: list) -> np.ndarray:
    """The predicted classes (S, H, W) int64 of a segmentation model on images ``indices``, at the input size."""
    import torch

    from ..capture import preserved
    from ..tasks import segment_logits

    x = ctx.images.load_inputs(list(indices), ctx.device)
    with preserved(ctx.model), torch.no_grad():
        maps = segment_logits(ctx.model(x), tuple(x.shape[-2:]))
    return maps.argmax(dim=1).cpu().numpy().astype(np.int64)


def segment_page(ctx: Any, params: Any, rows: tuple) -> Result:
    from ..methods.task_metrics import segmentation_scores

    predictions, notes = rows
    names = list(ctx.class_names)
    k = len(names)
    result = Result(notes=notes)
    result.metrics["images"] = int(len(predictions.indices))
    pixels = np.asarray(predictions.seg_pixels, dtype=np.int64).sum(axis=0)
    shown = top_classes(pixels) if k > SHOWN_CLASSES else np.arange(k)
    areas = Plot(
        key="predicted-areas", kind="bars", label="Predicted class areas",
        caption="The share of all pixels of the image set predicted as each class (arg-max of the logits)"
                + (f"; the {len(shown)} largest of the {k} classes" if len(shown) < k else "") + ".",
        data={"names": [names[c] for c in shown], "values": (pixels[shown] / max(pixels.sum(), 1)).tolist(),
              "ylabel": "share of the pixels"})
    conf = getattr(predictions, "seg_confusion", None)
    truth = getattr(ctx.images, "truth", None)
    masks = truth.masks if truth is not None else None
    samples = shown_samples(ctx, predictions)
    figures = []
    if samples and ctx.is_image_model:
        pred = predicted_masks(ctx, samples)
        for n, (i, p) in enumerate(zip(samples, pred)):
            t = masks.get(int(i)) if masks is not None else None
            figures.append(Plot(
                key=f"masks-{n:02d}", kind="masks", label=ctx.images.names[int(i)], group="Sample masks",
                caption=("True (where given) and predicted classes laid over the image" if t is not None else
                         "Predicted classes laid over the image") + "; one colour per class.",
                data={"image": _display(ctx, i), "pred": p, "truth": t, "class_names": names,
                      "title": ctx.images.names[int(i)]}))
    if conf is None or np.asarray(conf).sum() == 0:
        result.items.append(areas)
        result.items.extend(figures)
        result.notes.append(NO_LABELS.format(what="with a folder of label masks (one PNG per image, pixel = class "
                                                  "index, 255 = not scored)")
                            if conf is None else "The label masks give no scored pixel (all 255): nothing to score.")
        result.shared["no score"] = ("no label masks were given (--labels)" if conf is None else
                                     "the label masks give no scored pixel")
        return result
    s = segmentation_scores(conf)
    result.metrics.update({"mIoU": s.miou, "pixel accuracy": s.pixel_accuracy, "classes scored": s.classes,
                           "scored pixels": int(np.asarray(conf).sum())})
    result.items.append(Plot(
        key="class-iou", kind="class-scores", label="IoU per class",
        caption=f"Intersection over union of each class's predicted and true pixels over the image set, highest "
                f"first; dashed: their mean, mIoU {s.miou:.3f} over the {s.classes} classes present in the truth or "
                "the prediction" + (f" ({k - s.classes} classes absent from both are left out)"
                                    if s.classes < k else "") + ".",
        data={"names": names, "values": [_none(v) for v in s.iou], "mean": s.miou, "mean_label": "mIoU",
              "xlabel": "IoU", "title": "per class, highest first"}))
    m = np.asarray(conf, dtype=np.int64)
    caption = ("Rows are true classes, columns predicted classes; colour and numbers = the share (%) of the true "
               "class's pixels.")
    busy = np.flatnonzero(m.sum(axis=1) + m.sum(axis=0) > 0)
    if len(busy) > SHOWN_CLASSES:
        keep = top_classes(m.sum(axis=1) + m.sum(axis=0))
        other = m[keep].sum(axis=1) - m[np.ix_(keep, keep)].sum(axis=1)
        matrix = np.concatenate([m[np.ix_(keep, keep)], other[:, None]], axis=1)
        caption += (f" Only the {len(keep)} classes of the {k} with the most true and predicted pixels are drawn; the "
                    "last column holds their pixels predicted as any other class.")
        data = {"matrix": matrix.tolist(), "class_names": [names[c] for c in keep],
                "col_names": [*[names[c] for c in keep], "other"]}
    else:
        data = {"matrix": m[np.ix_(busy, busy)].tolist(), "class_names": [names[c] for c in busy]}
        if len(busy) < k:
            caption += f" The {k - len(busy)} classes absent from truth and prediction are left out."
    result.items.append(Plot(key="confusion", kind="pixel-confusion", label="Pixel confusion matrix",
                             caption=caption, data=data))
    result.items.append(Table(
        key="per-class", label="Per-class IoU",
        caption="True and predicted pixels of each class over the image set (pixels labelled 255 left out); IoU = "
                "TP / (TP + FP + FN); empty: the class is absent from both.",
        columns=["class", "true pixels", "predicted pixels", "IoU"],
        rows=[[names[c], int(s.true_pixels[c]), int(s.predicted_pixels[c]), _none(s.iou[c])] for c in range(k)
              if s.true_pixels[c] or s.predicted_pixels[c] or k <= SHOWN_CLASSES]))
    result.items.extend(figures)
    result.items.append(areas)
    result.shared["headline"] = {
        "sentence": f"mIoU {s.miou:.3f} over {s.classes} classes; pixel accuracy {s.pixel_accuracy:.3f}.",
        "numbers": {"mIoU": s.miou, "pixel accuracy": s.pixel_accuracy, "classes": s.classes},
        "key": "class-iou", "label": "IoU per class"}
    return result


def detect_page(ctx: Any, params: Any, rows: tuple) -> Result:
    from ..methods.task_metrics import detection_scores

    predictions, notes = rows
    names = list(ctx.class_names)
    k = len(names)
    dets = predictions.detections
    truths = getattr(predictions, "truth_boxes", None)
    result = Result(notes=notes)
    result.metrics["images"] = int(len(dets))
    confident = [d["scores"] >= DRAWN_SCORE for d in dets]
    per_image = np.array([int(c.sum()) for c in confident])
    per_class = np.zeros(k, dtype=np.int64)
    for d, c in zip(dets, confident):
        np.add.at(per_class, np.asarray(d["labels"])[c], 1)
    result.metrics[f"detections per image (score ≥ {DRAWN_SCORE:g})"] = float(per_image.mean()) if len(dets) else 0.0
    all_scores = np.concatenate([d["scores"] for d in dets]) if dets else np.zeros(0)
    series = [{"name": f"detections per image (score ≥ {DRAWN_SCORE:g})", "values": per_image, "counts": True}]
    if len(all_scores):
        series.append({"name": "detection scores", "values": all_scores})
        label, caption = "Detections per image and their scores", (
            f"Left: how many detections of score {DRAWN_SCORE:g} or more each image has; right: the scores of all "
            f"{len(all_scores)} detections kept (the model's top 100 per image at most).")
    else:
        label, caption = "Detections per image", (
            f"How many detections of score {DRAWN_SCORE:g} or more each image has: the model returns no detection "
            f"at all on any of the {len(dets)} images, so there is no score to show.")
    summary = [Plot(key="detections-per-image", kind="output-histograms", label=label, caption=caption,
                    data={"series": series, "xlabel": ""})]
    if per_class.any():
        shown = top_classes(per_class) if k > SHOWN_CLASSES else np.arange(k)
        summary.append(Plot(
            key="detections-per-class", kind="bars", label="Detections per class",
            caption=f"Detections of score {DRAWN_SCORE:g} or more per class over the image set"
                    + (f"; the {len(shown)} most detected of the {k} classes" if len(shown) < k else "") + ".",
            data={"names": [names[c] for c in shown], "values": per_class[shown].tolist(), "ylabel": "detections"}))
    figures = []
    for n, i in enumerate(shown_samples(ctx, predictions) if ctx.is_image_model else []):
        row = predictions.row(int(i))
        d = dets[row]
        sel = np.flatnonzero(d["scores"] >= DRAWN_SCORE)[:MAX_DRAWN]
        how = f"Solid: detections of score {DRAWN_SCORE:g} or more ({len(sel)}), with class and score; "
        if not len(sel):
            sel = np.arange(min(3, len(d["scores"])))
            how = (f"Solid: no detection scores {DRAWN_SCORE:g} or more: the {len(sel)} highest are drawn, with "
                   "class and score; " if len(sel) else "The model returns no detection for this image; ")
        t = truths[row] if truths is not None else None
        figures.append(Plot(
            key=f"detections-{n:02d}", kind="detections", label=ctx.images.names[int(i)], group="Sample detections",
            caption=how + ("dashed: the true boxes. " if t is not None else "") + "One colour per class.",
            data={"image": _display(ctx, i), "boxes": d["boxes"][sel], "labels": d["labels"][sel],
                  "scores": d["scores"][sel], "truth_boxes": None if t is None else t["boxes"],
                  "truth_labels": None if t is None else t["labels"], "class_names": names,
                  "title": ctx.images.names[int(i)]}))
    scored = [r for r in range(len(dets)) if truths is not None and truths[r] is not None]
    if not scored:
        result.items.extend(figures + summary)
        result.notes.append(NO_LABELS.format(what="with a COCO-style JSON of boxes (categories named as the model's "
                                                  "classes)"))
        result.shared["no score"] = "no true boxes were given (--labels)"
        return result
    s = detection_scores([dets[r] for r in scored], [truths[r] for r in scored], k)
    result.metrics.update({"mAP@0.5": _none(s.map), "classes with true boxes": s.classes,
                           "labelled images": len(scored), "true boxes": int(s.truths.sum())})
    if s.classes:
        result.items.append(Plot(
            key="class-ap", kind="class-scores", label="AP per class at IoU 0.5",
            caption=f"Average precision of each class's detections at IoU 0.5 (COCO's 101-point interpolation, as "
                    f"pycocotools computes AP50), over the {len(scored)} labelled images; dashed: their mean, mAP@0.5 "
                    f"{s.map:.3f} over the {s.classes} classes with true boxes.",
            data={"names": names, "values": [_none(v) for v in s.ap], "mean": s.map, "mean_label": "mAP@0.5",
                  "xlabel": "AP at IoU 0.5", "title": "per class, highest first"}))
    result.items.extend(figures)
    result.items.append(Table(
        key="per-class", label="Per-class AP",
        caption="True boxes, detections (at most 100 per image) and those matched to a true box at IoU 0.5 or more "
                "(each true box once, highest score first); AP empty: the class has no true box.",
        columns=["class", "true boxes", "detections", "matched", "AP@0.5"],
        rows=[[names[c], int(s.truths[c]), int(s.detections[c]), int(s.true_positives[c]), _none(s.ap[c])]
              for c in range(k) if s.truths[c] or s.detections[c] or k <= SHOWN_CLASSES]))
    result.items.extend(summary)
    if not s.classes:
        result.shared["no score"] = "the labelled images have no true box"
    else:
        result.shared["headline"] = {
            "sentence": f"mAP@0.5 {s.map:.3f} over {s.classes} classes with true boxes ({len(scored)} labelled "
                        "images).",
            "numbers": {"mAP@0.5": s.map, "classes": s.classes, "images": len(scored)},
            "key": "class-ap", "label": "AP per class"}
    return result


def embed_page(ctx: Any, params: Any, rows: tuple) -> Result:
    from ..imaging.tasks import OTHER_COLOR, SAME_COLOR, framed
    from ..methods.task_metrics import retrieval_scores

    predictions, notes = rows
    x = predictions.logits.astype(np.float64)
    labels = np.asarray(predictions.labels).astype(np.int64)
    names = list(ctx.class_names)
    labelled = bool((labels >= 0).any())
    result = Result(notes=notes)
    result.metrics["images"] = int(len(x))
    s = retrieval_scores(x, labels if labelled else None, k=NEIGHBOURS, recall_ks=(1, NEIGHBOURS))
    if s.queries:
        result.metrics.update({"recall@1": s.recall_at[1], f"recall@{NEIGHBOURS}": s.recall_at[NEIGHBOURS],
                               "retrieval mAP": s.map, "queries": s.queries})

    def said(r: int) -> str:
        c = int(labels[r])
        return names[c] if 0 <= c < len(names) else ""

    queries = shown_samples(ctx, predictions) if ctx.is_image_model else []
    if queries and s.neighbours.shape[1]:
        tiles, tile_labels = [], []
        for i in queries:
            r = predictions.row(int(i))
            tiles.append(framed(_display(ctx, i), (0.0, 0.0, 0.0)))
            tile_labels.append(f"query {said(r)}".strip())
            for nb, sim in zip(s.neighbours[r], s.similarity[r]):
                img = _display(ctx, int(predictions.indices[nb]))
                same = labels[r] >= 0 and labels[nb] >= 0
                tiles.append(framed(img, SAME_COLOR if labels[nb] == labels[r] else OTHER_COLOR) if same else img)
                tile_labels.append(f"{sim:.2f} {said(int(nb))}".strip())
        result.items.append(Grid(
            key="neighbours", label="Nearest neighbours", tiles=np.stack(tiles), style="rgb",
            cols=1 + s.neighbours.shape[1], tile_labels=tile_labels,
            caption=f"Each row: a sample image (black frame) and its {s.neighbours.shape[1]} nearest images by cosine "
                    "similarity of the embeddings (the number)"
                    + ("; green frame: same class, red: another class" if labelled else "") + "."))
    norms = np.linalg.norm(x, axis=1)
    result.items.append(Plot(
        key="norms", kind="output-histograms", label="Embedding norms",
        caption=f"The length of the {x.shape[1]}-dimensional embeddings; cosine similarity ignores it.",
        data={"series": [{"name": "embedding norm", "values": norms}], "xlabel": "L2 norm"}))
    if not labelled:
        result.notes.append("No class labels: give an image folder with one sub-folder per class to score "
                            "same-class retrieval; what is shown is the nearest neighbours alone.")
        result.shared["no score"] = "the image set has no class labels"
    elif not s.queries:
        result.notes.append("No labelled image has another image of its class: there is nothing to retrieve.")
        result.shared["no score"] = "no labelled image has another image of its class"
    else:
        result.shared["headline"] = {
            "sentence": f"Recall@1 {s.recall_at[1]:.3f} and retrieval mAP {s.map:.3f} over {s.queries} query "
                        "images (same class by cosine similarity).",
            "numbers": {"recall@1": s.recall_at[1], "retrieval mAP": s.map, "queries": s.queries},
            "key": "neighbours", "label": "nearest neighbours"}
    return result


TASK_PAGES = {"multilabel": multilabel_page, "regress": regress_page, "segment": segment_page,
              "detect": detect_page, "embed": embed_page}
