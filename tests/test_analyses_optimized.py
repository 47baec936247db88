"""The optimized-input analyses (class-max, unit-max, deepdream, adversarial): small builds, known answers, errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_ARGS
from reportgen.build import build
from reportgen.console import Output
from reportgen.config import load_config
from reportgen.errors import ConfigError

NAMES = ["class-max", "unit-max", "deepdream", "adversarial"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these tiny models gain nothing from a second thread, and a busy 2-core box makes threads wait on each other
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def zoo_weights(name: str, tmp: Path) -> tuple[str | None, bool]:
    """(weights path or None for the shipped ones, trained?): seeded random weights while the zoo is not trained."""
    import models_zoo
    from safetensors.torch import save_file

    entry = models_zoo.get(name)
    if entry.weights_path().is_file():
        return None, True
    torch.manual_seed(0)
    path = tmp / f"{name}-random.safetensors"
    save_file({k: v.contiguous() for k, v in entry.build_model().state_dict().items()}, str(path))
    return str(path), False


def site_build(tmp: Path, model: str, analysis: dict, **kw) -> tuple[Path, dict]:
    weights, _ = zoo_weights(model, tmp)
    out = tmp / f"site-{model}"
    cfg = load_config(None, model=model, weights=weights, out=str(out), only=list(analysis), analysis=analysis, **kw)
    build(cfg, Output(silent=True))
    manifest = json.loads((out / "manifest.json").read_text())
    return out, {s["name"]: s for s in manifest["analyses"]}


def files_of(section: dict) -> list[str]:
    out = []
    for it in section["items"]:
        out += [it[k] for k in ("file", "thumb", "colorbar") if it.get(k)]
        for row in it.get("row_images") or []:
            out += [p["file"] for p in row]
    return out


@pytest.fixture(scope="module")
def lenet_site(tmp_path_factory):
    """lenet-digits, 28x28 greyscale: class-max at its default settings, the rest shortened."""
    tmp = tmp_path_factory.mktemp("lenet")
    _, trained = zoo_weights("lenet-digits", tmp)
    out, sections = site_build(tmp, "lenet-digits", {
        "class-max": {},
        "unit-max": {"steps": 8, "channels": 3, "which": "seeded"},
        "deepdream": {"images": 2, "steps_per_octave": 2},
        "adversarial": {"steps": 100, "sphere_points": 64},
    }, max_images=120, samples=3)
    return out, sections, trained


@pytest.fixture(scope="module")
def shapes_site(tmp_path_factory):
    """shapes-cnn, 64x64 RGB, every analysis with few steps."""
    tmp = tmp_path_factory.mktemp("shapes")
    out, sections = site_build(tmp, "shapes-cnn", {
        "class-max": {"steps": 6, "target": "prob", "edge_weight": 0.001, "l2_weight": 0.001, "zero_small": 10.0,
                      "fourier": False, "blur_every": 4, "window": 0.0},
        "unit-max": {"steps": 4, "channels": 2},
        "deepdream": {"images": 1, "steps_per_octave": 2, "layer": "features.conv2"},
        "adversarial": {"steps": 5, "sphere_points": 16, "norm": "linf", "stop_at_change": False,
                        "target_class": "star"},
    }, max_images=64, samples=2)
    return out, sections


@pytest.mark.parametrize("site_name", ["lenet_site", "shapes_site"])
def test_every_analysis_appears_with_its_files(site_name, request):
    out, sections = request.getfixturevalue(site_name)[:2]
    for name in NAMES:
        s = sections[name]
        assert s["status"] == "ok", (name, s["reason"])
        assert s["section"] == "optimized" and s["items"] and s["notes"]
        for rel in files_of(s):
            assert (out / rel).is_file(), rel
        assert (out / "analyses" / f"{name}.html").is_file()
        assert "<math" in (out / "analyses" / f"{name}.html").read_text()  # the explanation partial is in
        keys = [it["key"] for it in s["items"]]
        assert len(keys) == len(set(keys))


def test_class_images_come_first_in_class_order(lenet_site, shapes_site):
    for _, sections, *_ in (lenet_site, shapes_site):
        items = sections["class-max"]["items"]
        pictures = [it for it in items if it["type"] == "picture"]
        k = len(pictures)
        assert k in (8, 10) and [it["type"] for it in items[:k]] == ["picture"] * k
        assert [it["key"] for it in items[:k]] == [f"class-{c:04d}" for c in range(k)]
        curve = next(it for it in items if it["type"] == "plot")
        assert curve["key"] == "objective"


def test_trained_lenet_class_images_are_classified_as_their_class(lenet_site):
    _, sections, trained = lenet_site
    if not trained:
        pytest.skip("zoo weights for lenet-digits are not trained in this checkout")
    m = sections["class-max"]["metrics"]
    assert m["classified as their class"] == 1.0 and m["mean p(class)"] > 0.9


def test_shapes_class_images_at_the_defaults_are_one_centred_object_of_their_class():
    """The issue: shapes-cnn (global average pooling) class images must show one shape, not a tiling; at least 6
    of the 8 are classified as their class by the model itself."""
    import models_zoo
    from reportgen.analyses.optimized import ClassMaxParams, _joined, _maximize, _settings_note
    from reportgen.methods.optimize import class_logit, window_mask

    entry = models_zoo.get("shapes-cnn")
    if not entry.weights_path().is_file():
        pytest.skip("zoo weights for shapes-cnn are not trained in this checkout")
    model = entry.load_pretrained()
    p = ClassMaxParams()
    assert p.fourier and p.grey and p.window > 0 and p.rotate > 0 and p.target == "logit"
    # the analysis's own mapping of its config keys onto the recipe, on a context with just what it reads
    ctx = SimpleNamespace(model=model, loaded=SimpleNamespace(input=SimpleNamespace(
        shape=(3, 64, 64), mean=entry.mean, std=entry.std)), batch_size=lambda grad: 64,
        generator=lambda name: torch.Generator().manual_seed(0),
        map_chunks=lambda fn, chunks, label: [fn(c) for c in chunks])
    res = _joined(_maximize(ctx, class_logit, [list(range(8))], p, "class-max"))  # one batch of the 8 classes
    with torch.no_grad():
        hits = int((model(res.images).argmax(1) == torch.arange(8)).sum())
    assert hits >= 6, hits
    outside = window_mask(64, 64, p.window) == 0
    assert (res.images[..., outside] == 0).all()  # the data mean around one centred object
    note = _settings_note(p)
    assert "window" in note and "Fourier" in note and "rotation" in note and "grey" in note


def test_adversarial_flips_the_label_and_the_sphere_rarely_does(lenet_site):
    _, sections, trained = lenet_site
    s = sections["adversarial"]
    summary = next(it for it in s["items"] if it["key"] == "summary")
    steps = [it for it in s["items"] if it["key"].endswith("-steps")]
    assert len(summary["rows"]) == len(steps) == 3
    assert all(it["image"] is not None for it in steps)
    for row, table in zip(summary["rows"], steps):
        assert table["rows"][0][:2] == [0, row[1]]  # step 0 is the original prediction
        assert table["rows"][-1][1] == row[3]  # the last row is the final prediction
        if row[-1] == "yes":
            assert row[3] != row[1] and 0 < row[6] < 100
    if trained:
        assert s["metrics"]["success rate"] > 0.5
        assert s["metrics"]["sphere: mean fraction flipped"] < 0.2
        sphere = next(it for it in s["items"] if it["key"] == "sphere")
        for r in sphere["rows"]:
            assert r[3] == pytest.approx(r[2], rel=1e-3)  # the sphere's radius is the adversarial change's norm


def test_tags_put_items_on_layer_and_image_pages(lenet_site, shapes_site):
    _, sections, _ = lenet_site
    unit = sections["unit-max"]["items"]
    assert {it["layer"] for it in unit} == {"conv1", "conv2"}  # the conv layers among the selected ones
    assert len(unit) == 6
    dream = sections["deepdream"]["items"]
    assert [it["label"] for it in dream] == ["original", "dream at conv2"] * 2
    assert all(it["image"] is not None for it in dream)
    out, sections = shapes_site
    selected = json.loads((out / "manifest.json").read_text())["model"]["selected_layers"]
    convs = {name for name in selected if name.startswith("features.conv")}
    assert len(convs) >= 3 and {it["layer"] for it in sections["unit-max"]["items"]} == convs
    targeted = next(it for it in sections["adversarial"]["items"] if it["key"] == "targeted")
    assert [r[2] for r in targeted["rows"]] == ["star", "star"] and len(targeted["row_images"][0]) == 2
    diff = next(it for it in sections["adversarial"]["items"] if it["key"].endswith("-difference"))
    assert "magnified" in diff["caption"] and diff.get("colorbar")


# --------------------------------------------------------------------------------------------------------------------
# Known answers of the analysis helpers


def test_step_rows_keep_the_rows_until_the_change_and_the_last():
    from reportgen.analyses.optimized import _step_rows

    names = ["a", "b"]
    labels = np.array([0] * 30 + [1] * 11)
    probs = np.linspace(1, 0.5, 41)
    rows = _step_rows(labels, probs, names, stop=30)
    assert [r[0] for r in rows] == list(range(31)) + [40]
    assert rows[30][1] == "b" and rows[-1] == [40, "b", pytest.approx(0.5)]
    assert len(_step_rows(labels[:6], probs[:6], names, stop=2)) == 6  # few steps: every row


def test_difference_is_magnified_to_its_largest_change():
    from reportgen.analyses.optimized import Adversarial

    orig = np.zeros((4, 4, 3))
    adv = orig.copy()
    adv[1, 2] = 0.02
    adv[3, 0] = -0.01
    diff, vmax, caption = Adversarial.difference(adv, orig, mono=False)
    assert diff.shape == (4, 4) and vmax == pytest.approx(0.02) and diff[3, 0] == pytest.approx(-0.01)
    assert "magnified 50x" in caption and "colour channels" in caption
    assert "no change" in Adversarial.difference(orig, orig, mono=True)[2]


def test_channel_stats_reducer_matches_direct_computation():
    from reportgen.analyses.optimized import ChannelStats

    g = torch.Generator().manual_seed(0)
    acts = torch.randn(10, 3, 4, 4, generator=g)
    r = ChannelStats(["a"])
    for part in acts.split(4):
        r.update(SimpleNamespace(indices=torch.arange(len(part))), {"a": part}, None)
    means = acts.flatten(2).mean(2).double()
    assert r.count == 10
    assert torch.allclose(r.total["a"] / r.count, means.mean(0))
    assert torch.equal(r.peak["a"], means.max(0).values)


def test_many_classes_draw_the_most_predicted():
    from reportgen.analyses.optimized import ClassMax, ClassMaxParams

    names = [f"c{i}" for i in range(30)]
    preds = np.array([29] * 5 + list(range(25)) + [3, 3])
    ctx = SimpleNamespace(class_names=names, predictions=SimpleNamespace(preds=preds))
    picked, note = ClassMax().pick_classes(ctx, ClassMaxParams())
    assert len(picked) == 20 and picked == sorted(picked) and {29, 3} <= set(picked) and "30 classes" in note
    picked, note = ClassMax().pick_classes(ctx, ClassMaxParams(classes=["c7", "c2", "c7"]))
    assert picked == [7, 2] and note is None


def test_deepdream_truncated_gives_the_same_images_and_accepts_a_fixed_size_head():
    from reportgen.methods.optimize import deepdream

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 3)).eval()
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    args = dict(octaves=1, steps_per_octave=3, generator=None, jitter=0)
    assert torch.allclose(deepdream(model, x, "1", truncate=True, **args), deepdream(model, x, "1", **args))
    with pytest.raises(RuntimeError):  # the head needs 12x12 inputs: the smaller octaves fail without truncation
        deepdream(model, x, "1", octaves=2, steps_per_octave=1)
    out = deepdream(model, x, "1", octaves=2, steps_per_octave=1, truncate=True)
    assert out.shape == x.shape
    assert all(not m._forward_hooks for m in model.modules())


def test_maximize_truncated_gives_the_same_images_and_refuses_class_objectives():
    from reportgen.methods.optimize import (
        channel, class_logit, l2, maximize, noise, pixel_param, standard_edits, standard_transforms)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    obj = channel("1", [0, 3]) - 1e-3 * l2()

    def run(truncate):
        g = torch.Generator().manual_seed(2)
        return maximize(model, obj, pixel_param(noise((2, 3, 8, 8), g)), standard_transforms(g),
                        edits=standard_edits(), steps=5, truncate=truncate)

    runs = [run(t) for t in (False, True)]
    assert torch.allclose(runs[0].images, runs[1].images) and torch.allclose(runs[0].curve, runs[1].curve)
    assert torch.allclose(runs[0].final_scores, runs[1].final_scores)
    with pytest.raises(ValueError, match="exactly one layer"):
        maximize(model, class_logit(0), pixel_param(torch.zeros(1, 3, 8, 8)), steps=1, truncate=True)
    assert all(not m._forward_hooks for m in model.modules())


def test_deepdream_truncated_leaves_no_hook_after_an_error():
    from reportgen.methods.optimize import deepdream

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Conv2d(1, 2, 3), Boom(), nn.ReLU()).train()
    with pytest.raises(RuntimeError, match="boom"):
        deepdream(model, torch.zeros(1, 1, 8, 8), "2", octaves=1, truncate=True)
    assert all(not m._forward_hooks for m in model.modules()) and model.training


# --------------------------------------------------------------------------------------------------------------------
# Configuration errors name the key


@pytest.mark.parametrize("name, values, message", [
    ("class-max", {"classes": ["cat", "zebra"]}, "analysis.class-max.classes: 'zebra' is not a class"),
    ("adversarial", {"target_class": "zebra"}, "analysis.adversarial.target_class: 'zebra'"),
    ("deepdream", {"layer": "nope.conv"}, "analysis.deepdream.layer: unknown layer 'nope.conv'"),
    ("deepdream", {"octaves": 6, "octave_scale": 2.0}, "analysis.deepdream.octaves: 6 octaves"),
    ("class-max", {"target": "softmax"}, "analysis.class-max.target: must be one of logit, prob"),
    ("class-max", {"zero_small": 10.0}, "analysis.class-max.zero_small: resetting small pixels needs fourier = false"),
])
def test_bad_parameters_are_config_errors(tmp_path, image_folder, name, values, message):
    cfg = load_config(None, model=TINY_ARGS[0], input_size=[32, 32], channels=3, images=str(image_folder),
                      out=str(tmp_path / "site"), only=[name], analysis={name: values})
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        build(cfg, Output(silent=True))
    assert not (tmp_path / "site").exists()
