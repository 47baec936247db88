"""Tasks beyond the single-label classifier (issue 30; reportgen/tasks.py, docs/tasks.md): how a model's task is
found, the one pass's per-task predictions against direct computations, and the label files per task with every
documented mistake."""

import json

import numpy as np
import pytest
import torch
from conftest import fails_in_one_line, run
from PIL import Image
from torch import nn

from reportgen.errors import DataError, ModelError

# ---------------------------------------------------------------------------------------------------------------
# Tiny models returning each output form ("test_tasks:NAME" factories: the tests folder is on sys.path)


class SegNet(nn.Module):
    """A 1x1 convolution to 3 class maps, returned as torchvision's segmentation models do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        out = self.head(x)
        return {"out": out, "aux": out.detach() * 0}


class DetNet(nn.Module):
    """Three fixed boxes per image whose scores depend on the image, labelled with class indices 1, 2, 1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        scores = torch.sigmoid(self.conv(x).mean(dim=(2, 3)))
        boxes = torch.tensor([[1.0, 2.0, 9.0, 12.0], [0.0, 0.0, 5.0, 5.0], [3.0, 3.0, 15.0, 15.0]])
        return [{"boxes": boxes, "labels": torch.tensor([1, 2, 1]), "scores": s} for s in scores]


class HeadNet(nn.Module):
    def __init__(self, k):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, k)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def seg_net():
    return SegNet()


def det_net():
    return DetNet()


def three_heads():
    return HeadNet(3)


# ---------------------------------------------------------------------------------------------------------------
# The task of a model


DETS = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}] * 2


@pytest.mark.parametrize("out, task", [
    (torch.zeros(2, 1), "binary"),
    (torch.zeros(2, 5), "classify"),
    ({"out": torch.zeros(2, 4, 8, 8), "aux": torch.zeros(2, 4, 8, 8)}, "segment"),
    (DETS, "detect"),
])
def test_the_task_from_each_unambiguous_output_form(out, task):
    from reportgen.tasks import decide_task

    assert decide_task(out, "m")[0] == task


def test_a_bare_map_tensor_embed_and_regress_are_never_guessed():
    from reportgen.tasks import decide_task

    with pytest.raises(ModelError, match=r"not \(N, classes\) logits \(a segmentation model: give --task segment\)"):
        decide_task(torch.zeros(2, 3, 8, 8), "m")
    assert decide_task(torch.zeros(2, 3, 8, 8), "m", "segment", "--task")[0] == "segment"
    # an (N, D) tensor is a classifier unless told otherwise
    assert decide_task(torch.zeros(2, 16), "m")[0] == "classify"
    assert decide_task(torch.zeros(2, 16), "m", "embed", "--task")[0] == "embed"
    assert decide_task(torch.zeros(2, 16), "m", "regress", "--task", "classify", "zoo")[0] == "regress"


@pytest.mark.parametrize("given, out, fits", [
    ("segment", torch.zeros(2, 5), "the tasks that fit it: classify, multilabel, regress, embed"),
    ("detect", torch.zeros(2, 1), "the tasks that fit it: binary, regress, embed"),
    ("binary", {"out": torch.zeros(2, 4, 8, 8)}, "the tasks that fit it: segment"),
    ("classify", DETS, "the tasks that fit it: detect"),
])
def test_a_task_the_output_contradicts_is_one_line(given, out, fits):
    from reportgen.tasks import decide_task

    with pytest.raises(ModelError) as exc:
        decide_task(out, "m", given, "given with --task")
    text = str(exc.value)
    assert "\n" not in text and f"the task '{given}' (given with --task)" in text and text.endswith(fits), text


def test_task_segment_on_a_classifier_from_the_cli(image_folder):
    result = run("build", "tiny_models:tiny_cnn", "--input-size", "32x32", "--channels", "3", "--images",
                 image_folder, "--task", "segment", "--out", image_folder.parent / "site")
    fails_in_one_line(result, "returns a tensor (2, 3)", "the tasks that fit it: classify, multilabel", code=2)
    assert not (image_folder.parent / "site").exists()


