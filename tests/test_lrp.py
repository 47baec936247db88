"""LRP (reportgen.methods.lrp): hand-computed answers, conservation, zennit's composites and Captum's LRP as
independent second computations, the model left unchanged, and "not applicable" where a layer has no rule."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.methods.lrp import LRPNotApplicable, lrp, lrp_reason

COMPOSITES = ("epsilon-gamma-box", "epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1")
LOW, HIGH = -2.5, 2.5  # the z^B bounds used with the test inputs (within them: randn * 0.8, clamped)


def _inputs(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, size, size, generator=g, dtype=torch.float64) * 0.8).clamp(LOW, HIGH)


def _random_bn(model: nn.Module, seed: int, eps: float) -> nn.Module:
    """BatchNorms with random running statistics and affine parameters (not the identity), and epsilon ``eps``."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.6 - 0.3)
            m.eps = eps
    return model


def vgg_like(eps: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 12), nn.ReLU(), nn.Dropout(), nn.Linear(12, 5))
    return _random_bn(net, 1, eps).double().eval()


def tiny_resnet(eps: float = 0.0) -> nn.Module:
    """torchvision's ResNet with BasicBlocks at widths 8-16-32-32 (one block per stage): identity and downsampling
    shortcuts, its own forward (``out += identity``)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    with torch.device("meta"):  # the full-width modules are all replaced below: never allocate them
        net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5)
    torch.manual_seed(0)
    net.inplanes = 8
    net.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    net.bn1 = nn.BatchNorm2d(8)
    net.layer1 = net._make_layer(BasicBlock, 8, 1)
    net.layer2 = net._make_layer(BasicBlock, 16, 1, stride=2)
    net.layer3 = net._make_layer(BasicBlock, 32, 1, stride=2)
    net.layer4 = net._make_layer(BasicBlock, 32, 1)
    net.fc = nn.Linear(32, 5)
    return _random_bn(net, 2, eps).double().eval()


def _zennit(model: nn.Module, composite, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """zennit's relevance with the output relevance set to the target's logit (as reportgen and Captum start)."""
    from zennit.attribution import Gradient

    with Gradient(model, composite) as attributor:
        out = model(x)
        seed = torch.zeros_like(out)
        seed[torch.arange(len(x)), target] = out[torch.arange(len(x)), target]
        _, relevance = attributor(x, seed.detach())
    return relevance


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max()).detach())


# ---------------------------------------------------------------------------------------------------------------
# Known answers, computed by hand


def _two_layer(first_conv: bool = False) -> nn.Module:
    """x (2 features) -> W1 = [[1, -1], [3, -1]] -> ReLU -> W2 = [[0.5, 2]], no biases. At x = (1, 2): z = (-1, 1),
    h = (0, 1), output 2."""
    first = nn.Conv2d(2, 2, 1, bias=False) if first_conv else nn.Linear(2, 2, bias=False)
    second = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, -1.0], [3.0, -1.0]]).reshape(first.weight.shape))
        second.weight.copy_(torch.tensor([[0.5, 2.0]]))
    if first_conv:
        return nn.Sequential(first, nn.ReLU(), nn.Flatten(), second).double().eval()
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), second).double().eval()


X_HAND = torch.tensor([1.0, 2.0], dtype=torch.float64).reshape(1, 2, 1, 1)


@pytest.mark.parametrize("kwargs, expected", [
    # LRP-0: unit 2 (z = 1) gets all of R = 2; pixels x_j w_2j / z_2 * 2 = (3 * 2, -2 * 2)
    ({"rule": "epsilon", "epsilon": 1e-12}, [6.0, -4.0]),
    # gamma = 1 on both layers: layer 1's weights (3, -1) -> (6, -1), z' = 6 - 2 = 4: (6/4 * 2, -2/4 * 2);
    # layer 2 (all contributions positive) hands on R = 2 unchanged
    ({"rule": "gamma", "gamma": 1.0, "stabilizer": 1e-12}, [3.0, -1.0]),
    # alpha 2, beta 1: layer 2 has no negative contribution: R_h2 = 2 * 2 = 4 (not conserved); layer 1 then
    # splits 4 as 2 * (3/3) * 4 and -1 * (-2/-2) * 4
    ({"rule": "alpha-beta", "alpha": 2.0, "beta": 1.0, "stabilizer": 1e-12}, [8.0, -4.0]),
])
def test_hand_weighted_two_layer_net(kwargs, expected):
    r = lrp(_two_layer(), X_HAND, 0, **kwargs)
    assert r.shape == X_HAND.shape
    assert torch.allclose(r.flatten(), torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_hand_weighted_box_rule_on_the_first_convolution():
    # z^B with l = -1, h = 3 at unit 2 (w = (3, -1)): x w - l w+ - h w- = (3 + 3, -2 + 3) = (6, 1), total 7; the
    # dense layer hands it R = 2 (epsilon), unit 1 (z = -1, off) nothing: (12/7, 2/7)
    r = lrp(_two_layer(first_conv=True), X_HAND, 0, low=-1.0, high=3.0, stabilizer=1e-12, epsilon=1e-12)
    assert torch.allclose(r.flatten(), torch.tensor([12 / 7, 2 / 7], dtype=torch.float64), rtol=1e-9)


class _BiasFreeResidual(nn.Module):
    """Bias-free convolutions, ReLUs (module, in-place and functional), a functional residual addition, average
    pooling and a dense layer: every rule keeps the total relevance here."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv1(x))
        h = F.relu(h + self.conv2(h))
        return self.fc(torch.flatten(self.pool(h), 1))


