"""Token layers (N, L, D) and channels-last maps (N, H, W, C) read as (N, C, h, w) maps, and a whole report of a
small torchvision ViT: attention, rollout, Grad-CAM, top images and activation maps on token layers."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from click.testing import CliRunner

from reportgen.capture import capture
from reportgen.methods.tokens import View, infer_view


@pytest.mark.parametrize("shape,size,expected", [
    ((197, 768), (224, 224), View("tokens", (14, 14), prefix=1, stride=16)),  # ViT-B/16: class token + 14x14
    ((201, 384), (224, 224), View("tokens", (14, 14), prefix=5, stride=16)),  # + 4 register tokens
    ((196, 768), (224, 224), View("tokens", (14, 14), prefix=0, stride=16)),  # patch tokens only
    ((34, 64), (64, 128), View("tokens", (4, 8), prefix=2, stride=16)),  # a wide image, 2 prefix tokens
    ((56, 56, 96), (224, 224), View("channels-last", (56, 56), stride=4)),  # Swin stage 1
    ((96, 56, 56), (224, 224), View("map", (56, 56), stride=4)),  # ConvNeXt, channels first
    ((64, 35, 35), (299, 299), View("map", (35, 35), stride=None)),  # Inception: no integer stride
    ((10,), (224, 224), View("vector")),
    ((7, 11), (224, 224), View("other")),  # 7 tokens cannot tile 224x224 into square patches
])
def test_infer_view_known_layouts(shape, size, expected):
    assert infer_view(shape, size) == expected


def test_token_maps_are_the_patch_tokens_row_by_row():
    view = View("tokens", (2, 3), prefix=1, stride=8)
    out = torch.arange(2 * 7 * 4, dtype=torch.float32).reshape(2, 7, 4)  # (N, 1 + 6, D)
    m = view.to_map(out)
    assert m.shape == (2, 4, 2, 3)
    # channel d at grid cell (r, c) is token 1 + r * 3 + c
    for r in range(2):
        for c in range(3):
            assert torch.equal(m[:, :, r, c], out[:, 1 + r * 3 + c, :])


def test_capture_as_maps_reads_vit_blocks_and_their_gradients():
    import tiny_models

    model = tiny_models.tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    layer = "encoder.layers.encoder_layer_1.ln_1"
    with capture(model, [layer], grads=True) as raw:
        model(x)[:, 0].sum().backward()
    with capture(model, [layer], grads=True, as_maps=True) as maps:
        model(x)[:, 0].sum().backward()
    assert raw.acts[layer].shape == (2, 17, 16) and maps.acts[layer].shape == (2, 16, 4, 4)
    expected = raw.acts[layer][:, 1:].reshape(2, 4, 4, 16).permute(0, 3, 1, 2)
    assert torch.equal(maps.acts[layer], expected)
    assert torch.equal(maps.grads[layer], raw.grads[layer][:, 1:].reshape(2, 4, 4, 16).permute(0, 3, 1, 2))


def test_guided_backprop_warns_on_a_model_without_relu():
    import tiny_models

    from reportgen.methods.attribution import gradient, guided_backprop
    from reportgen.methods.relu_rules import NonReluWarning

    model = tiny_models.tiny_vit().eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.warns(NonReluWarning, match=r"no ReLU at all.*F\.gelu"):
        g = guided_backprop(model, x, 0)
    assert torch.allclose(g, gradient(model, x, 0))  # which is why the report says "not applicable"
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonReluWarning)
        guided_backprop(tiny_models.tiny_cnn(), torch.randn(1, 3, 32, 32), 0)  # all ReLU: no warning


def test_vit_facts_layers_and_default_grad_cam_layer():
    import tiny_models

    from reportgen.layers import default_layers
    from reportgen.models import InputSpec, LoadedModel
    from reportgen.plan import learn_model

    model = tiny_models.tiny_vit().eval()
    loaded = LoadedModel(model, "tiny_models:tiny_vit", "factory",
                         InputSpec("image", (32, 32), 3, (0.5,) * 3, (0.25,) * 3), ["a", "b", "c"])
    facts = learn_model(loaded, [], torch.Generator().manual_seed(0))
    row = facts.row("encoder.layers.encoder_layer_0")
    assert row.view == "tokens: class token + 4x4 patches of 8 px"
    assert facts.selected == default_layers(facts.layers)
    assert facts.selected == ["conv_proj", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1",
                              "encoder.ln", "heads.head"]
    # the head reads only the class token: the last blocks' patch tokens get no gradient, the last block's input
    # normalization does (the layer pytorch-grad-cam recommends for ViTs)
    assert facts.cam_layer == "encoder.layers.encoder_layer_1.ln_1"
    assert facts.attention == ["encoder.layers.encoder_layer_0.self_attention",
                               "encoder.layers.encoder_layer_1.self_attention"]
    assert facts.receptive_field("encoder.layers.encoder_layer_0").size == (8, 8)


def test_a_small_vit_report(tmp_path, image_folder):
    from reportgen.cli import main

    only = ["attention", "attention-rollout", "grad-rollout", "grad-cam", "top-images", "activation-maps",
            "distributions", "embeddings", "guided-backprop", "deconvnet", "cam"]
    out = tmp_path / "site"
    args = ["build", "tiny_models:tiny_vit", "--input-size", "32x32", "--channels", "3", "--images", image_folder,
            "--out", out, "--samples", "2", "-q"]
    for name in only:
        args += ["--only", name]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    analyses = {a["name"]: a for a in json.loads((out / "manifest.json").read_text())["analyses"]}
    assert set(analyses) == set(only)
    for name in ("attention", "attention-rollout", "grad-rollout", "grad-cam", "top-images", "activation-maps",
                 "distributions", "embeddings"):
        assert analyses[name]["status"] == "ok", (name, analyses[name]["reason"])
    for name in ("guided-backprop", "deconvnet"):
        assert analyses[name]["status"] == "not applicable" and "no ReLU" in analyses[name]["reason"]
    assert analyses["cam"]["status"] == "not applicable"
    top = " ".join(i["caption"] for i in analyses["top-images"]["items"])
    assert "patch of the maximal token (8x8 pixels)" in top
    assert analyses["attention"]["metrics"] == {"attention layers": 2, "heads": 2}


def test_a_small_swin_report(tmp_path, image_folder):
    """Channels-last stages read as maps; window attention drawn; rollout not applicable, with the reason."""
    from reportgen.cli import main

    only = ["attention", "attention-rollout", "grad-cam", "top-images", "activation-maps"]
    out = tmp_path / "site"
    args = ["build", "tiny_models:tiny_swin", "--input-size", "32x32", "--channels", "3", "--images", image_folder,
            "--out", out, "--samples", "2", "-q", "--only", ",".join(only)]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    analyses = {a["name"]: a for a in manifest["analyses"]}
    for name in ("attention", "grad-cam", "top-images", "activation-maps"):
        assert analyses[name]["status"] == "ok", (name, analyses[name]["reason"])
    assert "shifted windows" in analyses["attention-rollout"]["reason"]
    assert any("within shifted windows" in n for n in analyses["attention"]["notes"])
    views = {r["name"]: r["view"] for r in manifest["model"]["layers"] if r["view"]}
    assert views["features.1"] == "channels-last 8x8 map"


def test_a_zero_head_vit_says_why_grad_cam_has_no_layer():
    import tiny_models
    from torch import nn

    from reportgen.models import InputSpec, LoadedModel
    from reportgen.plan import learn_model

    model = tiny_models.tiny_vit().eval()
    nn.init.zeros_(model.heads.head.weight)  # as torchvision initializes it
    loaded = LoadedModel(model, "tiny_models:tiny_vit", "factory",
                         InputSpec("image", (32, 32), 3, (0.5,) * 3, (0.25,) * 3), ["a", "b", "c"])
    facts = learn_model(loaded, [], torch.Generator().manual_seed(0))
    assert facts.cam_layer is None and "does not depend on the input" in facts.cam_layer_reason


def _facts(factory: str, layers=()):
    import tiny_models

    from reportgen.models import InputSpec, LoadedModel
    from reportgen.plan import learn_model

    model = getattr(tiny_models, factory)().eval()
    loaded = LoadedModel(model, f"tiny_models:{factory}", "factory",
                         InputSpec("image", (32, 32), 3, (0.5,) * 3, (0.25,) * 3), ["a", "b", "c"])
    return learn_model(loaded, list(layers), torch.Generator().manual_seed(0))


def test_a_pooling_transformer_report(tmp_path, image_folder):
    """PiT-like: attention drawn per stage; rollout refused with the reason (two token sets); Grad-CAM's default is
    the last map layer that gets a gradient, not the last map computed (which the head never reads)."""
    from conftest import run

    facts = _facts("tiny_pit")
    assert facts.attention == ["attn1", "attn2"] and facts.attention_tokens == {"attn1": 17, "attn2": 5}
    assert facts.cam_layer == "pool"
    out = tmp_path / "site"
    args = ["build", "tiny_models:tiny_pit", "--input-size", "32x32", "--channels", "3", "--images", image_folder,
            "--out", out, "--samples", "2", "-q"]
    for name in ("attention", "attention-rollout", "grad-rollout", "grad-cam"):
        args += ["--only", name]
    result = run(*args)
    assert result.exit_code == 0, result.output
    analyses = {a["name"]: a for a in json.loads((out / "manifest.json").read_text())["analyses"]}
    assert analyses["attention"]["status"] == analyses["grad-cam"]["status"] == "ok"
    for name in ("attention-rollout", "grad-rollout"):
        assert analyses[name]["status"] == "not applicable"
        assert "do not share one token set (17, 5 tokens" in analyses[name]["reason"]


def test_a_layer_that_folds_positions_into_the_batch(tmp_path, image_folder):
    """MobileViT-like: a layer's output has 4 rows per image; it is marked, never picked, refused when asked for,
    and the per-image analyses run on the other layers (it crashed the top images' reducer)."""
    from conftest import fails_in_one_line, run

    from reportgen.errors import LayerError

    facts = _facts("folding")
    row = facts.row("mix")
    assert row.batch_rows == 4 and not row.per_image and "not one row per image (8 rows for 2 images)" in row.view
    assert "mix" not in facts.selected and facts.selected == ["conv", "head"]
    with pytest.raises(LayerError, match="'mix' does not output one row per image"):
        _facts("folding", ["mix"])
    common = ["tiny_models:folding", "--input-size", "32x32", "--channels", "3", "--images", image_folder]
    fails_in_one_line(run("build", *common, "--out", tmp_path / "bad", "--layers", "mix", "-q"),
                      "'mix' does not output one row per image")
    out = tmp_path / "site"
    args = ["build", *common, "--out", out, "--samples", "2", "-q"]
    for name in ("top-images", "activation-maps", "distributions", "embeddings"):
        args += ["--only", name]
    result = run(*args)
    assert result.exit_code == 0, result.output
    analyses = json.loads((out / "manifest.json").read_text())["analyses"]
    assert {a["name"]: a["status"] for a in analyses} == {n: "ok" for n in ("top-images", "activation-maps",
                                                                          "distributions", "embeddings")}
