"""What the attribution pages explain per task (reportgen/task_targets.py, docs/targets.md "What the maps explain,
per task"): --target parsed with known answers and every mistake's one line, the default target of each task on
hand-made predictions, and the pages' maps of a segmenter and a detector against the method functions called
directly with a target computed here, the model left unchanged."""

import json

import numpy as np
import pytest
import torch
from conftest import fails_in_one_line, run, write_image_folder
from torch import nn

from reportgen.context import Predictions
from reportgen.errors import ConfigError
from reportgen.task_targets import GIVEN, default_choices, given_choices, nearest_other, parse_target

# ---------------------------------------------------------------------------------------------------------------
# Tiny models ("test_task_attribution:NAME" factories: the tests folder is on sys.path)


class SegNet(nn.Module):
    """Two 3x3 convolutions to 3 class maps at full resolution, returned as torchvision's segmenters do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                                      nn.ReLU())
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return {"out": self.head(self.features(x))}


class DetNet(nn.Module):
    """Three fixed boxes per image whose scores are a function of the image (label ids 0..2)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.conv = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        scores = torch.sigmoid(self.conv(self.features(x)).mean(dim=(2, 3)))
        boxes = torch.tensor([[1.0, 2.0, 9.0, 12.0], [0.0, 0.0, 5.0, 5.0], [3.0, 3.0, 11.0, 11.0]])
        return [{"boxes": boxes, "labels": torch.tensor([0, 2, 1]), "scores": s} for s in scores]


class BlindDetNet(DetNet):
    """`DetNet` behind a score threshold none of its sigmoid scores reaches: no detection on any image (as a random
    RetinaNet, whose class prior of 0.01 is under its score threshold of 0.05)."""

    def forward(self, x):
        return [{k: v[d["scores"] > 1.0] for k, v in d.items()} for d in super().forward(x)]


def seg_net():
    return SegNet()


def blind_det_net():
    return BlindDetNet()


def det_net():
    return DetNet()


# ---------------------------------------------------------------------------------------------------------------
# --target: known answers


NAMES = ["cat", "dog", "bird"]


def test_class_label_and_output_targets_by_name_or_index():
    assert parse_target(None, "classify", NAMES) is None
    assert parse_target("dog", "classify", NAMES).index == 1
    assert parse_target("2", "classify", NAMES).index == 2
    assert parse_target("class=bird", "multilabel", NAMES).index == 2
    assert parse_target("out b", "regress", ["out a", "out b"]).index == 1
    assert parse_target("not cat", "binary", ["not cat", "cat"]).index == 0


def test_segment_detect_and_embed_targets(tmp_path):
    spec = parse_target("class=dog,region=mask", "segment", NAMES, label_masks=True)
    assert (spec.index, spec.region) == (1, "mask")
    spec = parse_target("region=mask", "segment", NAMES, label_masks=True)
    assert (spec.index, spec.region) == (None, "mask")
    assert parse_target("bird", "segment", NAMES).region == "predicted"
    spec = parse_target("box=1,2,9.5,12:dog", "detect", NAMES, size=(16, 16))
    assert spec.box == (1.0, 2.0, 9.5, 12.0) and spec.index == 1
    assert parse_target("box=1,2,9,12", "detect", NAMES).index is None
    ref = tmp_path / "ref.png"
    ref.write_bytes(b"x")
    assert parse_target(f"image={ref}", "embed", []).image == str(ref)


