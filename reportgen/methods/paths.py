"""Path attributions: Input x Gradient, Integrated Gradients and GradientSHAP (expected gradients).

The shared arguments (``model``, ``inputs`` (N, C, H, W) normalized as the model expects, ``target``) are those of
`reportgen.methods.attribution`, and so is the promise: the model comes back unchanged (no hook, no swapped module,
no parameter ``.grad`` written: gradients are taken with `torch.autograd.grad` w.r.t. the input only) and the
inputs are not modified. Every function returns signed attributions (N, C, H, W) of the target's logit, raw.

A baseline ``x'`` is the input that stands for "absence": these methods credit each pixel with its share of
F(x) - F(x'). `make_baseline` builds the four the report offers (black, the normalization's mean colour, a blurred
copy, uniform noise) in normalized units.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from .attribution import Target, _check_inputs, _input_gradient, gradient
from .targets import resolve_target, select_target, target_scores

# Captum's names of the quadrature rules (captum.attr._utils.approximation_methods), so that settings carry over
METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
BASELINES = ("black", "mean", "blur", "uniform")
Method = Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


def input_x_gradient(model: nn.Module, inputs: torch.Tensor, target: Target) -> torch.Tensor:
    """Input x Gradient, signed (N, C, H, W): ``inputs * d score / d inputs`` (Shrikumar, Greenside, Shcherbina &
    Kundaje 2016, https://arxiv.org/abs/1605.01713). On a linear model it is each pixel's term ``x_i w_i`` of the
    logit; it is Integrated Gradients with the all-zero baseline when the model is linear along that path."""
    return inputs.detach() * gradient(model, inputs, target)


def path_points(steps: int, method: Method = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, weights)`` float64 (steps,) of a quadrature of int_0^1 f(alpha) d alpha ~ sum weights * f(alphas).

    ``riemann_left/right/middle``: ``steps`` equal cells of width 1/steps, f taken at their left end, right end or
    middle; ``riemann_trapezoid``: the trapezoid rule on ``steps`` equally spaced points 0, ..., 1 (the weights sum
    to 1: 1/(steps - 1) inside, half that at both ends); ``gausslegendre``: Gauss-Legendre nodes and weights mapped
    from [-1, 1] to [0, 1] (exact for polynomials of degree < 2 steps, Sundararajan et al.'s suggestion of a better
    rule than Riemann sums)."""
    if method not in METHODS:
        raise ValueError(f"unknown integration method {method!r}: use one of {', '.join(METHODS)}")
    least = 2 if method == "riemann_trapezoid" else 1
    if steps < least:
        raise ValueError(f"{method} needs steps >= {least}, got {steps}")
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1.0), 0.5 * w
    if method == "riemann_trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        w = np.full(steps, 1.0 / (steps - 1))
        w[[0, -1]] /= 2
        return alphas, w
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    return (np.arange(steps) + offset) / steps, np.full(steps, 1.0 / steps)


