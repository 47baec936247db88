"""Attention weights recovered from the modules' own projections (they reproduce each module's output), and the
maps drawn from them, on hand-built cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reportgen.methods.attention import (attention_maps, attention_modules, grad_rollout_of_weights,
                                         recording_attention, rollout_of_weights)


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


def test_recovered_weights_reproduce_torchvision_vit_outputs():
    import tiny_models

    model = tiny_models.tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    names = attention_modules(model)
    assert len(names) == 2
    with recording_attention(model, rtol=1e-5) as rec, torch.no_grad():
        model(x)
    assert set(rec.weights) == set(names) and not rec.refused
    for w in rec.weights.values():
        assert w.shape == (2, 2, 17, 17) and torch.allclose(w.sum(-1), torch.ones(2, 2, 17), atol=1e-6)


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


def test_swin_window_attention_reproduces_the_module_output_and_receives_within_windows():
    """torchvision's shifted-window attention (with and without shift, with padding) recomputed step by step: the
    output recomputed from the recovered weights equals the module's, and the received-attention map of uniform
    logits is 1 / (window size) wherever a window is whole."""
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

    from reportgen.methods.attention import attention_from_inputs

    torch.manual_seed(0)
    x = torch.randn(2, 9, 10, 8)  # (N, H, W, C): not a multiple of the window, so padded
    for kind, shift in ((ShiftedWindowAttention, [0, 0]), (ShiftedWindowAttention, [2, 2]),
                        (ShiftedWindowAttentionV2, [2, 2])):  # v2: cosine attention, no key bias
        module = kind(8, [4, 4], shift, num_heads=2).eval()
        with torch.no_grad():
            expected = module(x)
            weights, out, _, windows = attention_from_inputs(module, (x,), {})
        assert weights.shape == (2 * 9, 2, 16, 16)  # 3 x 3 windows of 4 x 4 per image
        assert torch.allclose(out, expected, atol=1e-6)
        received = windows.received(weights)
        assert received.shape == (2, 2, 9, 10)
        # each query's weights sum to 1 over its window of 16 positions: the mean received weight is 1 / 16
        assert torch.allclose(windows.received(torch.full_like(weights, 1 / 16)), torch.full_like(received, 1 / 16))


def _timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             num_classes=3).eval()


def _hf_vit():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=32, num_labels=3)
    return transformers.ViTForImageClassification(config).eval()


def _timm_beit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2, num_classes=3).eval()
    with torch.no_grad():  # timm starts the relative position biases at zero: make them matter
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or name.endswith(("q_bias", "v_bias")):
                p.normal_(std=0.5)
    return model


def _hf_beit(shared: bool):
    """Hugging Face BEiT (own relative position bias per layer) or Data2Vec-Vision (one bias shared by all layers,
    handed to each attention module by position), biases drawn at random (they start at zero)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    kinds = {False: (transformers.BeitConfig, transformers.BeitForImageClassification),
             True: (transformers.Data2VecVisionConfig, transformers.Data2VecVisionForImageClassification)}
    config_class, model_class = kinds[shared]
    config = config_class(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32, num_labels=3, use_relative_position_bias=not shared,
                          use_shared_relative_position_bias=shared)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(std=0.5)
    return model


@pytest.mark.parametrize("make,count", [(_timm_vit, 12), (_hf_vit, 2), (_timm_beit, 2),
                                        (lambda: _hf_beit(False), 2), (lambda: _hf_beit(True), 2)])
def test_timm_and_hugging_face_attention_is_recovered_exactly(make, count):
    """timm's fused attention and Hugging Face's attention never hand their weights out by default: recovered from
    the projections, they reproduce each module's output to 1e-5 (else `recording_attention` refuses the layer)."""
    model = make()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def run(inputs):
        out = model(inputs) if not hasattr(model, "config") else model(pixel_values=inputs).logits
        return out

    names = attention_modules(model)
    assert len(names) == count
    with recording_attention(model, rtol=1e-5) as rec, torch.no_grad():
        run(x)
    assert set(rec.weights) == set(names) and not rec.refused
    assert all(w.shape == (2, w.shape[1], 17, 17) for w in rec.weights.values())