def test_torchvision_segmenters_and_detectors_declare_their_task():
    import torchvision

    from reportgen.tasks import declared_task

    expect = {"fcn_resnet50": "segment", "deeplabv3_mobilenet_v3_large": "segment",
              "lraspp_mobilenet_v3_large": "segment", "fasterrcnn_mobilenet_v3_large_320_fpn": "detect",
              "retinanet_resnet50_fpn": "detect", "fcos_resnet50_fpn": "detect",
              "ssdlite320_mobilenet_v3_large": "detect", "resnet18": None}
    with torch.device("meta"):  # shapes only: no memory, no initialization
        for arch, task in expect.items():
            extra = {} if arch == "resnet18" else {"weights_backbone": None}
            model = torchvision.models.get_model(arch, weights=None, num_classes=3, **extra)
            assert declared_task(model) == task, arch


def test_a_hugging_face_config_states_its_task():
    transformers = pytest.importorskip("transformers")
    from reportgen.tasks import hf_task

    assert hf_task(transformers.ViTConfig(problem_type="multi_label_classification")) == "multilabel"
    assert hf_task(transformers.ViTConfig(problem_type="regression")) == "regress"
    assert hf_task(transformers.ViTConfig(problem_type="single_label_classification")) == "classify"
    assert hf_task(transformers.SegformerConfig(architectures=["SegformerForSemanticSegmentation"])) == "segment"
    assert hf_task(transformers.ViTConfig()) is None  # the output decides


def test_hugging_face_folders_of_a_multilabel_vit_and_a_segformer(tmp_path):
    """Loaded by their configs: the ViT's problem_type makes it multilabel; the SegFormer is loaded as a semantic
    segmentation model whose (N, K, h, w) logits (a quarter of the input) are a segment output."""
    transformers = pytest.importorskip("transformers")
    from reportgen.config import load_config
    from reportgen.models import load_model

    torch.manual_seed(0)
    vit = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=8, num_labels=3,
                                 problem_type="multi_label_classification")
    transformers.ViTForImageClassification(vit).save_pretrained(str(tmp_path / "vit"))
    seg = transformers.SegformerConfig(image_size=32, num_channels=3, num_encoder_blocks=1, depths=[1],
                                       sr_ratios=[1], hidden_sizes=[8], patch_sizes=[7], strides=[4],
                                       num_attention_heads=[1], mlp_ratios=[1], decoder_hidden_size=8, num_labels=4)
    transformers.SegformerForSemanticSegmentation(seg).save_pretrained(str(tmp_path / "seg"))
    loaded = load_model(load_config(None, model=str(tmp_path / "vit")))
    assert (loaded.task, loaded.task_source) == ("multilabel", "its config's problem_type 'multi_label_classification'")
    loaded = load_model(load_config(None, model=str(tmp_path / "seg"), input_size=[32, 32]))
    assert loaded.task == "segment" and len(loaded.class_names) == 4
    assert loaded.task_source == "its config's architecture SegformerForSemanticSegmentation"


# ---------------------------------------------------------------------------------------------------------------
# What the pass keeps, against direct computations


def test_probabilities_per_task_are_the_sigmoid_and_softmax():
    from reportgen.context import Predictions

    z = np.array([[-30.0, 0.0, 2.0], [1.0, -1.0, 40.0]], dtype=np.float32)
    idx, lab = np.arange(2), np.full(2, -1)
    multi = Predictions(idx, z, lab, task="multilabel")
    np.testing.assert_allclose(multi.probs, torch.sigmoid(torch.from_numpy(z)).numpy(), rtol=1e-6)
    assert multi.preds.tolist() == [[0, 0, 1], [1, 0, 1]]
    one = Predictions(idx, z[:, 2:], lab, task="binary")
    p = torch.sigmoid(torch.from_numpy(z[:, 2])).numpy()
    np.testing.assert_allclose(one.probs, np.stack([1 - p, p], axis=1), rtol=1e-6)
    assert one.preds.tolist() == [1, 1]
    soft = Predictions(idx, z, lab)
    np.testing.assert_allclose(soft.probs, torch.softmax(torch.from_numpy(z), 1).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="no class probabilities for task segment"):
        Predictions(idx, z, lab, task="segment").probs


