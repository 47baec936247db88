"""What a model is for (its task), how the build finds it, and what the one pass keeps of each task's output.

Tasks (issue 30; docs/tasks.md):

- ``classify``: class logits (N, K), one label per image (softmax);
- ``binary``: one logit (N, 1), the positive class's (sigmoid);
- ``multilabel``: independent logits (N, K), one sigmoid per label;
- ``regress``: real outputs (N, D);
- ``segment``: per-pixel class logits (N, K, H, W), or torchvision's dict {'out': (N, K, H, W), 'aux': ...};
- ``detect``: torchvision's detection output, a list of N dicts {'boxes' (j, 4) xyxy in input pixels, 'labels'
  (j,) int64, 'scores' (j,)};
- ``embed``: embeddings (N, D).

`detect_task` says a model's task from its probe output (the build: `reportgen.models.check_output`, through
`decide_task`). The task is found where the model says it: torchvision's segmentation and detection classes
(`declared_task`), a Hugging Face config's ``problem_type`` or architecture (`hf_task`), a zoo entry's ``task``,
and the two output forms that can mean nothing else (a dict with 'out' maps, a list of detection dicts); one output logit means
``binary``, (N, K) logits ``classify``. Otherwise ``--task`` (config ``task``, a model.json's ``task``, Python
``task=``) says it, and always wins over detection; a task the output does not fit is one `ModelError` line
(`decide_task`). ``embed`` and ``regress`` are never guessed: an (N, D) tensor looks like class logits.

`TaskPass` accumulates, batch by batch, what `reportgen.context.Predictions` holds for the task (memory
independent of the set's size except the per-image rows and at most 100 detections per image); `Truth` is an
image set's labels per task, read by `reportgen.labels.read_labels` from ``--labels`` (a CSV, a folder of
masks, a COCO JSON).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .errors import DataError, ModelError

TASKS = ("classify", "binary", "multilabel", "regress", "segment", "detect", "embed")

# what each task's output is, for messages
OUTPUT_OF = {
    "classify": "class logits (N, K), one label per image",
    "binary": "one logit (N, 1)",
    "multilabel": "independent label logits (N, K)",
    "regress": "real outputs (N, D)",
    "segment": "per-pixel class logits (N, K, H, W) or a dict {'out': (N, K, H, W)}",
    "detect": "a list of N dicts {'boxes', 'labels', 'scores'} (torchvision's detection output)",
    "embed": "embeddings (N, D)",
}

# at most this many detections per image are kept (the model's top scores): torchvision's own default cap
MAX_DETECTIONS = 100
IGNORE = 255  # a label mask's "not scored" value (the VOC / torchvision convention)

TASK_HELP = "one of " + ", ".join(TASKS)


def check_task_name(task: Optional[str], where: str) -> Optional[str]:
    """``task`` when it is a known task name (or None); else a `ModelError` naming ``where`` it came from."""
    if task is None or task in TASKS:
        return task
    from .errors import did_you_mean

    raise ModelError(f"{where}: unknown task '{task}'{did_you_mean(str(task), TASKS)}: give {TASK_HELP}")


# ---------------------------------------------------------------------------------------------------------------
# What the model says


def declared_task(model: Any) -> Optional[str]:
    """The task a torchvision segmentation (FCN, DeepLabV3, LRASPP) or detection model (Faster/Mask/Keypoint
    R-CNN, RetinaNet, FCOS, SSD, SSDlite) is built for, from its class; None for any other model."""
    if not any(c.__module__.startswith("torchvision.") for c in type(model).__mro__):
        return None  # not torchvision's: its import (about 2 s, torch._dynamo with it) is not needed to say so
    import torchvision.models.detection as det
    import torchvision.models.segmentation as seg
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.ssd import SSD

    if isinstance(model, (seg.FCN, seg.DeepLabV3, seg.LRASPP)):
        return "segment"
    if isinstance(model, (GeneralizedRCNN, det.RetinaNet, det.FCOS, SSD)):
        return "detect"
    return None


def torchvision_detector(model: Any) -> bool:
    """Whether ``model`` is one of torchvision's detectors, whose label 0 is the background (so class index =
    label id - 1, `LoadedModel.label_offset`)."""
    return declared_task(model) == "detect"


def hf_task(config: Any) -> Optional[str]:
    """The task a Hugging Face config states: ``problem_type`` "multi_label_classification" -> multilabel,
    "regression" -> regress, "single_label_classification" -> classify; an architecture ending in
    ``ForSemanticSegmentation`` -> segment; else None (the output decides)."""
    problem = getattr(config, "problem_type", None)
    by_problem = {"multi_label_classification": "multilabel", "regression": "regress",
                  "single_label_classification": "classify"}
    if problem in by_problem:
        return by_problem[problem]
    if any(str(a).endswith("ForSemanticSegmentation") for a in (getattr(config, "architectures", None) or [])):
        return "segment"
    return None


# ---------------------------------------------------------------------------------------------------------------
# What the output is


def _is_detections(out: Any) -> bool:
    import torch

    return isinstance(out, (list, tuple)) and len(out) > 0 and all(
        isinstance(d, dict) and all(isinstance(d.get(k), torch.Tensor) for k in ("boxes", "labels", "scores"))
        for d in out)


def seg_maps(out: Any) -> Any:
    """The (N, K, H, W) logits of a segmentation output (a tensor, or torchvision's dict's 'out'), else None."""
    import torch

    if isinstance(out, dict):
        out = out.get("out")
    return out if isinstance(out, torch.Tensor) and out.ndim == 4 else None


def describe_output(out: Any) -> str:
    """A short description of a model output for messages: "a tensor (2, 10)", "a dict {'out': (2, 21, 64,
    64), 'aux': (2, 21, 64, 64)}", "a list of 2 detection dicts"."""
    import torch

    if isinstance(out, torch.Tensor):
        return f"a tensor {tuple(out.shape)}"
    if isinstance(out, dict):
        parts = [f"'{k}': {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
                 for k, v in list(out.items())[:4]]
        return "a dict {" + ", ".join(parts) + "}"
    if _is_detections(out):
        return f"a list of {len(out)} detection dicts (boxes, labels, scores)"
    if isinstance(out, (list, tuple)):
        return f"a {type(out).__name__} of {len(out)} items"
    return f"a {type(out).__name__}"


