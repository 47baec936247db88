"""The cost each costly analysis states for the compute budget, exactly, backward passes counted.

One build of the tiny CNN with a budget below one forward pass and every setting the budget may lower fixed in the
config: every costly analysis is then refused, and its reason states its cost ("as much as N forward passes of one
image"). N is checked against a second computation: for the attribution methods, the images that one map of the
method function really sends through the model forward and backward (counted by hooks on the model, a backward
pass counting two forward passes), times the maps the build draws; for the others, their recipe counted by hand.
The two attention rollouts are checked the same way on the tiny ViT.
A cost that leaves out the backward pass (SmoothGrad at n instead of 3n) lets an analysis run 3x over --budget.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager

import pytest
import torch

from conftest import TINY_ARGS, run

METHODS = ["occlusion", "gradient", "smoothgrad", "deconvnet", "guided-backprop", "cam", "grad-cam",
           "grad-cam-plus-plus", "xgrad-cam", "layer-cam", "score-cam", "guided-grad-cam"]
OTHERS = ["deletion-insertion", "randomization-test", "class-max", "unit-max", "deepdream", "adversarial"]
# every setting the budget may lower, fixed (at the defaults, or small): nothing can shrink, so all are refused
CONFIG = """
[analysis.smoothgrad]
n = 50
[analysis.deletion-insertion]
steps = 16
images = 8
methods = ["gradient", "smoothgrad"]
[analysis.randomization-test]
images = 4
steps = 8
methods = ["gradient", "grad-cam"]
[analysis.class-max]
max_classes = 20
steps = 200
[analysis.unit-max]
channels = 8
steps = 100
[analysis.deepdream]
images = 4
octaves = 3
octave_scale = 1.4
steps_per_octave = 10
[analysis.adversarial]
sphere_points = 1000
steps = 100
targeted = true
"""
# the tiny CNN (3x32x32): conv 3->8 (3x3) at 32x32, ReLU '1', max pool, conv 8->16 at 16x16, ReLU '4', mean, linear
CONV1 = 32 * 32 * 8 * 27
CONV2 = 16 * 16 * 16 * 72
MACS = CONV1 + CONV2 + 16 * 3


@contextmanager
def counting(model: torch.nn.Module):
    """Images through ``model`` forward, and backward (a hook on the output tensor of each call that has a grad)."""
    seen = {"forward": 0, "backward": 0}

    def pre(_m, args):
        seen["forward"] += int(args[0].shape[0])

    def post(_m, _args, out):
        if out.requires_grad:
            out.register_hook(lambda g: seen.__setitem__("backward", seen["backward"] + int(g.shape[0])))

    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def measured_passes_per_map() -> dict[str, float]:
    """Forward-pass equivalents that one map of one image costs, counted while each method function runs with
    the report's default settings on the tiny CNN (CAM layer '4', the ReLU before the pooling; classifier '7')."""
    import tiny_models
    from reportgen.methods import attribution, cams

    model = tiny_models.tiny_cnn().eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    window = attribution.default_occlusion_params(32, 32)
    calls = {
        "occlusion": lambda: attribution.occlusion(model, x, 0, **window),
        "gradient": lambda: attribution.gradient(model, x, 0),
        "smoothgrad": lambda: attribution.smoothgrad(model, x, 0, n=50),
        "deconvnet": lambda: attribution.deconvnet(model, x, 0),
        "guided-backprop": lambda: attribution.guided_backprop(model, x, 0),
        "cam": lambda: cams.cam(model, x, 0, "4", "7"),
        "grad-cam": lambda: cams.grad_cam(model, x, 0, "4"),
        "grad-cam-plus-plus": lambda: cams.grad_cam_plus_plus(model, x, 0, "4"),
        "xgrad-cam": lambda: cams.xgrad_cam(model, x, 0, "4"),
        "layer-cam": lambda: cams.layer_cam(model, x, 0, "4"),
        "score-cam": lambda: cams.score_cam(model, x, 0, "4"),
        "guided-grad-cam": lambda: cams.guided_grad_cam(model, x, 0, "4"),
    }
    out = {}
    for name, call in calls.items():
        with counting(model) as seen:
            call()
        out[name] = seen["forward"] + 2.0 * seen["backward"]
    return out


@pytest.fixture(scope="module")
def per_map() -> dict[str, float]:
    counted = measured_passes_per_map()
    assert counted["smoothgrad"] == 150 and counted["gradient"] == 3 and counted["cam"] == 1  # the counting itself
    return counted


