"""The input's-influence analyses: known answers of the new logic (colour limits, mask scores, class targets) and
small report builds on the zoo models (seeded random weights, so the tests do not wait for the trained ones)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_image_folder
from reportgen.analyses.influence import MapTarget, class_targets, colour_limits, mask_scores
from reportgen.build import build
from reportgen.console import Output
from reportgen.config import load_config
from reportgen.errors import ConfigError, LayerError

METHODS = ["occlusion", "gradient", "smoothgrad", "deconvnet", "guided-backprop", "cam", "grad-cam",
           "grad-cam-plus-plus", "xgrad-cam", "layer-cam", "score-cam", "guided-grad-cam"]
ALL = ["nonlinearities", "top-predictions", *METHODS]
FAST = {"smoothgrad": {"n": 3}}  # a few noisy copies are enough to exercise the pipeline


# ---------------------------------------------------------------------------------------------------------------
# Known answers


def test_colour_limits_shared_is_over_all_maps_per_image_over_each():
    maps = np.zeros((2, 2, 2))
    maps[0] = [[0, 1], [2, 4]]
    maps[1] = [[0, 0], [0, 8]]
    shared, per_image = colour_limits(maps, percentile=100)
    assert shared == 8.0 and per_image.tolist() == [4.0, 8.0]
    # the median of all 8 values 0,0,0,0,1,2,4,8 is 0.5; of map 0 alone (0,1,2,4) 1.5
    shared, per_image = colour_limits(maps, percentile=50)
    assert shared == pytest.approx(0.5)
    assert per_image[0] == pytest.approx(1.5)
    # a map that is 0 up to the percentile falls back to its max; an all-zero map to 1; negatives count as 0
    assert per_image[1] == 8.0
    shared, per_image = colour_limits(np.stack([-np.ones((2, 2)), np.zeros((2, 2))]), percentile=99)
    assert shared == 1.0 and per_image.tolist() == [1.0, 1.0]


def test_mask_scores_mass_share_and_pointing_game():
    maps = np.zeros((4, 3, 3))
    masks = np.zeros((4, 3, 3), dtype=bool)
    masks[:, 0, :] = True  # the object is the top row
    maps[0, 0, 0], maps[0, 2, 2] = 3.0, 1.0  # 3/4 of the mass on the object, maximum on it
    maps[1, 0, 1], maps[1, 1, 1] = 1.0, 3.0  # 1/4 on it, maximum off it
    maps[2] = 1.0  # uniform: the mask's area fraction; ties at the max include an object pixel
    maps[2, 1, 1] = -5.0  # negative values count as 0
    mass, hit = mask_scores(maps, masks)
    assert mass[:2].tolist() == [0.75, 0.25] and hit[:2].tolist() == [1.0, 0.0]
    assert mass[2] == pytest.approx(3 / 8) and hit[2] == 1.0
    assert np.isnan(mass[3]) and np.isnan(hit[3])  # an all-zero map points nowhere
    with pytest.raises(ValueError, match="same shape"):
        mask_scores(maps, masks[:, :2])


def test_class_targets_predicted_first_then_true_then_requested_without_duplicates():
    got = class_targets(samples=[5, 9], preds=[1, 2], labels=[1, 0], requested=[2, 3])
    assert [(t.image, t.cls, t.role) for t in got] == [
        (5, 1, "predicted"), (9, 2, "predicted"),  # the archive strip takes the first items: one per image
        (9, 0, "true"),  # only where the prediction is wrong
        (5, 2, "requested"), (5, 3, "requested"), (9, 3, "requested")]  # 2 is image 9's prediction already
    assert class_targets([3], [0], [-1], []) == [MapTarget(3, 0, "predicted")]  # unlabelled: no true-class map


# ---------------------------------------------------------------------------------------------------------------
# Builds


def zoo_weights(tmp_path_factory, name: str) -> str:
    from safetensors.torch import save_file

    import models_zoo

    torch.manual_seed(0)
    model = models_zoo.get(name).build_model()
    path = tmp_path_factory.mktemp("weights") / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def build_site(out: Path, model: str, weights: str | None, only: list[str], **options) -> dict:
    analysis = {**FAST, **options.pop("analysis", {})}
    cfg = load_config(None, model=model, weights=weights, out=str(out), only=only, analysis=analysis, **options)
    report = build(cfg, Output(silent=True))
    assert report.failed == []
    return report.manifest.to_json()


def sections(manifest: dict) -> dict:
    return {s["name"]: s for s in manifest["analyses"]}


def check_files(out: Path, manifest: dict) -> None:
    for s in manifest["analyses"]:
        for item in s["items"]:
            for key in ("file", "thumb", "colorbar"):
                if item.get(key):
                    assert (out / item[key]).is_file(), item[key]
    for s in manifest["analyses"]:
        assert (out / "analyses" / f"{s['name']}.html").is_file()


@pytest.fixture(scope="module")
def resnet_site(tmp_path_factory):
    out = tmp_path_factory.mktemp("resnet") / "site"
    weights = zoo_weights(tmp_path_factory, "shapes-resnet")
    manifest = build_site(out, "shapes-resnet", weights, ALL, max_images=60, samples=2,
                          analysis={"grad-cam": {"percentile": 100.0}})
    return out, manifest


def test_shapes_resnet_every_method_with_both_scales_masks_and_image_pages(resnet_site):
    out, manifest = resnet_site
    check_files(out, manifest)
    by_name = sections(manifest)
    assert [s["name"] for s in manifest["analyses"]] == ALL  # nonlinearities and top-predictions come first
    samples = [s["index"] for s in manifest["images"]["samples"]]
    for name in METHODS:
        s = by_name[name]
        assert s["status"] == "ok", (name, s["reason"])
        pictures = [i for i in s["items"] if i["type"] == "picture"]
        maps = s["metrics"]["maps"]
        assert maps >= len(samples) and len(pictures) == 2 * maps  # shared and per-image scale
        assert {i["image"] for i in pictures} == set(samples)
        assert all(i.get("colorbar") for i in pictures)
        shared = [i for i in pictures if i["label"].endswith("shared scale")]
        assert len(shared) == maps and all("Shared scale" in i["caption"] for i in shared)
        # the first image-tagged items (the archive's strip) are the predicted-class maps of the samples in order
        assert [i["image"] for i in pictures[: len(samples)]] == samples
        assert all(i["group"] == "Predicted class" for i in pictures[: len(samples)])
        assert all(i["label"].endswith("shared scale") for i in pictures[: len(samples)])
        # shapes have object masks: the maps are scored against them
        assert 0.0 <= s["metrics"]["object mass share"] <= 1.0
        assert 0.0 <= s["metrics"]["pointing game"] <= 1.0
        assert 0.0 < s["metrics"]["object area (chance)"] < 1.0
    # one shared limit for all maps of a method (here the max); each per-image limit is at most that
    grad_cam = [i for i in by_name["grad-cam"]["items"] if i["type"] == "picture"]
    limit = lambda item: float(re.search(r"scale: 0 \(black\) to ([0-9.e+-]+)", item["caption"]).group(1))  # noqa
    shared = {limit(i) for i in grad_cam if i["label"].endswith("shared scale")}
    per_image = [limit(i) for i in grad_cam if i["label"].endswith("per-image scale")]
    assert len(shared) == 1 and max(per_image) == pytest.approx(shared.pop(), rel=1e-2)
    assert "the maximum of all" in grad_cam[0]["caption"]
    assert grad_cam[0]["caption"].startswith("Grad-CAM at 'layer3'")
    # the BasicBlock's in-place ReLU runs twice per block: reported, and handled without making the maps approximate
    nl = by_name["nonlinearities"]
    assert nl["metrics"]["reused ReLU modules"] == 3 and nl["metrics"]["other non-linearities"] == 0
    exact = {row[0]: row[1] for row in nl["items"][1]["rows"]}
    assert exact["guided-backprop"] == exact["deconvnet"] == exact["cam"] == "exact"
    assert not any("not exact" in n for n in by_name["guided-backprop"]["notes"])
    # each sample's page gathers the picture, its top-5 table and every method
    top = by_name["top-predictions"]
    tables = [i for i in top["items"] if i["type"] == "table"]
    assert [t["image"] for t in tables] == samples and len(tables[0]["rows"]) == 5
    probs = [row[2] for row in tables[0]["rows"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    page = (out / "images" / f"{samples[0]:05d}.html").read_text()
    for name in ["top-predictions", *METHODS]:
        assert f'id="{name}"' in page, name


def test_shapes_cnn_cam_equals_grad_cam_scores_and_requested_class(tmp_path, tmp_path_factory):
    out = tmp_path / "site"
    weights = zoo_weights(tmp_path_factory, "shapes-cnn")
    manifest = build_site(out, "shapes-cnn", weights, ["cam", "grad-cam", "occlusion"], max_images=40, samples=2,
                          classes=["disk"], analysis={"cam": {"scale": "shared"},
                                                        "grad-cam": {"scale": "per-image"},
                                                        "occlusion": {"window": 20, "stride": 10}})
    check_files(out, manifest)
    by_name = sections(manifest)
    cam, grad_cam = by_name["cam"], by_name["grad-cam"]
    assert all(i["label"].endswith("shared scale") for i in cam["items"])
    assert all(i["label"].endswith("per-image scale") for i in grad_cam["items"])
    assert any(i["group"].startswith("Requested") and ": disk (" in i["label"] for i in cam["items"])
    # on a GAP + linear model, at that layer, Grad-CAM = CAM / (h*w): the same shape, so the same mask scores
    for key in ("object mass share", "pointing game"):
        assert cam["metrics"][key] == pytest.approx(grad_cam["metrics"][key], abs=1e-6)
    assert "Occlusion (20x20 patch, stride 10x10)" in by_name["occlusion"]["items"][0]["caption"]


def test_lenet_digits_cam_not_applicable_no_masks(tmp_path, tmp_path_factory):
    out = tmp_path / "site"
    weights = zoo_weights(tmp_path_factory, "lenet-digits")
    manifest = build_site(out, "lenet-digits", weights, ["nonlinearities", "cam", "grad-cam", "guided-backprop"],
                          max_images=30, samples=1, analysis={"grad-cam": {"scale": "shared"},
                                                              "guided-backprop": {"scale": "shared"}})
    check_files(out, manifest)
    by_name = sections(manifest)
    assert by_name["cam"]["status"] == "not applicable"
    assert "global average pooling + one linear layer" in by_name["cam"]["reason"]
    gc = by_name["grad-cam"]
    assert gc["status"] == "ok" and "object mass share" not in gc["metrics"]  # digits have no masks
    assert gc["items"][0]["caption"].startswith("Grad-CAM at 'pool2'")  # the last 4x4 map before the linear head
    exact = {row[0]: row[1] for row in by_name["nonlinearities"]["items"][1]["rows"]}
    assert exact["cam"] == "not applicable" and exact["guided-backprop"] == "exact"


# ---------------------------------------------------------------------------------------------------------------
# Configuration errors (a tiny model on a folder of images: fast)


def tiny_build(tmp_path, only, model="tiny_models:tiny_cnn", **options):
    images = write_image_folder(tmp_path / "images", per_class=3, size=(32, 32))
    cfg = load_config(None, model=model, input_size=[32, 32], channels=3, images=str(images),
                      out=str(tmp_path / "site"), only=only, samples=2, **options)
    return build(cfg, Output(silent=True))


def test_unknown_class_names_the_key_and_the_known_classes(tmp_path):
    with pytest.raises(ConfigError, match=r"classes: unknown class 'zebra'; known classes: bird, cat, dog"):
        tiny_build(tmp_path, ["gradient"], classes=["zebra"])


def test_occlusion_window_larger_than_the_input(tmp_path):
    with pytest.raises(ConfigError, match=r"analysis\.occlusion\.window: 80 is larger than the 32x32 input"):
        tiny_build(tmp_path, ["occlusion"], analysis={"occlusion": {"window": 80}})
    with pytest.raises(ConfigError, match=r"analysis\.occlusion\.stride: must be >= 1"):
        tiny_build(tmp_path, ["occlusion"], analysis={"occlusion": {"stride": 0}})


def test_grad_cam_unknown_layer_suggests_close_names(tmp_path):
    with pytest.raises(LayerError, match=r"unknown layer '3x'.*closest: 3"):
        tiny_build(tmp_path, ["grad-cam"], analysis={"grad-cam": {"layer": "3x"}})
    with pytest.raises(ConfigError, match=r"analysis\.guided-grad-cam\.layer: '6' outputs \(1, 16\)"):
        tiny_build(tmp_path, ["guided-grad-cam"], analysis={"guided-grad-cam": {"layer": "6"}})


def test_tiny_model_top3_and_requested_class_maps(tmp_path):
    report = tiny_build(tmp_path, ["top-predictions", "grad-cam", "occlusion"], classes=["dog"],
                        analysis={"grad-cam": {"scale": "shared"},
                                  "occlusion": {"per_pixel": False, "window": 16, "stride": 8, "scale": "shared"}})
    by_name = sections(report.manifest.to_json())
    tables = [i for i in by_name["top-predictions"]["items"] if i["type"] == "table"]
    assert len(tables) == 2 and all(len(t["rows"]) == 3 for t in tables)  # 3 classes: a top-3
    assert "top-1 accuracy" in by_name["top-predictions"]["metrics"]
    assert "top-5 accuracy" not in by_name["top-predictions"]["metrics"]
    manifest = json.loads((Path(report.out) / "manifest.json").read_text())
    assert sections(manifest)["grad-cam"]["status"] == "ok"
    # every sample gets a map of the requested class (as such, or as its predicted or true class already)
    samples = {s["index"] for s in manifest["images"]["samples"]}
    assert {i["image"] for i in sections(manifest)["grad-cam"]["items"] if ": dog (" in i["label"]} == samples
    # one value per patch position: a 3x3 grid of cells, drawn without the image and enlarged for the page
    occ = sections(manifest)["occlusion"]["items"][0]
    assert "one cell per position" in occ["caption"] and occ["width"] == occ["height"] == 162


# ---------------------------------------------------------------------------------------------------------------
# Models whose non-linearities are not all ReLUs, and the model's hygiene after a build

CREATED: list = []


def silu_cnn():
    """3x32x32 -> 3 classes, like tiny_cnn but with a SiLU: guided backprop and deconvnet are then approximate."""
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    CREATED.append(model)
    return model


def test_non_relu_model_notes_approximate_maps_and_leaves_the_model_unchanged(tmp_path):
    CREATED.clear()
    report = tiny_build(tmp_path, ["nonlinearities", "deconvnet", "guided-grad-cam", "gradient"],
                        model="test_analyses_influence:silu_cnn")
    by_name = sections(report.manifest.to_json())
    for name in ("deconvnet", "guided-grad-cam"):
        assert any("not exact on this model" in n and "SiLU" in n for n in by_name[name]["notes"]), name
    assert not any("not exact" in n for n in by_name["gradient"]["notes"])
    nl = by_name["nonlinearities"]
    exact = {row[0]: row[1] for row in nl["items"][1]["rows"]}
    assert exact["deconvnet"] == exact["guided-backprop"] == "approximate" and exact["gradient"] == "exact"
    assert nl["metrics"]["other non-linearities"] == 1 and nl["metrics"]["in-place ReLUs"] == 1
    assert any("SiLU" in n for n in nl["notes"])
    # no hook left, every parameter as trainable as before and without a .grad
    (model,) = CREATED
    for module in model.modules():
        assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