def fitting_tasks(out: Any) -> tuple[str, ...]:
    """The tasks whose output form ``out`` has (batch size not checked): (N, 1) binary, regress, embed; (N, K)
    classify, multilabel, regress, embed; (N, K, H, W) or {'out': ...} segment; detection dicts detect."""
    import torch

    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] >= 1:
        return ("binary", "regress", "embed") if out.shape[1] == 1 else ("classify", "multilabel", "regress", "embed")
    if seg_maps(out) is not None:
        return ("segment",)
    if _is_detections(out):
        return ("detect",)
    return ()


def output_rows(out: Any) -> int:
    """The number of images an output covers (its batch dimension, or the detection list's length)."""
    maps = seg_maps(out)
    if maps is not None:
        return int(maps.shape[0])
    if _is_detections(out):
        return len(out)
    return int(out.shape[0])


def decide_task(out: Any, spec: str, given: Optional[str] = None, given_how: str = "",
                declared: Optional[str] = None, declared_how: str = "") -> tuple[str, str]:
    """(task, how it was found) for a model whose probe output is ``out``.

    ``given``: the task the user gave (``given_how``: where, e.g. "--task"), which always wins; ``declared``: what
    the model says of itself (a torchvision class, a Hugging Face config, a zoo entry). Without either, the output
    decides where its form is unambiguous: a detection list -> detect, a dict with 'out' maps -> segment, one
    logit -> binary, (N, K) -> classify; a bare (N, K, H, W) tensor needs ``--task segment`` (it is as often a
    classifier that forgot to pool). A given or declared task the output does not fit is one `ModelError` line
    saying what the output is and which tasks fit it."""
    import torch

    fits = fitting_tasks(out)
    for task, how in ((given, given_how), (declared, declared_how)):
        if task is None:
            continue
        if task not in fits:
            fit = (f"the tasks that fit it: {', '.join(fits)}" if fits else
                   "no task fits it: " + "; ".join(f"{t} needs {OUTPUT_OF[t]}" for t in ("classify", "segment")))
            raise ModelError(f"model '{spec}' returns {describe_output(out)}, which is not {OUTPUT_OF[task]} as the "
                             f"task '{task}' ({how}) needs; {fit}")
        return task, how
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] >= 1:
        return ("binary", "one output logit") if out.shape[1] == 1 else ("classify", "(N, K) output logits")
    if _is_detections(out):
        return "detect", "its output is a list of detection dicts"
    if isinstance(out, dict) and seg_maps(out) is not None:
        return "segment", "its output is a dict with (N, K, H, W) maps under 'out'"
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else describe_output(out)
    hint = " (a segmentation model: give --task segment)" if isinstance(out, torch.Tensor) and out.ndim == 4 else ""
    raise ModelError(f"model '{spec}' returns {shape}, not (N, classes) logits{hint}: wrap it so forward returns "
                     f"class scores, or give --task ({TASK_HELP}) for another kind of output")


