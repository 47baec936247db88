"""Targets: what an attribution explains, as one score per image of the model's raw output.

Every method in `reportgen.methods` explains a score ``s(x)`` (N,). ``target`` says which:

- class indices (an int for every image, N ints or a LongTensor (N,)): ``s_i = logits[i, target_i]`` of a model
  returning logits (N, K), the pre-softmax score of the papers;
- a callable ``target(output) -> (B,)``: it receives the model's output as the model returns it (a tensor (B, K),
  (B, 1), (B, D) or (B, K, H, W); a dict such as torchvision segmentation's ``{'out': (B, K, H, W), 'aux': ...}``;
  a list of B detection dicts ``{'boxes', 'labels', 'scores'}`` as torchvision detectors return in eval mode) and
  returns one differentiable score per row. The classes below are such callables, one per task, after the target
  objects of pytorch-grad-cam (``pytorch_grad_cam/utils/model_targets.py``) and torch-cam 0.5's callable targets.

Methods evaluate copies of the images (noisy, occluded, masked, points on a path) in batches of any size, so a
callable is called on each forward pass's output, whose row ``j`` is a copy of some image ``i``. A callable with
per-image data (a mask or a reference per image, one box list per image) has a method ``select(index)`` that
returns the callable for a batch whose row ``j`` is a copy of image ``index[j]`` (``index`` a LongTensor (B,)); a
callable without ``select`` must score each row on its own (``lambda out: out[:, 3]``) and is used for every batch
as it is. ``probability(output)``, where a target has it, is the score the perturbation methods use with
``score="prob"`` (RISE, deletion/insertion); without it they use the callable's score as it returns.

`resolve_target`, `select_target` and `target_scores` are the three functions every method goes through.
Details, formulas and the peers' equivalents: docs/targets.md.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, Callable, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F

Target = Union[int, Sequence[int], torch.Tensor, Callable[[Any], torch.Tensor]]
Activation = Literal["softmax", "sigmoid", "identity"]


# ---------------------------------------------------------------------------------------------------------------
# The three functions every method goes through


def as_targets(target: Target, n: int, device: torch.device | None = None) -> torch.Tensor:
    """Class indices ``target`` as a LongTensor (N,); a single int is repeated for every image. A method that calls
    this rather than `resolve_target` explains class logits only, and says so for a callable."""
    if callable(target) and not isinstance(target, torch.Tensor):
        raise ValueError("this method explains class logits: give class indices, not a target callable")
    if isinstance(target, torch.Tensor):
        t = target.reshape(-1).to(dtype=torch.long)
        if t.numel() == 1:
            t = t.expand(n)
    elif isinstance(target, numbers.Integral):
        t = torch.full((n,), int(target), dtype=torch.long)
    else:
        t = torch.as_tensor(list(target), dtype=torch.long)
    if t.shape != (n,):
        raise ValueError(f"target has {t.numel()} entries for {n} images: give one int or one class per image")
    return t.to(device) if device is not None else t


def resolve_target(target: Target, n: int, device: torch.device | None = None) -> Any:
    """What a method keeps of ``target`` for a batch of ``n`` images: class indices as a LongTensor (N,) (an int,
    N ints or a tensor, as `as_targets`), a callable as it is."""
    if callable(target) and not isinstance(target, torch.Tensor):
        return target
    return as_targets(target, n, device)


def select_target(targets: Any, index: torch.Tensor) -> Any:
    """The resolved ``targets`` (`resolve_target`) for a batch whose row ``j`` is a copy of image ``index[j]``
    (``index`` LongTensor (B,)): ``targets[index]`` for class indices, ``targets.select(index)`` for a callable
    that has it, the callable itself otherwise."""
    if isinstance(targets, torch.Tensor):
        return targets[index.to(targets.device)]
    select = getattr(targets, "select", None)
    return select(index) if callable(select) else targets


def target_scores(output: Any, targets: Any, score: str = "logit") -> torch.Tensor:
    """The (B,) scores of a batch's ``output`` for the resolved ``targets`` (`resolve_target`, `select_target`).

    Class indices: ``output[i, targets[i]]`` of logits (B, K), or their softmax probability (``score="prob"``),
    the class range checked. A callable: ``targets(output)``, or ``targets.probability(output)`` with
    ``score="prob"`` where it has one, checked to be one score per row of the batch.
    """
    if score not in ("logit", "prob"):
        raise ValueError(f"unknown score {score!r}: use 'logit' or 'prob'")
    if not isinstance(targets, torch.Tensor):
        fn = getattr(targets, "probability", None) if score == "prob" else None
        scores = (fn if callable(fn) else targets)(output)
        rows = output_rows(output)
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (rows,):
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"the target returned {got} for a batch of {rows} images: a target callable must "
                             f"return one score per image, a tensor ({rows},)")
        return scores
    logits = output
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"the model returns a {type(output).__name__}, not logits (N, classes): class indices "
                         "explain a classifier; give a target callable (reportgen.methods.targets) instead")
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits (N, classes), got shape {tuple(logits.shape)}")
    k = logits.shape[1]
    bad = (targets < 0) | (targets >= k)
    if bool(bad.any()):
        raise ValueError(f"target class {int(targets[bad][0])} is out of range for a model with {k} classes")
    if score == "prob":
        logits = logits.softmax(dim=1)
    return logits.gather(1, targets.to(logits.device)[:, None]).squeeze(1)


def output_rows(output: Any) -> int:
    """The batch size of a model output: a tensor's first dimension, a list's length (one detection dict per
    image), a dict's first tensor's first dimension."""
    if isinstance(output, torch.Tensor):
        return int(output.shape[0]) if output.dim() else 1
    if isinstance(output, Mapping):
        for value in output.values():
            if isinstance(value, torch.Tensor) and value.dim():
                return int(value.shape[0])
        raise ValueError(f"the model output is a dict with no batched tensor (keys {list(output)})")
    if isinstance(output, (list, tuple)):
        return len(output)
    raise ValueError(f"the model output is a {type(output).__name__}: expected a tensor, a dict or a list")


def output_tensor(output: Any, key: Optional[str] = None) -> torch.Tensor:
    """The tensor a target reads from ``output``: the tensor itself, or ``output[key]`` of a dict (``key`` None:
    ``'out'``, torchvision segmentation's, else ``'logits'``, Hugging Face's)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        keys = [key] if key is not None else ["out", "logits"]
        for k in keys:
            if k in output and isinstance(output[k], torch.Tensor):
                return output[k]
        raise ValueError(f"the model output has keys {list(output)}, none of {keys}: give the target key=...")
    raise ValueError(f"this target reads a tensor or a dict of tensors, the model returns a {type(output).__name__}")


