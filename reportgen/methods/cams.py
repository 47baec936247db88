"""Class activation maps: one pipeline, and per method only the weights.

Every CAM-family map is ``ReLU(sum_k w_k * A_k)`` over the channels ``A_k`` (N, K, h, w) of one layer, upsampled
bilinearly to the input size. `class_activation_map` runs that pipeline; a method is just its ``weighting``
``(acts, grads, targets) -> weights``, either one weight per channel (N, K) or one per element (N, K, h, w), so a
new variant is one small function. Arguments ``model``, ``inputs``, ``target`` are as in
`reportgen.methods.attribution`; ``layer`` is a dotted ``named_modules()`` name. Maps are returned raw (>= 0, not
normalized). Where a variant has more than one published definition, the one of pytorch-grad-cam
(https://github.com/jacobgil/pytorch-grad-cam) is followed and each docstring says how it differs from the paper.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import capture, layer_names, resolve_layer
from .attribution import Target, _check_inputs, guided_backprop
from .targets import resolve_target, select_target, target_scores
from .tokens import probe_views

# (acts, grads, targets) -> weights; targets as `reportgen.methods.targets.resolve_target` gives them
Weighting = Callable[[torch.Tensor, "torch.Tensor | None", object], torch.Tensor]


def grad_cam_weights(acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM channel weights: the spatial mean of d score / d A_k, (N, K) (Selvaraju et al. 2017,
    https://arxiv.org/abs/1610.02391)."""
    return grads.mean(dim=(2, 3))


