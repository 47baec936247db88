"""Class activation maps: one pipeline, and per method only the channel weights.

Every CAM-family map is ``ReLU(sum_k w_k A_k)`` over the channels ``A_k`` (N, K, h, w) of one layer, upsampled
bilinearly to the input size. `class_activation_map` runs that pipeline; a method is just its ``weighting``
``(acts, grads, targets) -> (N, K)``, so a new variant (Grad-CAM++, XGrad-CAM...) is one small function.
Arguments ``model``, ``inputs``, ``target`` are as in `reportgen.methods.attribution`; ``layer`` is a dotted
``named_modules()`` name. Maps are returned raw (>= 0, not normalized).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import capture, layer_names, resolve_layer
from .attribution import Target, _check_inputs, as_targets, guided_backprop, target_scores

Weighting = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]


def grad_cam_weights(acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM channel weights: the spatial mean of d score / d A_k, (N, K) (Selvaraju et al. 2017,
    https://arxiv.org/abs/1610.02391)."""
    return grads.mean(dim=(2, 3))


def fc_weights(model: nn.Module, fc: str) -> Weighting:
    """CAM channel weights: row ``target`` of the final linear layer ``fc`` (Zhou et al. 2016,
    https://arxiv.org/abs/1512.04150). Only meaningful when the model ends in global average pooling + ``fc``
    (see `find_cam_layers`)."""
    linear = resolve_layer(model, fc)
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"CAM needs '{fc}' to be an nn.Linear, it is {type(linear).__name__}")
    weight = linear.weight.detach()

    def weighting(acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
        if acts.shape[1] != weight.shape[1]:
            raise ValueError(f"CAM: the layer has {acts.shape[1]} channels but '{fc}' takes {weight.shape[1]} "
                             "inputs; pick the layer that feeds the global average pooling")
        return weight[targets.to(weight.device)].to(acts)

    weighting.needs_grads = False  # type: ignore[attr-defined]
    return weighting


def class_activation_map(model: nn.Module, inputs: torch.Tensor, target: Target, layer: str,
                         weighting: Weighting = grad_cam_weights, *,
                         return_lowres: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The CAM pipeline: ``ReLU(sum_k w_k A_k)`` at ``layer``, upsampled bilinearly to (N, H, W), raw values >= 0.

    ``weighting(acts, grads, targets)`` gets the layer's output ``acts`` (N, K, h, w), the gradient of the target
    logits w.r.t. it (None when the weighting has ``needs_grads = False``) and the (N,) targets, and returns the
    (N, K) channel weights. With ``return_lowres=True`` returns ``(maps, lowres)``, lowres (N, h, w) before
    upsampling. The layer must run exactly once per forward pass (a reused module's output is ambiguous).
    """
    _check_inputs(inputs)
    targets = as_targets(target, inputs.shape[0], inputs.device)
    needs_grads = getattr(weighting, "needs_grads", True)
    x = inputs.detach().clone().requires_grad_(needs_grads)
    with capture(model, [layer], grads=needs_grads) as rec, torch.set_grad_enabled(needs_grads):
        scores = target_scores(model(x), targets)
        calls = rec.calls[layer]
        if calls != 1:
            raise ValueError(f"CAM layer '{layer}' ran {calls} times in one forward pass; pick a layer that runs "
                             "once (e.g. the block containing a reused module)")
        acts = rec.acts[layer]
        if needs_grads:
            # Gradients reach the layer through the tensor hook `capture` put on its output. Differentiating
            # w.r.t. that output directly would be wrong when a later in-place op (BasicBlock's `out += identity`)
            # rewrites it, so differentiate w.r.t. the input and let the hook pick the gradient up on the way.
            torch.autograd.grad(scores.sum(), x)
    grads = rec.grads.get(layer) if needs_grads else None
    if acts.dim() != 4:
        raise ValueError(f"CAM layer '{layer}' must output (N, K, h, w), got {tuple(acts.shape)}")
    if needs_grads and grads is None:
        raise ValueError(f"no gradient reached layer '{layer}' from the target score")
    weights = weighting(acts, grads, targets)
    lowres = torch.relu((weights[:, :, None, None] * acts).sum(dim=1))
    # Bilinear weights are convex, so the upsampled map stays >= 0.
    maps = F.interpolate(lowres[:, None], size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return (maps, lowres) if return_lowres else maps


def grad_cam(model: nn.Module, inputs: torch.Tensor, target: Target, layer: str) -> torch.Tensor:
    """Grad-CAM (N, H, W) >= 0 (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391)."""
    return class_activation_map(model, inputs, target, layer, grad_cam_weights)


def cam(model: nn.Module, inputs: torch.Tensor, target: Target, layer: str, fc: str) -> torch.Tensor:
    """CAM (N, H, W) >= 0 for a model ending in global average pooling of ``layer`` + the linear layer ``fc``
    (Zhou et al. 2016, https://arxiv.org/abs/1512.04150). No backward pass."""
    return class_activation_map(model, inputs, target, layer, fc_weights(model, fc))


def guided_grad_cam(model: nn.Module, inputs: torch.Tensor, target: Target, layer: str) -> torch.Tensor:
    """Guided Grad-CAM, signed (N, C, H, W): guided backprop times the upsampled Grad-CAM (Selvaraju et al. 2017,
    https://arxiv.org/abs/1610.02391)."""
    return guided_backprop(model, inputs, target) * grad_cam(model, inputs, target, layer)[:, None]


@contextmanager
def _linear_inputs(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """The first positional input of every nn.Linear during the block, cloned; hooks removed on exit."""
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name):
        def hook(_module, args):
            if args and isinstance(args[0], torch.Tensor):
                seen[name] = args[0].detach().clone()

        return hook

    try:
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                handles.append(module.register_forward_pre_hook(make_hook(name)))
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def find_cam_layers(model: nn.Module, example_input: torch.Tensor) -> tuple[str, str] | None:
    """``(layer, fc)`` when the model's output is ``fc(mean over space of layer's output)``, else None.

    Checked on a probe forward pass of ``example_input`` (N, C, H, W; one image is enough): the output must be the
    output of an nn.Linear ``fc`` run once, and some layer run once, with a (N, K, h, w) output, h*w > 1, must have
    a spatial mean equal to ``fc``'s input. The last such layer to finish is returned (e.g. ``layer4`` in a
    torchvision ResNet). This is exactly when CAM is defined.
    """
    _check_inputs(example_input)
    with capture(model, layer_names(model)) as rec, _linear_inputs(model) as fc_inputs, torch.no_grad():
        logits = model(example_input.detach())
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        return None

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        scale = float(b.abs().max()) if b.numel() else 0.0
        return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1.0))

    fc = next((name for name in reversed(list(fc_inputs))
               if rec.calls.get(name) == 1 and close(rec.acts[name], logits)), None)
    if fc is None:
        return None
    features = fc_inputs[fc]
    if features.dim() != 2:
        return None
    for name in reversed(list(rec.acts)):
        acts = rec.acts[name]
        if (rec.calls[name] == 1 and acts.dim() == 4 and acts.shape[-1] * acts.shape[-2] > 1
                and acts.shape[:2] == features.shape and close(acts.mean(dim=(2, 3)), features)):
            return name, fc
    return None


def default_cam_layer(model: nn.Module, example_input: torch.Tensor) -> str:
    """The last layer (in the order layers finish) that runs once and outputs (N, K, h, w) with h*w > 1: the last
    conv block (``layer4`` in a torchvision ResNet). ``example_input`` is one probe batch (N, C, H, W).

    Adaptive pooling layers are skipped: they resample to a fixed size (VGG's 7x7 ``avgpool`` upsamples a 2x2 map
    at 64x64 input), so the block before them is the real last map.
    """
    _check_inputs(example_input)
    with capture(model, layer_names(model), clone=False) as rec, torch.no_grad():
        model(example_input.detach())
    resamplers = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    for name in reversed(list(rec.acts)):
        acts = rec.acts[name]
        if (rec.calls[name] == 1 and acts.dim() == 4 and acts.shape[-1] * acts.shape[-2] > 1
                and not isinstance(model.get_submodule(name), resamplers)):
            return name
    raise ValueError("no layer outputs a (N, K, h, w) map with h*w > 1: give the CAM layer explicitly")