@pytest.mark.parametrize("kwargs", [{"rule": "epsilon"}, {"rule": "gamma"}, {"rule": "alpha-beta"}]
                         + [{"composite": c} for c in COMPOSITES if c != "epsilon-alpha2-beta1"])
def test_conservation_bias_free(kwargs):
    # without biases and with tiny stabilizers every layer's rule sums to 1 over its inputs (epsilon: z / z;
    # gamma and z+: the modified contributions over their own sum; z^B and flat likewise), and the sum rule
    # a / (a + b) + b / (a + b) = 1: the relevance of the pixels adds up to the logit. (alpha 2, beta 1 does not
    # conserve where a unit has contributions of one sign only: see the hand-weighted test.)
    model = _BiasFreeResidual().double().eval()
    x = _inputs(2, 6)
    r = lrp(model, x, [1, 3], epsilon=1e-12, stabilizer=1e-12, low=LOW, high=HIGH, **kwargs)
    logits = model(x)[torch.arange(2), torch.tensor([1, 3])]
    assert torch.allclose(r.sum(dim=(1, 2, 3)), logits.detach(), rtol=1e-8, atol=1e-10)


def test_batchnorm_folded_exactly():
    # the same network with the BatchNorm folded by hand (y = gamma (conv(x) - mean) / sqrt(var + eps) + beta into
    # the convolution's weights and bias) gives the same logits and the same relevance
    torch.manual_seed(4)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    with_bn = _random_bn(nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)), 5, 1e-3)
    with_bn = with_bn.double().eval()
    folded = nn.Conv2d(3, 4, 3, padding=1).double()
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
    by_hand = nn.Sequential(folded, nn.ReLU(), nn.Flatten(), with_bn[4]).eval()
    x = _inputs(2, 5)
    assert torch.allclose(with_bn(x), by_hand(x), rtol=1e-12, atol=1e-12)
    for composite in ("epsilon-gamma-box", "epsilon-plus"):
        a = lrp(with_bn, x, 2, composite=composite, low=LOW, high=HIGH)
        b = lrp(by_hand, x, 2, composite=composite, low=LOW, high=HIGH)
        assert _rel(a, b) < 1e-12


def test_batched_equals_one_at_a_time():
    model, x = tiny_resnet(), _inputs(3, 32)
    together = lrp(model, x, [0, 1, 4], low=LOW, high=HIGH)
    alone = torch.cat([lrp(model, x[k:k + 1], [0, 1, 4][k], low=LOW, high=HIGH) for k in range(3)])
    assert _rel(together, alone) < 1e-12


# ---------------------------------------------------------------------------------------------------------------
# Peers: zennit's composites (VGG-like with BatchNorm, torchvision ResNet) and Captum's LRP


def _zennit_composite(name: str, canonizers: list):
    from zennit import composites

    if name == "epsilon-gamma-box":
        return composites.EpsilonGammaBox(low=torch.full((1, 3, 1, 1), LOW, dtype=torch.float64),
                                          high=torch.full((1, 3, 1, 1), HIGH, dtype=torch.float64),
                                          canonizers=canonizers)
    cls = {"epsilon-plus": composites.EpsilonPlus, "epsilon-plus-flat": composites.EpsilonPlusFlat,
           "epsilon-alpha2-beta1": composites.EpsilonAlpha2Beta1}[name]
    return cls(canonizers=canonizers)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_equals_zennit_on_a_vgg_like_net(composite):
    pytest.importorskip("zennit")
    from zennit.canonizers import SequentialMergeBatchNorm

    # BatchNorm epsilon 0: zennit's folding sets the BatchNorm's running variance to 1 but keeps its epsilon, so
    # its "identity" divides by sqrt(1 + eps) (a 5e-6 relative change per BatchNorm at the default 1e-5); ours
    # folds exactly (test_batchnorm_folded_exactly)
    model, x, target = vgg_like(eps=0.0), _inputs(3, 16), torch.tensor([0, 2, 4])
    ours = lrp(model, x, target, composite=composite, low=LOW, high=HIGH)
    theirs = _zennit(model, _zennit_composite(composite, [SequentialMergeBatchNorm()]), x, target)
    assert _rel(ours, theirs) < 1e-5


def test_equals_zennit_on_a_torchvision_resnet():
    pytest.importorskip("zennit")
    from zennit.torchvision import ResNetCanonizer

    model, x, target = tiny_resnet(eps=0.0), _inputs(2, 32, seed=1), torch.tensor([1, 3])
    ours = lrp(model, x, target, low=LOW, high=HIGH)  # the default composite, epsilon-gamma-box
    theirs = _zennit(model, _zennit_composite("epsilon-gamma-box", [ResNetCanonizer()]), x, target)
    assert _rel(ours, theirs) < 1e-5


