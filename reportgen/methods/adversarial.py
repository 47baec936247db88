"""Adversarial examples, and the random-direction control that shows they are special.

Inputs are NORMALIZED model inputs ``(N, C, H, W)``; ``clamp=pixel_bounds(mean, std)`` (from
`reportgen.methods.optimize`) keeps perturbed images inside the valid pixel range. Norms of images and perturbations
are Euclidean over all ``C*H*W`` values of one image. The model runs in eval mode with frozen weights for the
duration of a call and comes back exactly as it was (flags restored in ``finally``; gradients only with respect to
the inputs).

Szegedy et al. 2014, "Intriguing properties of neural networks", https://arxiv.org/abs/1312.6199 . The
random-sphere control (`random_sphere`) is this project's design, not Szegedy et al.'s (they compared with Gaussian
noise); why random directions rarely flip a label: Fawzi et al. 2016, "Robustness of classifiers: from adversarial to
random noise", https://arxiv.org/abs/1608.08967 .
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from reportgen.capture import preserved
from reportgen.methods.optimize import Bounds, _device_dtype, clamp_to

__all__ = ["AdvResult", "ClassFlip", "DetectionFlip", "Flip", "LabelSetFlip", "NeighbourFlip", "RegionFlip",
           "SphereResult", "adversarial", "random_sphere", "sphere_points", "L2_STEP", "LINF_STEP"]

L2_STEP = 0.005
"""Default l2 step of `adversarial`, as a fraction of each image's own norm (so 50 steps reach at most 25%)."""
LINF_STEP = 0.004
"""Default linf step of `adversarial`, as a fraction of each image's value range (max - min), about 1/255."""


@dataclass
class AdvResult:
    """What `adversarial` returns (N images, S = ``steps``).

    adv: ``(N, C, H, W)`` the adversarial images (each one as it was when it stopped).
    labels, probs: ``(S + 1, N)`` predicted class (long) and its softmax probability (float) at every iteration;
        row 0 is the original image. After an image stops, its remaining rows repeat its final state. With another
        `Flip`, its state: ``labels`` ``(S + 1, N)`` or ``(S + 1, N, K)`` its code, ``probs`` its value.
    steps_taken: ``(N,)`` gradient steps applied to each image.
    success: ``(N,)`` bool: the label changed (untargeted) or reached ``target`` (targeted), at the end; with
        another `Flip`, its flip.
    rel_norm: ``(N,)`` ``100 * ||adv - x|| / ||x||``, in percent.
    original, final: ``(N,)`` predicted class of the original and of the adversarial image.
    """

    adv: torch.Tensor
    labels: torch.Tensor
    probs: torch.Tensor
    steps_taken: torch.Tensor
    success: torch.Tensor
    rel_norm: torch.Tensor
    original: torch.Tensor
    final: torch.Tensor


# --------------------------------------------------------------------------------------------------------------------
# Flips: what each task counts as a changed decision