def test_segmentation_scores_pixels_and_confusion_equal_a_direct_computation():
    from sklearn.metrics import confusion_matrix

    from reportgen.data import Masks
    from reportgen.tasks import TaskPass, Truth

    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(4, 3, 6, 5, generator=gen)
    truth = np.random.default_rng(0).integers(0, 3, size=(4, 6, 5)).astype(np.uint8)
    truth[0, :2] = 255  # ignored
    kept = TaskPass("segment", 3, size=(6, 5), truth=Truth("t", masks=Masks("t", arrays=truth, classes=True)))
    scores = torch.cat([kept.batch_scores({"out": maps[:3]}, np.arange(3)),
                        kept.batch_scores({"out": maps[3:]}, np.arange(3, 4))])
    fields = kept.fields(np.arange(4))
    np.testing.assert_allclose(scores.numpy(), maps.numpy().mean(axis=(2, 3)), rtol=1e-5)
    pred = maps.argmax(dim=1).numpy()
    expect = confusion_matrix(truth[truth != 255], pred[truth != 255], labels=[0, 1, 2])
    np.testing.assert_array_equal(fields["seg_confusion"], expect)
    np.testing.assert_array_equal(fields["seg_pixels"], [[(p == c).sum() for c in range(3)] for p in pred])


def test_a_mask_value_beyond_the_classes_is_one_line():
    from reportgen.data import Masks
    from reportgen.tasks import TaskPass, Truth

    truth = np.full((1, 4, 4), 7, dtype=np.uint8)
    kept = TaskPass("segment", 3, size=(4, 4), truth=Truth("t", masks=Masks("lab", arrays=truth, classes=True)))
    with pytest.raises(DataError, match=r"has class value 7 but the model has 3 classes \(0 to 2, 255 = ignore\)"):
        kept.batch_scores(torch.zeros(1, 3, 4, 4), np.arange(1))


def test_detections_become_class_indices_and_per_class_top_scores():
    from reportgen.tasks import MAX_DETECTIONS, TaskPass

    gen = torch.Generator().manual_seed(0)
    out = []
    for n in (0, 5, 150):
        out.append({"boxes": torch.rand(n, 4, generator=gen) * 10, "labels": torch.randint(0, 4, (n,), generator=gen),
                    "scores": torch.rand(n, generator=gen)})
    kept = TaskPass("detect", 3, offset=1)  # torchvision: label 0 is the background, label i is class i - 1
    scores = kept.batch_scores(out, np.arange(3)).numpy()
    dets = kept.fields(np.arange(3))["detections"]
    for d, o, row in zip(dets, out, scores):
        keep = o["labels"] > 0
        s, lab = o["scores"][keep].numpy(), o["labels"][keep].numpy() - 1
        top = np.sort(s)[::-1][:MAX_DETECTIONS]
        np.testing.assert_array_equal(d["scores"], top.astype(np.float32))
        assert len(d["labels"]) == min(keep.sum().item(), MAX_DETECTIONS) and (d["labels"] >= 0).all()
        for c in range(3):
            assert row[c] == (s[lab == c].max() if (lab == c).any() else 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Label files


def image_set(tmp_path, sizes):
    """A scanned folder of images of the given (width, height) sizes, read at 16x16."""
    from reportgen.data import folder_image_set
    from reportgen.models import InputSpec

    root = tmp_path / "images"
    for name, (w, h) in sizes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / name)
    return folder_image_set(root, InputSpec("image", (16, 16), 3, (0.0,) * 3, (1.0,) * 3))


def write(path, text):
    path.write_text(text)
    return str(path)


def test_a_multilabel_and_a_regression_csv(tmp_path):
    from reportgen.labels import read_labels

    images = image_set(tmp_path, {"a.png": (16, 16), "b.png": (16, 16), "c/d.png": (16, 16)})
    csv_path = write(tmp_path / "l.csv", "image,dog,cat\nb.png,1,\nc/d.jpg,0,1\n")  # the extension may differ
    truth = read_labels(csv_path, "multilabel", images, ["cat", "dog"])
    assert truth.labels.tolist() == [[-1, -1], [-1, 1], [1, 0]] and truth.unlabelled == ["a.png"]
    values = read_labels(write(tmp_path / "v.csv", "image,n\na.png,2.5\nb.png,\n"), "regress", images, ["n"])
    np.testing.assert_array_equal(values.values[:, 0], [2.5, np.nan, np.nan])