@pytest.fixture(scope="module")
def stated(tmp_path_factory):
    """({analysis: the forward passes its refusal states}, the manifest's sample images)."""
    from conftest import write_image_folder

    tmp = tmp_path_factory.mktemp("budget")
    images = write_image_folder(tmp / "images")
    (tmp / "c.toml").write_text(CONFIG)
    out = tmp / "site"
    result = run("build", *TINY_ARGS, "--images", images, "--out", out, "--samples", "2", "--budget", "1e-6",
                 "--layers", "1,4", "--only", ",".join(METHODS + OTHERS), "--config", tmp / "c.toml", "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    costs = {}
    for a in manifest["analyses"]:
        assert a["status"] == "not applicable", (a["name"], a["status"])
        found = re.search(r"as much as ([\d,]+) forward passes of one image", a["reason"] or "")
        assert found, a["reason"]
        costs[a["name"]] = int(found.group(1).replace(",", ""))
    assert set(costs) == set(METHODS + OTHERS)
    return costs, manifest["images"]["samples"]


def test_attribution_methods_state_the_passes_their_maps_really_cost(stated, per_map):
    costs, samples = stated
    # maps drawn: each sample's predicted class, and its true class when different
    maps = sum(1 + (s["label"] != s["pred"]) for s in samples)
    assert {name: costs[name] for name in METHODS} == {name: round(maps * per_map[name]) for name in METHODS}


def test_other_costly_analyses_state_their_recipe_counted_by_hand(stated, per_map):
    costs, samples = stated
    n = len(samples)  # 2 sample images: every "images" setting above is capped there
    steps, classes = 200, 3
    relu1, relu4 = CONV1 / MACS, (CONV1 + CONV2) / MACS  # a truncated pass up to each layer
    per_image_dream = sum(10 * 3 / 1.4 ** (2 * o) for o in range(3)) + 2  # forward + backward per step; 2 passes
    expected = {
        # two curves of 17 forward passes per image, for each of the 2 methods and the random order, and the
        # methods' maps of each image (predicted class): their pages were refused, so the check computes them
        "deletion-insertion": (3 * 2 * 17 + per_map["gradient"] + per_map["smoothgrad"]) * n,
        # at most 8 cascade steps + the trained model, one map of each method per step and image
        "randomization-test": (8 + 1) * n * (per_map["gradient"] + per_map["grad-cam"]),
        "class-max": classes * steps * 3,
        "unit-max": 8 * 100 * 3 * relu1 + 8 * 100 * 3 * relu4,  # 8 channels of each layer, 100 steps each
        "deepdream": n * per_image_dream,
        "adversarial": n * (2 * 100 * 3 + 1000),  # untargeted and targeted steps, then the sphere's points
    }
    assert {name: costs[name] for name in OTHERS} == {name: round(v) for name, v in expected.items()}


def test_attention_maps_state_the_passes_their_maps_really_cost(tmp_path, image_folder):
    """The two rollouts on the tiny ViT: one forward pass per map (attention rollout) and a forward and a backward
    (gradient-weighted rollout), counted while the method functions run, times the maps the build draws."""
    import tiny_models
    from reportgen.methods.attention import attention_rollout, grad_rollout

    model = tiny_models.tiny_vit().eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    per_map = {}
    for name, call in (("attention-rollout", lambda: attention_rollout(model, x, 0)),
                       ("grad-rollout", lambda: grad_rollout(model, x, 0))):
        with counting(model) as seen:
            call()
        per_map[name] = seen["forward"] + 2.0 * seen["backward"]
    assert per_map == {"attention-rollout": 1, "grad-rollout": 3}
    out = tmp_path / "site"
    result = run("build", "tiny_models:tiny_vit", "--input-size", "32x32", "--channels", "3", "--images", image_folder,
                 "--out", out, "--samples", "2", "--budget", "1e-6", "--only", "attention-rollout,grad-rollout", "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    maps = sum(1 + (s["label"] != s["pred"]) for s in manifest["images"]["samples"])
    stated = {a["name"]: int(re.search(r"as much as ([\d,]+) forward passes", a["reason"]).group(1).replace(",", ""))
              for a in manifest["analyses"]}
    assert stated == {name: round(maps * p) for name, p in per_map.items()}