def fc_weights(model: nn.Module, fc: str, rectified: bool = False) -> Weighting:
    """CAM channel weights: row ``target`` of the final linear layer ``fc`` (Zhou et al. 2016,
    https://arxiv.org/abs/1512.04150). Only meaningful when the model ends in global average pooling + ``fc``
    (see `find_cam_layers`). ``rectified``: the pooling reads ``ReLU(A)``, so the weights are element-wise,
    ``w_k * [A_k > 0]``, and the weighted sum is ``sum_k w_k ReLU(A_k)``. ``fc`` "": the logits are the pooled map
    itself (SqueezeNet's final 1x1 conv), the weights are the identity and class c's map is channel c."""
    if not fc:
        def identity(acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
            _class_indices(targets)
            w = F.one_hot(targets.to(acts.device), acts.shape[1]).to(acts)
            return w[:, :, None, None] * (acts > 0).to(acts) if rectified else w

        identity.needs_grads = False  # type: ignore[attr-defined]
        return identity
    linear = resolve_layer(model, fc)
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"CAM needs '{fc}' to be an nn.Linear, it is {type(linear).__name__}")
    weight = linear.weight.detach()

    def weighting(acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
        if acts.shape[1] != weight.shape[1]:
            raise ValueError(f"CAM: the layer has {acts.shape[1]} channels but '{fc}' takes {weight.shape[1]} "
                             "inputs; pick the layer that feeds the global average pooling")
        w = weight[_class_indices(targets).to(weight.device)].to(acts)
        return w[:, :, None, None] * (acts > 0).to(acts) if rectified else w

    weighting.needs_grads = False  # type: ignore[attr-defined]
    return weighting


def _class_indices(targets: object) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        raise ValueError("CAM is not applicable to a callable target: its weights are the target class's row of "
                         "the linear head, which a callable score has not; use Grad-CAM for it")
    return targets


def grad_cam_plus_plus_weights(acts: torch.Tensor, grads: torch.Tensor | None,
                               targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights (N, K), as pytorch-grad-cam computes them (Chattopadhay et al. 2018,
    https://arxiv.org/abs/1710.11063, eq. 19 with the ReLU of eq. 7).

    With ``g = grads`` and ``S_k = sum_ij A_k`` (the channel's spatial sum):
    ``alpha = g^2 / (2 g^2 + S_k g^3 + 1e-6)``, set to 0 where ``g == 0``, and ``w_k = sum_ij alpha * relu(g)``.
    For non-negative ``acts`` every counted term (``g > 0``) has a positive denominator and ``w_k >= 0``; for signed
    ``acts`` a denominator can be negative or near 0 (``S_k g`` near -2). The 1e-6 is not small next to ``2 g^2``
    when ``|g|`` is below about 1e-3: there alpha falls towards ``g^2 / 1e-6`` instead of the paper's
    ``1 / (2 + S_k g)`` (for a gradient uniform over space).
    """
    g2 = grads * grads
    g3 = g2 * grads
    sums = acts.sum(dim=(2, 3), keepdim=True)
    # pytorch-grad-cam's guard, kept exactly: where the paper's denominator vanishes (g = 0, or g = -2 / S_k) the
    # 1e-6 keeps alpha finite, so a zero relu(g) cannot turn it into inf * 0 = NaN; where g = 0 alpha is then
    # zeroed outright.
    alpha = g2 / (2 * g2 + sums * g3 + 1e-6)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return (alpha * torch.relu(grads)).sum(dim=(2, 3))


def xgrad_cam_weights(acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM channel weights (N, K): the gradient averaged over space with the activations as weights,
    ``w_k = sum_ij g_ij A_ij / (sum_ij A_ij + 1e-7)`` as pytorch-grad-cam computes them (Fu et al. 2020,
    https://arxiv.org/abs/2008.02312). Any real value; unbounded when a channel's sum is close to 0 (possible only
    for signed activations)."""
    sums = acts.sum(dim=(2, 3))
    return (grads * acts).sum(dim=(2, 3)) / (sums + 1e-7)


def layer_cam_weights(acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
    """LayerCAM element-wise weights (N, K, h, w) >= 0: the positive part of the gradient at every position
    (Jiang et al. 2021, https://ieeexplore.ieee.org/document/9462463)."""
    return torch.relu(grads)


def score_cam_weights(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 64) -> Weighting:
    """Score-CAM channel weights (N, K) in (0, 1], each image's summing to 1, as pytorch-grad-cam computes them
    (Wang et al. 2020, https://arxiv.org/abs/1910.01279). Forward passes only (``needs_grads = False``).

    Each channel ``A_k`` is upsampled to the input size (bilinear, ``align_corners=True``), scaled to [0, 1] by
    ``(U - min U) / (max U - min U + 1e-8)``, and multiplies the image (N, C, H, W) it belongs to; the target's
    raw logit of each masked image is its score, and a softmax over the K channels gives the weights. All N * K
    masked images go through ``model`` in chunks of ``batch_size``, under `torch.no_grad`, in whatever mode the
    model is in (in train mode BatchNorm would make a score depend on the other images of its chunk).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    images = inputs.detach()

    def weighting(acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
        n, k, h, w = acts.shape
        if n != images.shape[0]:
            raise ValueError(f"Score-CAM weights were built for {images.shape[0]} images but the layer output has "
                             f"{n}: pass the same inputs to score_cam_weights and the pipeline")
        channels = acts.reshape(n * k, 1, h, w)
        scores = []
        with torch.no_grad():
            # The masks are built chunk by chunk: all N * K upsampled masks at once would be N * K * H * W floats
            # (800 MB for 8 images, 512 channels at 224x224), the masked images C times more.
            for start in range(0, n * k, batch_size):
                stop = min(start + batch_size, n * k)
                up = F.interpolate(channels[start:stop], size=images.shape[-2:], mode="bilinear",
                                   align_corners=True)
                low = up.amin(dim=(2, 3), keepdim=True)
                high = up.amax(dim=(2, 3), keepdim=True)
                masks = (up - low) / (high - low + 1e-8)
                owner = torch.arange(start, stop) // k
                output = model(images[owner.to(images.device)] * masks.to(images))
                scores.append(target_scores(output, select_target(targets, owner)))
        return torch.cat(scores).view(n, k).to(acts).softmax(dim=1)

    weighting.needs_grads = False  # type: ignore[attr-defined]
    return weighting


def class_activation_map(model: nn.Module, inputs: torch.Tensor, target: Target, layer: str,
                         weighting: Weighting = grad_cam_weights, *,
                         return_lowres: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The CAM pipeline: ``ReLU(sum_k w_k * A_k)`` at ``layer``, upsampled bilinearly to (N, H, W), raw values >= 0.

    ``weighting(acts, grads, targets)`` gets the layer's output ``acts`` (N, K, h, w), the gradient of the target
    logits w.r.t. it (None when the weighting has ``needs_grads = False``) and the (N,) targets, and returns either
    channel weights (N, K) or element-wise weights (N, K, h, w). With ``return_lowres=True`` returns
    ``(maps, lowres)``, lowres (N, h, w) before upsampling. The layer must run exactly once per forward pass (a
    reused module's output is ambiguous). A token layer (N, L, D) or a channels-last map (N, H, W, C) is read as
    the (N, D, h, w) map of its patch tokens, the class token set aside (`reportgen.methods.tokens`), as
    pytorch-grad-cam's ``reshape_transform`` does for vision transformers.
    """
    _check_inputs(inputs)
    targets = resolve_target(target, inputs.shape[0], inputs.device)
    needs_grads = getattr(weighting, "needs_grads", True)
    x = inputs.detach().clone().requires_grad_(needs_grads)
    with capture(model, [layer], grads=needs_grads, as_maps=True) as rec, torch.set_grad_enabled(needs_grads):
        scores = target_scores(model(x), targets)
        calls = rec.calls[layer]
        if calls != 1:
            raise ValueError(f"CAM layer '{layer}' ran {calls} times in one forward pass; pick a layer that runs "
                             "once (e.g. the block containing a reused module)")
        if layer not in rec.acts:  # `capture` counts a call whose output is not a tensor but records nothing
            raise ValueError(f"CAM layer '{layer}' must output a tensor (N, K, h, w)")
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
    if weights.shape == acts.shape[:2]:
        weights = weights[:, :, None, None]
    elif weights.shape != acts.shape:
        raise ValueError(f"a CAM weighting must return (N, K) = {tuple(acts.shape[:2])} or (N, K, h, w) = "
                         f"{tuple(acts.shape)} weights, got {tuple(weights.shape)}")
    lowres = torch.relu((weights * acts).sum(dim=1))
    # Bilinear weights are convex, so the upsampled map stays >= 0.
    maps = F.interpolate(lowres[:, None], size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return (maps, lowres) if return_lowres else maps


def grad_cam(model: nn.Module, inputs: torch.Tensor, target: Target, layer: str) -> torch.Tensor:
    """Grad-CAM (N, H, W) >= 0 (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391)."""
    return class_activation_map(model, inputs, target, layer, grad_cam_weights)


def cam(model: nn.Module, inputs: torch.Tensor, target: Target, layer: str, fc: str, *,
        rectified: bool = False) -> torch.Tensor:
    """CAM (N, H, W) >= 0 for a model ending in global average pooling of ``layer`` (of ``ReLU(layer)`` when
    ``rectified``) + the linear layer ``fc`` (Zhou et al. 2016, https://arxiv.org/abs/1512.04150). No backward
    pass. Before the final ReLU and upsampling, the low-resolution map M^c satisfies ``s_c = mean(M^c) + b_c``.
    Class indices only: a callable target has no row of ``fc`` and raises `ValueError` (Grad-CAM takes it)."""
    return class_activation_map(model, inputs, target, layer, fc_weights(model, fc, rectified))


def grad_cam_plus_plus(model: nn.Module, inputs: torch.Tensor, target: Target, layer: str) -> torch.Tensor:
    """Grad-CAM++ (N, H, W) >= 0: ``ReLU(sum_k w_k A_k)`` with `grad_cam_plus_plus_weights` (Chattopadhay et al.
    2018, https://arxiv.org/abs/1710.11063).

    As in pytorch-grad-cam, the gradients are those of the logit ``s_c``. The paper differentiates ``exp(s_c)``,
    which multiplies all of an image's weights, and so its map, by ``exp(s_c)``: the same map up to that per-image
    factor (the alphas do not change, the factor cancels in them).
    """
    return class_activation_map(model, inputs, target, layer, grad_cam_plus_plus_weights)


def xgrad_cam(model: nn.Module, inputs: torch.Tensor, target: Target, layer: str) -> torch.Tensor:
    """XGrad-CAM (N, H, W) >= 0: ``ReLU(sum_k w_k A_k)`` with `xgrad_cam_weights` (Fu et al. 2020,
    https://arxiv.org/abs/2008.02312). The paper's weights have no epsilon; pytorch-grad-cam's 1e-7 is kept."""
    return class_activation_map(model, inputs, target, layer, xgrad_cam_weights)


def layer_cam(model: nn.Module, inputs: torch.Tensor, target: Target, layer: str) -> torch.Tensor:
    """LayerCAM (N, H, W) >= 0: ``ReLU(sum_k relu(g_k) * A_k)`` element-wise, with ``g_k`` the gradient of the
    logit w.r.t. channel ``A_k`` (Jiang et al. 2021, https://ieeexplore.ieee.org/document/9462463). One layer's
    map, as in pytorch-grad-cam; the paper's fusion of several layers' maps is not done here."""
    return class_activation_map(model, inputs, target, layer, layer_cam_weights)


def score_cam(model: nn.Module, inputs: torch.Tensor, target: Target, layer: str, *,
              batch_size: int = 64) -> torch.Tensor:
    """Score-CAM (N, H, W) >= 0: ``ReLU(sum_k w_k A_k)`` with `score_cam_weights`, forward passes only: one for the
    channels, then N * K masked images in chunks of ``batch_size`` (Wang et al. 2020,
    https://arxiv.org/abs/1910.01279).

    Follows pytorch-grad-cam: the score of a masked image is the target's raw logit, and the weights are its
    softmax over the K channels. The paper scores the increase of the score over a baseline image; the baseline is
    one number per image, which a softmax over channels cancels, so it is left out. The authors' released code
    differs more: it weights each channel by the target's softmax probability (over classes) without a softmax
    over channels, upsamples with ``align_corners=False`` and skips constant channels (here a constant channel
    gives an all-zero mask, thanks to the 1e-8).
    """
    return class_activation_map(model, inputs, target, layer, score_cam_weights(model, inputs, batch_size=batch_size))


def guided_grad_cam(model: nn.Module, inputs: torch.Tensor, target: Target, layer: str) -> torch.Tensor:
    """Guided Grad-CAM, signed (N, C, H, W): guided backprop times the upsampled Grad-CAM (Selvaraju et al. 2017,
    https://arxiv.org/abs/1610.02391)."""
    return guided_backprop(model, inputs, target) * grad_cam(model, inputs, target, layer)[:, None]


@contextmanager
def linear_inputs(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
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


class CamLayers(NamedTuple):
    """Where CAM is defined: the logits are ``fc(mean over space of A)`` with ``A`` the output of ``layer``, or
    ``ReLU(output)`` when ``rectified`` (a functional ``F.relu`` between the layer and the pooling, as in
    torchvision's DenseNet)."""

    layer: str
    fc: str  # "" when the logits are the pooled map itself (one channel per class): identity weights
    rectified: bool = False


def find_cam_layers(model: nn.Module, example_input: torch.Tensor) -> CamLayers | None:
    """`CamLayers` when the model's output is ``fc(mean over space of layer's (rectified) output)``, else None.

    Checked on a probe forward pass of ``example_input`` (N, C, H, W; one image is enough): the output must be the
    output of an nn.Linear ``fc`` run once, and some layer run once, with a (N, K, h, w) output, h*w > 1, must have
    a spatial mean, or a spatial mean of its ReLU, equal to ``fc``'s input. The last such layer to finish is
    returned (e.g. ``layer4`` in a torchvision ResNet, ``features`` rectified in a DenseNet); a plain match wins
    over a rectified one. This is exactly when CAM is defined. `cam_layers_from_probe` does the same from a probe
    pass recorded elsewhere (the build's plan).
    """
    _check_inputs(example_input)
    with capture(model, layer_names(model)) as rec, linear_inputs(model) as fc_inputs, torch.no_grad():
        logits = model(example_input.detach())
    return cam_layers_from_probe(rec.acts, rec.calls, fc_inputs, logits)


def cam_layers_from_probe(acts: dict[str, torch.Tensor], calls: dict[str, int],
                          fc_inputs: dict[str, torch.Tensor], logits: object) -> CamLayers | None:
    """`find_cam_layers` on a recorded probe pass: every layer's cloned output ``acts`` (in the order layers
    finished) and ``calls``, every nn.Linear's input ``fc_inputs``, and the model's output ``logits``."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        return None

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        # non-finite numbers (a diverged model) prove nothing about the computation: never "close"
        if a.shape != b.shape or not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            return False
        scale = float(b.abs().max()) if b.numel() else 0.0
        return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1.0))

    fc = next((name for name in reversed(list(fc_inputs))
               if calls.get(name) == 1 and name in acts and close(acts[name], logits)), None)
    if fc is None:
        # no classifier layer: the logits may be the spatial mean of a map with one channel per class (a final
        # 1x1 conv, as in SqueezeNet): CAM with identity weights, each class's map is its own channel
        features, fc = logits, ""
    else:
        features = fc_inputs[fc]
    if features.dim() != 2:
        return None
    for name in reversed(list(acts)):
        out = acts[name]
        if not (calls[name] == 1 and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1
                and out.shape[:2] == features.shape):
            continue
        if close(out.mean(dim=(2, 3)), features):
            return CamLayers(name, fc)
        if close(torch.relu(out).mean(dim=(2, 3)), features):
            return CamLayers(name, fc, rectified=True)
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
    return last_map_layer_from_probe(model, rec.acts, rec.calls, probe_views(rec.acts, tuple(example_input.shape[1:])))


def last_map_layer_from_probe(model: nn.Module, acts: dict[str, torch.Tensor], calls: dict[str, int],
                              views: dict | None = None) -> str:
    """`default_cam_layer` on a recorded probe pass (``acts`` in the order layers finished, ``calls``).

    With ``views`` ({name: `reportgen.methods.tokens.View`}), token and channels-last layers count as maps too."""
    for name in map_layers_from_probe(model, acts, calls, views)[::-1]:
        return name
    raise ValueError("no layer outputs a (N, K, h, w) map with h*w > 1: give the CAM layer explicitly")


def map_layers_from_probe(model: nn.Module, acts: dict[str, torch.Tensor], calls: dict[str, int],
                          views: dict | None = None) -> list[str]:
    """The layers that run once and output a map with more than one cell (in the order they finished), adaptive
    pooling layers left out (they resample to a fixed size: VGG's 7x7 ``avgpool`` upsamples a 2x2 map)."""
    resamplers = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    found = []
    for name, out in acts.items():
        view = (views or {}).get(name)
        if view is not None and view.spatial:
            cells = view.grid[0] * view.grid[1]
        else:
            cells = out.shape[-1] * out.shape[-2] if out.dim() == 4 else 0
        if calls[name] == 1 and cells > 1 and not isinstance(model.get_submodule(name), resamplers):
            found.append(name)
    return found