@pytest.mark.parametrize("task, text, message", [
    ("multilabel", "image,cat\nzzz.png,1\n", "line 2: image 'zzz.png' is not in the image set"),
    ("multilabel", "image,cta\na.png,1\n", "column 'cta' is not one of the model's labels (did you mean 'cat'?)"),
    ("multilabel", "image,cat\na.png,2\n", "line 2: value '2' for 'cat' is not 0, 1 or empty"),
    ("multilabel", "image,cat\na.png,1\na.png,0\n", "line 3: a second row for image 'a.png'"),
    ("multilabel", "name,cat\na.png,1\n", "the first column's header must be 'image'"),
    ("regress", "image,cat\na.png,many\n", "line 2: value 'many' for 'cat' is not a finite number"),
])
def test_every_csv_mistake_is_one_line(tmp_path, task, text, message):
    from reportgen.labels import read_labels

    images = image_set(tmp_path, {"a.png": (16, 16)})
    with pytest.raises(DataError, match=None) as exc:
        read_labels(write(tmp_path / "l.csv", text), task, images, ["cat", "dog"])
    assert message in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_missing_labels_and_labels_for_a_classifier(tmp_path):
    from reportgen.labels import read_labels

    images = image_set(tmp_path, {"a.png": (16, 16)})
    with pytest.raises(DataError, match="labels '.*nope.csv' do not exist: give a CSV with header image"):
        read_labels(str(tmp_path / "nope.csv"), "multilabel", images, ["cat"])
    with pytest.raises(DataError, match="this model's task is classify: its labels are the image folder's class"):
        read_labels(str(tmp_path), "classify", images, ["cat"])


def coco(images, annotations, categories=({"id": 7, "name": "cat"}, {"id": 9, "name": "dog"})):
    return json.dumps({"images": images, "annotations": annotations, "categories": list(categories)})