@pytest.mark.parametrize("text, task, kwargs, words", [
    ("dgo", "classify", {}, "unknown class 'dgo' (did you mean 'dog'?)"),
    ("7", "classify", {}, "class index 7 is out of range: the model has 3 classes (0 to 2)"),
    ("lable", "multilabel", {}, "unknown label 'lable'"),
    ("box=1,2,9,12", "segment", {}, "a box explains a detector's detection, and this model's task is segment"),
    ("box=1,2,9,12", "classify", {}, "give a class name or index"),
    ("image=/no/such.png", "embed", {}, "the reference image '/no/such.png' does not exist"),
    ("dog", "embed", {}, "an embedding's target is a reference image: give image=PATH"),
    ("dog", "detect", {}, "a detector's target is a box"),
    ("region=mask", "classify", {}, "a region is a segmentation's"),
    ("region=mask", "segment", {}, "region=mask uses the image set's label masks, and it has none"),
    ("box=1,2,9", "detect", {}, "the box must be four numbers x0,y0,x1,y1"),
    ("box=9,2,1,12", "detect", {}, "x1, y1 must be larger than x0, y0"),
    ("box=20,20,30,30", "detect", {"size": (16, 16)}, "the box lies outside the 16x16 input"),
    ("box=1,2,9,12:cow", "detect", {}, "unknown class 'cow'"),
    ("clas=dog", "segment", {}, "unknown key 'clas' (did you mean 'class'?)"),
    ("  ", "classify", {}, "target is empty"),
])
def test_every_mistake_is_one_line(text, task, kwargs, words):
    with pytest.raises(ConfigError) as err:
        parse_target(text, task, NAMES, **kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_the_cli_says_a_mistake_in_one_line_before_any_work(tmp_path):
    folder = write_image_folder(tmp_path / "im", classes=("a", "b"), per_class=1, size=(12, 12))
    # the form: before torch is imported
    result = run("build", "test_task_attribution:seg_net", "--images", folder, "--target", "box=1,2,3",
                 "--only", "gradient", "-o", tmp_path / "out")
    fails_in_one_line(result, "the box must be four numbers", code=2)  # every user mistake's code
    # what fits the model: once it is loaded, before the pass
    result = run("build", "test_task_attribution:seg_net", "--images", folder, "--input-size", "12x12",
                 "--channels", "3", "--task", "segment", "--target", "box=1,2,6,6", "--only", "gradient",
                 "-o", tmp_path / "out")
    fails_in_one_line(result, "a box explains a detector's detection, and this model's task is segment", code=2)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# The default target per task, on hand-made predictions


IMAGES = ["a.png", "b.png", "c.png"]


def predictions(task, logits, **fields):
    n = len(logits)
    return Predictions(np.arange(n), np.asarray(logits, np.float32), np.full(n, -1), task=task, **fields)


def test_default_targets_of_the_heads():
    p = predictions("binary", [[-2.0], [3.0]])
    assert [(c.cls, c.negate) for c in default_choices("binary", p, [0, 1], ["not x", "x"], IMAGES)] == \
        [(1, False), (1, False)]
    p = predictions("multilabel", [[0.1, 2.0, -1.0], [3.0, 2.0, 4.0]])
    assert [c.cls for c in default_choices("multilabel", p, [0, 1], NAMES, IMAGES)] == [1, 2]
    p = predictions("regress", [[5.0, 9.0], [-1.0, 0.0]])
    chosen = default_choices("regress", p, [1], ["age", "height"], IMAGES)
    assert chosen[0].cls == 0 and "output 0" in chosen[0].words
    # a given target keeps its index for every image; binary class 0 is the negated logit
    spec = parse_target("not x", "binary", ["not x", "x"])
    assert [(c.cls, c.negate, c.role) for c in given_choices(spec, "binary", p, [0, 1], ["not x", "x"], IMAGES)] \
        == [(0, True, GIVEN), (0, True, GIVEN)]


def test_default_segment_target_is_the_largest_class_besides_the_background():
    pixels = np.array([[50, 10, 4], [60, 0, 0], [5, 30, 31]])
    p = predictions("segment", np.zeros((3, 3)), seg_pixels=pixels)
    names = ["background", "road", "car"]
    # image 1 predicts only the background: there is nothing else to explain
    assert [c.cls for c in default_choices("segment", p, [0, 1, 2], names, IMAGES)] == [1, 0, 2]
    # without a background class, the largest class whatever its index
    assert [c.cls for c in default_choices("segment", p, [0, 1, 2], NAMES, IMAGES)] == [0, 0, 2]


def test_default_detect_target_is_the_top_detection():
    dets = [{"boxes": np.array([[1, 2, 9, 12], [0, 0, 5, 5]], np.float32), "labels": np.array([2, 0]),
             "scores": np.array([0.9, 0.4], np.float32)},
            {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "scores": np.zeros(0, np.float32)}]
    p = predictions("detect", np.zeros((2, 3)), detections=dets)
    top, none = default_choices("detect", p, [0, 1], NAMES, IMAGES)
    assert (top.cls, top.label) == (2, 2) and top.box.tolist() == [1, 2, 9, 12]
    assert "class bird, score 0.90" in top.words
    assert none.label is None and "no detection" in none.words
    # a given box takes the class of its best-matching detection when it names none
    spec = parse_target("box=0,0,6,6", "detect", NAMES)
    assert given_choices(spec, "detect", p, [0], NAMES, IMAGES)[0].label == 0


def test_default_embed_target_is_the_nearest_other_image_by_cosine():
    # cosines: (0, 1) is 0.0995 from (10, 1) and 0.196 from (-1, 0.2), whose norms do not count
    e = np.array([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0], [-1.0, 0.2]])
    assert nearest_other(e, [0, 1, 2, 3]).tolist() == [1, 0, 3, 2]
    p = predictions("embed", e)
    chosen = default_choices("embed", p, [2], [], ["a", "b", "c", "d"])
    assert chosen[0].reference == 3 and "to that of d, its nearest other image" in chosen[0].words


