"""Inputs optimized to excite a model: activation maximization and DeepDream, from three small composable parts.

Every function takes and returns NORMALIZED model inputs ``(N, C, H, W)`` (what the model's first layer sees). To keep
images in a displayable pixel range pass ``clamp=pixel_bounds(mean, std)``: the per-channel bounds of ``[0, 1]``
pixels after the model's normalization.

An optimization composes three contracts (the design of Lucent's ``optvis``):

- Objectives are small objects that read a forward pass and return one score per image, ``(N,)``. They compose with
  ``+ - *`` so that ``class_logit(3) - 1e-3 * edge_energy()`` reads like the maths. An objective is called as
  ``objective(logits, rec, inputs)``: ``logits`` is the model output, ``rec`` the `reportgen.capture.Recorder` of a
  ``capture(model, objective.layers, keep_live=True)`` pass and ``inputs`` the images being optimized (only the
  penalties `l2` and `edge_energy` read them).
- A parameterization is a pair ``(params, image_fn)``: the leaf tensors Adam updates and a function that builds the
  images ``(N, C, H, W)`` from them (`pixel_param`, `fourier_param`, `grey_param`; `mapped_param` appends
  transforms such as `soft_window` to it).
- Transforms are ``Tensor -> Tensor`` callables chained by `compose`: the random ones (`random_roll`,
  `random_zoom_rotate`) are applied to the image before each forward pass and draw from the ``torch.Generator`` they
  were built with, never from the global RNG; the edits (`gaussian_blur`, `zero_below`, `bounded`, `every`) are
  applied to a pixel parameter after each step.

``maximize(model, objective, param, transforms, edits=..., steps=..., lr=...)`` runs them; `standard_param`,
`standard_transforms`, `standard_edits` and `penalized` build the report's recipe from `MaxDefaults` values.

The model is never changed: weights are frozen only for the duration of a call (under `reportgen.capture.preserved`),
the model runs in eval mode so that batch-norm and dropout treat each image on its own, gradients are taken with
``torch.autograd.grad`` with respect to the parameters only, and no hook outlives a call.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from reportgen.capture import Recorder, capture, preserved, resolve_layer

Index = Union[int, Sequence[int], torch.Tensor]
Bounds = Union[float, Sequence[float], torch.Tensor]
Transform = Callable[[torch.Tensor], torch.Tensor]
"""A function ``(N, C, H, W) -> (N, C, H, W)``; random ones hold their own ``torch.Generator``."""
Param = tuple[list[torch.Tensor], Callable[[], torch.Tensor]]
"""A parameterization: the tensors to optimize, and a function that builds the images ``(N, C, H, W)`` from them."""

__all__ = [
    "DEFAULTS",
    "MaxDefaults",
    "MaxResult",
    "Objective",
    "Param",
    "Transform",
    "CENTRE",
    "binary_logit",
    "binary_prob",
    "blur",
    "bounded",
    "centre_mask",
    "channel",
    "clamp_to",
    "class_logit",
    "class_prob",
    "compose",
    "cosine_to",
    "deepdream",
    "device_dtype",
    "edge_energy",
    "edge_energy_penalty",
    "every",
    "fourier_image",
    "fourier_param",
    "fourier_scale",
    "gaussian_blur",
    "grey_param",
    "l2",
    "l2_penalty",
    "label_prob",
    "layer_energy",
    "mapped_param",
    "maximize",
    "noise",
    "penalized",
    "pixel_bounds",
    "pixel_param",
    "random_affine",
    "random_roll",
    "random_zoom_rotate",
    "region_logit",
    "soft_window",
    "standard_edits",
    "standard_param",
    "standard_transforms",
    "unit",
    "window_mask",
    "zero_below",
    "zero_small_pixels",
]


# --------------------------------------------------------------------------------------------------------------------
# Objectives


class Objective:
    """A differentiable score per image: ``objective(logits, rec, inputs) -> (N,)``.

    Build objectives with the factories below and combine them with ``+``, ``-``, unary ``-`` and multiplication by a
    number. ``layers`` is the set of dotted layer names the objective reads from ``rec.live``; a sum needs the union.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], layers: Sequence[str] = (), name: str = "objective") -> None:
        self.fn = fn
        self.layers = tuple(dict.fromkeys(layers))
        self.name = name

    def __call__(self, logits: torch.Tensor, rec: Recorder | None = None, inputs: torch.Tensor | None = None):
        return self.fn(logits, rec, inputs)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def __add__(self, other: "Objective | float") -> "Objective":
        if isinstance(other, (int, float)):
            return Objective(lambda lg, r, x: self(lg, r, x) + other, self.layers, f"{self.name} + {other:g}")
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(
            lambda lg, r, x: self(lg, r, x) + other(lg, r, x),
            self.layers + other.layers,
            f"{self.name} + {other.name}",
        )

    __radd__ = __add__

    def __neg__(self) -> "Objective":
        return Objective(lambda lg, r, x: -self(lg, r, x), self.layers, f"-({self.name})")

    def __sub__(self, other: "Objective | float") -> "Objective":
        if not isinstance(other, (int, float, Objective)):
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other: float) -> "Objective":
        return (-self) + other

    def __mul__(self, k: float) -> "Objective":
        if not isinstance(k, (int, float)):
            return NotImplemented
        return Objective(lambda lg, r, x: k * self(lg, r, x), self.layers, f"{k:g} * {self.name}")

    __rmul__ = __mul__