def detect_task(model: Any, out: Any, config: Any = None, zoo_entry: Any = None, given: Optional[str] = None,
                spec: str = "model") -> str:
    """The task of ``model`` whose output on a probe batch is ``out``, as the build decides it (`decide_task`):
    ``given`` (a task name the user gave) first, then what the model declares (a torchvision segmentation or
    detection class, a Hugging Face ``config``'s problem_type or architecture, a ``zoo_entry``'s ``task``), else
    the output's unambiguous form. A contradiction is a `ModelError` line."""
    declared = declared_task(model) or (hf_task(config) if config is not None else None)
    if declared is None and zoo_entry is not None:
        declared = getattr(zoo_entry, "task", "classify")
    return decide_task(out, spec, check_task_name(given, "task"), "given", declared, "declared by the model")[0]


def output_names(task: str, k: int, given: Optional[list[str]], image_classes: Optional[list[str]],
                 spec: str) -> list[str]:
    """The names of a model's classes (outputs) for ``task``, ``k`` being the output's width (classes, labels,
    outputs or dimensions; for detect the number of classes without background).

    classify, multilabel, segment, detect: ``given``, else the image set's class folders when there are ``k``,
    else "class i"; binary: two names [negative, positive] ("not X", "X" from one given name; the class folders
    when there are two); regress: "output i" unless given; embed: the image set's class folders (its
    dimensions are not classes), else none. A given list of the wrong length is a `ModelError` line."""
    want = 2 if task == "binary" else k
    if task == "embed":
        return list(given or image_classes or [])
    if given:
        if task == "binary" and len(given) == 1:
            return [f"not {given[0]}", given[0]]
        if task == "detect" and len(given) == k + 1 and given[0].lower() in ("__background__", "background"):
            return list(given[1:])
        if len(given) != want:
            what = {"regress": "outputs", "binary": "classes (negative, positive)"}.get(task, "outputs")
            raise ModelError(f"model '{spec}' has {want} {what} but {len(given)} class names were given: fix "
                             "--class-names (or the image set's class folders)")
        return list(given)
    if image_classes and len(image_classes) == want and task != "regress":
        return list(image_classes)
    if task == "regress":
        return [f"output {i}" for i in range(k)]
    return [f"class {i}" for i in range(want)]


# ---------------------------------------------------------------------------------------------------------------
# Per-image scores and what the pass keeps


def segment_logits(out: Any, size: tuple[int, int]) -> Any:
    """The (N, K, H, W) logits of a segmentation output at the input size ``size`` (H, W): bilinearly upsampled
    (align_corners=False, as torchvision's segmentation heads and transformers' post-processing do) when the model
    outputs a coarser map (SegFormer's is a quarter of the input)."""
    import torch.nn.functional as F

    maps = seg_maps(out)
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps


def detections_of(out: Any, k: int, offset: int) -> list[dict]:
    """A detection output as class indices: per image a dict {'boxes' float32 (j, 4), 'labels' int64 (j,) in
    [0, k), 'scores' float32 (j,)}, at most `MAX_DETECTIONS`, highest scores first (ties in the model's order);
    label ids become ``label - offset`` (torchvision's detectors: offset 1, label 0 being the background), and
    detections whose class is outside [0, k) are dropped."""
    result = []
    for d in out:
        boxes = d["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
        labels = d["labels"].detach().cpu().numpy().astype(np.int64).reshape(-1) - offset
        scores = d["scores"].detach().float().cpu().numpy().reshape(-1)
        keep = (labels >= 0) & (labels < k)
        boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")[:MAX_DETECTIONS]
        result.append({"boxes": boxes[order].astype(np.float32), "labels": labels[order],
                       "scores": scores[order].astype(np.float32)})
    return result


def detection_scores(dets: list[dict], k: int) -> np.ndarray:
    """(N, K) float32: each class's highest detection score in each image, 0 where it has none."""
    scores = np.zeros((len(dets), k), dtype=np.float32)
    for i, d in enumerate(dets):
        if len(d["labels"]):
            np.maximum.at(scores[i], d["labels"], d["scores"])
    return scores


def confusion(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """int64 (K, K) pixel counts, rows = true class, columns = predicted class, of label masks ``truth`` (..., H,
    W) uint8 (`IGNORE` pixels left out) against predicted classes ``pred`` of the same shape."""
    t, p = truth.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
    keep = t != IGNORE
    return np.bincount(t[keep] * k + p[keep], minlength=k * k).reshape(k, k)


@dataclass
class TaskPass:
    """What the one pass keeps of each batch's output for ``task`` (`update`), and the arrays of
    `reportgen.context.Predictions` at the end (`fields`). ``k``: the task's width (classes, labels, outputs,
    dimensions; detect: classes without background); ``size``: the input (H, W); ``offset``: detection label
    id - class index; ``truth``: the image set's `Truth` (label masks are scored during the pass, so that memory
    does not grow with the set)."""

    task: str
    k: int
    size: tuple = ()
    offset: int = 0
    truth: Optional["Truth"] = None
    spec: str = ""
    scores: list = field(default_factory=list)
    detections: list = field(default_factory=list)
    seg_pixels: list = field(default_factory=list)
    seg_confusion: Optional[np.ndarray] = None

    def batch_scores(self, out: Any, indices: Any) -> Any:
        """Record one batch (image ``indices`` (B,)) and return its per-image scores (B, K) as a float tensor on
        the output's device: what the reducers see as ``logits`` (the output itself for (N, K) tasks)."""
        import torch

        if self.task in ("classify", "binary", "multilabel", "regress", "embed"):
            self.scores.append(out.detach().float().cpu().numpy())
            return out
        if self.task == "segment":
            maps = segment_logits(out, self.size).detach()
            mean = maps.float().mean(dim=(2, 3))
            self.scores.append(mean.cpu().numpy())
            pred = maps.argmax(dim=1).cpu().numpy()
            k = maps.shape[1]
            self.seg_pixels.append(np.stack([np.bincount(p.reshape(-1), minlength=k) for p in pred]).astype(np.int64))
            masks = self.truth.masks if self.truth is not None else None
            if masks is not None:
                for row, i in enumerate(np.asarray(indices).tolist()):
                    m = masks.get(i)
                    if m is None:
                        continue
                    bad = (m >= k) & (m != IGNORE)
                    if bad.any():
                        raise DataError(f"label mask of image '{masks.names[i] if masks.names else i}' has class "
                                        f"value {int(m[bad].max())} but the model has {k} classes (0 to {k - 1}, "
                                        f"{IGNORE} = ignore): fix the mask in '{masks.source}'")
                    c = confusion(m, pred[row], k)
                    self.seg_confusion = c if self.seg_confusion is None else self.seg_confusion + c
            return mean
        if self.task == "detect":
            dets = detections_of(out, self.k, self.offset)
            self.detections.extend(dets)
            scores = detection_scores(dets, self.k)
            self.scores.append(scores)
            return torch.from_numpy(scores)
        raise ValueError(f"unknown task {self.task!r}")

    def fields(self, indices: np.ndarray) -> dict:
        """The task's fields of `Predictions` for the images ``indices`` (M,) the pass read, in their order."""
        out: dict[str, Any] = {"task": self.task}
        if self.task == "segment":
            out["seg_pixels"] = (np.concatenate(self.seg_pixels) if self.seg_pixels
                                 else np.zeros((0, self.k), np.int64))
            if self.truth is not None and self.truth.masks is not None:
                out["seg_confusion"] = (self.seg_confusion if self.seg_confusion is not None
                                        else np.zeros((self.k, self.k), np.int64))
        if self.task == "detect":
            out["detections"] = list(self.detections)
            if self.truth is not None and self.truth.boxes is not None:
                out["truth_boxes"] = [self.truth.box_dict(int(i)) for i in indices]
        return out


def task_labels(task: str, indices: np.ndarray, image_labels: np.ndarray, k: int,
                truth: Optional["Truth"]) -> np.ndarray:
    """`Predictions.labels` for ``task``: classify, binary, segment, detect, embed the image set's class labels
    ``image_labels`` (M,) int64 (-1 unknown); multilabel (M, K) int8 (1, 0, -1 unknown); regress (M, D) float32
    (NaN unknown), from ``truth`` where it has them."""
    if task == "multilabel":
        if truth is not None and truth.labels is not None:
            return truth.labels[indices].astype(np.int8)
        return np.full((len(indices), k), -1, dtype=np.int8)
    if task == "regress":
        if truth is not None and truth.values is not None:
            return truth.values[indices].astype(np.float32)
        return np.full((len(indices), k), np.nan, dtype=np.float32)
    return image_labels


# ---------------------------------------------------------------------------------------------------------------
# Labels per task


@dataclass
class Truth:
    """An image set's labels for a task beyond class folders, aligned with its images (image ``i``'s row is
    ``i``). ``labels``: multilabel int8 (N, K), 1 / 0 / -1 unknown; ``values``: regress float32 (N, D), NaN
    unknown; ``masks``: segment, a `reportgen.data.Masks` of class values (uint8 (H, W) at the input size,
    `IGNORE` = not scored; None for an image without one); ``boxes`` / ``box_labels``: detect, per image float32
    (j, 4) xyxy in input pixels and int64 (j,) class indices, None for an image without labels. ``source``: where
    they came from; ``unlabelled``: names of the images left without labels (left unscored)."""

    source: str
    labels: Optional[np.ndarray] = None
    values: Optional[np.ndarray] = None
    masks: Any = None
    boxes: Optional[list] = None
    box_labels: Optional[list] = None
    unlabelled: list = field(default_factory=list)

    def take(self, pick: Any) -> None:
        """Keep the labels of images ``pick`` only (as `reportgen.data.take` does the images)."""
        pick = [int(j) for j in pick]
        if self.labels is not None:
            self.labels = self.labels[pick]
        if self.values is not None:
            self.values = self.values[pick]
        if self.masks is not None:
            self.masks.take(pick)
        if self.boxes is not None:
            self.boxes = [self.boxes[j] for j in pick]
            self.box_labels = [self.box_labels[j] for j in pick]

    def box_dict(self, i: int) -> Optional[dict]:
        """Image ``i``'s boxes as {'boxes' float32 (j, 4), 'labels' int64 (j,)}, None when it has no labels."""
        if self.boxes is None or self.boxes[i] is None:
            return None
        return {"boxes": np.asarray(self.boxes[i], np.float32).reshape(-1, 4),
                "labels": np.asarray(self.box_labels[i], np.int64).reshape(-1)}


def finite_rows(out: Any) -> Any:
    """bool tensor (N,): whether each image's output is finite everywhere (logits, maps, or boxes and scores)."""
    import torch

    maps = seg_maps(out)
    if maps is not None:
        return torch.isfinite(maps).flatten(1).all(dim=1)
    if _is_detections(out):
        return torch.tensor([bool(torch.isfinite(d["boxes"]).all() and torch.isfinite(d["scores"]).all())
                             for d in out])
    return torch.isfinite(out).reshape(len(out), -1).all(dim=1)


def sample_prediction(predictions: Any, row: int, names: list[str]) -> tuple[Optional[str], Optional[float]]:
    """What the data page's sample table says the model predicts for the image in ``row``, and the number beside
    it: classify / binary the predicted class and its probability; multilabel the labels over 0.5 (the highest
    label's probability); regress the outputs (no number); segment the class with the most pixels and its pixel
    share; detect the top detection's class and score ("none" when there is none); embed nothing."""
    task = predictions.task
    if task in ("classify", "binary"):
        pred = int(predictions.preds[row])
        return names[pred], float(predictions.probs[row, pred])
    if task == "multilabel":
        probs = predictions.probs[row]
        on = [names[j] for j in np.flatnonzero(probs > 0.5)]
        return (", ".join(on) if on else "none"), float(probs.max())
    if task == "regress":
        return ", ".join(f"{v:.3g}" for v in predictions.logits[row][:4]), None
    if task == "segment":
        pixels = predictions.seg_pixels[row]
        top = int(pixels.argmax())
        return names[top], float(pixels[top] / max(int(pixels.sum()), 1))
    if task == "detect":
        d = predictions.detections[row]
        if not len(d["scores"]):
            return "none", None
        return names[int(d["labels"][0])], float(d["scores"][0])
    return None, None


def output_total(out: Any) -> Any:
    """The sum of every floating-point tensor in a model output (a tensor, a dict of them, a list of detection
    dicts): a scalar to take a timing backward pass through, whatever the task."""
    import torch

    if isinstance(out, torch.Tensor):
        return out.float().sum() if out.is_floating_point() else out.new_zeros((), dtype=torch.float32)
    parts = [output_total(p) for p in (out.values() if isinstance(out, dict) else
                                       out if isinstance(out, (list, tuple)) else [])]
    return torch.stack(parts).sum() if parts else torch.zeros(())
