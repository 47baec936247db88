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

__all__ = ["AdvResult", "SphereResult", "adversarial", "random_sphere", "sphere_points", "L2_STEP", "LINF_STEP"]

L2_STEP = 0.005
"""Default l2 step of `adversarial`, as a fraction of each image's own norm (so 50 steps reach at most 25%)."""
LINF_STEP = 0.004
"""Default linf step of `adversarial`, as a fraction of each image's value range (max - min), about 1/255."""


@dataclass
class AdvResult:
    """What `adversarial` returns (N images, S = ``steps``).

    adv: ``(N, C, H, W)`` the adversarial images (each one as it was when it stopped).
    labels, probs: ``(S + 1, N)`` predicted class (long) and its softmax probability (float) at every iteration;
        row 0 is the original image. After an image stops, its remaining rows repeat its final state.
    steps_taken: ``(N,)`` gradient steps applied to each image.
    success: ``(N,)`` bool: the label changed (untargeted) or reached ``target`` (targeted), at the end.
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
) -> AdvResult:
    """Small input changes that change the model's decision, by normalized gradient steps.

    Untargeted (``target=None``): gradient ASCENT on the cross-entropy of each image's originally predicted label.
    Targeted (an int, or one class per image): gradient DESCENT on the cross-entropy of ``target``. Each step moves
    an image by ``step_size * g / ||g||`` (``norm="l2"``) or ``step_size * sign(g)`` (``norm="linf"``, the
    gradient-sign step of Goodfellow et al. 2015, https://arxiv.org/abs/1412.6572), then clamps. With
    ``stop_at_change`` an image stops at its first success (label change, or ``target`` reached) and keeps that
    state in all later table rows; otherwise every image takes all ``steps``.

    Args:
        inputs: ``(N, C, H, W)`` normalized images (not modified).
        step_size: absolute step in normalized units; None uses `L2_STEP` times each image's norm (l2) or
            `LINF_STEP` times each image's value range (linf).
        clamp: per-channel ``(lo, hi)`` bounds in normalized space, or None.
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', not {norm!r}")
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

    labels = torch.empty((steps + 1, n), dtype=torch.long, device=device)
    probs = torch.empty((steps + 1, n), dtype=dtype, device=device)
    taken = torch.zeros(n, dtype=torch.long, device=device)
    with preserved(model):
        _frozen_eval(model)
        x = x0.clone()
        with torch.no_grad():
            p = model(x).flatten(1).softmax(1)
        probs[0], labels[0] = p.max(1)
        original = labels[0].clone()
        if target is None:
            goal = original
        else:
            goal = torch.as_tensor(target, device=device, dtype=torch.long).reshape(-1).expand(n).clone()
        active = torch.ones(n, dtype=torch.bool, device=device)

        def reached(pred: torch.Tensor) -> torch.Tensor:
            return pred != original if target is None else pred == goal

        if stop_at_change:
            active &= ~reached(labels[0])
        for it in range(1, steps + 1):
            if not bool(active.any()):
                labels[it:], probs[it:] = labels[it - 1], probs[it - 1]
                break
            xa = x.clone().requires_grad_(True)
            loss = F.cross_entropy(model(xa).flatten(1), goal, reduction="sum")
            (g,) = torch.autograd.grad(loss, xa)
            if target is not None:
                g = -g  # targeted: descend the target's loss
            if norm == "l2":
                step = g / _per_image(g.flatten(1).norm(dim=1).clamp_min(1e-12))
            else:
                step = g.sign()
            with torch.no_grad():
                moved = clamp_to(x + size * step, clamp)
                x = torch.where(_per_image(active), moved, x)
                taken += active.long()
                p = model(x).flatten(1).softmax(1)
                pr, lab = p.max(1)
            labels[it] = torch.where(active, lab, labels[it - 1])
            probs[it] = torch.where(active, pr, probs[it - 1])
            if stop_at_change:
                active &= ~reached(labels[it])
    final = labels[-1].clone()
    rel = 100.0 * (x - x0).flatten(1).norm(dim=1) / flat0.norm(dim=1).clamp_min(1e-12)
    return AdvResult(x.detach(), labels, probs, taken, reached(final), rel, original, final)


# --------------------------------------------------------------------------------------------------------------------
# Random directions of a given norm


@dataclass
class SphereResult:
    """What `random_sphere` returns for N images.

    changed: ``(N,)`` long: how many points are classified differently from the image itself.
    drawn: ``(N,)`` long: how many points were drawn around each image (``m``, or fewer when it stopped early).
    fraction: ``(N,)`` ``changed / drawn``.
    low, high: ``(N,)`` the 95% Wilson score interval of the flip rate (`wilson_interval`).
    original: ``(N,)`` the image's predicted class.
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
    range.
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
        original = model(x0).flatten(1).argmax(1)
        for i in range(n):
            while int(drawn[i]) < m:
                pts = sphere_points(x0[i], float(radii[i]), min(block, m - int(drawn[i])), generator)
                dist = (pts - x0[i]).flatten(1).norm(dim=1)
                nmin[i] = torch.minimum(nmin[i], dist.min())
                nmax[i] = torch.maximum(nmax[i], dist.max())
                for part in pts.split(batch_size):
                    changed[i] += (model(part).flatten(1).argmax(1) != original[i]).sum()
                drawn[i] += len(pts)
                low, high = wilson_interval(int(changed[i]), int(drawn[i]))
                if tolerance > 0 and (high - low) / 2 <= tolerance:
                    break
    bounds = torch.tensor([wilson_interval(int(c), int(d)) for c, d in zip(changed, drawn)], dtype=dtype,
                          device=device).reshape(n, 2)
    return SphereResult(changed, drawn, changed.to(dtype) / drawn.clamp(min=1).to(dtype), bounds[:, 0], bounds[:, 1],
                        original, radii, nmin, nmax)