# ---------------------------------------------------------------------------------------------------------------
# The pages' maps against the method functions with a target computed here


def context(tmp_path, spec, task, only):
    """The build's context and plan after the one pass and the settled plan (`reportgen.build`'s steps)."""
    from reportgen.build import choose_analyses, forward_pass, load, make_plan, pick_samples, settle
    from reportgen.config import load_config
    from reportgen.console import Output

    folder = write_image_folder(tmp_path / "im", classes=("a", "b"), per_class=2, size=(12, 12))
    cfg = load_config(None, model=spec, input_size=[12, 12], channels=3, images=str(folder), samples=2,
                      task=task, class_names=["background", "road", "car"] if task == "segment" else NAMES,
                      only=only)
    ctx = load(cfg, Output(silent=True))
    chosen = choose_analyses(cfg)
    plan = make_plan(ctx, chosen)
    ctx.predictions = forward_pass(ctx, {})
    ctx.samples = pick_samples(ctx.predictions.indices, ctx.predictions.labels, 2, ctx.rng("samples"))
    settle(ctx, chosen, plan)
    return ctx, plan


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before, x, out):
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    with torch.no_grad():
        again = model(x)
    assert torch.equal(again["out"], out["out"]) if isinstance(out, dict) else all(
        torch.equal(a["scores"], b["scores"]) for a, b in zip(again, out))


def test_segment_grad_cam_page_is_grad_cam_of_the_largest_class_region(tmp_path):
    from reportgen.analyses import get
    from reportgen.methods.cams import grad_cam
    from reportgen.methods.targets import RegionTarget

    ctx, plan = context(tmp_path, "test_task_attribution:seg_net", "segment", ["grad-cam"])
    model, page = ctx.model, get("grad-cam")
    x = ctx.sample_inputs()
    with torch.no_grad():
        out = model(x)
    before = state(model)
    result = page.run(ctx, plan.params["grad-cam"], {})
    unchanged(model, before, x, out)
    layer = ctx.facts.cam_layer
    # the default layer is the features before the per-pixel classifier, not the class logits of `head`
    assert layer in ("features", "features.3"), layer
    pred = out["out"].argmax(1)
    for p, i in enumerate(ctx.samples):
        counts = torch.bincount(pred[p].flatten(), minlength=3)
        counts[0] = -1 if counts[1:].sum() > 0 else counts[0]  # class 0 is the background
        c = int(counts.argmax())
        mine = grad_cam(model, x[p:p + 1], RegionTarget(c, pred[p:p + 1] == c), layer)[0]
        torch.testing.assert_close(result.shared["maps"][(i, c)], mine.float(), rtol=1e-5, atol=1e-6)
    table = next(item for item in result.items if item.key == "explains")
    assert "over its predicted pixels" in table.rows[0][2]
    heat = [item for item in result.items if item.key.startswith("shared-")]
    assert heat and all("which explains: class" in item.caption for item in heat)