def test_swin_model_attention_grids_follow_the_stages():
    import tiny_models

    from reportgen.methods.attention import attention_grids

    model = tiny_models.tiny_swin().eval()
    grids, refused = attention_grids(model, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert not refused
    assert {k: tuple(v.shape) for k, v in grids.items()} == {
        "features.1.0.attn": (2, 2, 8, 8), "features.1.1.attn": (2, 2, 8, 8),
        "features.3.0.attn": (2, 2, 4, 4), "features.3.1.attn": (2, 2, 4, 4)}
    # the last stage is one 4x4 window: each position receives the mean of its column, and they sum to 1 per query
    assert torch.allclose(grids["features.3.0.attn"].sum(dim=(2, 3)), torch.ones(2, 2), atol=1e-5)


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
# Architectures beyond the plain ViT: relatives of timm's attention, pooled token sets, several branches


def test_relatives_of_timm_attention_are_not_read_and_never_break_the_pass():
    from reportgen.methods.attention import _kind

    class WindowLike(nn.Module):  # timm's Swin / DaViT WindowAttention: qkv + proj + relative bias, no q_norm
        def __init__(self):
            super().__init__()
            self.qkv, self.proj, self.num_heads, self.scale = nn.Linear(4, 12), nn.Linear(4, 4), 2, 0.5

    class ChannelsLast(nn.Module):  # looks like timm's Attention, but runs on (N, H, W, C) maps
        def __init__(self):
            super().__init__()
            self.qkv, self.proj, self.num_heads, self.scale = nn.Linear(4, 12), nn.Linear(4, 4), 2, 0.5
            self.q_norm = self.k_norm = nn.Identity()

        def forward(self, x):
            return self.proj(x)

    assert _kind(WindowLike()) is None
    model = nn.Sequential(ChannelsLast(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2)).eval()
    x = torch.randn(2, 3, 3, 4)
    with recording_attention(model) as rec, torch.no_grad():
        out = model(x)
    assert torch.equal(out, model(x)) and not rec.weights
    assert "could not be recomputed" in rec.refused["0"] and "ValueError" in rec.refused["0"]


@pytest.mark.parametrize("length,size,layout", [
    (197, (224, 224), (1, (14, 14))),  # ViT-B/16: an integer stride
    (730, (224, 224), (1, (27, 27))),  # PiT: 16-px patches at stride 8
    (50, (224, 224), (1, (7, 7))),
    (197, (240, 240), (1, (14, 14))),  # CrossViT's large branch: the image resized to 224
    (401, (240, 240), (1, (20, 20))),
    (1 + 8 * 16, (64, 128), (1, (8, 16))),  # a wide input keeps its aspect ratio
])
def test_token_layout_of_attention_modules(length, size, layout):
    from reportgen.methods.attention import _token_layout

    assert _token_layout(length, size) == layout


def test_token_layout_refuses_tokens_without_a_grid():
    from reportgen.methods.attention import Unsupported, _token_layout

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


def test_a_masked_attention_is_read_with_its_mask():
    """A boolean mask (True = may attend, as in scaled_dot_product_attention) handed to timm's Attention: the
    recovered weights are 0 exactly where it forbids and reproduce the module's output."""
    pytest.importorskip("timm")
    from timm.models.vision_transformer import Attention

    torch.manual_seed(0)
    attn = Attention(8, num_heads=2).eval()
    mask = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1)) > 0.4
    mask[..., 0] = True  # every query may attend somewhere

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, attn_mask=mask)

    model = Masked()
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(2))
    with recording_attention(model, ["attn"], rtol=1e-5) as rec, torch.no_grad():
        model(x)
    assert not rec.refused
    w = rec.weights["attn"]
    assert w.shape == (2, 2, 5, 5) and torch.all(w[~mask.expand_as(w)] == 0)
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 5))


def _timm_swin(img: int = 48, window: int = 5):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, img_size=img,
                              window_size=window, embed_dim=16, depths=(2, 2), num_heads=(2, 2)).eval()
    with torch.no_grad():  # timm starts the relative position biases near zero: make them matter
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(std=0.5)
    return model