class _PlainNet(nn.Module):
    """Convolutions and dense layers with a module ReLU, an in-place ReLU module, a functional ReLU, max and
    average pooling (Captum's LRP needs module layers it knows; reshapes are functional)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(4, 6, 3), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2)
        self.fc1, self.fc2 = nn.Linear(24, 8), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool2(self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x))))))
        return self.fc2(F.relu(self.fc1(torch.flatten(h, 1))))


def test_equals_captum_lrp_with_epsilon_rules():
    captum_attr = pytest.importorskip("captum.attr")
    model, x, target = _PlainNet().double().eval(), _inputs(3, 10), torch.tensor([0, 4, 2])
    ours = lrp(model, x, target, rule="epsilon", epsilon=1e-9, stabilizer=1e-9)
    theirs = captum_attr.LRP(model).attribute(x.clone().requires_grad_(True), target=target)
    # Captum puts the epsilon rule on max pooling too (the winner keeps x / (x + 1e-9) of the relevance, ours
    # all of it): a difference of about 1e-9 / x, 4e-7 here
    assert _rel(ours, theirs) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Not applicable, wrong arguments, the model left unchanged


class _Gelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act, self.fc = nn.Conv2d(3, 4, 3), nn.GELU(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("model, words", [
    (_Gelu(), "GELU 'act'"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LayerNorm(16), nn.Linear(16, 2)), "LayerNorm '2'"),
    (nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 4), nn.Flatten(), nn.Linear(4, 2)),
     "it does not follow a convolution or dense layer"),
    (_Branchy(), "torch.fx cannot trace the model"),
])
def test_not_applicable_names_the_operation(model, words):
    model.eval()
    assert words in lrp_reason(model)
    with pytest.raises(LRPNotApplicable, match="LRP|torch.fx"):
        lrp(model, torch.randn(1, 3, 4, 4), 0, rule="epsilon")


def test_the_analysis_says_not_applicable_with_the_reason():
    from reportgen.analyses import get

    analysis = get("lrp")
    verdict, why = analysis.exactness(SimpleNamespace(python=True, _model=_Gelu().eval()))
    assert verdict == "not applicable" and "GELU" in why
    verdict, why = analysis.exactness(SimpleNamespace(python=True, _model=tiny_resnet()))
    assert verdict == "exact" and "11 BatchNorms folded" in why and "4 additions" in why


def test_wrong_arguments_say_what_to_do():
    model = _two_layer(first_conv=True)
    with pytest.raises(ValueError, match="needs low and high"):
        lrp(model, X_HAND, 0)
    with pytest.raises(ValueError, match="unknown LRP rule"):
        lrp(model, X_HAND, 0, rule="z-plus")
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        lrp(model, X_HAND, 0, rule="alpha-beta", alpha=2.0, beta=2.0)


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def _snapshot(model: nn.Module) -> tuple:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())
    flags = [(m.training, type(m)) for m in model.modules()]
    grads = [(p.requires_grad, p.grad) for p in model.parameters()]
    return state, hooks, flags, grads


def _same(before: tuple, after: tuple) -> bool:
    (s0, h0, f0, g0), (s1, h1, f1, g1) = before, after
    return (s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0) and h0 == h1 == 0 and f0 == f1
            and g0 == g1)


def test_model_unchanged_after_success_and_after_errors(monkeypatch):
    model, x = vgg_like(eps=1e-5), _inputs(2, 16)
    out = model(x).detach()
    before = _snapshot(model)
    lrp(model, x, 1, low=LOW, high=HIGH)
    assert _same(before, _snapshot(model))
    with pytest.raises(ValueError, match="out of range"):
        lrp(model, x, 9, low=LOW, high=HIGH)
    assert _same(before, _snapshot(model))
    failing = nn.Sequential(vgg_like(eps=1e-5), _Boom()).eval()  # raises while torch.fx traces it
    before_failing = _snapshot(failing)
    with pytest.raises(LRPNotApplicable, match="boom"):
        lrp(failing, x, 1, low=LOW, high=HIGH)
    assert _same(before_failing, _snapshot(failing))

    def fail(*args, **kwargs):
        raise RuntimeError("injected in the backward pass")

    monkeypatch.setattr("reportgen.methods.lrp._Layer.relevance", fail)
    with pytest.raises(RuntimeError, match="injected"):
        lrp(model, x, 1, low=LOW, high=HIGH)
    assert _same(before, _snapshot(model))
    assert torch.equal(model(x), out)


def test_signed_limits_and_picture_keys():
    from reportgen.analyses.lrp import _key_parts, signed_limits

    maps = np.array([[[-4.0, 1.0], [0.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]])
    shared, per_image = signed_limits(maps, 100.0)
    assert shared == 4.0 and per_image.tolist() == [4.0, 1.0]  # an all-zero map falls back to 1
    assert _key_parts("per-image-true-00012-7") == ("per-image", "true", 12, 7)
