"""Attribution methods: known answers on hand-weighted models, batch independence, and model hygiene."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from reportgen.analyses import all_analyses, python_name
from reportgen.analyses.influence import AttributionAnalysis
from reportgen.methods import attention as ATT
from reportgen.methods import attribution as A
from reportgen.methods import cams as C
from reportgen.methods import deeplift as DL
from reportgen.methods import legrad as LG
from reportgen.methods import lrp as LRP
from reportgen.methods import paths as PATHS
from reportgen.methods import perturbation as P
from reportgen.methods.relu_rules import inspect_nonlinearities, relu_rule

# ---------------------------------------------------------------------------------------------------------------
# Tiny models


def linear_model(seed: int = 0, c: int = 2, h: int = 5, w: int = 4, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k)).eval()


class ReluNet(nn.Module):
    """One small conv net, its ReLUs written in one of several ways; the weights depend only on the seed."""

    def __init__(self, style: str, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.style = style
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 5, 3, stride=2, padding=1)
        self.fc = nn.Linear(5, 4)
        if style == "once":
            self.act1, self.act2, self.act3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        elif style == "reused":
            self.act = nn.ReLU()
        elif style == "inplace":
            self.act1 = nn.ReLU(inplace=True)

    def relu(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.style == "once":
            return getattr(self, f"act{i}")(x)
        if self.style == "reused":
            return self.act(x)
        if self.style == "inplace":  # three in-place spellings
            return [self.act1, lambda t: F.relu(t, inplace=True), lambda t: t.relu_()][i - 1](x)
        return [F.relu, torch.relu, lambda t: t.relu()][i - 1](x)  # functional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(1, self.conv1(x))
        skip = x
        x = self.relu(2, self.conv2(x) + skip)
        x = self.relu(3, self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


class GapNet(nn.Module):
    """conv -> ReLU -> conv -> global average pooling -> linear: CAM is defined on ``features``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class VitNet(nn.Module):
    """torchvision's ViT on 8x8 images: 2-px patches (a 4x4 grid + the class token), 2 blocks of 2 heads, 4
    classes; for the attention methods, which need attention modules."""

    def __init__(self, seed: int = 0) -> None:
        from torchvision.models import VisionTransformer

        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Identity())
        self.vit = VisionTransformer(image_size=8, patch_size=2, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16,
                                     num_classes=4)
        nn.init.normal_(self.vit.heads.head.weight, std=0.5)

    def forward(self, x):
        return self.vit(self.features(x))


ATTENTION = ("attention_rollout", "grad_rollout", "legrad")


def net_for(name: str, seed: int = 0) -> nn.Module:
    """The registry-wide tests' model: a GAP + linear CNN, or a small ViT for the attention methods."""
    return VitNet(seed) if name in ATTENTION else GapNet(seed)


