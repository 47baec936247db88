"""Predictions over the whole image set: accuracy, per-class accuracy, confusion matrix, the worst predictions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..artifacts import NotApplicable, Picture, Plot, Result, Table
from ..config import doc
from . import Analysis, register


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

    def run(self, ctx, params, reduced):
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
        result.items.append(Plot(
            key="predicted-classes", kind="bars", label="Predicted classes",
            caption="How often each class is predicted over the image set (arg-max of the logits).",
            data={"names": names, "values": counts.tolist(), "ylabel": "images"}))
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
        result.items.append(Table(
            key="per-class", label="Per-class accuracy",
            caption="Accuracy of each true class (recall); n = labelled images of that class.",
            columns=["class", "n", "accuracy"],
            rows=[[names[c], int((labels == c).sum()), per_class[c]] for c in range(k)]))
        result.items.append(Plot(
            key="confusion", kind="confusion", label="Confusion matrix",
            caption="Rows are true classes, columns predicted classes; colour = fraction of the row, numbers = "
                    "image counts.",
            data={"matrix": confusion_matrix(labels, p, k).tolist(), "class_names": names}))
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
