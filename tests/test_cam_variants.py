"""Grad-CAM++, XGrad-CAM, LayerCAM and Score-CAM: the same maps as pytorch-grad-cam, known answers on models whose
gradients are known in closed form, batch independence and model hygiene."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.methods import cams as C
from test_attribution import assert_untouched, hygiene_model, state

VARIANTS = {"grad_cam_plus_plus": C.grad_cam_plus_plus, "xgrad_cam": C.xgrad_cam, "layer_cam": C.layer_cam,
            "score_cam": C.score_cam}


def gap_net(seed: int = 0, k: int = 8) -> nn.Sequential:
    """conv -> ReLU -> stride-2 conv -> ReLU -> global average pooling -> linear, for 16x16 inputs.

    Layer "1" is a non-negative 16x16 map, "2" a signed 8x8 map, "3" the non-negative 8x8 map that the pooling
    averages, so at "3" the logit is ``fc(mean_ij A)`` and d logit_c / d A_k,ij = fc.weight[c, k] / 64 everywhere.
    """
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, k, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(k, 4)).eval()


def images(n: int = 3, h: int = 16, w: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def features(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The output of layer "3" (N, K, 8, 8), computed directly."""
    with torch.no_grad():
        return model[:4](x)


# ---------------------------------------------------------------------------------------------------------------
# The same maps as pytorch-grad-cam