def images(n: int = 3, c: int = 3, h: int = 8, w: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# Known answers on a linear model


def test_gradient_of_linear_model_is_the_weight_row():
    model = linear_model()
    x = images(3, 2, 5, 4)
    weight = model[1].weight.detach()
    grad = A.gradient(model, x, [0, 2, 1])
    for i, k in enumerate([0, 2, 1]):
        torch.testing.assert_close(grad[i], weight[k].view(2, 5, 4))
    torch.testing.assert_close(A.saliency(model, x, 2, reduce="sum"), weight[2].view(2, 5, 4).abs().sum(0).expand(3, 5, 4))
    torch.testing.assert_close(A.saliency(model, x, 2), weight[2].view(2, 5, 4).abs().amax(0).expand(3, 5, 4))
    assert A.saliency(model, x, 2, reduce="none").shape == (3, 2, 5, 4)


@pytest.mark.parametrize("fill", [0.0, 0.5])
def test_occlusion_1x1_on_linear_model_is_weight_times_input_minus_fill(fill):
    model = linear_model()
    x = images(2, 2, 5, 4)
    w = model[1].weight.detach()[1].view(2, 5, 4)
    expected = (w * (x - fill)).sum(dim=1)  # (N, H, W)
    got = A.occlusion(model, x, 1, window=(1, 1), stride=(1, 1), fill=fill, batch_size=7)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    per_pixel = A.occlusion(model, x, 1, window=1, stride=1, fill=fill, per_pixel=True)
    torch.testing.assert_close(per_pixel, expected, rtol=1e-4, atol=1e-5)


def test_occlusion_windows_and_per_pixel_mean_on_linear_model():
    model = linear_model()
    x = images(2, 2, 5, 4)
    contrib = (model[1].weight.detach()[0].view(2, 5, 4) * x).sum(dim=1)  # (N, 5, 4), fill 0
    got = A.occlusion(model, x, 0, window=(2, 3), stride=(2, 1))
    assert got.shape == (2, 2, 2)  # rows (5-2)//2+1, cols (4-3)//1+1
    for r in range(2):
        for c in range(2):
            torch.testing.assert_close(got[:, r, c], contrib[:, 2 * r:2 * r + 2, c:c + 3].sum(dim=(1, 2)),
                                       rtol=1e-4, atol=1e-5)
    per_pixel = A.occlusion(model, x, 0, window=(2, 3), stride=(2, 1), per_pixel=True)
    # pixel (0, 1) is covered by windows (0, 0) and (0, 1); row 4 by none (the stride does not reach it)
    torch.testing.assert_close(per_pixel[:, 0, 1], got[:, 0, :].mean(dim=1))
    torch.testing.assert_close(per_pixel[:, 2, 0], got[:, 1, 0])
    assert per_pixel[:, 4].abs().max() == 0


def test_occlusion_prob_score_and_tensor_fill():
    model = linear_model()
    x = images(1, 2, 5, 4)
    fill = torch.tensor([0.3, -0.2]).view(2, 1, 1)
    got = A.occlusion(model, x, 2, window=(5, 4), stride=1, fill=fill, score="prob")
    occluded = fill.expand(1, 2, 5, 4)
    expected = model(x).softmax(1)[0, 2] - model(occluded).softmax(1)[0, 2]
    torch.testing.assert_close(got.view(()), expected.detach())


def test_occlusion_validates_window_and_stride():
    model, x = linear_model(), images(1, 2, 5, 4)
    with pytest.raises(ValueError, match="window"):
        A.occlusion(model, x, 0, window=(6, 2), stride=1)
    with pytest.raises(ValueError, match="window"):
        A.occlusion(model, x, 0, window=0, stride=1)
    with pytest.raises(ValueError, match="stride"):
        A.occlusion(model, x, 0, window=2, stride=(1, 0))
    assert A.default_occlusion_params(224, 224) == {"window": (56, 56), "stride": (28, 28)}
    assert A.default_occlusion_params(3, 2) == {"window": (1, 1), "stride": (1, 1)}


# ---------------------------------------------------------------------------------------------------------------
# SmoothGrad


@pytest.mark.parametrize("method", [A.gradient, A.guided_backprop, A.deconvnet])
def test_smoothgrad_with_tiny_sigma_is_the_method(method):
    model, x = ReluNet("once"), images(2)
    got = A.smoothgrad(model, x, [1, 3], method=method, n=3, sigma=1e-8, batch_size=4)
    torch.testing.assert_close(got, method(model, x, [1, 3]), rtol=1e-4, atol=1e-6)


def test_smoothgrad_known_answer_seed_and_batching():
    model, x = linear_model(), images(2, 2, 5, 4)
    # The gradient of a linear model is the same everywhere, so any noise averages to the weight row.
    torch.testing.assert_close(A.smoothgrad(model, x, 1, n=5, sigma=0.5),
                               model[1].weight.detach()[1].view(1, 2, 5, 4).expand(2, 2, 5, 4))
    net, x = ReluNet("once"), images(3)
    run = functools.partial(A.smoothgrad, net, x, 2, n=6, sigma=0.3)
    a = run(batch_size=5, generator=torch.Generator().manual_seed(7))
    b = run(batch_size=18, generator=torch.Generator().manual_seed(7))
    c = run(batch_size=5, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, A.gradient(net, x, 2), atol=1e-4)


def test_smoothgrad_equals_a_plain_loop_over_the_same_noise():
    """An independent computation: each image's gradient at x + sigma * (max - min) * noise_j, one copy at a time,
    with the noise the generator gives (n standard-normal tensors of one image's shape, shared by the images),
    averaged; batches that cut an image's copies in two included."""
    net, x = ReluNet("once"), images(3)
    n, sigma = 7, 0.2
    noise = torch.randn((n, *x.shape[1:]), generator=torch.Generator().manual_seed(11))
    expected = []
    for i, t in enumerate([2, 0, 1]):
        std = sigma * (x[i].max() - x[i].min())
        grads = [A.gradient(net, (x[i] + std * noise[j])[None], t) for j in range(n)]
        expected.append(torch.cat(grads).mean(0))
    for batch_size in (1, 4, 7, 21):
        got = A.smoothgrad(net, x, torch.tensor([2, 0, 1]), n=n, sigma=sigma, batch_size=batch_size,
                           generator=torch.Generator().manual_seed(11))
        torch.testing.assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Batch in = the same maps as one image at a time, for every method the report shows

# The report's attribution analyses by their method function's name (the naming rule: grad-cam <-> grad_cam)
SHOWN = {python_name(a.name): a for a in all_analyses() if isinstance(a, AttributionAnalysis)}


def test_every_shown_method_is_a_function_named_like_its_analysis():
    for name in SHOWN:
        assert callable(getattr(A, name, None) or getattr(C, name, None) or getattr(ATT, name, None)
                        or getattr(PATHS, name, None) or getattr(DL, name, None) or getattr(P, name, None)
                        or getattr(LRP, name, None) or getattr(LG, name, None)), name


def method_params(name: str) -> dict:
    return {"smoothgrad": {"n": 4, "sigma": 0.2, "generator": torch.Generator().manual_seed(3), "batch_size": 5},
            "occlusion": {"window": (3, 3), "stride": (2, 2), "batch_size": 10, "per_pixel": True},
            # the perturbation methods draw from a generator of their own; a batch gets each image's draws alone
            "rise": {"n_masks": 40, "cells": 3, "batch_size": 16, "generator": torch.Generator().manual_seed(3)},
            "kernel_shap": {"n_samples": 20, "batch_size": 16, "generator": torch.Generator().manual_seed(3)},
            "lime": {"n_samples": 20, "batch_size": 16, "generator": torch.Generator().manual_seed(3)},
            # z^B on the first layer needs the input's bounds (the build takes them from the normalization)
            "lrp": {"low": -4.0, "high": 4.0}}.get(name, {})


def display_map(name: str, model: nn.Module, x: torch.Tensor, target, **params) -> torch.Tensor:
    """The report's display map (N, H, W) of method ``name``; CAM layers found as the build's plan finds them."""
    if name == "cam" and not params:
        layer, fc, rectified = C.find_cam_layers(model, x[:1])
        params = {"layer": layer, "fc": fc, "rectified": rectified}
    elif "cam" in name and "layer" not in params:
        params = {**params, "layer": C.default_cam_layer(model, x[:1])}
    elif name in ATTENTION and "names" not in params:
        params = {**params, "names": ATT.attention_modules(model)}
    return SHOWN[name].attribute(model, x, target, **params)


@pytest.mark.parametrize("name", list(SHOWN))
def test_batch_equals_single_runs(name):
    model, x, targets = net_for(name).eval(), images(3), [0, 3, 1]
    batched = display_map(name, model, x, torch.tensor(targets), **method_params(name))
    assert batched.shape == (3, 8, 8)
    singles = torch.cat([display_map(name, model, x[i:i + 1], targets[i], **method_params(name)) for i in range(3)])
    torch.testing.assert_close(batched, singles, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# CAM family


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def test_grad_cam_is_proportional_to_cam_on_gap_linear_model():
    model, x = GapNet(), images(4)
    assert C.find_cam_layers(model, x[:1]) == ("features", "fc", False)
    assert C.default_cam_layer(model, x[:1]) == "features"
    targets = [0, 1, 2, 3]
    cam_maps, cam_low = C.class_activation_map(model, x, targets, "features", C.fc_weights(model, "fc"),
                                               return_lowres=True)
    grad_maps = C.grad_cam(model, x, targets, "features")
    assert cam_low.shape == (4, 8, 8) and bool((cam_maps >= 0).all())
    assert bool((cosine(grad_maps, cam_maps) > 1 - 1e-5).all())
    # with GAP over h*w positions the gradient is w_k / (h*w) exactly
    torch.testing.assert_close(grad_maps, cam_maps / 64, rtol=1e-4, atol=1e-6)
    # and the CAM is ReLU of the hand-computed sum of fc-weighted channels
    feats = model.features(x).detach()
    by_hand = torch.relu(torch.einsum("nk,nkhw->nhw", model.fc.weight.detach()[targets], feats))
    torch.testing.assert_close(C.cam(model, x, targets, "features", "fc"), by_hand, rtol=1e-4, atol=1e-5)


def test_find_cam_layers_rejects_models_without_gap_linear():
    torch.manual_seed(0)
    hidden_fc = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4),
                              nn.ReLU(), nn.Linear(4, 2))
    max_pool = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert C.find_cam_layers(hidden_fc, images(1)) is None
    assert C.find_cam_layers(max_pool, images(1)) is None