def _pick(values: torch.Tensor, index: Index) -> torch.Tensor:
    """``values[:, index]`` for one index, or ``values[i, index[i]]`` for one index per image."""
    if isinstance(index, int):
        return values[:, index]
    idx = torch.as_tensor(index, device=values.device, dtype=torch.long).reshape(-1)
    if idx.numel() == 1:
        return values[:, int(idx)]
    if idx.numel() != values.shape[0]:
        raise ValueError(f"got {idx.numel()} indices for a batch of {values.shape[0]} images: give one or one per image")
    return values.gather(1, idx.view(-1, 1)).squeeze(1)


def _live(rec: Recorder | None, layer: str) -> torch.Tensor:
    if rec is None or layer not in rec.live:
        raise ValueError(f"layer '{layer}' was not recorded: run the model under capture(model, objective.layers, keep_live=True)")
    return rec.live[layer]


def class_logit(target: Index) -> Objective:
    """The pre-softmax score of class ``target`` (an int, or one class per image); of any (N, D) output, its value
    ``target`` (a multi-label model's label logit, a regressor's output)."""
    return Objective(lambda lg, r, x: _pick(lg.flatten(1), target), (), f"class_logit({target})")


def class_prob(target: Index) -> Objective:
    """The softmax probability of class ``target``, in [0, 1]; it can rise by pushing other classes down."""
    return Objective(lambda lg, r, x: _pick(lg.flatten(1).softmax(1), target), (), f"class_prob({target})")


def binary_logit(target: Index) -> Objective:
    """The log-odds of class ``target`` (0 or 1; an int, or one per image) of a one-logit binary classifier whose
    output z (N, 1) is the positive class's logit: ``z`` for class 1, ``-z`` for class 0 (softmax of [0, z])."""

    def fn(lg, r, x):
        z = lg.flatten(1)[:, 0]
        c = torch.as_tensor(target, device=z.device, dtype=z.dtype).reshape(-1)
        return (2 * c - 1) * z

    return Objective(fn, (), f"binary_logit({target})")


def binary_prob(target: Index) -> Objective:
    """The probability of class ``target`` (0 or 1) of a one-logit binary classifier: ``sigmoid(+-z)``, in [0, 1]."""
    logit = binary_logit(target)
    return Objective(lambda lg, r, x: torch.sigmoid(logit(lg, r, x)), (), f"binary_prob({target})")


def label_prob(target: Index) -> Objective:
    """The sigmoid probability of label ``target`` of a multi-label model (independent sigmoids over logits (N, K)),
    in [0, 1]; unlike `class_prob`, the other labels do not enter it."""
    return Objective(lambda lg, r, x: torch.sigmoid(_pick(lg.flatten(1), target)), (), f"label_prob({target})")


def _seg_logits(output) -> torch.Tensor:
    if isinstance(output, dict):
        output = output.get("out", output.get("logits"))
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        raise ValueError("a segmentation objective reads (N, K, H, W) logits, or a dict holding them under 'out'")
    return output


CENTRE = 0.5
"""Diameter of `centre_mask`'s disk as a fraction of the output map's shorter side."""


def centre_mask(h: int, w: int, diameter: float = CENTRE, device=None) -> torch.Tensor:
    """(H, W) bool: the pixels of an H x W map whose centres lie within the centred disk of ``diameter`` times the
    shorter side (at least the one or four central pixels)."""
    yy = (torch.arange(h, device=device, dtype=torch.float64) + 0.5 - h / 2).view(-1, 1)
    xx = (torch.arange(w, device=device, dtype=torch.float64) + 0.5 - w / 2).view(1, -1)
    r = torch.sqrt(yy**2 + xx**2)
    return r <= max(diameter * min(h, w) / 2, float(r.min()))


def region_logit(target: Index, diameter: float = CENTRE, prob: bool = False) -> Objective:
    """A segmentation's class ``target`` (an int, or one per image) over the centre of its output map: the mean
    over `centre_mask`'s pixels (a centred disk of ``diameter`` times the map's shorter side, on the map's own
    grid) of the class's logit, or of its softmax probability over the classes with ``prob``. Reads (N, K, H, W)
    or torchvision's dict's 'out'."""

    def fn(lg, r, x):
        y = _seg_logits(lg)
        if prob:
            y = y.softmax(1)
        m = centre_mask(*y.shape[-2:], diameter, y.device).to(y.dtype)
        means = (y * m).sum((2, 3)) / m.sum()  # (N, K)
        return _pick(means, target)

    return Objective(fn, (), f"region_{'prob' if prob else 'logit'}({target})")


def cosine_to(references: torch.Tensor) -> Objective:
    """The cosine similarity, in [-1, 1], of an embedding output (N, D) to ``references``: (D,) for every image or
    (N, D) one per image (e.g. a class's mean embedding, its prototype)."""
    refs = torch.as_tensor(references).detach()

    def fn(lg, r, x):
        e = lg.flatten(1)
        ref = refs.to(e.device, e.dtype)
        return F.cosine_similarity(e, ref[None] if ref.dim() == 1 else ref, dim=1)

    return Objective(fn, (), "cosine_to(references)")


def unit(layer: str, index: int | tuple[int, int, int]) -> Objective:
    """One neuron of ``layer``: a flat index into the per-image output, or ``(c, y, x)`` of a conv map."""

    def fn(lg, rec, x):
        act = _live(rec, layer)
        if isinstance(index, int):
            return act.flatten(1)[:, index]
        return act[(slice(None), *index)]

    return Objective(fn, (layer,), f"unit({layer}, {index})")