def test_detect_gradient_page_is_the_gradient_of_the_top_detections_box_score(tmp_path):
    from reportgen.analyses import get
    from reportgen.methods.attribution import gradient
    from reportgen.methods.targets import BoxScoreTarget

    ctx, plan = context(tmp_path, "test_task_attribution:det_net", "detect", ["gradient", "cam"])
    assert "cam" in plan.skipped and "detection" in plan.skipped["cam"]
    model, page = ctx.model, get("gradient")
    x = ctx.sample_inputs()
    with torch.no_grad():
        out = model(x)
    before = state(model)
    result = page.run(ctx, plan.params["gradient"], {})
    unchanged(model, before, x, out)
    for p, i in enumerate(ctx.samples):
        top = int(out[p]["scores"].argmax())
        label = int(out[p]["labels"][top])
        target = BoxScoreTarget([label], out[p]["boxes"][top:top + 1])
        mine = gradient(model, x[p:p + 1], target).abs().amax(dim=1)[0]
        assert float(mine.abs().max()) > 0
        torch.testing.assert_close(result.shared["maps"][(i, label)], mine.float(), rtol=1e-5, atol=1e-7)


def test_a_classifier_given_a_target_explains_that_class_on_its_page_and_in_the_checks(tmp_path):
    from conftest import TINY_ARGS

    from reportgen.analyses import get
    from reportgen.analyses.faithfulness import explained
    from reportgen.build import choose_analyses, forward_pass, load, make_plan, pick_samples, settle
    from reportgen.config import load_config
    from reportgen.console import Output
    from reportgen.methods.attribution import gradient

    folder = write_image_folder(tmp_path / "im", classes=("cat", "dog", "bird"), per_class=1, size=(32, 32))
    cfg = load_config(None, model=TINY_ARGS[0], input_size=[32, 32], channels=3, images=str(folder), samples=2,
                      target="bird", only=["gradient"])
    ctx = load(cfg, Output(silent=True))
    chosen = choose_analyses(cfg)
    plan = make_plan(ctx, chosen)
    ctx.predictions = forward_pass(ctx, {})
    ctx.samples = pick_samples(ctx.predictions.indices, ctx.predictions.labels, 2, ctx.rng("samples"))
    settle(ctx, chosen, plan)
    result = get("gradient").run(ctx, plan.params["gradient"], {})
    x = ctx.sample_inputs()
    bird = ctx.class_names.index("bird")
    assert set(result.shared["maps"]) == {(i, bird) for i in ctx.samples}  # bird only: no predicted or true maps
    for p, i in enumerate(ctx.samples):
        torch.testing.assert_close(result.shared["maps"][(i, bird)],
                                   gradient(ctx.model, x[p:p + 1], bird).abs().amax(1)[0])
    assert [item.group for item in result.items if item.key.startswith("shared-")] == ["The given target (--target)"] * 2
    classes, target, tset = explained(ctx, ctx.samples, x)
    assert classes.tolist() == [bird, bird] and tset is None