def test_cam_on_torchvision_resnet_block_layer_and_reused_layer_error():
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BasicBlock(8, 8), BasicBlock(8, 8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    x = images(2)
    assert C.find_cam_layers(model, x[:1]) == ("2", "5", False)
    # Grad-CAM on bn2, whose output the block then rewrites in place (out += identity): still the gradient
    # w.r.t. bn2's own output, checked against an explicit split of the block.
    got = C.grad_cam(model, x, 1, "2.bn2")
    block = model[2]
    with torch.no_grad():
        identity = model[1](model[0](x))
        pre = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(identity)))))
    pre = pre.clone().requires_grad_(True)
    logits = model[5](model[4](model[3](torch.relu(pre + identity))))
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), pre)
    expected = torch.relu((grad.mean(dim=(2, 3))[:, :, None, None] * pre.detach()).sum(1))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="ran 2 times"):
        C.grad_cam(model, x, 1, "2.relu")


# ---------------------------------------------------------------------------------------------------------------
# Guided backprop and deconvnet


def reference_rule(model: nn.Module, x: torch.Tensor, target: int, rule: str) -> torch.Tensor:
    """An independent implementation for nets whose ReLUs are non-in-place modules used once: module hooks."""
    handles = []

    def hook(module, grad_input, grad_output):
        if rule == "guided":
            return (grad_input[0].clamp(min=0),)
        return (grad_output[0].clamp(min=0),)

    try:
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                handles.append(module.register_full_backward_hook(hook))
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    finally:
        for handle in handles:
            handle.remove()
    return grad


