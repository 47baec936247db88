"""Attention weights recovered from the modules' own projections (they reproduce each module's output), and the
maps drawn from them, on hand-built cases with known answers. Each attention family's own known-answer tests are in
test_attention_families.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reportgen.methods.attention import (attention_maps, grad_rollout_of_weights, recording_attention,
                                         rollout_of_weights)


class OneHeadViT(nn.Module):
    """A class token and 4 patch tokens (2x2 grid of 4-px patches of an 8x8 grey image) through one
    nn.MultiheadAttention with 1 head, then a linear head on the class token. The query is a constant vector c
    (W_q = 0, b_q = c) and the key is the token itself (W_k = I), so the class token's attention to token j is
    softmax_j(c . x_j / sqrt(D)): known from the tokens alone."""

    def __init__(self, d=4):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(1, d, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.attn = nn.MultiheadAttention(d, 1, batch_first=True)
        with torch.no_grad():
            w_q, w_k, _ = self.attn.in_proj_weight.split(d)
            w_q.zero_()
            w_k.copy_(torch.eye(d))
            b_q, b_k, _ = self.attn.in_proj_bias.split(d)
            b_q.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0])[:d])
            b_k.zero_()
        self.head = nn.Linear(d, 3)

    def tokens(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(x), -1, -1), t], dim=1)

    def forward(self, x):
        t = self.tokens(x)
        out, _ = self.attn(t, t, t, need_weights=False)
        return self.head((t + out)[:, 0])


def test_one_head_attention_equals_the_analytic_softmax():
    model = OneHeadViT().eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    result = attention_maps(model, x, 0)
    assert result["prefix"] == 1 and result["grid"] == (2, 2)
    with torch.no_grad():
        t = model.tokens(x)  # (3, 5, 4)
    c = torch.tensor([1.0, -2.0, 0.5, 3.0])
    expected = torch.softmax(t @ c / math.sqrt(4), dim=1)  # class token's attention to all 5 tokens
    weights = result["weights"]["attn"]
    assert torch.allclose(weights[:, 0, 0], expected, atol=1e-6)
    assert torch.allclose(result["class_token"]["attn"][:, 0].flatten(1), expected[:, 1:], atol=1e-6)
    # rollout of one layer: 0.5 I + 0.5 A; the class token's row over the patches is 0.5 * A[0, 1:]
    assert torch.allclose(result["rollout"].flatten(1), 0.5 * expected[:, 1:], atol=1e-6)


def test_rollout_and_grad_rollout_known_answers():
    # two layers of uniform attention over 1 + 4 tokens: each rollout step is 0.5 I + 0.5/5, so the class row over
    # the patches after two steps is 2 * 0.5 * 0.1 * 0.5 + 0.1 * 0.1 ... computed as a matrix product by hand
    a = torch.full((1, 2, 5, 5), 0.2)
    step = 0.5 * torch.eye(5) + 0.5 * torch.full((5, 5), 0.2)
    expected = (step @ step)[0, 1:].reshape(2, 2)
    assert torch.allclose(rollout_of_weights([a, a], 1, (2, 2))[0], expected)
    # grad rollout: R = I + relu(g * A) mean over heads; with g = -1 on head 0 and +1 on head 1 only head 1 counts
    g = torch.stack([-torch.ones(5, 5), torch.ones(5, 5)])[None]
    r = torch.eye(5) + 0.5 * (0.2 * torch.ones(5, 5))
    assert torch.allclose(grad_rollout_of_weights([a], [g], 1, (2, 2))[0], r[0, 1:].reshape(2, 2))


def test_grad_of_weights_matches_finite_differences():
    """dS/dA from the recorded output gradient equals the derivative of S when A is perturbed inside the module."""
    model = OneHeadViT().eval()
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    result = attention_maps(model, x, 1)
    with recording_attention(model, grads=True) as rec, torch.enable_grad():
        xx = x.clone().requires_grad_(True)
        model(xx)[0, 1].backward()
    grad = rec.grads["attn"][0, 0]
    # S depends on A through out = out_proj(A v): S(A + eps E_ij) - S(A) for one (i, j) = 0 (class row) and j = 2
    with torch.no_grad():
        t = model.tokens(x)
        d = t.shape[-1]
        w_v = model.attn.in_proj_weight[2 * d:]
        v = t @ w_v.T + model.attn.in_proj_bias[2 * d:]
        a = result["weights"]["attn"][0, 0]

        def score(att):
            out = model.attn.out_proj(att @ v[0])
            return model.head((t[0] + out)[0])[1]

        eps = 0.1  # S is linear in A (values fixed): a large step is exact and float32 rounding stays small
        bump = torch.zeros_like(a)
        bump[0, 2] = eps
        numeric = (score(a + bump) - score(a - bump)) / (2 * eps)
    assert float(grad[0, 2]) == pytest.approx(float(numeric), rel=1e-3, abs=1e-6)


def test_cam_applies_to_a_functional_relu_before_pooling_and_decomposes_the_logit():
    """DenseNet's head: features -> F.relu -> global average pooling -> Linear. CAM is defined on ReLU(features):
    the low-resolution map's mean plus the bias is the class logit (Zhou et al.'s decomposition)."""
    from reportgen.methods import cams as C

    class DenseHead(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6))
            self.classifier = nn.Linear(6, 4)

        def forward(self, x):
            out = torch.nn.functional.relu(self.features(x))
            return self.classifier(torch.nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))

    model = DenseHead().eval()
    x = torch.randn(3, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    found = C.find_cam_layers(model, x)
    assert found == ("features", "classifier", True)
    weighting = C.fc_weights(model, "classifier", rectified=True)
    targets = torch.tensor([0, 2, 3])
    with torch.no_grad():
        acts = model.features(x)
        logits = model(x)
        weights = weighting(acts, None, targets)
        m = (weights * acts).sum(dim=1)  # before the display ReLU
    bias = model.classifier.bias[targets]
    assert torch.allclose(m.mean(dim=(1, 2)) + bias, logits[torch.arange(3), targets], atol=1e-5)
    maps = C.cam(model, x, targets, "features", "classifier", rectified=True)
    assert maps.shape == (3, 8, 10) and torch.allclose(
        maps, torch.nn.functional.interpolate(m.clamp(min=0)[:, None], size=(8, 10), mode="bilinear")[:, 0],
        atol=1e-6)


def test_cam_applies_when_the_pooled_map_is_the_logits():
    """SqueezeNet ends in a 1x1 conv with one channel per class, a ReLU and global average pooling: no linear
    layer, identity weights, and class c's CAM is the rectified channel c (its mean is the logit)."""
    import torchvision

    from reportgen.methods import cams as C

    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    found = C.find_cam_layers(model, x)
    assert found == ("classifier.2", "", False)  # the ReLU module's output: already rectified
    with torch.no_grad():
        acts = torch.relu(model.classifier[1](model.features(x)))
        logits = model(x)
    targets = torch.tensor([2, 0])
    _, low = C.class_activation_map(model, x, targets, found.layer, C.fc_weights(model, ""), return_lowres=True)
    assert torch.allclose(low, acts[torch.arange(2), targets])
    assert torch.allclose(low.mean(dim=(1, 2)), logits[torch.arange(2), targets], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Token sets beyond the plain ViT: overlapping patches, pooled token sets, several branches, folded positions


@pytest.mark.parametrize("length,size,layout", [
    (197, (224, 224), (1, (14, 14))),  # ViT-B/16: an integer stride
    (730, (224, 224), (1, (27, 27))),  # PiT: 16-px patches at stride 8
    (50, (224, 224), (1, (7, 7))),
    (197, (240, 240), (1, (14, 14))),  # CrossViT's large branch: the image resized to 224
    (401, (240, 240), (1, (20, 20))),
    (1 + 8 * 16, (64, 128), (1, (8, 16))),  # a wide input keeps its aspect ratio
])
def test_token_layout_of_attention_modules(length, size, layout):
    from reportgen.methods.attention.core import _token_layout

    assert _token_layout(length, size) == layout


def test_token_layout_refuses_tokens_without_a_grid():
    from reportgen.methods.attention import Unsupported
    from reportgen.methods.attention.core import _token_layout

    with pytest.raises(Unsupported, match="do not form a patch grid"):
        _token_layout(115, (224, 224))  # no square between 107 and 115


def test_pooled_token_sets_draw_attention_but_refuse_rollout():
    """Two attention stages over 1 + 16 and 1 + 4 tokens (PiT): each stage's class-token attention has its own
    grid; rollout multiplies weights across layers, which needs one token set, so it is refused with the reason."""
    import tiny_models

    from reportgen.methods.attention import Unsupported, attention_grids, attention_rollout

    model = tiny_models.tiny_pit().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grids, refused = attention_grids(model, x)
    assert not refused and {k: tuple(v.shape) for k, v in grids.items()} == {"attn1": (2, 2, 4, 4),
                                                                              "attn2": (2, 2, 2, 2)}
    with pytest.raises(Unsupported, match=r"do not share one token set \(17, 5 tokens"):
        attention_rollout(model, x)


class FoldedAttention(nn.Module):
    """MobileViT-like: the 4x4 map of 4 channels is cut into 2x2 patches and attention runs over the 4 patches once
    per pixel position within a patch, the positions folded into the batch: (N * 4, 4, 4) sequences."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 2, stride=2)
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        n = len(x)
        m = self.conv(x)  # (N, 4, 4, 4)
        t = m.reshape(n, 4, 2, 2, 2, 2).permute(0, 3, 5, 2, 4, 1).reshape(n * 4, 4, 4)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.head(t.reshape(n, 16, 4).mean(dim=1))


def test_attention_over_positions_folded_into_the_batch_is_refused():
    """Its weights reproduce the module's output, but row i of them is not image i: never drawn as image i's."""
    from reportgen.methods.attention import attention_grids

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    grids, refused = attention_grids(FoldedAttention().eval(), x)
    assert grids == {} and "attends over 8 sequences for 2 images" in refused["attn"]