def test_a_detector_that_finds_nothing_draws_no_blank_maps(tmp_path):
    """With no detection on any sample, the default target (the top detection's box score) is 0 on every input:
    the attribution pages and the trust checks say so instead of computing blank maps and flat curves, the budget
    does not count them, and the findings raise the alert. A given box with a class is a target still (a
    perturbed input may bring a detection of it), so that page runs."""
    folder = write_image_folder(tmp_path / "im", classes=("a", "b"), per_class=2, size=(12, 12))
    common = ["test_task_attribution:blind_det_net", "--input-size", "12x12", "--channels", "3", "--images", folder,
              "--task", "detect", "--class-names", ",".join(NAMES), "--samples", "2", "-q"]
    only = "gradient,rise,integrated-gradients,grad-cam,deletion-insertion,randomization-test,findings"
    result = run("build", *common, "--only", only, "-o", tmp_path / "site")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "site" / "manifest.json").read_text())
    entries = {a["name"]: a for a in manifest["analyses"]}
    for name in only.split(",")[:-1]:
        assert entries[name]["status"] == "not applicable", name
        assert entries[name]["reason"].startswith("the model returns no detection on any of the 2 sample images")
        assert "--target box=x0,y0,x1,y1:CLASS" in entries[name]["reason"]
    (collapse,) = [f for f in manifest["findings"] if f["id"] == "output-collapse"]
    assert collapse["severity"] == "alert" and collapse["numbers"]["images with a detection"] == 0
    assert manifest["findings"][0]["id"] == "output-collapse"  # the alert first, before the task's score (info)
    # nor has the attack a top detection to lose: every row of its table would be "n/a"
    attack = run("build", *common, "--only", "adversarial", "-o", tmp_path / "attack")
    assert attack.exit_code == 0, attack.output
    (adv,) = [a for a in json.loads((tmp_path / "attack" / "manifest.json").read_text())["analyses"]
              if a["name"] == "adversarial"]
    assert adv["status"] == "not applicable"
    assert adv["reason"].startswith("none of the 2 sample images has a detection, so there is no top detection")
    given = run("build", *common, "--only", "gradient,deletion-insertion,randomization-test", "--target",
                "box=1,2,9,12:cat", "-o", tmp_path / "given")
    assert given.exit_code == 0, given.output
    entries = {a["name"]: a for a in json.loads((tmp_path / "given" / "manifest.json").read_text())["analyses"]}
    assert {entries[n]["status"] for n in ("gradient", "deletion-insertion", "randomization-test")} == {"ok"}
    # no detection ever matches the box: blank maps and flat curves, which the checks do not rank or judge
    (trust,) = [i for i in entries["deletion-insertion"]["items"] if i["key"] == "trust"]
    assert len(trust["rows"]) > 2 and {row[-1] for row in trust["rows"][:-1]} == {"–"}  # the last: random order
    (cascade,) = [i for i in entries["randomization-test"]["items"] if i["key"] == "trust"]
    judged = [row for row in cascade["rows"] if row[-1] != "not run (cost)"]
    assert len(judged) > 2 and {row[-1] for row in judged[:-1]} == {"none (blank maps)"}  # Score-CAM's 0 passed
    assert judged[-1][0] == "edge detector (control)" and judged[-1][-1] == "fail"
    assert entries["randomization-test"]["metrics"]["passed"] == 0


def test_a_detectors_default_cam_layer_feeds_every_level_of_its_pyramid():
    """torchvision's RetinaNet (a ResNet-18 FPN at 128 px, random weights): the default Grad-CAM layer is the
    deepest backbone layer that every FPN level depends on, checked here a second way, by adding noise to a
    layer's output and seeing which levels change; the last map layer (the old default) feeds only the coarsest."""
    import torchvision
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    from reportgen.capture import capture, layer_names
    from reportgen.methods.cams import map_layers_from_probe
    from reportgen.methods.tokens import probe_views
    from reportgen.plan import default_grad_cam_layer

    torch.manual_seed(0)
    backbone = _resnet_fpn_extractor(torchvision.models.resnet18(), 5, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    model = RetinaNet(backbone, num_classes=3, min_size=128, max_size=128).eval()
    x = torch.rand(1, 3, 96, 96)
    with capture(model, layer_names(model)) as rec, torch.no_grad():
        out = model(x)
    acts = {n: a for n, a in rec.acts.items() if a.dim() and a.shape[0] == 1}
    candidates = map_layers_from_probe(model, acts, rec.calls, probe_views(acts, (3, 96, 96)))
    before = state(model)
    chosen, why = default_grad_cam_layer(model, candidates, {}, x)
    unchanged(model, before, x, out)
    assert why == "" and chosen == "backbone.fpn.inner_blocks.2", chosen  # the lateral 1x1 of layer4 (C5)

    modules = dict(model.named_modules())
    xn = model.transform.normalize(x[0])[None]
    with torch.no_grad():
        clean = list(model.backbone(xn).values())

    def changed(name):
        handle = modules[name].register_forward_hook(lambda m, i, o: o + torch.randn_like(o))
        try:
            with torch.no_grad():
                noisy = list(model.backbone(xn).values())
        finally:
            handle.remove()
        return [not torch.equal(a, b) for a, b in zip(clean, noisy)]

    assert len(clean) == 5 and all(changed(chosen))
    deeper = [n for n in candidates[candidates.index(chosen) + 1:] if n.startswith("backbone.")]
    assert deeper and not any(all(changed(n)) for n in deeper)
    # the last map layer (P6 here: P7 is 1x1 at 128 px) feeds only the coarse levels
    assert candidates[-1].startswith("backbone.fpn.extra_blocks.") and changed(candidates[-1])[:3] == [False] * 3