@pytest.mark.parametrize("fn,rule", [(A.guided_backprop, "guided"), (A.deconvnet, "deconv")])
def test_relu_rules_are_the_same_for_every_way_of_writing_relu(fn, rule):
    x = images(2, h=6, w=6)
    reference = reference_rule(ReluNet("once"), x, 1, rule)
    for style in ["once", "reused", "inplace", "functional"]:
        torch.testing.assert_close(fn(ReluNet(style), x, 1), reference, rtol=1e-5, atol=1e-7, msg=style)
    plain = A.gradient(ReluNet("once"), x, 1)
    assert not torch.allclose(reference, plain, atol=1e-3)


def test_relu_rules_hand_checked_two_layer_net():
    # h = W1 x = [1, -1, 2] for x = [1, 1]; relu mask [1, 0, 1]; y = W2 relu(h); dy/dr = [-1, 2, 3]
    first = nn.Linear(2, 3, bias=False)
    second = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [1.0, 1.0]]))
        second.weight.copy_(torch.tensor([[-1.0, 2.0, 3.0]]))
    model = nn.Sequential(nn.Flatten(), first, nn.ReLU(), second)
    x = torch.ones(1, 1, 1, 2)
    # plain: W1^T [-1, 0, 3]; guided: W1^T [0, 0, 3]; deconv: W1^T [0, 2, 3]
    assert A.gradient(model, x, 0).flatten().tolist() == [2.0, 3.0]
    assert A.guided_backprop(model, x, 0).flatten().tolist() == [3.0, 3.0]
    assert A.deconvnet(model, x, 0).flatten().tolist() == [3.0, 1.0]


def test_guided_backprop_through_checkpointed_segment():
    class Checkpointed(ReluNet):
        def forward(self, x):
            return checkpoint(super().forward, x, use_reentrant=False)

    x = images(2, h=6, w=6)
    torch.testing.assert_close(A.guided_backprop(Checkpointed("functional"), x, 2),
                               A.guided_backprop(ReluNet("functional"), x, 2))


def test_relu_rule_rejects_unknown_rule():
    with pytest.raises(ValueError, match="guided"):
        with relu_rule("smooth"):
            pass


# ---------------------------------------------------------------------------------------------------------------
# The user's model comes back unchanged, after success and after an error, for every method