def _rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return tensor[index.to(tensor.device)]


def _per_image(name: str, rows: int, batch: int) -> None:
    if rows != batch:
        raise ValueError(f"the target's {name} has {rows} rows for a batch of {batch} images: give one per image, "
                         "or select(index) the target for the batch")


# ---------------------------------------------------------------------------------------------------------------
# Classification, binary, multi-label, regression


class ClassTarget:
    """One output's value per image: class ``index`` of a classifier, the label of a multi-label head, output ``d``
    of a regressor, the one logit of a binary classifier.

    ``output`` (B, K), or (B,) read as (B, 1), or a dict holding it (``key``); ``index`` an int for every image,
    or N ints / a LongTensor (N,) one per image. Score ``s_i = sign * output[i, index_i]``, ``sign = -1`` with
    ``negate`` (the negative class of a one-logit binary classifier: ``-z`` is the log-odds of class 0).
    ``probability``: ``activation`` of the output, ``"softmax"`` over the K classes (one label per image, the
    score of `target_scores` with class indices), ``"sigmoid"`` of the signed logit (binary and multi-label:
    independent sigmoids) or ``"identity"`` (regression: the value itself). pytorch-grad-cam's
    ``ClassifierOutputTarget`` / ``BinaryClassifierOutputTarget`` compute the same scores.
    """

    def __init__(self, index: Union[int, Sequence[int], torch.Tensor], *, activation: Activation = "softmax",
                 negate: bool = False, key: Optional[str] = None):
        if activation not in ("softmax", "sigmoid", "identity"):
            raise ValueError(f"unknown activation {activation!r}: use 'softmax', 'sigmoid' or 'identity'")
        if negate and activation == "softmax":
            raise ValueError("negate is for one binary logit (activation='sigmoid') or a regression output")
        self.index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        self.activation, self.negate, self.key = activation, negate, key

    def _values(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        y = output_tensor(output, self.key)
        if y.dim() == 1:
            y = y[:, None]
        if y.dim() != 2:
            raise ValueError(f"ClassTarget reads outputs (N, K), got {tuple(y.shape)}: use RegionTarget for a "
                             "segmentation")
        index = self.index.to(y.device)
        if index.numel() == 1:
            index = index.expand(y.shape[0])
        _per_image("index", index.numel(), y.shape[0])
        bad = (index < 0) | (index >= y.shape[1])
        if bool(bad.any()):
            raise ValueError(f"target index {int(index[bad][0])} is out of range for an output with {y.shape[1]} "
                             "values")
        return y, index

    def __call__(self, output: Any) -> torch.Tensor:
        """The output's value (B,), negated with ``negate``."""
        y, index = self._values(output)
        s = y.gather(1, index[:, None]).squeeze(1)
        return -s if self.negate else s

    def probability(self, output: Any) -> torch.Tensor:
        """(B,): softmax over the classes, sigmoid of the signed logit, or the value (``activation``)."""
        if self.activation == "softmax":
            y, index = self._values(output)
            return y.softmax(dim=1).gather(1, index[:, None]).squeeze(1)
        s = self(output)
        return torch.sigmoid(s) if self.activation == "sigmoid" else s

    def select(self, index: torch.Tensor) -> "ClassTarget":
        if self.index.numel() == 1:
            return self
        return ClassTarget(_rows(self.index, index), activation=self.activation, negate=self.negate, key=self.key)


# ---------------------------------------------------------------------------------------------------------------
# Segmentation


class RegionTarget:
    """Class ``category`` over a region of a segmentation: the mean logit of the class over the region's pixels.

    ``output`` (B, K, H, W) or a dict holding it (``key``; default ``'out'``, torchvision's). The region is
    ``mask`` ((H, W) bool for every image, or (N, H, W) one per image), or, with ``mask=None``, the pixels the
    output it is given predicts as the class (``argmax`` over K; ``logit > 0`` for a one-channel output).
    ``s_i = sum_p m_ip y_ikp / max(1, sum_p m_ip)``: a region of 0 pixels scores 0 (with a zero gradient).

    pytorch-grad-cam's ``SemanticSegmentationTarget`` sums the logits over the mask where this averages: the
    gradient, and so a Grad-CAM map, is the same up to the factor ``1 / |region|``, hence the same map after
    min-max normalization; the mean keeps the score on the scale of one logit whatever the region's size.
    ``mask=None`` recomputes the region on every output, so a perturbation method's masked copies each use their
    own prediction; `from_prediction` fixes the region of the clean images instead. ``probability``: the same mean
    of the class's softmax probability (sigmoid for one channel).
    """

    def __init__(self, category: int, mask: Optional[torch.Tensor] = None, *, key: Optional[str] = None):
        self.category = int(category)
        if mask is not None:
            mask = torch.as_tensor(mask)
            if mask.dim() not in (2, 3):
                raise ValueError(f"a region mask must be (H, W) or (N, H, W), got {tuple(mask.shape)}")
            mask = mask.bool()
        self.mask, self.key = mask, key

    @classmethod
    def from_prediction(cls, output: Any, category: int, *, key: Optional[str] = None) -> "RegionTarget":
        """The target whose region is fixed to the pixels ``output`` (of the clean images) predicts as ``category``."""
        y = output_tensor(output, key if key is not None else "out")
        return cls(category, _predicted(y.detach(), int(category)), key=key)

    def _logits(self, output: Any) -> torch.Tensor:
        y = output_tensor(output, self.key if self.key is not None else "out")
        if y.dim() != 4:
            raise ValueError(f"RegionTarget reads a segmentation (N, K, H, W), got {tuple(y.shape)}")
        if not 0 <= self.category < y.shape[1]:
            raise ValueError(f"category {self.category} is out of range for a segmentation with {y.shape[1]} "
                             "classes")
        return y

    def _region(self, y: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return _predicted(y.detach(), self.category)
        m = self.mask.to(y.device)
        if tuple(m.shape[-2:]) != tuple(y.shape[-2:]):
            raise ValueError(f"the region mask is {tuple(m.shape[-2:])} but the segmentation is "
                             f"{tuple(y.shape[-2:])}: give the mask at the output's resolution")
        if m.dim() == 3:
            _per_image("mask", m.shape[0], y.shape[0])
        return m.expand(y.shape[0], *y.shape[-2:])

    def _mean(self, values: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = self._region(y).to(values.dtype)
        return (values * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp(min=1.0)

    def __call__(self, output: Any) -> torch.Tensor:
        """The mean logit (B,) of the class over the region."""
        y = self._logits(output)
        return self._mean(y[:, self.category], y)

    def probability(self, output: Any) -> torch.Tensor:
        """The mean probability (B,) in [0, 1] of the class over the region."""
        y = self._logits(output)
        p = torch.sigmoid(y[:, 0]) if y.shape[1] == 1 else y.softmax(dim=1)[:, self.category]
        return self._mean(p, y)

    def select(self, index: torch.Tensor) -> "RegionTarget":
        if self.mask is None or self.mask.dim() == 2:
            return self
        return RegionTarget(self.category, _rows(self.mask, index), key=self.key)


def _predicted(y: torch.Tensor, category: int) -> torch.Tensor:
    """(N, H, W) bool: the pixels of ``y`` (N, K, H, W) predicted as ``category``."""
    if y.shape[1] == 1:
        return y[:, 0] > 0 if category == 0 else torch.zeros_like(y[:, 0], dtype=torch.bool)
    return y.argmax(dim=1) == category


# ---------------------------------------------------------------------------------------------------------------
# Detection


Boxes = tuple[torch.Tensor, torch.Tensor]  # labels (M,) long, boxes (M, 4) float (x1, y1, x2, y2) in pixels


class BoxScoreTarget:
    """Given boxes, each scored by the detection that matches it best, as pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget`` (Gildenblat et al., https://github.com/jacobgil/pytorch-grad-cam).

    ``output``: a list of B dicts ``{'boxes': (D, 4), 'labels': (D,), 'scores': (D,)}``, torchvision's detection
    output in eval mode. For each given box ``b`` with label ``c``, the detection ``d`` of highest IoU with it is
    found (``torchvision.ops.box_iou``, the first on ties); if ``IoU(b, d) > iou_threshold`` and ``d``'s label is
    ``c``, ``IoU(b, d) + score_d`` is added to the image's score (0 otherwise, and 0 for an image without
    detections). A detector's boxes and scores are those of its post-processed output (decoded box regression,
    softmax or sigmoid scores, kept by score threshold and NMS); the kept ones are differentiable functions of the
    input, so the gradient flows through both the IoU (the box's position) and the score, while which detections
    were kept is fixed by that pass.

    ``BoxScoreTarget(labels, boxes)``: the same M boxes for every image (labels (M,), boxes (M, 4)).
    `per_image` takes one (labels, boxes) pair per image; `from_detections` the model's own detections.
    """

    def __init__(self, labels: Any, boxes: Any, iou_threshold: float = 0.5, *,
                 per_image: Optional[list[Boxes]] = None):
        self.iou_threshold = float(iou_threshold)
        if per_image is not None:
            self.shared, self.images = None, [_box_pair(lab, box) for lab, box in per_image]
        else:
            self.shared, self.images = _box_pair(labels, boxes), None

    @classmethod
    def per_image(cls, pairs: Sequence[tuple[Any, Any]], iou_threshold: float = 0.5) -> "BoxScoreTarget":
        """One (labels (M_i,), boxes (M_i, 4)) pair per image."""
        return cls(None, None, iou_threshold, per_image=list(pairs))

    @classmethod
    def from_detections(cls, output: Sequence[Mapping], score_threshold: float = 0.5,
                        iou_threshold: float = 0.5) -> "BoxScoreTarget":
        """The detections of ``output`` (of the clean images) with ``score >= score_threshold``, one list per
        image: what pytorch-grad-cam's detection tutorial explains."""
        pairs = []
        for det in output:
            keep = det["scores"].detach() >= score_threshold
            pairs.append((det["labels"].detach()[keep], det["boxes"].detach()[keep]))
        return cls.per_image(pairs, iou_threshold)

    def _score(self, det: Mapping, labels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import box_iou

        found, scores = det["boxes"], det["scores"]
        # 0 * the scores keeps an image's score in the graph when nothing matches (its gradient is then 0)
        base = scores.sum() * 0
        if len(found) == 0 or len(boxes) == 0:
            return base
        ious = box_iou(boxes.to(found.device, found.dtype), found)  # (M, D)
        best = ious.argmax(dim=1)
        iou = ious.gather(1, best[:, None]).squeeze(1)
        hit = (iou > self.iou_threshold) & (det["labels"][best] == labels.to(det["labels"].device))
        return base + ((iou + scores[best]) * hit.to(iou.dtype)).sum()

    def __call__(self, output: Any) -> torch.Tensor:
        """The box scores (B,) of a list of B detection dicts."""
        if not isinstance(output, (list, tuple)) or not all(isinstance(d, Mapping) for d in output):
            raise ValueError(f"BoxScoreTarget reads a detector's list of dicts (boxes, labels, scores), the model "
                             f"returns a {type(output).__name__}")
        if self.images is not None:
            _per_image("box list", len(self.images), len(output))
        pairs = self.images if self.images is not None else [self.shared] * len(output)
        return torch.stack([self._score(det, lab, box) for det, (lab, box) in zip(output, pairs)])

    def select(self, index: torch.Tensor) -> "BoxScoreTarget":
        if self.images is None:
            return self
        return BoxScoreTarget.per_image([self.images[int(i)] for i in index.reshape(-1)], self.iou_threshold)


def _box_pair(labels: Any, boxes: Any) -> Boxes:
    lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    box = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if len(lab) != len(box):
        raise ValueError(f"{len(lab)} labels for {len(box)} boxes: give one label per box")
    return lab, box


# ---------------------------------------------------------------------------------------------------------------
# Embedding


class SimilarityTarget:
    """The cosine similarity of an embedding to a reference embedding, in [-1, 1].

    ``output`` (B, D) (or (B, D, ...), flattened; or a dict holding it, ``key``); ``reference`` (D,) for every
    image or (N, D) one per image, e.g. a reference image's embedding the caller computed (detached).
    ``s_i = <e_i, r_i> / (max(|e_i|, eps) max(|r_i|, eps))`` (`torch.nn.functional.cosine_similarity`).
    """

    def __init__(self, reference: torch.Tensor, *, key: Optional[str] = None, eps: float = 1e-8):
        reference = torch.as_tensor(reference).detach()
        if reference.dim() not in (1, 2):
            raise ValueError(f"a reference embedding must be (D,) or (N, D), got {tuple(reference.shape)}")
        self.reference, self.key, self.eps = reference, key, float(eps)

    def __call__(self, output: Any) -> torch.Tensor:
        """The cosine similarity (B,) of each row's embedding to its reference."""
        e = output_tensor(output, self.key)
        e = e.flatten(1) if e.dim() > 1 else e[:, None]
        r = self.reference.to(e.device, e.dtype)
        r = r[None] if r.dim() == 1 else r
        if r.shape[1] != e.shape[1]:
            raise ValueError(f"the reference embedding has {r.shape[1]} values, the model's {e.shape[1]}")
        if r.shape[0] != 1:
            _per_image("reference", r.shape[0], e.shape[0])
        return F.cosine_similarity(e, r, dim=1, eps=self.eps)

    def select(self, index: torch.Tensor) -> "SimilarityTarget":
        if self.reference.dim() == 1:
            return self
        return SimilarityTarget(_rows(self.reference, index), key=self.key, eps=self.eps)
