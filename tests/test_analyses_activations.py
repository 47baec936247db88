"""The parameter and activation analyses in real (small) builds, plus known answers for what they add."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.build import build
from reportgen.console import Output
from reportgen.config import load_config

ALL = ["perceptron", "filters", "activation-maps", "distributions", "embeddings", "neighbours", "top-images"]


def random_weights(name: str, path: Path) -> str:
    """Seeded random weights of a zoo architecture (the shipped ones may be missing or retrained meanwhile)."""
    import models_zoo
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = models_zoo.get(name).build_model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def build_site(tmp: Path, model: str, only: list[str], **extra) -> tuple[Path, dict]:
    out = tmp / "site"
    cfg = load_config(None, model=model, weights=random_weights(model, tmp / "w.safetensors"), out=str(out),
                      only=only, max_images=120, samples=2, **extra)
    build(cfg, Output(silent=True))
    return out, json.loads((out / "manifest.json").read_text())


def sections(manifest: dict) -> dict:
    return {s["name"]: s for s in manifest["analyses"]}


def files_exist(out: Path, section: dict) -> None:
    for item in section["items"]:
        for key in ("file", "thumb", "animation"):
            if item.get(key):
                assert (out / item[key]).is_file(), item[key]
        for row in item.get("row_images") or []:
            for pic in row:
                assert (out / pic["file"]).is_file()


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lenet")
    return build_site(tmp, "lenet-digits", ALL, analysis={"embeddings": {"max_points": 80}})


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shapes")
    return build_site(tmp, "shapes-cnn", ["filters", "activation-maps", "top-images", "neighbours"],
                      analysis={"activation-maps": {"images": 1, "channels": 4}})


def test_lenet_report_has_every_analysis(lenet):
    out, manifest = lenet
    s = sections(manifest)
    assert s["perceptron"]["status"] == "not applicable" and "Linear(2, n)" in s["perceptron"]["reason"]
    for name in ALL[1:]:
        assert s[name]["status"] == "ok", (name, s[name]["reason"])
        assert s[name]["items"], name
        files_exist(out, s[name])
        page = (out / "analyses" / f"{name}.html").read_text()
        assert "<math" in page and "How to read it" in page, name  # the explanation partial is on the page
    layers = manifest["model"]["selected_layers"]
    assert layers == ["conv1", "conv2", "fc1", "fc2"]
    # filters: the first item is the first layer's grey tiles, then conv2 as a filters x channels grid
    f = s["filters"]["items"]
    assert f[0]["key"] == "first-grey" and f[0]["layer"] == "conv1" and f[0]["count"] == 32
    assert [i["key"] for i in f[1:]] == ["layer-conv2"] and f[1]["count"] == 20 * 15
    # activation maps: per sample image the input, its channels and one grid per layer, tagged
    maps = s["activation-maps"]["items"]
    assert len(maps) == 2 * (2 + len(layers))
    assert {i["image"] for i in maps} == set(manifest["images"]["samples"][k]["index"] for k in range(2))
    conv1 = [i for i in maps if i["layer"] == "conv1"]
    assert conv1 and all(i["count"] == 16 for i in conv1)
    # distributions: per-layer metrics; dead units only on the ReLU modules' outputs, where "never > 0" means that
    m = s["distributions"]["metrics"]
    for layer in layers:
        assert 0.0 <= m[f"never positive {layer}"] <= 1.0 and m[f"std {layer}"] > 0
    assert {k for k in m if k.startswith("dead ")} == {"dead relu1", "dead relu2", "dead relu3"}
    # embeddings: k-NN accuracy per layer with the two ends named input and logits (fc2 is the logits)
    knn = {k: v for k, v in s["embeddings"]["metrics"].items() if k.startswith("k-NN ")}
    assert list(knn) == ["k-NN input", "k-NN conv1", "k-NN conv2", "k-NN fc1", "k-NN logits"]
    assert all(0.0 <= v <= 1.0 for v in knn.values())
    assert s["embeddings"]["metrics"]["embedded images"] == 80
    assert s["embeddings"]["items"][0]["key"] == "overview"
    # neighbours: one table per reference, features row then pixels row, reference + 6 neighbours each
    tables = s["neighbours"]["items"]
    assert len(tables) == 2 and all(t["type"] == "table" and len(t["rows"]) == 2 for t in tables)
    assert all(len(r) == 7 for t in tables for r in t["row_images"])
    assert tables[0]["rows"][0][0] == "relu3 features"
    # top images: conv layers only, channels x n tiles
    top = s["top-images"]["items"]
    assert [i["layer"] for i in top] == ["conv1", "conv2"] and all(i["count"] == 8 * 9 for i in top)
    assert s["top-images"]["metrics"] == {"receptive field conv1": 5, "receptive field conv2": 14}


def test_shapes_report_rgb_filters_and_crops(shapes):
    out, manifest = shapes
    s = sections(manifest)
    for name in ("filters", "activation-maps", "top-images", "neighbours"):
        assert s[name]["status"] == "ok", (name, s[name]["reason"])
        files_exist(out, s[name])
    keys = [i["key"] for i in s["filters"]["items"]]
    assert keys[:4] == ["first-rgb", "first-channel-0", "first-channel-1", "first-channel-2"]
    assert all(k.startswith("layer-features.conv") for k in keys[4:]) and len(keys) > 4
    maps = s["activation-maps"]["items"]
    assert maps[1]["key"].endswith("-normalized") and maps[1]["count"] == 3
    assert all(i["count"] == 4 for i in maps[2:])
    rf = s["top-images"]["metrics"]
    assert rf["receptive field features.conv1"] == 3 and rf["receptive field features.conv2"] == 8


def test_perceptron_on_the_2d_model(tmp_path):
    out, manifest = build_site(tmp_path, "mlp2d-disk", ALL)
    s = sections(manifest)
    assert s["perceptron"]["status"] == "ok"
    items = s["perceptron"]["items"]
    assert items[0]["key"] == "strip" and items[0]["layer"] == "fc1"
    assert s["perceptron"]["metrics"]["hidden units"] == 20 and s["perceptron"]["metrics"]["snapshots"] == 0
    assert s["distributions"]["status"] == "ok"  # works on point models too
    for name in ("filters", "activation-maps", "embeddings", "neighbours", "top-images"):
        assert s[name]["status"] == "not applicable"
    files_exist(out, s["perceptron"])


# ------------------------------------------------------------------------------------------------- known answers


def fake_points_ctx(model, history):
    from reportgen.context import Context, Predictions
    from reportgen.plan import ModelFacts

    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (50, 2)).astype(np.float32)
    labels = (np.linalg.norm(points, axis=1) < 0.7).astype(np.int64)
    loaded = SimpleNamespace(model=model, history=history, class_names=["out", "in"],
                             input=SimpleNamespace(kind="points"))
    images = SimpleNamespace(display=lambda i: points[i], labels=labels)
    facts = ModelFacts(layers=[], selected=["0", "2"], input_shape=(2,))
    ctx = Context(config=SimpleNamespace(seed=0), loaded=loaded, images=images, device="cpu", facts=facts)
    with torch.no_grad():
        logits = model(torch.from_numpy(points)).numpy()
    ctx.predictions = Predictions(np.arange(50), logits, labels)
    return ctx


def test_perceptron_history_draws_each_snapshot_on_a_copy():
    from reportgen.analyses.parameters import Perceptron, PerceptronParams
    from reportgen.imaging import PLOT_KINDS, _load_plot_kinds

    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    history = []
    for it in range(5):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        # unit 0: the vertical line x = it / 10; unit 1: the horizontal line y = 0
        state["0.weight"] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        state["0.bias"] = torch.tensor([-it / 10, 0.0])
        history.append((it * 100, state))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = fake_points_ctx(model, history)
    result = Perceptron().run(ctx, PerceptronParams(panels=3, frames=5, resolution=20), {})
    strip, anim = result.items
    assert [p["title"] for p in strip.data["panels"]] == ["iteration 0", "iteration 200", "iteration 400"]
    assert len(anim.data["panels"]) == 5
    (x0, y0), (x1, y1) = anim.data["panels"][3]["lines"][0]
    assert x0 == pytest.approx(0.3, abs=1e-6) and x1 == pytest.approx(0.3, abs=1e-6) and y0 != y1
    (x0, y0), (x1, y1) = anim.data["panels"][3]["lines"][1]
    assert y0 == pytest.approx(0.0, abs=1e-6) and y1 == pytest.approx(0.0, abs=1e-6)
    for k, v in model.state_dict().items():  # the user's model keeps its own weights
        assert torch.equal(v, before[k])
    _load_plot_kinds()
    frames = PLOT_KINDS["perceptron-frames"](anim.data)
    assert len(frames) == 5 and frames[0].dtype == np.uint8 and frames[0].shape[-1] == 3


def test_perceptron_not_applicable_to_images():
    from reportgen.analyses.parameters import Perceptron
    from reportgen.artifacts import NotApplicable

    ctx = SimpleNamespace(model=nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)))
    with pytest.raises(NotApplicable):
        Perceptron().check(ctx, None)


def test_spread_and_extent():
    from reportgen.analyses.parameters import plane_extent, spread

    assert spread(22, 6) == [0, 4, 8, 13, 17, 21]
    assert spread(3, 6) == [0, 1, 2] and spread(5, 1) == [4] and spread(0, 3) == []
    xmin, xmax, ymin, ymax = plane_extent(np.array([[0.0, 0.0], [2.0, 1.0]]), margin=0.0)
    assert (xmin, xmax, ymin, ymax) == (0.0, 2.0, -0.5, 1.5)


def stream(sampler, feats: np.ndarray, batch: int):
    for start in range(0, len(feats), batch):
        x = torch.from_numpy(feats[start:start + batch])
        b = SimpleNamespace(inputs=x, indices=torch.arange(start, start + len(x)),
                            labels=torch.zeros(len(x), dtype=torch.long))
        sampler.update(b, {}, x[:, :3])


def test_reservoir_sample_is_bounded_uniform_and_batch_independent():
    from reportgen.analyses.activations import FeatureSample

    feats = np.arange(500 * 4, dtype=np.float32).reshape(500, 4)
    picks = []
    for batch in (7, 64):
        s = FeatureSample([], 50, 1 << 20, np.random.default_rng(3))
        stream(s, feats, batch)
        got, idx, _, _ = s.collected()
        assert got["input"].shape == (50, 4) and s.feats["input"].shape == (50, 4)  # bounded
        assert np.array_equal(got["input"], feats[idx]) and np.all(np.diff(idx) > 0)
        picks.append(idx)
    assert np.array_equal(picks[0], picks[1])  # the sample does not depend on how the stream was cut
    assert picks[0].max() > 250  # not just the first 50
    small = FeatureSample([], 50, 1 << 20, np.random.default_rng(3))
    stream(small, feats[:30], 8)
    assert np.array_equal(small.collected()[1], np.arange(30))  # a short stream is kept whole


def test_pool_to_bounds_size_and_keeps_the_mean():
    from reportgen.analyses.activations import pool_to

    a = torch.randn(3, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    p = pool_to(a, 4096)
    assert p.shape == (3, 16 * 16 * 16)
    assert torch.allclose(p.mean(dim=1), a.reshape(3, -1).mean(dim=1), atol=1e-6)
    assert pool_to(a, 1 << 20).shape == (3, 16 * 32 * 32)
    assert pool_to(torch.ones(2, 10), 4).shape == (2, 10)  # vectors are never pooled


def test_crop_padded_is_the_receptive_field_with_grey_outside():
    from reportgen.analyses.activations import crop_padded
    from reportgen.methods.receptive_field import RF

    img = np.arange(10 * 10, dtype=np.float64).reshape(10, 10, 1) / 100
    rf = RF(size=(5, 5), jump=(2, 2), start=(2.0, 2.0))  # unit (y, x) centred at (2 + 2y, 2 + 2x)
    assert np.array_equal(crop_padded(img, rf, 1, 1), img[2:7, 2:7])
    corner = crop_padded(img, RF(size=(5, 5), jump=(1, 1), start=(0.0, 0.0)), 0, 0)
    assert corner.shape == (5, 5, 1)
    assert np.all(corner[:2] == 0.5) and np.all(corner[:, :2] == 0.5)
    assert np.array_equal(corner[2:, 2:], img[:3, :3])
    whole = RF(size=(10, 10), jump=(10, 10), start=(4.5, 4.5), covers_input=True)
    assert np.array_equal(crop_padded(img, whole, 0, 0), img)


def test_top_reducer_picks_the_most_active_channels():
    from reportgen.analyses.activations import TopReducer

    red = TopReducer(["c"], n=2)
    acts = torch.zeros(4, 3, 2, 2)
    acts[:, 1] = 1.0  # channel 1 is the most active on average
    acts[2, 0, 1, 0] = 9.0  # channel 0 peaks on image 2 at (1, 0)
    red.update(SimpleNamespace(inputs=acts, indices=torch.arange(10, 14)), {"c": acts}, None)
    means = red.sums["c"] / red.count
    assert np.argmax(means) == 1
    top = red.top["c"].result()
    assert top["indices"][0, 0] == 12 and tuple(top["positions"][0, 0]) == (1, 0)


@pytest.mark.parametrize("shape", [(40, 7), (12, 300)])
def test_embed_pca_equals_scikit_learn(shape):
    from sklearn.decomposition import PCA

    from reportgen.methods.embed import embed_pca

    rng = np.random.default_rng(1)
    x = (rng.normal(size=shape) * np.linspace(3, 0.2, shape[1])).astype(np.float32)
    ours = embed_pca(x, 2)
    ref = PCA(2, svd_solver="full").fit_transform(x.astype(np.float64))
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert np.all(embed_pca(np.ones((5, 3)), 2) == 0)


def test_plot_kinds_render():
    from reportgen.imaging import PLOT_KINDS, _load_plot_kinds

    _load_plot_kinds()
    edges = np.linspace(-8, 8, 9)
    fig = PLOT_KINDS["histogram"]({"edges": edges, "counts": [0, 0, 0, 5, 50, 7, 0, 0], "mean": 0.1, "std": 1.0})
    assert fig.axes[0].get_xlim()[0] > -3  # empty margins of the grown histogram are not shown
    xy = np.random.default_rng(0).normal(size=(30, 2))
    labels = np.arange(30) % 3
    fig = PLOT_KINDS["embedding"]({"panels": [{"title": "t-SNE", "xy": xy}, {"title": "PCA", "xy": xy}],
                                   "labels": labels, "class_names": ["a", "b", "c"]})
    assert len(fig.axes) == 2
    fig = PLOT_KINDS["embedding-strip"]({"panels": [{"title": str(i), "xy": xy} for i in range(7)],
                                         "labels": labels, "class_names": ["a", "b", "c"]})
    assert sum(ax.axison for ax in fig.axes) == 7