class FailOn(nn.Module):
    """Identity that raises on its ``fail_at``-th call (0: never)."""

    def __init__(self, fail_at: int = 0) -> None:
        super().__init__()
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        return x


def hygiene_model(fail_at: int = 0, name: str = "") -> nn.Module:
    if name in ATTENTION:
        model = VitNet()
        model.features.append(FailOn(fail_at))
        model.vit.conv_proj.weight.requires_grad_(False)  # a mix of flags that must come back as they were
        model.eval()
        model.vit.heads.train()  # and a mix of modes (a Linear head: the attention weights stay recoverable)
        return model
    model = net_for(name)
    model.features.insert(1, FailOn(fail_at))
    model.features.insert(2, nn.ReLU(inplace=True))  # an in-place ReLU after a hooked layer
    model.features[0].weight.requires_grad_(False)  # a mix of flags that must come back as they were
    model.eval()
    model.features[4].train()  # and a mix of modes
    return model


def state(model: nn.Module):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()],
            [m.training for m in model.modules()])


def assert_untouched(model: nn.Module, before) -> None:
    params, flags, modes = state(model)
    for key, value in before[0].items():
        assert torch.equal(params[key], value), key
    assert flags == before[1] and modes == before[2]
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks and not module._backward_pre_hooks
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("name", list(SHOWN))
@pytest.mark.parametrize("case", ["ok", "fail_first_call", "fail_second_call", "bad_target"])
def test_every_method_leaves_the_model_unchanged(name, case):
    model = hygiene_model(fail_at={"fail_first_call": 1, "fail_second_call": 2}.get(case, 0), name=name)
    before = state(model)
    params = method_params(name)
    if "cam" in name:
        params["layer"] = "features"  # so that the failing call is the method's own, not a layer probe
    if name == "cam":
        params["fc"] = "fc"
    x = images(2)
    target = 4 if case == "bad_target" else [0, 1]
    if case == "ok":
        assert display_map(name, model, x, target, **params).shape == (2, 8, 8)
    elif case == "fail_second_call" and name in ("gradient", "deconvnet", "guided_backprop", "cam", "grad_cam",
                                                  "grad_cam_plus_plus", "xgrad_cam", "layer_cam", *ATTENTION,
                                                  "input_x_gradient", "deeplift", "lrp"):
        display_map(name, model, x, target, **params)  # one forward pass: nothing to fail
    else:
        with pytest.raises((RuntimeError, ValueError), match="injected|out of range"):
            display_map(name, model, x, target, **params)
    assert_untouched(model, before)


def test_probes_leave_the_model_unchanged():
    model = hygiene_model()
    before = state(model)
    assert C.find_cam_layers(model, images(1)) == ("features", "fc", False)
    assert C.default_cam_layer(model, images(1)) == "features"
    inspect_nonlinearities(model, images(1))
    assert_untouched(model, before)
    with pytest.raises(RuntimeError):
        inspect_nonlinearities(hygiene_model(fail_at=1), images(1))
    failing = hygiene_model(fail_at=1)
    before = state(failing)
    with pytest.raises(RuntimeError):
        C.find_cam_layers(failing, images(1))
    assert_untouched(failing, before)


# ---------------------------------------------------------------------------------------------------------------
# Which non-linearities a model uses


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.once = nn.ReLU()
        self.shared = nn.ReLU(inplace=True)
        self.inner = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = self.shared(self.once(self.conv(x)))
        x = self.shared(self.inner(x))
        x = F.relu(x) + torch.relu(x) + x.relu()
        x.relu_()
        return self.fc(x.mean(dim=(2, 3)))


def test_inspect_nonlinearities_finds_every_kind_of_relu():
    report = inspect_nonlinearities(Mixed(), images(1))
    assert report.relu_modules == ["once", "inner.1"]
    assert report.reused_relu_modules == {"shared": 2}
    assert report.inplace_relus == ["shared", "functional in <model>"]
    assert report.functional_relus == {"<model>": 4}
    assert report.n_relu_calls == 8
    assert report.other_nonlinearities == {}
    assert report.rules_exact and report.rule_reason == ""
    assert any("shared (x2)" in line for line in report.lines())


