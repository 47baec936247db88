"""The model zoo: shipped weights reach their accuracy, training writes its checkpoints, data are deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import models_zoo
from models_zoo import DEFAULT_MODEL, ZOO, export_dataset, get, shapes
from models_zoo.training import accuracy

BOUNDS = {"mlp2d-disk": 0.95, "lenet-digits": 0.97, "shapes-cnn": 0.95, "shapes-resnet": 0.95}


def test_registry_contract():
    assert {n for n, e in ZOO.items() if e.task == "classify"} == set(BOUNDS)  # the task models: test_zoo_tasks
    assert DEFAULT_MODEL in ZOO
    with pytest.raises(KeyError, match="shapes-cnn"):
        get("no-such-model")
    for name, entry in ZOO.items():
        assert get(name) is entry and entry.name == name
        assert entry.kind in ("image", "points")
        assert entry.weights_path() == models_zoo.WEIGHTS_DIR / f"{name}.safetensors"
        assert len(entry.mean) == len(entry.std) == (entry.channels if entry.kind == "image" else 2)
        assert (entry.input_size is None) == (entry.kind == "points")


def test_shipped_weights_are_small_and_float32():
    files = sorted(models_zoo.WEIGHTS_DIR.glob("*.safetensors"))
    assert {f.name for f in files} >= {f"{n}.safetensors" for n in ZOO} | {"mlp2d-disk-history.safetensors"}
    assert sum(f.stat().st_size for f in files) <= 5 * 2**20
    for f in files:
        for key, tensor in load_file(str(f)).items():
            assert tensor.dtype == (torch.int64 if key.endswith("num_batches_tracked") else torch.float32), key


def test_named_layers():
    names = {name: dict(entry.build_model().named_modules()) for name, entry in ZOO.items()}
    assert isinstance(names["mlp2d-disk"]["fc1"], torch.nn.Linear)
    assert names["mlp2d-disk"]["fc1"].in_features == 2 and names["mlp2d-disk"]["fc1"].out_features == 20
    assert [k for k in names["lenet-digits"] if k] == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2"
    ]  # fmt: skip
    cnn = names["shapes-cnn"]
    assert isinstance(cnn["features.conv5"], torch.nn.Conv2d) and isinstance(cnn["fc"], torch.nn.Linear)
    assert sum(isinstance(m, torch.nn.Linear) for m in cnn.values()) == 1  # GAP + one linear layer: CAM applies
    from torchvision.models.resnet import BasicBlock

    res = names["shapes-resnet"]
    assert sum(isinstance(m, BasicBlock) for m in res.values()) >= 3
    assert res["layer1.0.relu"].inplace and isinstance(res["layer3.0.conv2"], torch.nn.Conv2d)


@pytest.mark.parametrize("name", list(BOUNDS))
def test_pretrained_reaches_accuracy_bound(name):
    entry = get(name)
    model = entry.load_pretrained()
    assert not model.training
    data = entry.load_dataset("test")
    assert data.labels.dtype == np.int64 and len(data.inputs) == len(data.labels)
    if entry.kind == "image":
        assert data.inputs.dtype == np.uint8
        assert data.inputs.shape[1:] == (*entry.input_size, entry.channels)
    else:
        assert data.inputs.dtype == np.float32 and data.inputs.shape[1:] == (2,)
    with safe_open(str(entry.weights_path()), "pt") as f:
        shipped = float(f.metadata()["test_accuracy"])
    acc = accuracy(entry, model, data.inputs, data.labels)
    assert acc >= BOUNDS[name]
    assert acc == pytest.approx(shipped, abs=2e-3)  # the same number the training run recorded


def test_mlp_history_ends_at_the_shipped_weights():
    entry = get("mlp2d-disk")
    history = entry.history()
    iterations = [it for it, _ in history]
    assert iterations[0] == 0 and iterations[-1] == 10_000 and iterations == sorted(set(iterations))
    assert 15 <= len(history) <= 25
    final = entry.load_pretrained().state_dict()
    for key, value in final.items():
        torch.testing.assert_close(history[-1][1][key], value, rtol=0, atol=0)
    data = entry.load_dataset("test")
    model = entry.build_model()
    model.load_state_dict(history[0][1])
    assert accuracy(entry, model, data.inputs, data.labels) < 0.9  # the init is far from the trained model
    assert all(get(n).history() == [] for n in ZOO if n != "mlp2d-disk")


@pytest.mark.parametrize("name", list(BOUNDS))
def test_short_training_writes_a_checkpoint_per_epoch(name, tmp_path):
    entry = get(name)
    lines: list[str] = []
    report = entry.train(tmp_path, seed=0, epochs=2, max_train=200, log=lines.append)
    expected = [tmp_path / f"{name}-epoch{e:03d}.safetensors" for e in (1, 2)]
    assert report.checkpoints == expected and sorted(tmp_path.iterdir()) == expected
    assert 0.0 <= report.test_accuracy <= 1.0 and report.seconds > 0 and not report.model.training
    assert len(lines) == 2
    for epoch, path in enumerate(expected, start=1):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        assert meta["zoo"] == name and meta["epoch"] == str(epoch)
        assert 0.0 <= float(meta["test_accuracy"]) <= 1.0
    assert float(meta["test_accuracy"]) == pytest.approx(report.test_accuracy, abs=1e-4)
    model = entry.build_model()
    model.load_state_dict(load_file(str(expected[-1])))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, report.model.state_dict()[key], rtol=0, atol=0)


def test_training_is_seeded():
    entry = get("mlp2d-disk")
    a, b, c = (entry.train(None, seed=s, epochs=1, max_train=50) for s in (3, 3, 4))
    assert a.checkpoints == [] and len(a.history) == len(b.history)
    sa, sb, sc = (r.model.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_shapes_data_deterministic_and_split_disjoint():
    entry = get("shapes-cnn")
    a = entry.load_dataset("test", seed=0, n=48)
    b = entry.load_dataset("test", seed=0, n=48)
    c = entry.load_dataset("test", seed=1, n=48)
    t = entry.load_dataset("train", seed=0, n=48)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.inputs, c.inputs) and not np.array_equal(a.inputs, t.inputs)
    assert np.bincount(a.labels, minlength=8).tolist() == [6] * 8  # balanced classes


def test_masks_lie_on_the_shapes():
    data = get("shapes-resnet").load_dataset("test", seed=0, n=96)
    assert data.masks.dtype == bool and data.masks.shape == data.inputs.shape[:3]
    area = data.masks.mean(axis=(1, 2))
    assert area.min() > 0.01 and area.max() < 0.6
    img = data.inputs.astype(np.float32)
    for x, m in zip(img, data.masks):
        inside = x[m]
        # The shape has one flat colour plus noise; the background around it is different by construction.
        assert np.linalg.norm(inside.mean(0) - x[~m].mean(0)) > 40
        assert inside.std(0).max() < 25
    # Analytic masks in normalized coordinates: a disk is full at its centre, a ring and a crescent are not.
    x = np.array([[[0.0, 0.75, -0.7, 0.45, 1.0]]], dtype=np.float32)
    y = np.zeros_like(x)
    assert shapes._inside(0, x, y).tolist() == [[[True, True, True, True, False]]]
    assert shapes._inside(4, x, y).tolist() == [[[False, True, True, False, False]]]
    assert shapes._inside(6, x, y).tolist() == [[[False, False, True, False, False]]]


def test_digits_and_points_data():
    digits = get("lenet-digits")
    train, test = digits.load_dataset("train"), digits.load_dataset("test")
    assert len(train) + len(test) == 1797 and train.masks is None
    assert train.inputs.shape[1:] == (28, 28, 1) and train.inputs.max() == 255
    assert np.array_equal(test.inputs, digits.load_dataset("test").inputs)
    assert np.bincount(test.labels).min() >= 43  # stratified: 43-46 per class
    points = get("mlp2d-disk").load_dataset("train")
    radius = np.hypot(points.inputs[:, 0], points.inputs[:, 1])
    assert np.array_equal(points.labels, (radius <= 1.2).astype(np.int64))
    assert 0.4 < points.labels.mean() < 0.6 and np.abs(points.inputs).max() <= 1.5


def test_preprocess_normalizes():
    entry = get("shapes-cnn")
    raw = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    raw[0, 3, 5] = (255, 0, 51)
    x = entry.preprocess(raw)
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 51), entry.mean, entry.std)]
    torch.testing.assert_close(x[0, :, 3, 5], torch.tensor(expected))


def test_export_dataset(tmp_path):
    out = tmp_path / "shapes"
    assert export_dataset("shapes-cnn", out, limit=20) == 20
    files = sorted(out.glob("*/*.png"))
    assert len(files) == 20 and {f.parent.name for f in files} <= set(shapes.CLASS_NAMES)
    data = get("shapes-cnn").load_dataset("test")
    for f in files[:5]:
        with Image.open(f) as im:
            assert im.mode == "RGB" and im.size == (64, 64)
            index = int(f.stem)
            assert np.array_equal(np.asarray(im), data.inputs[index])
            assert f.parent.name == shapes.CLASS_NAMES[data.labels[index]]
    with pytest.raises(ValueError, match="not an empty"):
        export_dataset("shapes-cnn", out, limit=1)
    assert export_dataset("lenet-digits", tmp_path / "digits", split="train", limit=10) == 10
    for f in (tmp_path / "digits").glob("*/*.png"):
        with Image.open(f) as im:
            assert im.mode == "L" and im.size == (28, 28)
    with pytest.raises(ValueError, match="points"):
        export_dataset("mlp2d-disk", tmp_path / "points")
