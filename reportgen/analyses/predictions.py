"""Predictions over the whole image set: accuracy, per-class accuracy, confusion matrix, the worst predictions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..artifacts import NotApplicable, Picture, Plot, Result, Table
from ..config import doc
from . import Analysis, NOTHING, register


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
    summary = "accuracy, per-class accuracy, confusion matrix and the worst predictions over the whole image set"
    order = 10
    needs_images = False
    needs_logits = True
    Params = PredictionParams

    def run(self, ctx, params, reduced, upstream=NOTHING):
        predictions = ctx.predictions
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