class Flip:
    """What an attack counts as a changed decision of one task, and the loss it ascends to get there.

    A flip is first a specification (the task's settings, and per-image data such as an image's own row in a
    reference set, `select`); `start` binds it to the model's output on the clean images (each image's original
    state: its class, label set, region, top detection or nearest neighbour) and returns the bound flip. A bound
    flip reads any later output of the same images (row ``j`` a copy of image ``j``, or of image ``index[j]`` after
    ``select(index)``):

    - ``loss(output)`` ``(B,)``: the differentiable score the untargeted attack ASCENDS;
    - ``state(output)`` ``(code, value)``: what the per-step table shows, ``code`` ``(B,)`` or ``(B, K)`` long and
      ``value`` ``(B,)`` float (for a classifier the predicted class and its probability);
    - ``done(code, value)`` ``(B,)`` bool: whether that state is a flip (`flipped` of an output);
    - ``applies`` ``(B,)`` bool: the images the measure applies to (a detector's image without a detection above
      the threshold has none to lose); the others are never attacked and never count as flipped.

    The attack (`adversarial`) and its control (`random_sphere`) use the same bound flip, so the per-step table
    and the random points count one and the same change.
    """

    applies: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> "Flip":  # pragma: no cover - interface
        raise NotImplementedError

    def start(self, output) -> "Flip":  # pragma: no cover - interface
        raise NotImplementedError

    def loss(self, output) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def state(self, output) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def done(self, code: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def flipped(self, output) -> torch.Tensor:
        """``(B,)`` bool: the output's state is a flip (and the measure applies to its image)."""
        done = self.done(*self.state(output))
        return done if self.applies is None else done & self.applies.to(done.device)


def _take(value, index: torch.Tensor):
    """``value[index]`` for a tensor (None stays None)."""
    return None if value is None else value[index.to(value.device)]


class ClassFlip(Flip):
    """A change of the predicted class (``classify``: logits (N, K)), or of the predicted class of a one-logit
    binary classifier (``binary=True``: the logit z (N, 1) read as the two logits [0, z], whose softmax is
    [1 - sigmoid(z), sigmoid(z)] and whose cross-entropy is the binary cross-entropy).

    Untargeted: ascends the cross-entropy of each image's originally predicted class; flipped when the predicted
    class differs. With ``goal`` (one class per image, or an int): the targeted attack, descending the
    cross-entropy of ``goal``; flipped when the predicted class is ``goal``. ``state``: the predicted class and its
    softmax probability."""

    def __init__(self, goal=None, binary: bool = False, original: torch.Tensor | None = None):
        self.goal = None if goal is None else torch.as_tensor(goal, dtype=torch.long).reshape(-1)
        self.binary, self.original = binary, original

    def logits(self, output) -> torch.Tensor:
        z = output.flatten(1)
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.binary else z

    def select(self, index):
        goal = self.goal if self.goal is None or self.goal.numel() == 1 else _take(self.goal, index)
        return ClassFlip(goal, self.binary, _take(self.original, index))

    def start(self, output):
        original = self.logits(output).detach().softmax(1).max(1)[1]
        goal = None if self.goal is None else self.goal.to(original.device).expand(len(original)).clone()
        return ClassFlip(goal, self.binary, original)

    def loss(self, output):
        lg = self.logits(output)
        if self.goal is None:
            return F.cross_entropy(lg, self.original, reduction="none")
        return -F.cross_entropy(lg, self.goal.to(lg.device), reduction="none")

    def state(self, output):
        probs, labels = self.logits(output).softmax(1).max(1)
        return labels, probs

    def done(self, code, value):
        return code != self.original if self.goal is None else code == self.goal.to(code.device)


class LabelSetFlip(Flip):
    """A change of a multi-label model's predicted label set (logits (N, K), one sigmoid per label): flipped when
    any label crosses ``threshold`` (on the sigmoid) in either direction.

    The attack ascends the binary cross-entropy of the original set (summed over the K labels), the loss the
    model's labels are trained with, which pushes every label toward its threshold. ``state``: the set (B, K) 0/1
    and how many labels differ from the original set."""

    def __init__(self, threshold: float = 0.5, original: torch.Tensor | None = None):
        if not 0 < threshold < 1:
            raise ValueError(f"a multi-label threshold is a probability in (0, 1), got {threshold}")
        self.threshold, self.original = float(threshold), original

    def select(self, index):
        return LabelSetFlip(self.threshold, _take(self.original, index))

    def _set(self, output) -> torch.Tensor:
        return (torch.sigmoid(output.flatten(1)) > self.threshold).long()

    def start(self, output):
        return LabelSetFlip(self.threshold, self._set(output.detach()))

    def loss(self, output):
        z = output.flatten(1)
        return F.binary_cross_entropy_with_logits(z, self.original.to(z.dtype), reduction="none").sum(1)

    def state(self, output):
        code = self._set(output)
        return code, (code != self.original.to(code.device)).sum(1).to(output.dtype)

    def done(self, code, value):
        return value > 0


def _seg_map(output) -> torch.Tensor:
    """(N, K, H, W) logits of a segmentation output: the tensor, or torchvision's dict's 'out'."""
    if isinstance(output, dict):
        output = output.get("out", output.get("logits"))
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        raise ValueError("a segmentation flip reads (N, K, H, W) logits, or a dict holding them under 'out'")
    return output


class RegionFlip(Flip):
    """A segmentation's class region taken over: for each image a ``category`` (default: the class with the most
    predicted pixels, not counting ``background``) and its region, the pixels of the output map the clean image
    predicts as that class; flipped when more than ``share`` of the region's pixels are predicted as another class.

    The attack ascends the cross-entropy of ``category`` averaged over the region's pixels (the pixel-wise
    segmentation loss, restricted to the region). ``state``: the class most predicted over the region now, and the
    share of its pixels that changed class, in [0, 1]. Pixels are those of the model's output map (the input's
    pixels when the model outputs maps at the input size, as torchvision's segmentation models do)."""

    def __init__(self, share: float = 0.5, background: int | None = None, category=None,
                 region: torch.Tensor | None = None):
        if not 0 <= share < 1:
            raise ValueError(f"the flip share is a fraction in [0, 1), got {share}")
        self.share, self.background = float(share), background
        self.category = None if category is None else torch.as_tensor(category, dtype=torch.long).reshape(-1)
        self.region = region

    def select(self, index):
        return RegionFlip(self.share, self.background, _take(self.category, index), _take(self.region, index))

    def start(self, output):
        y = _seg_map(output).detach()
        pred = y.argmax(1)
        k = y.shape[1]
        if self.category is None:
            counts = torch.stack([torch.bincount(p.reshape(-1), minlength=k) for p in pred])
            if self.background is not None and 0 <= self.background < k:
                others = counts.clone()
                others[:, self.background] = -1
                # an image that predicts nothing but the background keeps it as its class
                only = others.max(1).values <= 0
                category = torch.where(only, torch.full_like(only, self.background, dtype=torch.long),
                                       others.argmax(1))
            else:
                category = counts.argmax(1)
        else:
            category = self.category.to(pred.device).expand(len(pred)).clone()
        region = pred == category.view(-1, 1, 1)
        return RegionFlip(self.share, self.background, category, region)

    def loss(self, output):
        y = _seg_map(output)
        cat = self.category.to(y.device).view(-1, 1, 1).expand(-1, *y.shape[-2:])
        ce = F.cross_entropy(y, cat, reduction="none")  # (B, H, W)
        m = self.region.to(y.device, y.dtype)
        return (ce * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1.0)

    def state(self, output):
        y = _seg_map(output)
        pred = y.argmax(1)
        region = self.region.to(pred.device)
        cat = self.category.to(pred.device)
        changed = ((pred != cat.view(-1, 1, 1)) & region).sum((1, 2)).to(y.dtype)
        share = changed / region.sum((1, 2)).clamp(min=1).to(y.dtype)
        k = y.shape[1]
        # the class most predicted over the region now (ties: the lowest class index)
        counts = torch.stack([torch.bincount(p[r], minlength=k) for p, r in zip(pred, region)])
        return counts.argmax(1), share

    def done(self, code, value):
        return value > self.share


class DetectionFlip(Flip):
    """A detector's top detection lost (torchvision's detection output: a list of N dicts {'boxes' (j, 4) xyxy,
    'labels' (j,), 'scores' (j,)}): each image's highest-scoring detection of the clean image, when it scores at
    least ``score_threshold``, is lost when no detection of its label with ``IoU >= iou`` with its box scores at
    least ``score_threshold``. Images without such a detection have none to lose (``applies`` False).

    The attack ascends minus the summed scores of the detections that still find it (its label, IoU >= ``iou``,
    score >= ``score_threshold``): the post-processed scores are differentiable functions of the input for the
    detections a pass keeps (which ones it keeps, after its own threshold and NMS, is fixed by that pass).
    ``state``: how many detections still find it and the best of their scores (0 when none)."""

    def __init__(self, score_threshold: float = 0.5, iou: float = 0.5, label=None, box=None, applies=None):
        self.score_threshold, self.iou = float(score_threshold), float(iou)
        self.label, self.box, self.applies = label, box, applies

    def select(self, index):
        return DetectionFlip(self.score_threshold, self.iou, _take(self.label, index), _take(self.box, index),
                             _take(self.applies, index))

    def start(self, output):
        labels, boxes, ok = [], [], []
        for det in output:
            scores = det["scores"].detach()
            top = int(scores.argmax()) if len(scores) else -1
            hit = top >= 0 and float(scores[top]) >= self.score_threshold
            ok.append(hit)
            labels.append(int(det["labels"][top]) if hit else -1)
            boxes.append(det["boxes"][top].detach().float().cpu() if hit else torch.zeros(4))
        return DetectionFlip(self.score_threshold, self.iou, torch.tensor(labels, dtype=torch.long),
                             torch.stack(boxes) if boxes else torch.zeros((0, 4)), torch.tensor(ok, dtype=torch.bool))

    def _matches(self, det, i: int) -> torch.Tensor:
        from torchvision.ops import box_iou

        found = det["boxes"]
        if not bool(self.applies[i]) or len(found) == 0:
            return torch.zeros(len(found), dtype=torch.bool, device=found.device)
        iou = box_iou(self.box[i:i + 1].to(found.device, found.dtype), found)[0]
        return ((det["labels"] == int(self.label[i])) & (iou >= self.iou)
                & (det["scores"] >= self.score_threshold)).detach()

    def loss(self, output):
        # 0 * the scores keeps an image's loss in the graph when nothing matches (its gradient is then 0)
        return torch.stack([det["scores"].sum() * 0 - (det["scores"] * self._matches(det, i)).sum()
                            for i, det in enumerate(output)])

    def state(self, output):
        counts, best = [], []
        for i, det in enumerate(output):
            m = self._matches(det, i)
            counts.append(int(m.sum()))
            best.append(float(det["scores"][m].max()) if bool(m.any()) else 0.0)
        return torch.tensor(counts, dtype=torch.long), torch.tensor(best)

    def done(self, code, value):
        return code == 0


class NeighbourFlip(Flip):
    """A change of an embedding's nearest neighbour in a reference set: ``bank`` (M, D) embeddings (the image set's;
    compared by cosine similarity), ``own`` (N,) each image's own row in the bank (left out of its neighbours; -1
    when it has none). Flipped when the nearest row (highest cosine) differs from the clean image's.

    The attack ascends the margin ``max_{j != nn} cos(e, b_j) - cos(e, b_nn)`` (Carlini & Wagner 2017's margin
    loss, https://arxiv.org/abs/1608.04644, on similarities): positive exactly when another row is nearer.
    ``state``: the nearest row and its cosine similarity."""

    def __init__(self, bank: torch.Tensor, own=None, nearest: torch.Tensor | None = None):
        self.bank = F.normalize(torch.as_tensor(bank).detach().flatten(1).float(), dim=1)
        self.own = None if own is None else torch.as_tensor(own, dtype=torch.long).reshape(-1)
        self.nearest = nearest

    def _copy(self, own, nearest) -> "NeighbourFlip":
        new = NeighbourFlip.__new__(NeighbourFlip)
        new.bank, new.own, new.nearest = self.bank, own, nearest
        return new

    def select(self, index):
        return self._copy(_take(self.own, index), _take(self.nearest, index))

    def _sims(self, output) -> torch.Tensor:
        e = F.normalize(output.flatten(1), dim=1)
        sims = e @ self.bank.to(e.device, e.dtype).T  # (B, M)
        if self.own is not None:
            own = self.own.to(e.device)
            rows = torch.nonzero(own >= 0).flatten()
            sims = sims.index_put((rows, own[rows]), torch.tensor(float("-inf"), device=e.device, dtype=e.dtype))
        return sims

    def start(self, output):
        if len(self.bank) < 2:
            raise ValueError("a nearest-neighbour flip needs a reference set of at least 2 embeddings")
        return self._copy(self.own, self._sims(output.detach()).argmax(1))

    def loss(self, output):
        sims = self._sims(output)
        nn_ = self.nearest.to(sims.device)
        near = sims.gather(1, nn_[:, None]).squeeze(1)
        others = sims.scatter(1, nn_[:, None], float("-inf"))
        return others.max(1).values - near

    def state(self, output):
        values, code = self._sims(output).max(1)
        return code, values

    def done(self, code, value):
        return code != self.nearest.to(code.device)


def _frozen_eval(model: nn.Module) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * 3))