def test_coco_boxes_move_with_their_image_as_the_pixels_do(tmp_path):
    """A 40x20 image is centre-cropped to 20x20 (10 px off each side) and scaled by 0.8 to 16x16; its boxes follow
    (known answer), and a drawn rectangle's pixels after `fit_image` land in the moved box (independent check)."""
    from reportgen.data import fit_image
    from reportgen.labels import fit_box, read_labels

    images = image_set(tmp_path, {"wide.png": (40, 20), "b.png": (16, 16)})
    text = coco([{"id": 1, "file_name": "wide.png", "width": 40, "height": 20}, {"id": 2, "file_name": "b.png",
                 "width": 16, "height": 16}],
                [{"id": 1, "image_id": 1, "bbox": [12, 2, 8, 10], "category_id": 9, "iscrowd": 0},
                 {"id": 2, "image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 7, "iscrowd": 0}])  # cropped away
    truth = read_labels(write(tmp_path / "b.json", text), "detect", images, ["cat", "dog"])
    wide, b = images.names.index("wide.png"), images.names.index("b.png")
    np.testing.assert_allclose(truth.boxes[wide], [[1.6, 1.6, 8.0, 9.6]], rtol=1e-6)
    assert truth.box_labels[wide].tolist() == [1] and truth.boxes[b].shape == (0, 4) and truth.unlabelled == []
    picture = np.zeros((60, 100), np.uint8)
    picture[10:40, 40:70] = 255  # box [40, 10, 70, 40] in a 100x60 image
    fitted = fit_image(Image.fromarray(picture), images.spec, {})[..., 0] > 127
    rows, cols = np.flatnonzero(fitted.any(1)), np.flatnonzero(fitted.any(0))
    box = fit_box(np.array([[40, 10, 70, 40]]), (100, 60), (16, 16))[0]
    assert abs(cols[0] - box[0]) <= 1 and abs(cols[-1] + 1 - box[2]) <= 1
    assert abs(rows[0] - box[1]) <= 1 and abs(rows[-1] + 1 - box[3]) <= 1


@pytest.mark.parametrize("images, annotations, categories, message", [
    ([{"id": 1, "file_name": "a.png", "width": 16, "height": 16}], [], [{"id": 1, "name": "cow"}],
     "category 'cow' is not one of the model's classes"),
    ([{"id": 1, "file_name": "zz.png", "width": 16, "height": 16}], [], None, "image 'zz.png' is not in the image set"),
    ([{"id": 1, "file_name": "a.png", "width": 32, "height": 16}], [], None,
     "image 'a.png' is 32x16 in the JSON but 16x16 px on disk"),
    ([{"id": 1, "file_name": "a.png", "width": 16, "height": 16}],
     [{"id": 4, "image_id": 1, "bbox": [1, 1, -2, 3], "category_id": 7}], None, "annotation 4 has bbox [1, 1, -2, 3]"),
    ([{"id": 1, "file_name": "a.png", "width": 16, "height": 16}],
     [{"id": 4, "image_id": 5, "bbox": [1, 1, 2, 3], "category_id": 7}], None, "annotation 4 names image_id 5"),
    ([{"id": 1, "file_name": "a.png", "width": 16, "height": 16}],
     [{"id": 4, "image_id": 1, "bbox": [1, 1, 2, 3], "category_id": 3}], None, "annotation 4 has category_id 3"),
])
def test_every_coco_mistake_is_one_line(tmp_path, images, annotations, categories, message):
    from reportgen.labels import read_labels

    folder = image_set(tmp_path, {"a.png": (16, 16)})
    text = coco(images, annotations, *([categories] if categories else []))
    with pytest.raises(DataError) as exc:
        read_labels(write(tmp_path / "b.json", text), "detect", folder, ["cat", "dog"])
    assert message in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_label_masks_are_cropped_with_their_image_and_checked(tmp_path):
    from PIL import ImageOps

    from reportgen.labels import read_labels

    images = image_set(tmp_path, {"a.png": (24, 16), "b.png": (16, 16), "c.png": (16, 16)})
    labels = tmp_path / "labels"
    labels.mkdir()
    mask = np.random.default_rng(0).integers(0, 3, size=(16, 24)).astype(np.uint8)
    mask[0, 0] = 255
    Image.fromarray(mask).save(labels / "a.png")
    Image.fromarray(np.stack([mask[:, :16]] * 2 + [mask[:, :16] * 0], axis=-1)).save(labels / "b.png")  # colours
    truth = read_labels(str(labels), "segment", images, ["x", "y", "z"])
    expect = np.asarray(ImageOps.fit(Image.fromarray(mask), (16, 16), method=Image.Resampling.NEAREST))
    np.testing.assert_array_equal(truth.masks.get(0), expect)
    assert truth.masks.get(1) is None and truth.masks.get(2) is None  # a colour mask, and no mask: unscored
    assert any("a label mask holds one class index per pixel" in why for _, why in truth.masks.problems)
    assert "c.png" in truth.unlabelled
    Image.fromarray(mask[:8]).save(labels / "c.png")
    with pytest.raises(DataError, match="mask '.*c.png' is 24x8 px but its image is 16x16"):
        read_labels(str(labels), "segment", images, ["x", "y", "z"])


# ---------------------------------------------------------------------------------------------------------------
# The pass of a build, end to end (the build's own stages, no site)


def build_context(tmp_path, model, **settings):
    from reportgen.build import choose_analyses, forward_pass, load, make_plan
    from reportgen.config import load_config
    from reportgen.console import Output

    images = tmp_path / "images"
    rng = np.random.default_rng(1)
    for k in range(5):
        (images / ("ab"[k % 2])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / "ab"[k % 2] / f"{k}.png")
    cfg = load_config(None, model=model, input_size=[16, 16], channels=3, images=str(images), only=["filters"],
                      batch_size=2, **settings)
    ctx = load(cfg, Output(silent=True))
    make_plan(ctx, choose_analyses(cfg))
    state = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    ctx.predictions = forward_pass(ctx, {})
    return ctx, state


def model_unchanged(model, state):
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_a_segmentation_pass_with_a_mask_folder(tmp_path):
    from sklearn.metrics import confusion_matrix

    labels = tmp_path / "labels"
    for k in range(4):  # image 4 has no mask: left unscored
        (labels / ("ab"[k % 2])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), k % 3, np.uint8)).save(labels / "ab"[k % 2] / f"{k}.png")
    ctx, state = build_context(tmp_path, "test_tasks:seg_net", labels=str(labels))
    p = ctx.predictions
    assert ctx.task == "segment" and p.task == "segment" and ctx.class_names == ["class 0", "class 1", "class 2"]
    with torch.no_grad():
        maps = ctx.model(ctx.images.load_inputs(list(p.indices)))["out"]
    np.testing.assert_allclose(p.logits, maps.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    names = ctx.images.names
    scored = [i for i, n in enumerate(names) if n != "a/4.png"]
    pred = maps.argmax(dim=1).numpy()
    truth = np.stack([np.full((16, 16), int(names[i][2]) % 3) for i in range(5)])
    expect = confusion_matrix(truth[scored].ravel(), pred[scored].ravel(), labels=[0, 1, 2])
    np.testing.assert_array_equal(p.seg_confusion, expect)
    assert p.labels.tolist() == [-1] * 5  # class folders 'a' and 'b' are none of the model's classes
    model_unchanged(ctx.model, state)


def test_a_detection_pass_with_coco_boxes(tmp_path):
    text = coco([{"id": 1, "file_name": "a/0.png", "width": 16, "height": 16}],
                [{"id": 1, "image_id": 1, "bbox": [2, 2, 4, 4], "category_id": 9, "iscrowd": 0}],
                [{"id": 9, "name": "y"}, {"id": 3, "name": "x"}])
    ctx, state = build_context(tmp_path, "test_tasks:det_net", labels=write(tmp_path / "b.json", text),
                               class_names=["x", "y", "z"])
    p = ctx.predictions
    assert ctx.task == "detect" and ctx.loaded.label_offset == 0  # not a torchvision detector: ids are indices
    np.testing.assert_array_equal(p.truth_boxes[0]["boxes"], [[2, 2, 6, 6]])
    assert p.truth_boxes[0]["labels"].tolist() == [1] and all(t is None for t in p.truth_boxes[1:])
    with torch.no_grad():
        out = ctx.model(ctx.images.load_inputs(list(p.indices)))
    for row, o in zip(p.logits, out):
        s = o["scores"].numpy()
        assert row.tolist() == [0.0, max(s[0], s[2]), s[1]]
    model_unchanged(ctx.model, state)


def test_a_multilabel_build_from_the_cli(tmp_path, image_folder):
    import json as js

    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    rows = "".join(f"{n},{k % 2},1,{'' if k == 0 else 0}\n" for k, n in enumerate(names[1:]))
    out = tmp_path / "site"
    result = run("build", "test_tasks:three_heads", "--input-size", "32x32", "--channels", "3", "--images",
                 image_folder, "--task", "multilabel", "--labels", write(tmp_path / "l.csv", "image,a,b,c\n" + rows),
                 "--class-names", "a,b,c", "--only", "distributions,embeddings,perceptron", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"1 of {len(names)} images have no labels" in result.output
    manifest = js.loads((out / "manifest.json").read_text())
    assert manifest["model"]["task"] == "multilabel" and manifest["model"]["task_source"] == "given with --task"
    status = {a["name"]: (a["status"], a["reason"]) for a in manifest["analyses"]}
    assert status["distributions"][0] == "ok"
    assert status["embeddings"] == ("not applicable", "it colours its points and scores its neighbours by one "
                                    "predicted class per image; this model's task is multilabel: independent label "
                                    "logits (N, K)")
    # an image model is told first that it is no 2-D network, not what its task is
    assert status["perceptron"] == ("not applicable", "the model's first layer is not a Linear(2, n) layer on points "
                                    "of the plane")