def test_inspect_nonlinearities_flags_gelu_and_functional_others():
    class WithGelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.act = nn.GELU()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            x = torch.sigmoid(self.act(self.conv(x))) * x
            return self.fc(F.relu(x).mean(dim=(2, 3)))

    report = inspect_nonlinearities(WithGelu(), images(1))
    assert report.other_nonlinearities == {"act (GELU)": 1, "torch.sigmoid in <model>": 1}
    assert report.functional_relus == {"<model>": 1}
    assert not report.rules_exact
    assert "GELU" in report.rule_reason and "torch.sigmoid" in report.rule_reason
    assert any("approximate" in line for line in report.lines())


class OffPathRelu(nn.Module):
    """GELU on the image's path; a ReLU and a sigmoid that see only a buffer and parameters (as Swin V2's
    relative-position MLP): the additive bias they make has no gradient with respect to the image."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 1)
        self.act = nn.GELU()
        self.register_buffer("table", torch.randn(4, 2))
        self.mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        bias = torch.sigmoid(self.mlp(self.table)).mean(0)
        return self.fc((self.act(self.conv(x)) + bias.view(1, 3, 1, 1)).mean(dim=(2, 3)))


def test_relus_off_the_images_path_do_not_count():
    model, x = OffPathRelu().eval(), images(2)
    report = inspect_nonlinearities(model, x)
    assert report.n_relu_calls == 0 and report.functional_relus == {}
    assert report.off_path == {"mlp.1 (ReLU)": 1, "<model> (torch.sigmoid)": 1}
    assert report.other_nonlinearities == {"act (GELU)": 1}
    assert "no ReLU on the image's path" in report.rule_reason and "mlp.1" in report.rule_reason
    # a second way to see it: the rule rewrites that ReLU's backward, and the map is still the plain gradient
    from reportgen.methods.relu_rules import NonReluWarning

    with pytest.warns(NonReluWarning, match=r"no ReLU on the image's path \(1 ReLU call.*: F\.gelu \(1x\)$"):
        torch.testing.assert_close(A.guided_backprop(model, x, 1), A.gradient(model, x, 1), rtol=0, atol=0)


def test_an_in_place_op_carries_the_image_into_a_buffer_copy():
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("offset", torch.zeros(1, 3, 1, 1))

        def forward(self, x):
            y = self.offset.clone()
            y.add_(x.mean(dim=(2, 3), keepdim=True))  # y now depends on the image
            return F.relu(y).flatten(1)

    report = inspect_nonlinearities(Mixer(), images(1))
    assert report.functional_relus == {"<model>": 1} and report.off_path == {}


def test_off_path_calls_of_swin_v2_agree_with_autograd():
    """Which ReLU and sigmoid calls of torchvision's Swin V2 see the image, told by the report and, independently,
    by autograd with the parameters detached (a call's input then requires grad iff it depends on the image)."""
    import torchvision
    from torch.func import functional_call
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    from reportgen.methods.relu_rules import _OTHER_FUNCS as OTHER_FUNCS
    from reportgen.methods.relu_rules import _relu_call as relu_call

    torch.manual_seed(0)
    model = torchvision.models.swin_v2_t(num_classes=2).eval()
    x = images(1, h=64, w=64)
    report = inspect_nonlinearities(model, x)

    class Seen(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.on, self.off = 0, 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if relu_call(func, args, kwargs) or func in OTHER_FUNCS:
                if any(t.requires_grad for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)):
                    self.on += 1
                else:
                    self.off += 1
            return func(*args, **kwargs)

    frozen = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    with Seen() as seen:
        functional_call(model, frozen, (x.clone().requires_grad_(True),))
    assert seen.off == sum(report.off_path.values()) > 0
    assert seen.on == sum(report.other_nonlinearities.values()) > 0
    assert report.n_relu_calls == 0 and report.off_path_relus
    assert all(k.endswith("attn.cpb_mlp.1") for k in report.off_path_relus)


def test_default_cam_layer_skips_adaptive_pooling_and_smoothgrad_of_another_method():
    torch.manual_seed(0)
    vgg_like = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                             nn.Linear(4 * 49, 2)).eval()
    assert C.default_cam_layer(vgg_like, images(1)) == "1"
    model, x = ReluNet("once"), images(2)
    torch.testing.assert_close(A.reduce_channels(A.smoothgrad(model, x, 1, method=A.guided_backprop, sigma=1e-8,
                                                              n=2)),
                               A.reduce_channels(A.guided_backprop(model, x, 1)), rtol=1e-4, atol=1e-6)