def test_timm_swin_window_attention_is_placed_as_timm_places_it():
    """timm's Swin cuts the windows in its block (shift, then pad: here 12x12 and 6x6 maps in windows of 5, so
    both padded, every other block shifted by 2). Independently: timm's own non-fused path hands its softmax
    weights to an `nn.Softmax` module, and timm's own `window_reverse` puts each window's received weight back; the
    recovered weights and the drawn grids equal those."""
    from timm.models.swin_transformer import window_reverse

    from reportgen.methods.attention import attention_grids

    model = _timm_swin()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    names = attention_modules(model)
    grids, refused = attention_grids(model, x)
    assert not refused and set(grids) == set(names)
    seen, handles = {}, []
    for name in names:
        attn = model.get_submodule(name)
        attn.fused_attn = False
        handles.append(attn.softmax.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o)))
    with recording_attention(model, rtol=1e-5) as rec, torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    shifts = []
    for name in names:
        block = model.get_submodule(name.rpartition(".")[0])
        assert torch.allclose(rec.weights[name], seen[name], atol=1e-6)
        (wh, ww), (sh, sw) = block.window_size, block.shift_size
        h, w = grids[name].shape[-2:]
        hp, wp = h + (wh - h % wh) % wh, w + (ww - w % ww) % ww
        received = seen[name].mean(dim=2).permute(0, 2, 1).reshape(-1, wh, ww, 2)  # (B * nW, wh, ww, heads)
        placed = window_reverse(received, (wh, ww), hp, wp)[:, :h, :w]  # (B, H, W, heads)
        placed = torch.roll(placed, shifts=(sh, sw), dims=(1, 2)).permute(0, 3, 1, 2)
        assert torch.allclose(grids[name], placed, atol=1e-6), name
        shifts.append((h % wh != 0, sh))
    assert shifts == [(True, 0), (True, 2), (True, 0), (True, 2)]


def test_timm_window_attention_outside_its_block_is_refused():
    """Without its block the windows' places are unknown: refused with the reason, never drawn."""
    from reportgen.methods.attention import attention_grids

    attn = _timm_swin().layers[0].blocks[0].attn

    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x.flatten(2).transpose(1, 2)[:, :25])

    grids, refused = attention_grids(Bare(), torch.randn(2, 16, 8, 8))
    assert grids == {} and "places on the map are not known" in refused["attn"]


def test_hugging_face_swin_window_attention_is_placed_as_it_places_it():
    """Hugging Face's Swin pads, then shifts, then cuts windows in its SwinLayer (here 12x12 and 6x6 maps in windows
    of 5). Independently: the eager implementation returns its softmax weights (`output_attentions`), and the
    layer's own `window_reverse` and reverse `cyclic_shift` put each window's received weight back; the recovered
    weights and the drawn grids equal those."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.swin.modeling_swin import window_reverse

    from reportgen.methods.attention import attention_grids

    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=48, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                     window_size=5, num_labels=3, attn_implementation="eager")
    model = transformers.SwinForImageClassification(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(std=0.5)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    names = attention_modules(model)
    grids, refused = attention_grids(model, x)
    assert not refused and set(grids) == set(names) and len(names) == 4
    with recording_attention(model, rtol=1e-5) as rec, torch.no_grad():
        seen = model(pixel_values=x, output_attentions=True).attentions  # the last block of each stage
    shifted = 0
    for name in names:
        layer = model.get_submodule(name.rpartition(".")[0])
        window, h, w = layer.window_size, *grids[name].shape[-2:]
        hp, wp = h + (window - h % window) % window, w + (window - w % window) % window
        received = rec.weights[name].mean(dim=2).permute(0, 2, 1).reshape(-1, window, window, 2)
        placed = layer.cyclic_shift(window_reverse(received, window, hp, wp), reverse=True)[:, :h, :w]
        assert torch.allclose(grids[name], placed.permute(0, 3, 1, 2), atol=1e-6), name
        shifted += layer.shift_size > 0 and h % window != 0
    assert shifted == 2
    last = [n for n in names if n.endswith("blocks.1.attention")]
    assert len(last) == len(seen) == 2
    for name, weights in zip(last, seen):
        assert torch.allclose(rec.weights[name], weights, atol=1e-6)
