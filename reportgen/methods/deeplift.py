"""DeepLIFT with the Rescale rule (Shrikumar, Greenside & Kundaje, ICML 2017, https://arxiv.org/abs/1704.02685).

DeepLIFT explains F(x) - F(x') for a baseline x' by multipliers: through a linear layer (convolution, linear,
average pooling, batch norm in eval mode, residual additions) the multiplier is the weight, as in the gradient;
through a ReLU the Rescale rule replaces the derivative by the secant ``(relu(z) - relu(z')) / (z - z')`` between the
unit's input on the image (z) and on the baseline (z'). Chained, they give attributions that add up to F(x) - F(x')
exactly (summation-to-delta) on a network made of such layers.

Computed as Ancona et al. (ICLR 2018, https://arxiv.org/abs/1711.06104) show: one forward pass of the image and the
baseline stacked in one batch, then the gradient, with every ReLU's backward rule replaced by its secant. Like
`reportgen.methods.relu_rules`, every ReLU call is rerouted by a `torch.overrides.TorchFunctionMode` active only
during the call, whatever its form (``nn.ReLU`` once, reused, in place; ``F.relu``, ``torch.relu``,
``Tensor.relu_``...): no module is swapped and no hook registered. Max pooling (``nn.MaxPool2d`` and
``F.max_pool2d``) credits each pooled change ``max(x) - max(x')`` to the winning positions of the image and of the
baseline, the rule of Captum's ``DeepLift`` (which keeps summation-to-delta); overlapping windows add up here.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import require_python_module
from .attribution import Target, _check_inputs
from .targets import resolve_target, select_target, target_scores
from .relu_rules import _OTHER_FUNCS, _ImagePathMode, _relu_call

EPS = 1e-10  # |z - z'| below this: the secant is taken as the derivative (Captum's eps)

# non-linear calls this module has no Rescale rule for: their plain gradient breaks summation-to-delta
_UNRULED: dict[object, str] = {
    F.layer_norm: "F.layer_norm", F.group_norm: "F.group_norm", F.instance_norm: "F.instance_norm",
    F.local_response_norm: "F.local_response_norm", F.normalize: "F.normalize",
    F.max_pool1d: "F.max_pool1d", F.max_pool3d: "F.max_pool3d", F.adaptive_max_pool1d: "F.adaptive_max_pool1d",
    F.adaptive_max_pool2d: "F.adaptive_max_pool2d", F.adaptive_max_pool3d: "F.adaptive_max_pool3d",
    F.lp_pool2d: "F.lp_pool2d", torch.max: "torch.max", torch.amax: "torch.amax", torch.Tensor.max: "Tensor.max",
    torch.Tensor.amax: "Tensor.amax",
}


class DeepLiftWarning(UserWarning):
    """DeepLIFT ran on a model with non-linear operations that have no Rescale rule here (they keep their gradient,
    so the attributions no longer add up to F(x) - F(x'))."""


class _RescaleReLU(torch.autograd.Function):
    """ReLU forward on the stacked batch [x; x'] (2n rows); backward: the secant (relu(z) - relu(z')) / (z - z') of
    each row pair, the same for both halves (the derivative where |z - z'| < EPS), as in Captum's ``nonlinear``."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, inplace: bool) -> torch.Tensor:
        n = z.shape[0] // 2
        dz = z[:n] - z[n:]  # before an in-place ReLU overwrites z
        if inplace:
            out = torch.relu_(z)
            ctx.mark_dirty(z)
        else:
            out = torch.relu(z)
        ctx.save_for_backward(dz, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        dz, out = ctx.saved_tensors
        n = dz.shape[0]
        secant = (out[:n] - out[n:]) / dz
        plain = torch.ops.aten.threshold_backward(grad_out, out, 0)
        tiny = (dz.abs() < EPS).repeat(2, *([1] * (dz.dim() - 1)))
        return torch.where(tiny, plain, grad_out * secant.repeat(2, *([1] * (dz.dim() - 1)))), None


class _RescaleMaxPool2d(torch.autograd.Function):
    """Max pooling of [x; x']; backward for the image half (the baseline half gets 0, it needs none): each pooled
    output's change max(x) - max(x') is split into max(o, o') - o' at the image's winning position and
    o - max(o, o') at the baseline's, spread back with the pooling's own backward (so overlapping windows add up),
    then divided by x - x' (the derivative where |x - x'| < EPS): Captum's ``maxpool`` rule."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel, stride, padding, dilation, ceil_mode) -> torch.Tensor:
        out, idx = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        ctx.save_for_backward(x, out, idx)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, out, idx = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode = ctx.args
        n = x.shape[0] // 2

        def spread(g: torch.Tensor, rows: slice) -> torch.Tensor:
            return torch.ops.aten.max_pool2d_with_indices_backward(g, x[rows], kernel, stride, padding, dilation,
                                                                    ceil_mode, idx[rows])

        g = grad_out[:n]
        o, o_ref = out[:n], out[n:]
        top = torch.maximum(o, o_ref)
        change = spread(g * (top - o_ref), slice(0, n)) + spread(g * (o - top), slice(n, 2 * n))
        dx = x[:n] - x[n:]
        grad = torch.where(dx.abs() < EPS, spread(g, slice(0, n)), change / dx)
        return torch.cat([grad, torch.zeros_like(grad)]), None, None, None, None, None


def _pool_args(args, kwargs):
    """(input, kernel, stride, padding, dilation, ceil_mode) of an ``F.max_pool2d`` call, or None when it asks for
    the indices (then it is left alone)."""
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    if bound.get("return_indices") or not isinstance(bound.get("input"), torch.Tensor):
        return None
    kernel = bound["kernel_size"]
    stride = bound.get("stride") or kernel
    return (bound["input"], kernel, stride, bound.get("padding", 0), bound.get("dilation", 1),
            bool(bound.get("ceil_mode", False)))


class _RescaleMode(_ImagePathMode):
    """Reroutes every ReLU and ``F.max_pool2d`` on the image's path to its Rescale rule; counts the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.relus = 0
        self.pools = 0
        self.others: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        on_path = self.depends((args, kwargs))
        if on_path:
            call = _relu_call(func, args, kwargs)
            if call is not None:
                self.relus += 1
                return self.follow(_RescaleReLU.apply(*call), True)
            if func is F.max_pool2d:
                pool = _pool_args(args, kwargs)
                if pool is not None:
                    self.pools += 1
                    return self.follow(_RescaleMaxPool2d.apply(*pool), True)
            try:
                name = _UNRULED.get(func) or _OTHER_FUNCS.get(func)
            except TypeError:  # an unhashable callable
                name = None
            if name is not None and "clamp" not in name and "clip" not in name:
                self.others[name] = self.others.get(name, 0) + 1
        return self.follow(func(*args, **kwargs), on_path)


@contextmanager
def _rescale_rules(source: torch.Tensor) -> Iterator[_RescaleMode]:
    mode = _RescaleMode()
    mode.mark(source)
    with mode:
        yield mode
    if mode.others:
        names = ", ".join(f"{name} ({calls}x)" for name, calls in sorted(mode.others.items()))
        warnings.warn(DeepLiftWarning(
            f"DeepLIFT's Rescale rule covers ReLU and 2-D max pooling; this model also computes {names}, which keep "
            "their gradient, so the attributions do not add up to F(x) - F(x') exactly"), stacklevel=3)


def deeplift(model: nn.Module, inputs: torch.Tensor, target: Target, *, baseline: float | torch.Tensor = 0.0,
             gaps: list | None = None) -> torch.Tensor:
    """DeepLIFT (Rescale rule), signed (N, C, H, W): ``(x - x') * m`` with ``m`` the multipliers of the target's
    logit (module docstring; Shrikumar et al. 2017, https://arxiv.org/abs/1704.02685).

    ``baseline``: x', a float or a tensor broadcastable to ``inputs`` (`reportgen.methods.paths.make_baseline`);
    0 is the normalization's mean colour, Captum's default. Needs the model in eval mode (a batch norm in training
    mode would mix the image and baseline rows) and the batch first in every ReLU's input. On a network whose
    non-linearities are ReLUs and 2-D max pooling, ``sum(attributions) = F(x) - F(x')`` per image up to rounding;
    other non-linear calls keep their gradient and are named in a `DeepLiftWarning`. When ``gaps`` is a list, the
    pair (``sum(attributions) - (F(x) - F(x'))``, ``F(x) - F(x')``), each (N,), is appended (from the same
    forward pass: nothing more is run).
    """
    _check_inputs(inputs)
    require_python_module(model, "DeepLIFT")
    num = inputs.shape[0]
    x = inputs.detach()
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        base = torch.broadcast_to(base, x.shape)
    except RuntimeError:
        raise ValueError(f"baseline of shape {tuple(base.shape)} does not broadcast to the inputs "
                         f"{tuple(x.shape)}") from None
    targets = resolve_target(target, num, x.device)
    both = torch.cat([x, base]).requires_grad_(True)
    with torch.enable_grad(), _rescale_rules(both):
        scores = target_scores(model(both), select_target(targets, torch.arange(num).repeat(2)))
        # only the image's score: the baseline rows' multipliers are not needed (each rule uses the image rows')
        (grad,) = torch.autograd.grad(scores[:num].sum(), both)
    attributions = (x - base) * grad[:num]
    if gaps is not None:
        delta = (scores[:num] - scores[num:]).detach()
        gaps.append((attributions.flatten(1).sum(1) - delta, delta))
    return attributions