def normalize_like_pytorch_grad_cam(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's display normalization of (N, H, W) maps: per image ``(m - min) / (max - min + 1e-7)``,
    once per layer before its cv2 resize and again after averaging the layers. Resizing between the two changes
    nothing here: bilinear weights sum to 1, so the resize commutes with the affine normalization, and cv2's
    INTER_LINEAR upsampling samples at the same half-pixel centres as ``F.interpolate(align_corners=False)``."""
    for _ in range(2):
        flat = maps.flatten(1)
        flat = flat - flat.amin(dim=1, keepdim=True)
        maps = (flat / (flat.amax(dim=1, keepdim=True) + 1e-7)).view_as(maps)
    return maps


@pytest.mark.parametrize("name,peer_name", [("grad_cam_plus_plus", "GradCAMPlusPlus"), ("xgrad_cam", "XGradCAM"),
                                            ("layer_cam", "LayerCAM"), ("score_cam", "ScoreCAM")])
@pytest.mark.parametrize("layer", ["1", "2", "3"])
@pytest.mark.parametrize("targets", [[0, 2, 3], [1, 1, 1]])
def test_same_maps_as_pytorch_grad_cam(name, peer_name, layer, targets):
    # Our (N, 16, 16) maps after pytorch-grad-cam's normalization, against its output: at the layer's resolution
    # (layer "1") no resize is involved; at 8x8 ("2", "3") its cv2 resize is compared with our bilinear upsampling,
    # and Score-CAM's masks depend on the align_corners=True upsampling of the channels.
    peer = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = gap_net(), images()
    peer_model = copy.deepcopy(model)  # the peer writes .grad and hooks into the model it is given
    with getattr(peer, peer_name)(peer_model, [peer_model.get_submodule(layer)]) as method:
        method.batch_size = 5  # Score-CAM's chunk size; the others ignore it
        expected = torch.from_numpy(method(x, [ClassifierOutputTarget(t) for t in targets]))
    got = VARIANTS[name](model, x, targets, layer)
    assert got.shape == (3, 16, 16) and bool((got >= 0).all())
    assert float(got.amax()) > 0
    torch.testing.assert_close(normalize_like_pytorch_grad_cam(got), expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline takes channel or element-wise weights


def test_pipeline_takes_channel_or_elementwise_weights():
    model, x = gap_net(), images()

    def broadcast_grad_cam(acts, grads, targets):
        return C.grad_cam_weights(acts, grads, targets)[:, :, None, None].expand_as(acts)

    torch.testing.assert_close(C.class_activation_map(model, x, 1, "2", broadcast_grad_cam),
                               C.grad_cam(model, x, 1, "2"))
    with pytest.raises(ValueError, match=r"must return \(N, K\)"):
        C.class_activation_map(model, x, 1, "2", lambda acts, grads, targets: acts[:, :, :1, :1])


# ---------------------------------------------------------------------------------------------------------------
# Known answers on global average pooling + linear, where d logit_c / d A_k = w_ck / Z at every position


def test_layer_cam_on_gap_linear_is_relu_of_positive_fc_weights():
    model, x, targets = gap_net(), images(), [0, 2, 3]
    weight, feats = model[6].weight.detach(), features(model, x)
    # relu(g) = relu(w_ck) / 64 at every position
    by_hand = torch.relu(torch.einsum("nk,nkhw->nhw", torch.relu(weight[targets]), feats)) / 64
    _, lowres = C.class_activation_map(model, x, targets, "3", C.layer_cam_weights, return_lowres=True)
    torch.testing.assert_close(lowres, by_hand, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(C.layer_cam(model, x, targets, "3"), C.grad_cam(model, x, targets, "3"), atol=1e-4)
    # With a positive weight row the gradient is positive and uniform over space: LayerCAM is Grad-CAM.
    with torch.no_grad():
        model[6].weight.abs_()
    torch.testing.assert_close(C.layer_cam(model, x, targets, "3"), C.grad_cam(model, x, targets, "3"),
                               rtol=1e-5, atol=1e-7)


def test_xgrad_cam_on_gap_linear_is_cam_over_z():
    # sum_ij (w/Z) A / sum_ij A = w/Z: the same weights as Grad-CAM, i.e. CAM's scaled by 1/Z (the 1e-7 is lost in
    # the rounding: the channel sums here are > 1e-3, or exactly 0 for a dead channel, whose map is 0 anyway).
    model, x, targets = gap_net(), images(), [0, 2, 3]
    assert C.find_cam_layers(model, x[:1]) == ("3", "6", False)
    cam = C.cam(model, x, targets, "3", "6")
    torch.testing.assert_close(C.xgrad_cam(model, x, targets, "3"), cam / 64, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(C.xgrad_cam(model, x, targets, "3"), C.grad_cam(model, x, targets, "3"),
                               rtol=1e-5, atol=1e-7)


def test_xgrad_cam_weights_by_hand():
    acts = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    grads = torch.tensor([[[[2.0, -1.0], [5.0, 7.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    # (2 * 1 - 1 * 3) / 4 = -0.25; a dead channel gets 0 / 1e-7 = 0
    torch.testing.assert_close(C.xgrad_cam_weights(acts, grads, torch.tensor([0])), torch.tensor([[-0.25, 0.0]]))


def test_grad_cam_plus_plus_weights_by_hand():
    acts = torch.ones(1, 3, 2, 2)  # S_k = 4 for every channel
    grads = torch.tensor([[[[1.0, 0.0], [-1.0, 2.0]],
                           [[-1.0, -1.0], [-1.0, -1.0]],
                           [[0.0, 0.0], [0.0, 0.0]]]])
    # g = 1: alpha = 1 / (2 + 4) = 1/6, term 1/6; g = 2: alpha = 4 / (8 + 32) = 0.1, term 0.2; g = 0 and g < 0: 0.
    # An all-negative gradient gives 0, an all-zero gradient 0 as well (not 0/0).
    weights = C.grad_cam_plus_plus_weights(acts, grads, torch.tensor([0]))
    torch.testing.assert_close(weights, torch.tensor([[1 / 6 + 0.2, 0.0, 0.0]]), rtol=1e-5, atol=0)


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_grad_cam_plus_plus_on_gap_linear_closed_form(scale):
    # Uniform g = w/Z: alpha = g^2 / (2 g^2 + S g^3 + 1e-6), the same at every position, so w_k = Z g alpha for
    # g > 0, else 0. With g of order 1e-3 (scale 1) the 1e-6 is not negligible; with large gradients (scale 1e4)
    # alpha is the paper's 1 / (2 + S g).
    model, x, targets = gap_net(), images(), [0, 2, 3]
    with torch.no_grad():
        model[6].weight.mul_(scale)
    feats = features(model, x)
    g = model[6].weight.detach()[targets] / 64  # (N, K)
    sums = feats.sum(dim=(2, 3))
    alpha = g**2 / (2 * g**2 + sums * g**3 + 1e-6)
    if scale > 1:
        torch.testing.assert_close(alpha, 1 / (2 + sums * g), rtol=1e-3, atol=0)
    weights = torch.where(g > 0, 64 * g * alpha, torch.zeros_like(g))
    by_hand = torch.relu(torch.einsum("nk,nkhw->nhw", weights, feats))
    _, lowres = C.class_activation_map(model, x, targets, "3", C.grad_cam_plus_plus_weights, return_lowres=True)
    torch.testing.assert_close(lowres, by_hand, rtol=1e-4, atol=1e-7 * scale)


# ---------------------------------------------------------------------------------------------------------------
# Score-CAM


def test_score_cam_with_one_channel_is_that_channel():
    # softmax over one channel is 1, whatever the masked image scores
    model, x = gap_net(k=1), images()
    maps, lowres = C.class_activation_map(model, x, [0, 1, 3], "3", C.score_cam_weights(model, x),
                                          return_lowres=True)
    channel = features(model, x)[:, 0]
    torch.testing.assert_close(lowres, channel)
    upsampled = F.interpolate(channel[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(C.score_cam(model, x, [0, 1, 3], "3"), upsampled)
    torch.testing.assert_close(maps, upsampled)


def score_cam_by_hand(model: nn.Module, x: torch.Tensor, targets: list[int], layer: str) -> torch.Tensor:
    """One image and one channel at a time, with the layer read by a sub-model: the (N, h, w) map before
    upsampling."""
    assert layer == "3"
    maps = []
    with torch.no_grad():
        for image, target in zip(x, targets):
            acts = model[:4](image[None])[0]  # (K, h, w)
            scores = []
            for channel in acts:
                up = F.interpolate(channel[None, None], size=x.shape[-2:], mode="bilinear", align_corners=True)[0]
                mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
                scores.append(model((image * mask)[None])[0, target])
            weights = torch.softmax(torch.stack(scores), dim=0)
            maps.append(torch.relu((weights[:, None, None] * acts).sum(dim=0)))
    return torch.stack(maps)


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_score_cam_by_hand_and_batch_sizes(batch_size):
    model, x, targets = gap_net(), images(), [0, 2, 3]
    _, lowres = C.class_activation_map(model, x, targets, "3", C.score_cam_weights(model, x, batch_size=batch_size),
                                       return_lowres=True)
    torch.testing.assert_close(lowres, score_cam_by_hand(model, x, targets, "3"), rtol=1e-5, atol=1e-7)


def test_score_cam_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        C.score_cam(gap_net(), images(1), 0, "3", batch_size=0)


# ---------------------------------------------------------------------------------------------------------------
# Batch in = one image at a time; the model comes back unchanged


@pytest.mark.parametrize("name", list(VARIANTS))
def test_batch_equals_single_runs(name):
    model, x, targets = gap_net(), images(), [0, 3, 1]
    batched = VARIANTS[name](model, x, torch.tensor(targets), "2")
    singles = torch.cat([VARIANTS[name](model, x[i:i + 1], targets[i], "2") for i in range(3)])
    torch.testing.assert_close(batched, singles, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("case", ["ok", "fail_first_call", "fail_second_call", "bad_target"])
def test_every_variant_leaves_the_model_unchanged(name, case):
    # The same model and checks as tests/test_attribution.py: an in-place ReLU after the hooked layer, mixed
    # requires_grad flags and train/eval modes. Only Score-CAM makes a second call (its masked images).
    model = hygiene_model(fail_at={"fail_first_call": 1, "fail_second_call": 2}.get(case, 0))
    before = state(model)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    target = 4 if case == "bad_target" else [0, 1]
    fails = case in ("fail_first_call", "bad_target") or (case == "fail_second_call" and name == "score_cam")
    if fails:
        with pytest.raises((RuntimeError, ValueError), match="injected|out of range"):
            VARIANTS[name](model, x, target, "features")
    else:
        assert VARIANTS[name](model, x, target, "features").shape == (2, 8, 8)
    assert_untouched(model, before)
