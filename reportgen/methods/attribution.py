"""Attribution: how much each input pixel matters to one score (a class's, or a target's), as plain functions on
tensors.

Shared arguments, the same in every function here and in `reportgen.methods.cams`:

- ``model``: an image classifier returning logits (N, K), or with a callable ``target`` any model whose output
  the callable reads (a segmenter, a detector, an embedder). It is used in whatever mode the caller put it in (the
  report uses eval mode, which also makes every image's map independent of the others in the batch). It comes
  back unchanged: no hook, no swapped module, the same parameters, ``requires_grad`` flags and train/eval mode,
  and no parameter ``.grad`` is ever written (gradients are taken with `torch.autograd.grad` w.r.t. the input).
- ``inputs``: float tensor (N, C, H, W), already normalized the way the model expects. It is not modified.
- ``target``: the score that is explained. Class indices: an int (the same for all images), a sequence of N ints
  or a LongTensor (N,); the score is then the class's logit (pre-softmax), as in the papers (softmax would mix
  in the other classes), and a class outside ``[0, K)`` raises `ValueError`. Or a callable ``target(output) ->
  (B,)`` that receives the model's raw output (a tensor, a dict such as ``{'out': ...}``, a list of detection
  dicts) and returns one differentiable score per row, for a model of any task (`reportgen.methods.targets`:
  a class or label, a region of a segmentation, a detection, the similarity of an embedding). Methods call it
  on the output of every forward pass, whose rows may be copies of the images; a callable with per-image data
  has ``select(index)``, see `reportgen.methods.targets`.

Returned maps are raw (signed or not as documented, never normalized): normalization is a display matter.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import require_python_module
from .incremental import IncrementalOcclusion, IncrementalPlan
from .relu_rules import relu_rule
from .targets import Target, as_targets, resolve_target, select_target, target_scores  # noqa: F401 (re-exported)
GradientMethod = Callable[[nn.Module, torch.Tensor, Target], torch.Tensor]


def _check_inputs(inputs: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a float tensor (N, C, H, W), got {got}")


def gradient(model: nn.Module, inputs: torch.Tensor, target: Target) -> torch.Tensor:
    """d score_target / d input, signed, (N, C, H, W) (Simonyan et al. 2013, https://arxiv.org/abs/1312.6034)."""
    _check_inputs(inputs)
    return _input_gradient(model, inputs.detach().clone(), resolve_target(target, inputs.shape[0], inputs.device))


def _input_gradient(model: nn.Module, x: torch.Tensor, targets: object) -> torch.Tensor:
    """`gradient` of a tensor the caller made for this call and gives up (it becomes a leaf that requires grad):
    SmoothGrad's noisy copies, which need no defensive clone."""
    x.requires_grad_(True)
    with torch.enable_grad():
        scores = target_scores(model(x), targets)
        # Images are independent (eval mode), so the gradient of the sum gives every image its own gradient.
        # Taken w.r.t. the input only: autograd then skips the parameters' gradients (convolution_backward runs
        # with output_mask [True, False, False]) and writes no .grad.
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad


def saliency(model: nn.Module, inputs: torch.Tensor, target: Target,
             reduce: Literal["max", "sum", "none"] = "max") -> torch.Tensor:
    """Vanilla gradient saliency (Simonyan et al. 2013, https://arxiv.org/abs/1312.6034).

    Returns |gradient| reduced over channels: "max" (the paper) or "sum" give (N, H, W) >= 0; "none" returns the
    signed gradient (N, C, H, W) unchanged.
    """
    grad = gradient(model, inputs, target)
    return reduce_channels(grad, reduce)


def reduce_channels(attr: torch.Tensor, reduce: Literal["max", "sum", "none"] = "max") -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): max ("max") or sum ("sum") of the absolute value over channels; "none": as is."""
    if reduce == "max":
        return attr.abs().amax(dim=1)
    if reduce == "sum":
        return attr.abs().sum(dim=1)
    if reduce == "none":
        return attr
    raise ValueError(f"unknown reduce {reduce!r}: use 'max', 'sum' or 'none'")


def guided_backprop(model: nn.Module, inputs: torch.Tensor, target: Target) -> torch.Tensor:
    """Guided backpropagation, signed (N, C, H, W) (Springenberg et al. 2015, https://arxiv.org/abs/1412.6806).

    The gradient, except that each ReLU passes back only positive gradient, and only where its input was positive.
    Applies to every ReLU call (modules, reused modules, in-place and functional); other non-linearities keep
    their gradient (see `reportgen.methods.relu_rules.inspect_nonlinearities`).
    """
    require_python_module(model, "guided backpropagation")
    with relu_rule("guided", inputs):
        return gradient(model, inputs, target)


def deconvnet(model: nn.Module, inputs: torch.Tensor, target: Target) -> torch.Tensor:
    """Deconvnet reconstruction, signed (N, C, H, W) (Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901).

    The gradient, except that each ReLU passes back the positive part of the gradient whatever its forward input
    was (the deconvnet's "unpooling + rectification" for conv nets, as formulated by Springenberg et al.).
    """
    require_python_module(model, "deconvnet")
    with relu_rule("deconv", inputs):
        return gradient(model, inputs, target)


def smoothgrad(model: nn.Module, inputs: torch.Tensor, target: Target, *, method: GradientMethod = gradient,
               n: int = 50, sigma: float = 0.15, batch_size: int = 64,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """SmoothGrad: the mean of ``method`` over ``n`` noisy copies of each image (Smilkov et al. 2017,
    https://arxiv.org/abs/1706.03825). Same shape as ``method``'s output, e.g. signed (N, C, H, W).

    ``method`` is any function with the call shape ``method(model, inputs, target)`` (`gradient`,
    `guided_backprop`, `deconvnet`, or a ``functools.partial`` of a CAM); its result is averaged as is, so take
    absolute values or squares afterwards, not before. The noise std is ``sigma * (max - min)`` of each image.
    Copies of several images are evaluated together, ``batch_size`` per forward pass.

    The same ``n`` standard-normal noise tensors are used for every image (scaled by that image's std): each map is
    still a fair SmoothGrad estimate, and an image gets the same map alone as in a batch for the same generator
    seed. ``generator=None`` uses torch's global generator.
    """
    _check_inputs(inputs)
    if n < 1 or batch_size < 1:
        raise ValueError(f"smoothgrad needs n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if sigma < 0:
        raise ValueError(f"smoothgrad needs sigma >= 0, got {sigma}")
    num = inputs.shape[0]
    targets = resolve_target(target, num, inputs.device)
    x = inputs.detach()
    flat = x.reshape(num, -1)
    std = sigma * (flat.amax(dim=1) - flat.amin(dim=1))  # (N,)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn((n, *x.shape[1:]), generator=generator, device=gen_device, dtype=x.dtype).to(x.device)

    total = None
    # Pair k is image k // n with noise k % n; pairs [start, stop) make one batch. Each image's run of copies in
    # it is written straight into the batch (no index gathers) and summed as one block (no scatter-add).
    for start in range(0, num * n, batch_size):
        stop = min(start + batch_size, num * n)
        runs = [(i, max(start, i * n) - i * n, min(stop, (i + 1) * n) - i * n)
                for i in range(start // n, (stop - 1) // n + 1)]  # (image, first copy, end copy)
        noisy = x.new_empty((stop - start, *x.shape[1:]))
        at = 0
        for i, a, b in runs:
            block = noisy[at:at + b - a]
            torch.mul(noise[a:b], std[i], out=block)
            block.add_(x[i])  # x + std * noise, rounded as before
            at += b - a
        owners = torch.cat([torch.full((b - a,), i, dtype=torch.long) for i, a, b in runs])
        chunk_targets = select_target(targets, owners)
        if method is gradient:  # the batch is ours: no defensive clone
            attr = _input_gradient(model, noisy, chunk_targets)
        else:
            attr = method(model, noisy, chunk_targets).detach()
        if total is None:
            total = attr.new_zeros((num, *attr.shape[1:]))
        at = 0
        for i, a, b in runs:
            total[i] += attr[at:at + b - a].sum(0)
            at += b - a
    return total / n


def _positions(size: int, window: int, stride: int) -> int:
    return (size - window) // stride + 1


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"occlusion {name} must be an int or (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


def default_occlusion_params(h: int, w: int) -> dict[str, tuple[int, int]]:
    """Occlusion window ~ 1/4 of each side and stride half the window, for an image of h x w pixels.

    224 x 224 gives window (56, 56) stride (28, 28): 7 x 7 positions, whatever the resolution.
    """
    wh, ww = max(1, round(h / 4)), max(1, round(w / 4))
    return {"window": (wh, ww), "stride": (max(1, wh // 2), max(1, ww // 2))}


def occlusion(model: nn.Module, inputs: torch.Tensor, target: Target, *,
              window: int | tuple[int, int] = (8, 8), stride: int | tuple[int, int] = (4, 4),
              fill: float | torch.Tensor = 0.0, batch_size: int = 128, per_pixel: bool = False,
              score: Literal["logit", "prob"] = "logit", incremental: bool = True,
              plans: list | None = None) -> torch.Tensor:
    """Occlusion sensitivity (Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901).

    A ``window`` (h, w) patch set to ``fill`` (a float, or a tensor broadcastable to (C, H, W) such as the
    per-channel mean) slides with ``stride`` (sh, sw); the drop ``score(image) - score(occluded)`` of the target's
    logit (``score="prob"``: softmax probability) is recorded at each position. Positive = the patch supported the
    class. Returns (N, h', w') drops with h' = (H - h) // sh + 1, or with ``per_pixel=True`` (N, H, W): the mean drop
    over all windows covering each pixel (0 where none does, at the bottom/right edge when the stride does not
    tile the image). Occluded copies of all images are evaluated ``batch_size`` per forward pass, under no_grad.
    See `default_occlusion_params` for a window that scales with the image.

    ``incremental=True`` computes the same drops by exact incremental inference where it applies
    (`reportgen.methods.incremental`, Krypton, SIGMOD 2019): each position recomputes only the region of each layer
    its patch changes; elsewhere, or with ``incremental=False``, every occluded copy runs the whole model. When
    ``plans`` is a list, the `IncrementalPlan` used (what ran incrementally, which layers fell back) is appended.
    """
    _check_inputs(inputs)
    num, channels, height, width = inputs.shape
    (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    if not (1 <= wh <= height and 1 <= ww <= width):
        raise ValueError(f"occlusion window {(wh, ww)} must be at least 1 and fit the {height}x{width} image")
    if sh < 1 or sw < 1:
        raise ValueError(f"occlusion stride must be >= 1, got {(sh, sw)}")
    if batch_size < 1:
        raise ValueError(f"occlusion batch_size must be >= 1, got {batch_size}")
    targets = resolve_target(target, num, inputs.device)
    rows, cols = _positions(height, wh, sh), _positions(width, ww, sw)
    x = inputs.detach()
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    fill_t = torch.broadcast_to(fill_t, (channels, height, width))

    drops = _incremental_drops(model, x, targets, (wh, ww), (sh, sw), fill_t, batch_size, score, plans) \
        if incremental else None
    if drops is None:
        drops = _plain_drops(model, x, targets, (wh, ww), (sh, sw), fill_t, batch_size, score)
    drops = drops.view(num, rows, cols)
    if not per_pixel:
        return drops
    # Spreading each drop over its window and counting windows per pixel is a transposed convolution with ones.
    ones = x.new_ones(1, 1, wh, ww)
    summed = F.conv_transpose2d(drops[:, None], ones, stride=(sh, sw))
    counts = F.conv_transpose2d(torch.ones_like(drops[:1, None]), ones, stride=(sh, sw))
    covered_h, covered_w = summed.shape[-2:]
    out = x.new_zeros(num, height, width)
    out[:, :covered_h, :covered_w] = (summed / counts)[:, 0]
    return out


def _plain_drops(model: nn.Module, x: torch.Tensor, targets: object, window: tuple[int, int],
                 stride: tuple[int, int], fill: torch.Tensor, batch_size: int, score: str) -> torch.Tensor:
    """Occlusion drops (N, rows, cols): every occluded copy through the whole model, ``batch_size`` per pass."""
    num, _, height, width = x.shape
    (wh, ww), (sh, sw) = window, stride
    rows, cols = _positions(height, wh, sh), _positions(width, ww, sw)
    top = torch.arange(rows, device=x.device) * sh
    left = torch.arange(cols, device=x.device) * sw
    ys, xs = torch.arange(height, device=x.device), torch.arange(width, device=x.device)
    in_rows = (ys[None, :] >= top[:, None]) & (ys[None, :] < top[:, None] + wh)  # (rows, H)
    in_cols = (xs[None, :] >= left[:, None]) & (xs[None, :] < left[:, None] + ww)  # (cols, W)
    positions = rows * cols
    with torch.no_grad():
        base = target_scores(model(x), targets, score)  # (N,)
        drops = x.new_empty(num * positions)
        for chunk in torch.arange(num * positions, device=x.device).split(batch_size):
            img, pos = chunk // positions, chunk % positions
            # Masks are built per chunk: all of them at once would be P x H x W (2.5 G for 1x1 windows at 224).
            mask = in_rows[pos // cols][:, None, :, None] & in_cols[pos % cols][:, None, None, :]
            occluded = torch.where(mask, fill, x[img])
            drops[chunk] = base[img] - target_scores(model(occluded), select_target(targets, img), score)
    return drops.view(num, rows, cols)


def _incremental_drops(model: nn.Module, x: torch.Tensor, targets: object, window: tuple[int, int],
                       stride: tuple[int, int], fill: torch.Tensor, batch_size: int, score: str,
                       plans: list | None) -> torch.Tensor | None:
    """Occlusion drops (N, rows, cols) by incremental inference, or None where it does not apply (the plan, appended
    to ``plans``, says why). Any failure of the engine falls back to the plain path, which then raises the model's
    own error if it has one."""
    def scores(output: object, owners: torch.Tensor) -> torch.Tensor:
        # the engine is given the image's index as its "target" and hands it back for every row of a batch
        return target_scores(output, select_target(targets, owners), score)

    try:
        engine = IncrementalOcclusion.prepare(model, x[:1], window, stride)
        drops = None
        if engine.plan.used:
            with torch.inference_mode():
                drops = torch.stack([engine.drops(x[i:i + 1], fill, i, scores, batch_size, window)
                                     for i in range(x.shape[0])])
            drops = drops.clone()  # an ordinary tensor, usable outside inference mode
        plan = engine.plan
    except Exception as err:  # noqa: BLE001 - the plain path below is always correct, and raises real errors
        drops, plan = None, IncrementalPlan(False, f"the incremental engine failed ({type(err).__name__}: {err})")
    if plans is not None:
        plans.append(plan)
    return drops
