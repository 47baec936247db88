"""One known-answer test per attention family (`reportgen.methods.attention.registry.FAMILIES`): on a small
random-weight instance of each family, the weights recovered from the module's projections equal the weights the
module itself computed (its own softmax call on its eager path, caught as it runs), and its output recomputed from
them equals its output. Then what each family needs beyond that: the order in which the families are tried, masks,
and where window attention sits on the map."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from reportgen.methods.attention import FAMILIES, attention_modules, family_of, recording_attention

SOFTMAX = (torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax)


@contextmanager
def own_softmax(model: nn.Module, names: list[str]):
    """Yield {name: the first softmax output computed while module ``name`` runs} for the passes in the block: the
    weights the module computed itself (the recomputation in `recording_attention`'s hooks comes after it). A
    torch function that handles its own overrides (``F.multi_head_attention_forward``) runs its softmax out of
    sight: there the (N, h, L, L) weights it returns beside its output count."""
    seen: dict[str, torch.Tensor] = {}
    running: list[str] = []

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if running and running[-1] not in seen and any(func is f for f in SOFTMAX):
                seen[running[-1]] = out.detach().clone()
            return out

    def enter(name):
        def pre(_m, _args):
            seen.pop(name, None)
            running.append(name)
        return pre

    def leave(name):
        def post(_m, _args, out):
            running.pop()
            if name not in seen and isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], torch.Tensor) \
                    and out[1].dim() == 4:
                seen[name] = out[1].detach().clone()
        return post

    handles = []
    try:
        for name in names:
            handles.append(model.get_submodule(name).register_forward_pre_hook(enter(name)))
            handles.append(model.get_submodule(name).register_forward_hook(leave(name)))
        with Mode():
            yield seen
    finally:
        for handle in handles:
            handle.remove()


class TokensThroughMHA(nn.Module):
    """A class token and 16 patch tokens of 8 px through one sequence-first nn.MultiheadAttention with 2 heads,
    asked for its weights (so that it computes them on its Python path), then a linear head."""

    def __init__(self, d=8):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, d, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.attn = nn.MultiheadAttention(d, 2)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(x), -1, -1), t], dim=1).transpose(0, 1)  # (L, N, D)
        out, _ = self.attn(t, t, t, need_weights=True, average_attn_weights=False)
        return self.head((t + out)[0])


def _timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             num_classes=3).eval()


def _hf_vit(attn: str = "sdpa"):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=32, num_labels=3,
                                    attn_implementation=attn)
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


def _hf_beit(shared: bool, attn: str = "sdpa"):
    """Hugging Face BEiT (own relative position bias per layer) or Data2Vec-Vision (one bias shared by all layers,
    handed to each attention module by position), biases drawn at random (they start at zero)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    kinds = {False: (transformers.BeitConfig, transformers.BeitForImageClassification),
             True: (transformers.Data2VecVisionConfig, transformers.Data2VecVisionForImageClassification)}
    config_class, model_class = kinds[shared]
    config = config_class(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32, num_labels=3, use_relative_position_bias=not shared,
                          use_shared_relative_position_bias=shared, attn_implementation=attn)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(std=0.5)
    return model


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


def _tiny_swin():
    import tiny_models

    return tiny_models.tiny_swin().eval()


def _hf_swin(attn: str = "eager"):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=48, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                     window_size=5, num_labels=3, attn_implementation=attn)
    model = transformers.SwinForImageClassification(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(std=0.5)
    return model


def _unfused(model):
    """timm's modules on their non-fused path, where the softmax is a call of its own."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


# family -> (a small random-weight model whose attention modules are all of that family, on their eager path;
# its input size; the other families whose test accepts them too, which the order of FAMILIES settles)
CASES = {
    "torch-mha": (lambda: TokensThroughMHA().eval(), 32, set()),
    "torchvision-swin": (_tiny_swin, 32, set()),
    "timm-vit": (lambda: _unfused(_timm_vit()), 32, set()),
    "timm-beit": (lambda: _unfused(_timm_beit()), 32, {"timm-swin"}),
    "timm-swin": (lambda: _unfused(_timm_swin()), 48, set()),
    "hf-vit": (lambda: _hf_vit("eager"), 32, set()),
    "hf-legacy": (lambda: _hf_beit(True, "eager"), 32, set()),
    "hf-swin": (_hf_swin, 48, {"hf-vit"}),
}


def test_every_family_has_a_known_answer_case():
    assert set(CASES) == {family.name for family in FAMILIES} and len(CASES) == len(FAMILIES)


@pytest.mark.parametrize("name", list(CASES))
def test_each_family_recovers_the_weights_its_module_computes(name):
    """The known answer: the module's own softmax output, on a model built for the family."""
    make, size, overlaps = CASES[name]
    model = make()
    names = attention_modules(model)
    assert names and {family_of(model.get_submodule(n)).name for n in names} == {name}
    for n in names:  # which other families' tests accept these modules: settled by the order of FAMILIES
        module = model.get_submodule(n)
        assert {f.name for f in FAMILIES if f.recognizes(module)} == {name} | overlaps
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with own_softmax(model, names) as seen, recording_attention(model, rtol=1e-5) as rec, torch.no_grad():
        model(pixel_values=x) if hasattr(model, "config") else model(x)
    assert not rec.refused and set(rec.weights) == set(seen) == set(names)
    for n in names:
        assert rec.weights[n].shape == seen[n].shape, n
        assert torch.allclose(rec.weights[n], seen[n], atol=1e-6), n


def test_the_specific_family_is_tried_first():
    """timm's BEiT attention passes timm's Swin test too, and Hugging Face's Swin attention passes its ViT test:
    FAMILIES tries the specific one first (BEiT was once read as Swin)."""
    from reportgen.methods.attention.hf_swin import HuggingFaceSwin
    from reportgen.methods.attention.hf_vit import HuggingFaceViT
    from reportgen.methods.attention.timm_beit import TimmBEiT
    from reportgen.methods.attention.timm_swin import TimmSwin

    order = list(FAMILIES)
    assert order.index(TimmBEiT) < order.index(TimmSwin) and order.index(HuggingFaceSwin) < order.index(
        HuggingFaceViT)
    beit = _timm_beit().blocks[0].attn
    assert TimmSwin.recognizes(beit) and family_of(beit) is TimmBEiT
    swin = _hf_swin().swin.encoder.layers[0].blocks[0].attention
    assert HuggingFaceViT.recognizes(swin) and family_of(swin) is HuggingFaceSwin


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


def test_relatives_of_timm_attention_are_not_read_and_never_break_the_pass():
    from reportgen.methods.attention import family_of

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

    assert family_of(WindowLike()) is None
    model = nn.Sequential(ChannelsLast(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2)).eval()
    x = torch.randn(2, 3, 3, 4)
    with recording_attention(model) as rec, torch.no_grad():
        out = model(x)
    assert torch.equal(out, model(x)) and not rec.weights
    assert "could not be recomputed" in rec.refused["0"] and "ValueError" in rec.refused["0"]


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