def adversarial(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    target: Union[int, Sequence[int], torch.Tensor, None] = None,
    steps: int = 50,
    step_size: float | None = None,
    norm: Literal["l2", "linf"] = "l2",
    stop_at_change: bool = True,
    clamp: tuple[Bounds, Bounds] | None = None,
    flip: Flip | None = None,
) -> AdvResult:
    """Small input changes that change the model's decision, by normalized gradient steps.

    ``flip`` says what a changed decision is and which loss leads there (`Flip`: `ClassFlip`, `LabelSetFlip`,
    `RegionFlip`, `DetectionFlip`, `NeighbourFlip`); None is a classifier's (`ClassFlip`): untargeted
    (``target=None``), gradient ASCENT on the cross-entropy of each image's originally predicted label; targeted
    (an int, or one class per image), gradient DESCENT on the cross-entropy of ``target`` (only with ``flip=None``).
    Each step moves an image by ``step_size * g / ||g||`` (``norm="l2"``) or ``step_size * sign(g)``
    (``norm="linf"``, the gradient-sign step of Goodfellow et al. 2015, https://arxiv.org/abs/1412.6572), ``g`` the
    gradient of the flip's loss, then clamps. With ``stop_at_change`` an image stops at its first success (the
    flip, or ``target`` reached) and keeps that state in all later table rows; otherwise every image takes all
    ``steps``. Images the flip does not apply to (``Flip.applies``) take no step and do not succeed.

    Args:
        inputs: ``(N, C, H, W)`` normalized images (not modified).
        step_size: absolute step in normalized units; None uses `L2_STEP` times each image's norm (l2) or
            `LINF_STEP` times each image's value range (linf).
        clamp: per-channel ``(lo, hi)`` bounds in normalized space, or None.

    In the result, ``labels`` and ``probs`` hold the flip's ``state`` at each step: for a classifier the predicted
    class and its probability; ``original`` / ``final`` the first and last ``labels`` row.
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', not {norm!r}")
    if flip is not None and target is not None:
        raise ValueError("target is the targeted classifier attack: give it without a flip (or a ClassFlip goal)")
    if flip is None:
        flip = ClassFlip(goal=target)
    device, dtype = _device_dtype(model)
    x0 = inputs.detach().to(device=device, dtype=dtype)
    n = x0.shape[0]
    flat0 = x0.flatten(1)
    if step_size is not None:
        size = torch.full((n,), float(step_size), device=device, dtype=dtype)
    elif norm == "l2":
        size = L2_STEP * flat0.norm(dim=1)
    else:
        size = LINF_STEP * (flat0.max(1).values - flat0.min(1).values)
    size = _per_image(size)

    probs = torch.empty((steps + 1, n), dtype=dtype, device=device)
    taken = torch.zeros(n, dtype=torch.long, device=device)
    with preserved(model):
        _frozen_eval(model)
        x = x0.clone()
        with torch.no_grad():
            out = model(x)
            bound = flip.start(out)
            code, value = bound.state(out)
        labels = torch.empty((steps + 1, *code.shape), dtype=torch.long, device=device)
        labels[0], probs[0] = code.to(device), value.to(device, dtype)
        original = labels[0].clone()
        applies = (torch.ones(n, dtype=torch.bool, device=device) if bound.applies is None
                   else bound.applies.to(device))

        def rows(mask: torch.Tensor) -> torch.Tensor:  # (N,) -> broadcast over a state's extra dimensions
            return mask.view(-1, *([1] * (labels.dim() - 2)))

        def reached(code: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            return bound.done(code, value) & applies

        active = applies.clone()
        if stop_at_change:
            active &= ~reached(labels[0], probs[0])
        for it in range(1, steps + 1):
            if not bool(active.any()):
                labels[it:], probs[it:] = labels[it - 1], probs[it - 1]
                break
            xa = x.clone().requires_grad_(True)
            loss = bound.loss(model(xa)).sum()
            (g,) = torch.autograd.grad(loss, xa)
            if norm == "l2":
                step = g / _per_image(g.flatten(1).norm(dim=1).clamp_min(1e-12))
            else:
                step = g.sign()
            with torch.no_grad():
                moved = clamp_to(x + size * step, clamp)
                x = torch.where(_per_image(active), moved, x)
                taken += active.long()
                code, value = bound.state(model(x))
            labels[it] = torch.where(rows(active), code.to(device), labels[it - 1])
            probs[it] = torch.where(active, value.to(device, dtype), probs[it - 1])
            if stop_at_change:
                active &= ~reached(labels[it], probs[it])
    final = labels[-1].clone()
    rel = 100.0 * (x - x0).flatten(1).norm(dim=1) / flat0.norm(dim=1).clamp_min(1e-12)
    return AdvResult(x.detach(), labels, probs, taken, reached(final, probs[-1]), rel, original, final)


# --------------------------------------------------------------------------------------------------------------------
# Random directions of a given norm


@dataclass
class SphereResult:
    """What `random_sphere` returns for N images.

    changed: ``(N,)`` long: how many points are classified differently from the image itself.
    drawn: ``(N,)`` long: how many points were drawn around each image (``m``, or fewer when it stopped early).
    fraction: ``(N,)`` ``changed / drawn``.
    low, high: ``(N,)`` the 95% Wilson score interval of the flip rate (`wilson_interval`).
    original: ``(N,)`` the image's predicted class (``(N, *)``: the flip's state code, `Flip`).
    radius: ``(N,)`` the requested distance.
    norm_min, norm_max: ``(N,)`` smallest and largest measured ``||point - x||`` (the check that points lie on the
        sphere; equal to ``radius`` up to float rounding).
    """

    changed: torch.Tensor
    drawn: torch.Tensor
    fraction: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    original: torch.Tensor
    radius: torch.Tensor
    norm_min: torch.Tensor
    norm_max: torch.Tensor


def wilson_interval(k: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (Wilson 1927) of a rate after ``k`` successes in ``n`` trials, (low, high) in
    [0, 1]; ``z`` = 1.96 gives 95%. Unlike the normal approximation it stays inside [0, 1] and is not empty at
    ``k = 0`` (then it is [0, z^2 / (n + z^2)])."""
    if n <= 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * (p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def sphere_points(
    x: torch.Tensor, radius: float, m: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``m`` points drawn uniformly on the sphere of ``radius`` around one image ``x`` ``(C, H, W)``: ``(m, C, H, W)``.

    A Gaussian vector normalized over all ``C*H*W`` values has a uniform direction (Muller 1959).
    """
    d = torch.randn((m, x.numel()), generator=generator).to(device=x.device, dtype=x.dtype)
    d = d * (radius / d.norm(dim=1, keepdim=True))
    return x.unsqueeze(0) + d.view(m, *x.shape)


def random_sphere(
    model: nn.Module,
    inputs: torch.Tensor,
    radius: Union[float, torch.Tensor],
    *,
    m: int = 1000,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
    tolerance: float = 0.0,
    block: int = 50,
    flip: Flip | None = None,
) -> SphereResult:
    """How often random perturbations of a given size change the label: the control for `adversarial`.

    For each image of ``inputs`` ``(N, C, H, W)`` draws ``m`` points uniformly on the sphere of ``radius`` (a number,
    or ``(N,)``, e.g. ``||adv - x||``: random changes of the adversarial change's own norm) around it with `sphere_points`, ``block`` points per draw (so the points do
    not depend on ``batch_size``), classifies them ``batch_size`` at a time and counts label changes. With
    ``tolerance`` > 0 an image stops after the first block at which the 95% Wilson interval of its flip rate is
    within +/- ``tolerance`` (at most ``m`` points; 0 flips in 100 points gives [0, 0.037], so 0.02 stops there).
    Checking after every block is a sequential test: the interval's coverage is then approximate. A sphere at the
    adversarial distance (or a fixed multiple of it) is this project's control, not Szegedy et al.'s (they added
    Gaussian noise): at the same norm it says how much more often the found direction flips the label than a random
    one. Fawzi et al. 2016 (https://arxiv.org/abs/1608.08967) show that for a linear classifier, and
    approximately for one with a slightly curved boundary, the distance to the boundary along a random direction is
    about sqrt(d) times the smallest one (d = ``C*H*W``), so few points should flip.
    Same generator seed, ``m``, ``block`` and ``tolerance``, same result. No clamping: points may leave the pixel
    range. ``flip`` (`Flip`, None: a classifier's `ClassFlip`) is what counts as a change, the attack's own
    measure; ``original`` is then the image's state code (its predicted class for a classifier).
    """
    device, dtype = _device_dtype(model)
    x0 = inputs.detach().to(device=device, dtype=dtype)
    n = x0.shape[0]
    radii = torch.as_tensor(radius, dtype=dtype).reshape(-1).expand(n).to(device).clone()
    if block < 1 or batch_size < 1:
        raise ValueError(f"random_sphere needs block >= 1 and batch_size >= 1, got {block} and {batch_size}")
    changed = torch.zeros(n, dtype=torch.long, device=device)
    drawn = torch.zeros(n, dtype=torch.long, device=device)
    nmin = torch.full((n,), float("inf"), dtype=dtype, device=device)
    nmax = torch.zeros(n, dtype=dtype, device=device)
    with preserved(model), torch.no_grad():
        _frozen_eval(model)
        out = model(x0)
        bound = (flip if flip is not None else ClassFlip()).start(out)
        original = bound.state(out)[0]
        for i in range(n):
            one = bound.select(torch.tensor([i]))
            while int(drawn[i]) < m:
                pts = sphere_points(x0[i], float(radii[i]), min(block, m - int(drawn[i])), generator)
                dist = (pts - x0[i]).flatten(1).norm(dim=1)
                nmin[i] = torch.minimum(nmin[i], dist.min())
                nmax[i] = torch.maximum(nmax[i], dist.max())
                for part in pts.split(batch_size):
                    copies = one.select(torch.zeros(len(part), dtype=torch.long))  # every point is image i
                    changed[i] += copies.flipped(model(part)).sum().to(changed.device)
                drawn[i] += len(pts)
                low, high = wilson_interval(int(changed[i]), int(drawn[i]))
                if tolerance > 0 and (high - low) / 2 <= tolerance:
                    break
    bounds = torch.tensor([wilson_interval(int(c), int(d)) for c, d in zip(changed, drawn)], dtype=dtype,
                          device=device).reshape(n, 2)
    return SphereResult(changed, drawn, changed.to(dtype) / drawn.clamp(min=1).to(dtype), bounds[:, 0], bounds[:, 1],
                        original, radii, nmin, nmax)