def channel(layer: str, c: Index) -> Objective:
    """The spatial mean of channel ``c`` of ``layer`` (an int, or one channel per image); for ``(N, F)`` outputs the
    feature itself."""

    def fn(lg, rec, x):
        act = _live(rec, layer)
        means = act.flatten(2).mean(2) if act.dim() > 2 else act
        return _pick(means, c)

    return Objective(fn, (layer,), f"channel({layer}, {c})")


def layer_energy(layer: str) -> Objective:
    """The mean of squares of ``layer``'s output per image (what DeepDream amplifies)."""
    return Objective(lambda lg, r, x: _live(r, layer).flatten(1).pow(2).mean(1), (layer,), f"layer_energy({layer})")


def l2_penalty(inputs: torch.Tensor) -> torch.Tensor:
    """``||x||^2`` per image: ``(N, C, H, W) -> (N,)``. In normalized space it pulls pixels toward the data mean."""
    return inputs.flatten(1).pow(2).sum(1)


def l2() -> Objective:
    """`l2_penalty` of the optimized images as an objective, to subtract: ``obj - lam * l2()``."""
    return Objective(lambda lg, r, x: l2_penalty(_need_inputs(x)), (), "l2")


def _gaussian_1d(sigma: float, radius: int, device, dtype) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _separable_blur(x: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Blur every channel of ``(N, C, H, W)`` on its own; replicate padding keeps a constant image constant."""
    n, c, h, w = x.shape
    k = _gaussian_1d(sigma, radius, x.device, x.dtype)
    flat = x.reshape(n * c, 1, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, k.view(1, 1, 1, -1))
    flat = F.conv2d(flat, k.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def edge_energy_penalty(inputs: torch.Tensor, scales: int = 3, sigma: float = 1.0) -> torch.Tensor:
    """Multi-scale high-frequency energy ``h(x) = sum_s ||d^s(x) - g * d^s(x)||^2`` per image, ``(N,)``, >= 0.

    ``d`` halves the resolution (2x2 average), ``g`` is a 5x5 Gaussian (``sigma``) applied to each channel on its own
    with replicate padding, so ``h`` is 0 for a constant image and grows with high frequencies. Scales stop early
    once the image is smaller than the kernel. After Mahendran & Vedaldi's natural-image priors,
    https://arxiv.org/abs/1412.0035 .
    """
    # h is unchanged by adding a constant per channel (blur keeps constants), so subtracting each channel's corner
    # pixel first makes a constant image give exactly 0 instead of float rounding noise times its level.
    x = inputs - inputs[..., :1, :1]
    total = x.new_zeros(x.shape[0])
    for s in range(scales):
        if s:
            if min(x.shape[-2:]) < 6:
                break
            # adaptive pooling halves odd sizes too, and still maps a constant image to a constant image
            x = F.adaptive_avg_pool2d(x, (x.shape[-2] // 2, x.shape[-1] // 2))
        total = total + (x - _separable_blur(x, sigma, 2)).flatten(1).pow(2).sum(1)
    return total


def edge_energy(scales: int = 3) -> Objective:
    """`edge_energy_penalty` of the optimized images as an objective, to subtract: ``obj - lam * edge_energy()``."""
    return Objective(lambda lg, r, x: edge_energy_penalty(_need_inputs(x), scales), (), f"edge_energy({scales})")


def _need_inputs(x: torch.Tensor | None) -> torch.Tensor:
    if x is None:
        raise ValueError("this penalty reads the optimized images: call objective(logits, rec, inputs)")
    return x


# --------------------------------------------------------------------------------------------------------------------
# Image operations (plain functions on tensors; the transforms below wrap them)


def pixel_bounds(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per-channel ``(lo, hi)`` of ``[0, 1]`` pixels after ``(pixel - mean) / std``, for the ``clamp`` arguments."""
    lo = [(0.0 - m) / s for m, s in zip(mean, std)]
    hi = [(1.0 - m) / s for m, s in zip(mean, std)]
    return lo, hi


def _bound(value: Bounds, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, device=x.device, dtype=x.dtype).reshape(-1)
    if t.numel() not in (1, x.shape[1]):
        raise ValueError(f"clamp bounds have {t.numel()} values for {x.shape[1]} channels: give one or one per channel")
    return t.view(1, -1, 1, 1)


def clamp_to(x: torch.Tensor, clamp: tuple[Bounds, Bounds] | None) -> torch.Tensor:
    """``x`` clipped to per-channel ``(lo, hi)`` (numbers or one per channel); ``None`` leaves it unbounded."""
    if clamp is None:
        return x
    lo, hi = clamp
    return torch.maximum(torch.minimum(x, _bound(hi, x)), _bound(lo, x))


def blur(inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of each channel, ``(N, C, H, W) -> (N, C, H, W)``; the kernel reaches ``2 sigma`` each side."""
    if sigma <= 0:
        return inputs
    return _separable_blur(inputs, sigma, max(1, math.ceil(2 * sigma)))


def zero_small_pixels(
    inputs: torch.Tensor, percentile: float | None = None, threshold: float | None = None
) -> torch.Tensor:
    """Set to 0 (the data mean, in normalized space) the pixels whose norm over channels is small.

    Small means below the image's own ``percentile`` (0-100) of pixel norms, or below an absolute ``threshold``.
    Yosinski et al. 2015, https://arxiv.org/abs/1506.06579 .
    """
    norms = inputs.norm(dim=1, keepdim=True)  # (N, 1, H, W)
    keep = torch.ones_like(norms, dtype=torch.bool)
    if percentile is not None:
        cut = torch.quantile(norms.flatten(1), percentile / 100.0, dim=1).view(-1, 1, 1, 1)
        keep &= norms >= cut
    if threshold is not None:
        keep &= norms >= threshold
    return inputs * keep


def _roll(x: torch.Tensor, jitter: int, generator: torch.Generator | None) -> torch.Tensor:
    if jitter <= 0:
        return x
    dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def window_mask(h: int, w: int, radius: float, device=None, dtype=None) -> torch.Tensor:
    """A centred soft round window ``(H, W)`` in [0, 1]: 1 up to ``0.7 radius``, a raised-cosine fall to 0 at
    ``radius``, 0 beyond. ``radius`` is a fraction of half the shorter side: with ``radius <= 1`` the corners are 0
    (the image fades out before its border)."""
    if radius <= 0:
        raise ValueError(f"window radius must be > 0, got {radius}")
    half = min(h, w) / 2
    yy = (torch.arange(h, device=device, dtype=torch.float64) + 0.5 - h / 2).view(-1, 1)
    xx = (torch.arange(w, device=device, dtype=torch.float64) + 0.5 - w / 2).view(1, -1)
    r = torch.sqrt(yy**2 + xx**2) / (half * radius)  # 1 at the outer edge of the window
    # a flat top wide enough for a digit that fills its frame, a taper wide enough to leave no visible rim
    t = ((r - 0.7) / 0.3).clamp(0, 1)
    return (0.5 * (1 + torch.cos(math.pi * t))).to(dtype or torch.float32)


def random_affine(
    inputs: torch.Tensor, scale: float = 0.0, degrees: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each image zoomed by a random factor in ``[1 - scale, 1 + scale]`` and rotated by a random angle in
    ``[-degrees, degrees]`` about its centre, ``(N, C, H, W) -> (N, C, H, W)``, differentiable (bilinear
    ``grid_sample``). Outside pixels repeat the border, so a constant image stays constant. The transformation
    robustness of Olah et al. 2017, https://distill.pub/2017/feature-visualization/ ."""
    if not scale and not degrees:
        return inputs
    n = inputs.shape[0]
    s = 1 + scale * (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1)
    a = math.radians(degrees) * (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1)
    cos, sin = torch.cos(a) / s, torch.sin(a) / s  # the grid maps output to input coordinates: divide to zoom in
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(device=inputs.device, dtype=inputs.dtype), list(inputs.shape), align_corners=False)
    return F.grid_sample(inputs, grid, mode="bilinear", padding_mode="border", align_corners=False)


def fourier_scale(h: int, w: int, decay: float = 1.0, device=None, dtype=None) -> torch.Tensor:
    """``(H, W // 2 + 1)`` weights ``1 / max(f, 1 / max(H, W)) ** decay`` of the real 2-D FFT bins (f in cycles per
    pixel), scaled to a root mean square of 1 so that white coefficients give pixels of about their own size."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(w, dtype=torch.float64).view(1, -1)
    scale = torch.sqrt(fy**2 + fx**2).clamp(min=1.0 / max(h, w)).pow(-decay)
    return (scale / scale.pow(2).mean().sqrt()).to(device=device, dtype=dtype or torch.float32)


def fourier_image(spectrum: torch.Tensor, size: tuple[int, int], decay: float = 1.0) -> torch.Tensor:
    """Images ``(N, C, H, W)`` from a decorrelated parameterization: ``spectrum`` ``(N, C, H, W // 2 + 1, 2)``
    (real, imaginary parts), weighted by `fourier_scale` and sent through the inverse orthonormal real FFT.

    Equal steps on every coefficient then move the low frequencies most, so gradient ascent finds smooth images.
    Olah et al. 2017, https://distill.pub/2017/feature-visualization/ (Lucent's ``fft_image``).
    """
    return _fourier_pixels(spectrum, size, fourier_scale(*size, decay, spectrum.device, spectrum.dtype))


def _fourier_pixels(spectrum: torch.Tensor, size: tuple[int, int], scale: torch.Tensor) -> torch.Tensor:
    return torch.fft.irfft2(torch.view_as_complex(spectrum.contiguous()) * scale, s=size, norm="ortho")


def _fourier_init(images: torch.Tensor, decay: float) -> torch.Tensor:
    """The spectrum that `fourier_image` maps back to ``images``."""
    h, w = images.shape[-2:]
    spec = torch.fft.rfft2(images, norm="ortho") / fourier_scale(h, w, decay, images.device, images.dtype)
    return torch.view_as_real(spec).clone()


# --------------------------------------------------------------------------------------------------------------------
# Transforms: Tensor -> Tensor callables, chained by compose


def compose(*transforms: Transform) -> Transform:
    """One transform that applies ``transforms`` left to right: ``compose(f, g)(x) == g(f(x))``; no transform is the
    identity."""

    def composed(x: torch.Tensor) -> torch.Tensor:
        for t in transforms:
            x = t(x)
        return x

    return composed


def random_roll(pixels: int, generator: torch.Generator) -> Transform:
    """Jitter: roll every image of the batch by one random ``(dy, dx)`` in ``[-pixels, pixels]^2`` (wrapping
    around), drawn from ``generator`` at each call; ``pixels <= 0`` is the identity and draws nothing.
    Olah et al. 2017, https://distill.pub/2017/feature-visualization/ ."""
    return lambda x: _roll(x, pixels, generator)


def random_zoom_rotate(scale: float, degrees: float, generator: torch.Generator) -> Transform:
    """`random_affine` with random factors from ``generator``: each image zoomed by a factor in ``[1 - scale,
    1 + scale]`` and rotated by up to ``degrees``. Zoom and rotation are one transform so that the image is
    interpolated once, not twice; both 0 is the identity and draws nothing."""
    return lambda x: random_affine(x, scale, degrees, generator)


def soft_window(radius: float) -> Transform:
    """``x * window_mask(H, W, radius)``: the image fades into 0 (the data mean, in normalized space) outside a
    centred disk, so that a model that adds its evidence up over the image (global average pooling) draws one
    centred object, not a tiling. Deterministic; the mask is built once per size, device and dtype."""
    masks: dict[tuple, torch.Tensor] = {}

    def windowed(x: torch.Tensor) -> torch.Tensor:
        key = (*x.shape[-2:], x.device, x.dtype)
        if key not in masks:
            masks[key] = window_mask(*x.shape[-2:], radius, x.device, x.dtype)
        return x * masks[key]

    return windowed


def gaussian_blur(sigma: float) -> Transform:
    """`blur` with ``sigma`` in pixels; ``sigma <= 0`` is the identity."""
    return lambda x: blur(x, sigma)


def zero_below(percentile: float | None = None, threshold: float | None = None) -> Transform:
    """`zero_small_pixels`: pixels whose norm over channels is below the image's ``percentile`` (0-100) or below
    ``threshold`` become 0; both None is the identity. Yosinski et al. 2015, https://arxiv.org/abs/1506.06579 ."""
    if percentile is None and threshold is None:
        return lambda x: x
    return lambda x: zero_small_pixels(x, percentile, threshold)


def bounded(clamp: tuple[Bounds, Bounds] | None) -> Transform:
    """`clamp_to` the per-channel ``(lo, hi)``; None is the identity. A one-channel (grey) image given bounds for
    several channels is kept inside all of them (the largest ``lo`` and the smallest ``hi``), so that it stays valid
    once copied into every channel."""
    if clamp is None:
        return lambda x: x
    bounds: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # built once per channels, device and dtype

    def clamped(x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[1], x.device, x.dtype)
        if key not in bounds:
            lo, hi = clamp
            if x.shape[1] == 1:
                lo, hi = (torch.as_tensor(b, device=x.device, dtype=x.dtype).reshape(-1) for b in clamp)
                lo, hi = lo.max(), hi.min()
            bounds[key] = _bound(lo, x), _bound(hi, x)
        lo, hi = bounds[key]
        return torch.maximum(torch.minimum(x, hi), lo)  # `clamp_to`'s arithmetic

    return clamped


def every(k: int, transform: Transform) -> Transform:
    """``transform`` on every ``k``-th call (the k-th, 2k-th, ...), the identity on the others; ``k <= 0``: never.

    It counts its own calls, so build a fresh one for each optimization (the `standard_edits` recipe does): as an
    edit of `maximize` the count is the step number."""
    if k <= 0:
        return lambda x: x
    calls = 0

    def sometimes(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return transform(x) if calls % k == 0 else x

    return sometimes


# --------------------------------------------------------------------------------------------------------------------
# Parameterizations: (params, image_fn)


def noise(
    shape: tuple[int, int, int, int], generator: torch.Generator, std: float | None = None, device=None, dtype=None
) -> torch.Tensor:
    """Start images ``(N, C, H, W)``: Gaussian noise of standard deviation ``std`` (default
    ``MaxDefaults.init_std``, normalized units) from ``generator``. Drawn on the CPU and then moved, so the same seed
    gives the same start on every device."""
    std = DEFAULTS.init_std if std is None else std
    return (std * torch.randn(shape, generator=generator)).to(device=device, dtype=dtype or torch.float32)


def pixel_param(init: torch.Tensor, clamp: tuple[Bounds, Bounds] | None = None) -> Param:
    """The pixels themselves: ``params = [x]`` with ``x`` a copy of ``init`` ``(N, C, H, W)`` clipped to ``clamp``,
    and ``image_fn() = x``. ``init`` is not modified. Keeping ``x`` inside the bounds during the optimization is the
    job of a `bounded` edit (`standard_edits` adds it): clipping inside the graph would stop the gradient of every
    pixel at a bound."""
    x = bounded(clamp)(init.detach().clone()).requires_grad_(True)
    return [x], lambda: x


def fourier_param(init: torch.Tensor, decay: float = 1.0, clamp: tuple[Bounds, Bounds] | None = None) -> Param:
    """A 1/f-weighted spectrum: ``params = [spectrum]``, ``(N, C, H, W // 2 + 1, 2)``, starting from the spectrum of
    ``init`` ``(N, C, H, W)``; ``image_fn()`` is ``fourier_image(spectrum, (H, W), decay)`` clipped to ``clamp``
    inside the graph (a spectrum cannot be clipped itself), so the image is ``init`` clipped before the first step.

    Equal steps on every coefficient move the low frequencies most, so gradient ascent finds smooth images:
    Olah et al. 2017, https://distill.pub/2017/feature-visualization/ ; Mordvintsev et al., Differentiable Image
    Parameterizations, Distill 2018, https://distill.pub/2018/differentiable-parameterizations/ .
    """
    size = tuple(init.shape[-2:])
    spectrum = _fourier_init(init.detach(), decay).requires_grad_(True)
    clip = bounded(clamp)
    scale = fourier_scale(*size, decay, spectrum.device, spectrum.dtype)  # `fourier_image`'s, built once
    return [spectrum], lambda: clip(_fourier_pixels(spectrum, size, scale))


def grey_param(
    init: torch.Tensor,
    base: Callable[..., Param] = pixel_param,
    clamp: tuple[Bounds, Bounds] | None = None,
    **base_kwargs,
) -> Param:
    """One grey channel shared by all C channels: ``base`` (`pixel_param` or `fourier_param`, with ``base_kwargs``)
    over the channel mean of ``init`` ``(N, 1, H, W)``, and ``image_fn()`` copies it into the C channels of ``init``,
    ``(N, C, H, W)``. Colour then cannot carry the objective and the image shows form only. ``clamp`` may give one
    bound per colour channel: the grey channel is kept inside all of them (see `bounded`)."""
    channels = init.shape[1]
    params, grey = base(init.detach().mean(1, keepdim=True), clamp=clamp, **base_kwargs)
    return params, lambda: grey().expand(-1, channels, -1, -1)


def mapped_param(param: Param, *transforms: Transform) -> Param:
    """``param`` whose image goes through ``transforms`` (composed, in order): ``(params, compose(image_fn,
    *transforms))``. For deterministic changes that are part of the image itself, such as `soft_window`: the
    penalties read, and `maximize` returns, the transformed image."""
    params, image_fn = param
    then = compose(*transforms)
    return params, lambda: then(image_fn())


# --------------------------------------------------------------------------------------------------------------------
# Activation maximization


class _StopForward(Exception):
    """Raised by `_stop_after`'s hook to end a forward pass once the watched layer has run."""


@contextmanager
def _stop_after(model: nn.Module, layer: str, active: bool = True):
    """When ``active``, forward passes of ``model`` end right after ``layer`` (the caller catches `_StopForward`).

    Registered after `capture`'s hook on the same module, so the output is recorded first.
    """
    if not active:
        yield
        return

    def stop(_module, _inputs, _output):
        raise _StopForward

    handle = resolve_layer(model, layer).register_forward_hook(stop)
    try:
        yield
    finally:
        handle.remove()


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``model(x)``, or None when `_stop_after` ended the pass early."""
    try:
        return model(x)
    except _StopForward:
        return None


class _Adam:
    """Adam descending the loss whose gradients ``step(grads)`` is given (Kingma & Ba 2015,
    https://arxiv.org/abs/1412.6980), updating ``params`` in place: the arithmetic of ``torch.optim.Adam(params,
    lr)`` (betas (0.9, 0.999), eps 1e-8 added after the bias-corrected square root, no weight decay) on its default
    CPU path, op for op, so that the images are the same bits.

    Written out because ``torch.optim`` imports ``torch._dynamo`` at its first step: 2 to 3 s of every build that
    draws a class image, for five tensor operations per step.
    """

    def __init__(self, params: Sequence[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        self.steps += 1
        # Python floats, as torch computes them from its step count
        step_size = self.lr / (1 - self.beta1**self.steps)
        bias_correction2_sqrt = (1 - self.beta2**self.steps) ** 0.5
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            p.addcdiv_(m, (v.sqrt() / bias_correction2_sqrt).add_(self.eps), value=-step_size)


@dataclass(frozen=True)
class MaxDefaults:
    """Settings of the standard recipe (`penalized`, `standard_param`, `standard_transforms`, `standard_edits`,
    `noise` and `maximize`'s ``steps`` and ``lr``) and of `deepdream`; each recipe function takes the fields it uses
    as keyword arguments, with these defaults.

    Chosen by looking at the 8 class images (64x64, 120-200 steps, clamped to the pixel range) of a VGG-style shapes
    CNN: without jitter and blur the images are dominated by pixel-level noise; a 0.5-pixel blur every 4 steps with
    2-pixel jitter keeps the class patterns and removes that noise; a 1-pixel blur every 2 steps washes them out.
    On a global-average-pooled net, ``class_logit`` raises every logit, so for images that the model gives to their
    class use ``class_prob`` or subtract a penalty. Such a net also adds up its evidence over the image, so plain
    pixel ascent tiles the whole image with stripes and dots; the options off by default here (``window``,
    ``scale_jitter``, ``rotate``, ``fourier``, ``grey``) are what class-max turns on to draw one centred object:
    see `reportgen.analyses.optimized.ClassMaxParams` for the values and what they gave.
    """

    steps: int = 200
    """Adam steps of `maximize`."""
    lr: float = 0.05
    """Adam learning rate of `maximize`, in normalized units."""
    init_std: float = 0.01
    """Standard deviation of the Gaussian noise `noise` draws for the start images (normalized units)."""
    l2_weight: float = 0.0
    """Weight of the `l2` penalty that `penalized` subtracts from the objective."""
    edge_weight: float = 0.0
    """Weight of the `edge_energy` penalty that `penalized` subtracts from the objective."""
    edge_scales: int = 3
    """Scales of that edge-energy penalty."""
    blur_every: int = 4
    """Blur the image every this many steps (0: never); pixel parameterizations only."""
    blur_sigma: float = 0.5
    """Sigma in pixels of that blur."""
    zero_small: float | None = None
    """Percentile (0-100) of pixel norms zeroed after each step, or None; pixel parameterizations only."""
    zero_threshold: float | None = None
    """Absolute pixel norm below which pixels are zeroed after each step, or None; pixel parameterizations only."""
    jitter: int = 2
    """Random roll of up to this many pixels before each forward pass (0: none)."""
    scale_jitter: float = 0.0
    """Random zoom by a factor in ``[1 - scale_jitter, 1 + scale_jitter]`` before each forward pass (0: none)."""
    rotate: float = 0.0
    """Random rotation by up to this many degrees before each forward pass (0: none)."""
    window: float = 0.0
    """Radius of the centred soft window (fraction of half the shorter side) outside which the image fades to the
    data mean (0: no window)."""
    fourier: bool = False
    """Optimize a 1/f-weighted Fourier spectrum instead of the pixels."""
    fourier_decay: float = 1.0
    """Exponent of that 1/f weighting."""
    grey: bool = False
    """Optimize one grey channel shared by all input channels."""
    dream_lr: float = 0.03
    """DeepDream step: mean absolute change per step, in normalized units (about 1.5/255 of a pixel range)."""
    dream_jitter: int = 4
    """DeepDream random roll, in pixels of the current octave."""


DEFAULTS = MaxDefaults()


def penalized(
    objective: Objective,
    *,
    l2_weight: float = DEFAULTS.l2_weight,
    edge_weight: float = DEFAULTS.edge_weight,
    edge_scales: int = DEFAULTS.edge_scales,
) -> Objective:
    """``objective - l2_weight * l2() - edge_weight * edge_energy(edge_scales)``, leaving out the zero weights."""
    if l2_weight:
        objective = objective - l2_weight * l2()
    if edge_weight:
        objective = objective - edge_weight * edge_energy(edge_scales)
    return objective


def standard_param(
    init: torch.Tensor,
    *,
    clamp: tuple[Bounds, Bounds] | None = None,
    fourier: bool = DEFAULTS.fourier,
    fourier_decay: float = DEFAULTS.fourier_decay,
    grey: bool = DEFAULTS.grey,
    window: float = DEFAULTS.window,
) -> Param:
    """The report's parameterization of images starting at ``init`` ``(N, C, H, W)``: `fourier_param` (decay
    ``fourier_decay``, clipped inside the graph) or `pixel_param` (clipped at the start), one grey channel
    (`grey_param`) when ``grey``, and a `soft_window` of radius ``window`` when ``window > 0``."""
    base, kwargs = (fourier_param, {"decay": fourier_decay}) if fourier else (pixel_param, {})
    if grey:
        param = grey_param(init, base, clamp=clamp, **kwargs)
    else:
        param = base(init, clamp=clamp, **kwargs)
    return mapped_param(param, soft_window(window)) if window > 0 else param


def standard_transforms(
    generator: torch.Generator,
    *,
    jitter: int = DEFAULTS.jitter,
    scale_jitter: float = DEFAULTS.scale_jitter,
    rotate: float = DEFAULTS.rotate,
) -> list[Transform]:
    """The report's robustness transforms, in order: `random_roll` by up to ``jitter`` pixels, then
    `random_zoom_rotate` (``scale_jitter``, ``rotate`` degrees), both drawing from ``generator``; the ones set to 0
    are left out."""
    transforms = []
    if jitter > 0:
        transforms.append(random_roll(jitter, generator))
    if scale_jitter or rotate:
        transforms.append(random_zoom_rotate(scale_jitter, rotate, generator))
    return transforms


def standard_edits(
    *,
    clamp: tuple[Bounds, Bounds] | None = None,
    blur_every: int = DEFAULTS.blur_every,
    blur_sigma: float = DEFAULTS.blur_sigma,
    zero_small: float | None = DEFAULTS.zero_small,
    zero_threshold: float | None = DEFAULTS.zero_threshold,
    fourier: bool = DEFAULTS.fourier,
) -> list[Transform]:
    """The report's edits of the pixel parameter after each step, in order: a `gaussian_blur` (``blur_sigma``) every
    ``blur_every`` steps, `zero_below` (``zero_small`` percentile, ``zero_threshold``), `bounded` to ``clamp``
    (Yosinski et al. 2015, https://arxiv.org/abs/1506.06579). With ``fourier`` there are no pixels to edit: no
    edits, and a ValueError when zeroing is asked for."""
    zeroing = zero_small is not None or zero_threshold is not None
    if fourier:
        if zeroing:
            raise ValueError("zero_small and zero_threshold edit pixels: they do not apply with fourier=True")
        return []
    edits = []
    if blur_every > 0 and blur_sigma > 0:
        edits.append(every(blur_every, gaussian_blur(blur_sigma)))
    if zeroing:
        edits.append(zero_below(zero_small, zero_threshold))
    if clamp is not None:
        edits.append(bounded(clamp))
    return edits


@dataclass
class MaxResult:
    """What `maximize` returns.

    images: ``(N, C, H, W)`` optimized inputs, normalized, detached: ``image_fn()`` of the parameterization after the
        last step (window applied, grey copied to every channel, no random transform).
    curve: ``(steps, N)`` objective value (penalties included) of each image before each step.
    final_scores: ``(N,)`` objective value of the final images (without transforms).
    """

    images: torch.Tensor
    curve: torch.Tensor
    final_scores: torch.Tensor


def device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of ``model``'s first parameter (CPU float32 for a model without parameters): where start
    images must live."""
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


_device_dtype = device_dtype  # the name reportgen.methods.adversarial imports


def maximize(
    model: nn.Module,
    objective: Objective,
    param: Param,
    transforms: Sequence[Transform] | Transform = (),
    *,
    edits: Sequence[Transform] | Transform = (),
    steps: int = DEFAULTS.steps,
    lr: float = DEFAULTS.lr,
    truncate: bool = False,
) -> MaxResult:
    """Images that maximize ``objective``, by Adam on the tensors of the parameterization ``param``.

    Each step: ``x = image_fn()`` ``(N, C, H, W)``; the model sees ``compose(*transforms)(x)``; Adam ascends
    ``objective`` (its penalties read the untransformed ``x``) with learning rate ``lr``; then, without gradients,
    the parameter tensor ``p`` becomes ``compose(*edits)(p)`` (pixel edits such as `gaussian_blur`, `bounded`: they
    make sense for `pixel_param` only, and need a parameterization of one tensor, so that `every` counts steps).
    ``transforms`` and ``edits`` may also be one callable. Each of the N images is optimized on its own (batch-norm
    runs in eval mode), so one batch can hold one image per class::

        g = torch.Generator().manual_seed(0)
        param = pixel_param(noise((10, 3, 32, 32), g))
        maximize(model, class_logit(range(10)), param, [random_roll(2, g)], edits=[bounded((0.0, 1.0))])

    The randomness lives in the transforms (and the start images): `maximize` itself draws nothing. With
    ``truncate`` each forward pass ends once the one layer the objective reads has run, so later layers cost
    nothing; only for objectives that read exactly one layer and not the logits (`unit`, `channel`, `layer_energy`
    and penalties). The report's settings are built by `standard_param`, `standard_transforms`, `standard_edits`
    and `penalized`.

    Erhan et al. 2009; Simonyan et al. 2014 (https://arxiv.org/abs/1312.6034); Yosinski et al. 2015
    (https://arxiv.org/abs/1506.06579); Olah et al. 2017 (https://distill.pub/2017/feature-visualization/) for the
    transforms and the Fourier parameterization.
    """
    if truncate and len(objective.layers) != 1:
        raise ValueError(f"truncate needs an objective that reads exactly one layer and not the logits; "
                         f"{objective} reads {list(objective.layers) or 'no layer'}")
    params, image_fn = param
    params = list(params)
    transforms = [transforms] if callable(transforms) else list(transforms)
    edits = [edits] if callable(edits) else list(edits)
    if edits and len(params) != 1:
        raise ValueError(f"edits change the one pixel tensor of a parameterization; this one has {len(params)}")
    seen_by_model = compose(*transforms)
    edit = compose(*edits) if edits else None
    opt = _Adam(params, lr=lr)
    curve = []
    with preserved(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with capture(model, objective.layers, keep_live=True, clone=False, as_maps=True) as rec, \
                _stop_after(model, objective.layers[0] if truncate else "", truncate):
            for _ in range(steps):
                x = image_fn()
                logits = _forward(model, seen_by_model(x))
                scores = objective(logits, rec, x)
                grads = torch.autograd.grad(-scores.sum(), params)
                rec.clear()  # drop live outputs so the graph of this step can be freed
                curve.append(scores.detach())
                opt.step(grads)
                if edit is not None:
                    with torch.no_grad():
                        params[0].copy_(edit(params[0]))
            with torch.no_grad():
                x = image_fn()
                final = objective(_forward(model, x), rec, x).detach()
                rec.clear()
    empty = x.new_zeros((0, x.shape[0]))
    return MaxResult(x.detach(), torch.stack(curve) if curve else empty, final)


# --------------------------------------------------------------------------------------------------------------------
# DeepDream


def deepdream(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: str,
    *,
    octaves: int = 3,
    octave_scale: float = 1.4,
    steps_per_octave: int = 10,
    lr: float = DEFAULTS.dream_lr,
    jitter: int = DEFAULTS.dream_jitter,
    clamp: tuple[Bounds, Bounds] | None = None,
    generator: torch.Generator | None = None,
    truncate: bool = False,
) -> torch.Tensor:
    """Amplify whatever ``layer`` already sees in ``inputs``: ``(N, C, H, W) -> (N, C, H, W)``, normalized.

    Gradient ascent on `layer_energy` starting from the images, coarse to fine: the images are shrunk by
    ``octave_scale`` ``octaves - 1`` times; at each octave, from the smallest, the detail found so far is upsampled
    and added to that octave's image, then ``steps_per_octave`` steps of size ``lr`` follow (gradient divided by its
    mean absolute value per image, taken through a `random_roll` of up to ``jitter`` pixels), then the new detail is
    kept. ``generator`` is the only source of randomness; None stands for a generator seeded with 0 (reproducible,
    never the global RNG). With ``truncate`` each forward pass stops once ``layer`` has run (at the first call of a
    reused module), so the layers after it cost nothing and need not accept the smaller octave sizes (a Flatten +
    Linear head does not). Mordvintsev et al. 2015,
    https://research.google/blog/inceptionism-going-deeper-into-neural-networks/ .
    """
    device, dtype = device_dtype(model)
    base = inputs.detach().to(device=device, dtype=dtype)
    h, w = base.shape[-2:]
    sizes = [
        (max(1, round(h / octave_scale**k)), max(1, round(w / octave_scale**k))) for k in range(octaves - 1, -1, -1)
    ]
    objective = layer_energy(layer)
    roll = random_roll(jitter, generator if generator is not None else torch.Generator().manual_seed(0))
    clip = bounded(clamp)
    detail = torch.zeros_like(base[..., : sizes[0][0], : sizes[0][1]])
    with preserved(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with capture(model, [layer], keep_live=True, clone=False, as_maps=True) as rec, \
                _stop_after(model, layer, truncate):
            for size in sizes:
                octave = base if size == (h, w) else F.interpolate(base, size=size, mode="bilinear", align_corners=False)
                if detail.shape[-2:] != size:
                    detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
                img = clip(octave + detail)
                for _ in range(steps_per_octave):
                    x = img.detach().requires_grad_(True)
                    _forward(model, roll(x))
                    # the gradient flows back through the roll, so it lands on the pixels of x, not the shifted ones
                    (grad,) = torch.autograd.grad(objective(None, rec, x).sum(), x)
                    rec.clear()
                    # the normalized step makes lr mean the same thing at every layer and octave
                    grad = grad / (grad.abs().flatten(1).mean(1).view(-1, 1, 1, 1) + 1e-8)
                    img = clip(img + lr * grad)
                detail = img - octave
    return img.detach()