def make_baseline(inputs: torch.Tensor, kind: str, *, low: Sequence[float] | torch.Tensor | None = None,
                  high: Sequence[float] | torch.Tensor | None = None, blur: float = 0.05,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """A baseline (N, C, H, W) for ``inputs`` (N, C, H, W), in the same normalized units.

    ``black``: every pixel at ``low`` (C,), the normalized value of black (``-mean / std`` of the model's
    normalization; the baseline of Sundararajan et al. for images); ``mean``: 0 everywhere, which is the
    normalization's mean colour; ``blur``: a Gaussian blur of each image with standard deviation ``blur`` times its
    shorter side (`reportgen.methods.faithfulness.gaussian_blur`; Sturmfels, Lundberg & Lee 2020,
    https://distill.pub/2020/attribution-baselines/); ``uniform``: uniform noise between ``low`` and ``high``
    (C,) per channel (black and white), one noise image drawn from ``generator`` for every image of the call.
    """
    _check_inputs(inputs)
    x = inputs.detach()
    c = x.shape[1]

    def per_channel(values, name: str) -> torch.Tensor:
        if values is None:
            raise ValueError(f"the '{kind}' baseline needs {name}: the normalized value of "
                             f"{'black' if name == 'low' else 'white'} per channel")
        t = torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(c)
        if t.numel() != c:
            raise ValueError(f"{name} has {t.numel()} values for {c} channels")
        return t.view(1, c, 1, 1)

    if kind == "mean":
        return torch.zeros_like(x)
    if kind == "black":
        return per_channel(low, "low").expand_as(x).clone()
    if kind == "blur":
        from .faithfulness import gaussian_blur

        return gaussian_blur(x, blur)
    if kind == "uniform":
        lo, hi = per_channel(low, "low"), per_channel(high, "high")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand((1, *x.shape[1:]), generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
        return (lo + (hi - lo) * u).expand_as(x).clone()
    raise ValueError(f"unknown baseline {kind!r}: use one of {', '.join(BASELINES)}")


def _as_baseline(baseline: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        return torch.broadcast_to(b, x.shape)
    except RuntimeError:
        raise ValueError(f"baseline of shape {tuple(b.shape)} does not broadcast to the inputs "
                         f"{tuple(x.shape)}") from None


def completeness_gap(model: nn.Module, inputs: torch.Tensor, target: Target, attributions: torch.Tensor,
                     baseline: float | torch.Tensor = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gap, delta)``, each (N,): ``delta = F(x) - F(x')`` of the target's logit, and ``gap = sum(attributions)
    - delta`` per image. Integrated Gradients and DeepLIFT promise gap 0 (completeness, summation-to-delta); a
    finite number of steps leaves the quadrature's error. One forward pass of 2N images, without gradients."""
    x = inputs.detach()
    base = _as_baseline(baseline, x)
    targets = resolve_target(target, x.shape[0], x.device)
    with torch.no_grad():
        scores = target_scores(model(torch.cat([x, base])), select_target(targets, torch.arange(len(x)).repeat(2)))
    delta = scores[: len(x)] - scores[len(x):]
    return attributions.detach().flatten(1).sum(1) - delta, delta


def integrated_gradients(model: nn.Module, inputs: torch.Tensor, target: Target, *,
                         baseline: float | torch.Tensor = 0.0, steps: int = 50, method: Method = "gausslegendre",
                         batch_size: int | None = None, gaps: list | None = None) -> torch.Tensor:
    """Integrated Gradients, signed (N, C, H, W) (Sundararajan, Taly & Yan, ICML 2017,
    https://arxiv.org/abs/1703.01365): ``(x - x') * int_0^1 dF(x' + a (x - x')) / dx da``, the integral taken
    with ``steps`` points of ``method`` (`path_points`; Captum's names and default).

    ``baseline``: x', a float or a tensor broadcastable to ``inputs`` (`make_baseline`); 0 is the normalization's
    mean colour. Path points of all images are evaluated ``batch_size`` per forward and backward pass (None: all
    N x steps at once, as Captum does by default). When ``gaps`` is a list, the completeness gap (N,) and F(x) -
    F(x') (N,) of `completeness_gap` are appended to it as a pair (one more forward pass of 2N images).
    """
    _check_inputs(inputs)
    alphas, weights = path_points(steps, method)
    num = inputs.shape[0]
    x = inputs.detach()
    base = _as_baseline(baseline, x)
    targets = resolve_target(target, num, x.device)
    diff = x - base
    size = num * steps if batch_size is None else batch_size
    if size < 1:
        raise ValueError(f"integrated_gradients needs batch_size >= 1, got {batch_size}")
    a = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
    w = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    total = torch.zeros_like(x)
    # Images in groups that fit a batch, and each group's steps in blocks: one block is (steps, images) path points,
    # built by one broadcast (no list of copies to concatenate) and summed with its weights by one matrix product.
    group = max(1, min(num, size))
    for i0 in range(0, num, group):
        i1 = min(num, i0 + group)
        per = max(1, size // (i1 - i0))
        for s0 in range(0, steps, per):
            s1 = min(steps, s0 + per)
            points = torch.addcmul(base[None, i0:i1], a[s0:s1].view(-1, 1, 1, 1, 1), diff[None, i0:i1])
            grad = _input_gradient(model, points.view(-1, *x.shape[1:]),
                                  select_target(targets, torch.arange(i0, i1).repeat(s1 - s0)))
            total[i0:i1] += (w[s0:s1] @ grad.view(s1 - s0, -1)).view(i1 - i0, *x.shape[1:])
    attributions = total * diff
    if gaps is not None:
        gaps.append(completeness_gap(model, x, targets, attributions, base))
    return attributions


def gradient_shap(model: nn.Module, inputs: torch.Tensor, target: Target, *,
                  baselines: torch.Tensor | None = None, n: int = 50, batch_size: int = 64,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """GradientSHAP / expected gradients, signed (N, C, H, W) (Lundberg & Lee, NeurIPS 2017,
    https://arxiv.org/abs/1705.07874; Erion, Janizek, Sturmfels, Lundberg & Lee, Nature Machine Intelligence 2021,
    https://arxiv.org/abs/1906.10670): the mean over ``n`` draws of ``(x - x') * dF(x' + a (x - x')) / dx`` with
    x' drawn uniformly from ``baselines`` (B, C, H, W) (Erion et al.: images of the data set; None = one all-zero
    baseline, the normalization's mean colour) and a uniform in [0, 1]: a Monte Carlo estimate of Integrated
    Gradients averaged over the baseline distribution. Captum's ``GradientShap`` without its input noise
    (``stdevs=0``, its default) estimates the same expectation.

    The same ``n`` (baseline, a) draws serve every image, so an image gets the same map alone as in a batch for the
    same generator seed; ``generator=None`` uses torch's global generator. Copies are evaluated ``batch_size`` per
    forward and backward pass.
    """
    _check_inputs(inputs)
    if n < 1 or batch_size < 1:
        raise ValueError(f"gradient_shap needs n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    num = inputs.shape[0]
    x = inputs.detach()
    targets = resolve_target(target, num, x.device)
    pool = torch.zeros_like(x[:1]) if baselines is None else baselines.detach().to(x.device, x.dtype)
    if pool.dim() != 4 or pool.shape[1:] != x.shape[1:] or len(pool) == 0:
        raise ValueError(f"baselines must be (B, {', '.join(map(str, x.shape[1:]))}) with B >= 1, got "
                         f"{tuple(pool.shape)}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    picks = torch.randint(len(pool), (n,), generator=generator, device=gen_device).to(x.device)
    alphas = torch.rand(n, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
    chosen = pool[picks]  # (n, C, H, W)
    total = torch.zeros_like(x)
    # pair k is image k // n with draw k % n, ``batch_size`` pairs per pass
    for start in range(0, num * n, batch_size):
        k = torch.arange(start, min(start + batch_size, num * n), device=x.device)
        img, draw = k // n, k % n
        b = chosen[draw]
        delta = x[img] - b
        points = torch.addcmul(b, alphas[draw].view(-1, 1, 1, 1), delta)
        grad = _input_gradient(model, points, select_target(targets, img))
        total.index_add_(0, img, grad * delta)
    return total / n
