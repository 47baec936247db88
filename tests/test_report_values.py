"""Known answers for the report layer: the numbers, tables and colours on the pages, computed a second way.

The method functions have their own known-answer tests; these check what the analyses, the imaging and the build
put on top of them: predictions, the adversarial table, colour mappings, the CAM decomposition and its upsampling,
the sample pick, t-SNE workers, dead units, the manifest's file list and archive invalidation.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.context import Predictions as PredictionArrays
from reportgen.data import ImageSet
from reportgen.models import InputSpec

# --------------------------------------------------------------------------------------------------------------------
# predictions


def image_stub(n: int, size: int = 4, channels: int = 3) -> ImageSet:
    arrays = [np.full((size, size, channels), 10 * i, dtype=np.uint8) for i in range(n)]
    spec = InputSpec("image", (size, size), channels, (0.5,) * channels, (0.5,) * channels)
    return ImageSet(source="stub", names=[f"img{i}" for i in range(n)], labels=np.full(n, -1, dtype=np.int64),
                    class_names=None, spec=spec, _load=lambda i: arrays[i])


def test_predictions_accuracy_loss_recall_confusion_and_worst_order():
    from reportgen.analyses.predictions import PredictionParams, Predictions

    labels = np.array([0, 0, 1, 1, 2, 2])
    logits = np.array([[2.0, 0.0, 0.0],   # right, confident
                       [0.0, 1.0, 0.0],   # 0 taken for 1
                       [0.0, 3.0, 1.0],   # right
                       [0.5, 0.6, 0.0],   # right, barely
                       [0.0, 0.0, 2.0],   # right
                       [4.0, 0.0, 1.0]],  # 2 taken for 0, confidently
                      dtype=np.float32)
    names = ["a", "b", "c"]
    ctx = SimpleNamespace(predictions=PredictionArrays(np.arange(6), logits, labels), class_names=names,
                          is_image_model=True, images=image_stub(6))
    result = Predictions().run(ctx, PredictionParams(worst=3), {})

    def loss(row, y):  # -log softmax, by hand
        return -(row[y] - math.log(sum(math.exp(v) for v in row)))

    losses = [loss([float(v) for v in logits[i]], int(labels[i])) for i in range(6)]
    assert result.metrics["accuracy"] == pytest.approx(4 / 6)
    assert result.metrics["loss"] == pytest.approx(sum(losses) / 6, rel=1e-6)
    assert result.metrics["labelled images"] == 6
    items = {i.key: i for i in result.items}
    assert [[r[0], r[1]] for r in items["per-class"].rows] == [["a", 2], ["b", 2], ["c", 2]]
    assert [r[2] for r in items["per-class"].rows] == pytest.approx([0.5, 1.0, 0.5])
    # rows are true classes, columns predicted ones: the a->b and c->a errors sit above and below the diagonal
    assert items["confusion"].data["matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert items["predicted-classes"].data["values"] == [2, 3, 1]
    worst = [i for i in result.items if i.key.startswith("worst-")]
    expected = sorted(range(6), key=lambda i: -losses[i])[:3]
    assert [w.label for w in worst] == [f"#{r + 1} img{i}" for r, i in enumerate(expected)]
    assert expected == [5, 1, 3]  # the confident error first; then the other error; then a correct, unsure image
    assert worst[0].caption.startswith("true c (p=0.05), predicted a (p=0.94)")
    assert worst[2].caption.startswith("true b (p=")  # a correct prediction ranked among the "worst"


def test_predictions_of_many_classes_draw_the_busiest_and_keep_the_row_totals():
    """1,000 classes (an ImageNet head): the bar chart and the confusion matrix show only the classes that occur
    most, and the confusion rows keep all their images through an "other" column."""
    from reportgen.analyses.predictions import SHOWN_CLASSES, PredictionParams, Predictions

    k, n = 1000, 60
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 40, n)  # 40 true classes occur
    preds = np.where(np.arange(n) % 3 == 0, rng.integers(0, k, n), labels)
    logits = np.full((n, k), -5.0, dtype=np.float32)
    logits[np.arange(n), preds] = 5.0
    names = [f"class {c}" for c in range(k)]
    ctx = SimpleNamespace(predictions=PredictionArrays(np.arange(n), logits, labels), class_names=names,
                          is_image_model=True, images=None)
    result = Predictions().run(ctx, PredictionParams(worst=0), {})
    items = {i.key: i for i in result.items}
    bars = items["predicted-classes"].data
    assert len(bars["names"]) == SHOWN_CLASSES
    counts = np.bincount(preds, minlength=k)
    assert sum(bars["values"]) == sum(sorted(counts, reverse=True)[:SHOWN_CLASSES])  # the busiest ones
    cm = items["confusion"].data
    assert len(cm["class_names"]) == SHOWN_CLASSES and cm["col_names"][-1] == "other"
    matrix = np.array(cm["matrix"])
    for name, row in zip(cm["class_names"], matrix):  # each drawn true class keeps all its images
        assert row.sum() == (labels == names.index(name)).sum()
    assert len(items["per-class"].rows) == len(set(labels.tolist()))


# --------------------------------------------------------------------------------------------------------------------
# adversarial table


class Margin(nn.Module):
    """logits = (sum(x) + c, 0) for a 1x2x2 input: the label flips to 1 where the mean pixel falls below 127.8."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]]))
            self.fc.bias.copy_(torch.tensor([-8 * (127.8 / 255 - 0.5), 0.0]))

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_adversarial_table_known_answer():
    """Normalized l2 steps of 0.01 move each of the 4 pixels by -0.005 in normalized units, -0.6375 in 0-255 units
    (std 0.5).

    Pixels of 140 cross the boundary (127.8) after 20 steps at 127.25, which rounds to 127: the saved 8-bit image
    keeps the new label. Pixels of 134 cross it after 10 steps at 127.625, which rounds back to 128: the saved
    image has the original label again."""
    from reportgen.analyses.optimized import Adversarial, AdversarialParams

    arrays = [np.full((2, 2, 1), 140, np.uint8), np.full((2, 2, 1), 134, np.uint8)]
    spec = InputSpec("image", (2, 2), 1, (0.5,), (0.5,))
    images = ImageSet(source="stub", names=["p140", "p134"], labels=np.array([-1, -1]), class_names=None,
                      spec=spec, _load=lambda i: arrays[i])
    model = Margin().eval()
    ctx = SimpleNamespace(model=model, images=images, samples=[0, 1], device="cpu", class_names=["zero", "one"],
                          loaded=SimpleNamespace(input=spec), config=SimpleNamespace(batch_size=8),
                          batch_size=lambda grad: 8,
                          generator=lambda name: torch.Generator().manual_seed(0),
                          map_chunks=lambda fn, chunks, label: [fn(c) for c in chunks])
    params = AdversarialParams(steps=50, step_size=0.01, norm="l2", targeted=False, sphere_points=0)
    result = Adversarial().run(ctx, params, {})
    summary = next(i for i in result.items if i.key == "summary")

    def margin(pixel):  # logit 0 - logit 1 for four equal pixels
        return 8 * (pixel / 255 - 0.5) - 8 * (127.8 / 255 - 0.5)

    def sigmoid(v):
        return 1 / (1 + math.exp(-v))

    for row, pixel, steps, kept in zip(summary.rows, (140, 134), (20, 10), ("yes", "no")):
        final = pixel - 0.6375 * steps
        x_norm = 2 * abs(2 * (pixel / 255 - 0.5))  # ||x|| of four equal normalized pixels
        _, pred, p, after, p_after, taken, change, changed, saved = row
        assert (pred, after, taken, changed, saved) == ("zero", "one", steps, "yes", kept), row
        assert p == pytest.approx(sigmoid(margin(pixel)), abs=1e-5)
        assert p_after == pytest.approx(sigmoid(-margin(final)), abs=1e-5)
        assert change == pytest.approx(100 * 0.01 * steps / x_norm, rel=1e-4)
    assert result.metrics["success rate"] == 1.0
    assert result.metrics["8-bit images changed"] == 0.5
    # a long run's step table: step 0 (the original) up to the first step with the new label, then the last step
    steps_table = next(i for i in result.items if i.key == "001-steps")
    assert [r[0] for r in steps_table.rows] == [*range(11), 50]
    assert [r[1] for r in steps_table.rows] == ["zero"] * 10 + ["one", "one"]


# --------------------------------------------------------------------------------------------------------------------
# colour mappings


def test_signed_colors_known_values():
    from reportgen.imaging import signed_colors

    red, blue = np.array([0.80, 0.10, 0.10]), np.array([0.10, 0.25, 0.80])
    x = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0, 3.0]])
    got = signed_colors(x, vmax=2.0)[0]
    np.testing.assert_allclose(got[0], blue)
    np.testing.assert_allclose(got[1], (1 + blue) / 2)
    np.testing.assert_allclose(got[2], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(got[3], (1 + red) / 2)
    np.testing.assert_allclose(got[4], red)
    np.testing.assert_allclose(got[5], red)  # beyond the limit: clipped
    # no limit given (None or 0): the largest |x|, so the most negative value is full blue
    for vmax in (None, 0, 0.0):
        auto = signed_colors(np.array([[-4.0, 1.0]]), vmax=vmax)[0]
        np.testing.assert_allclose(auto, [blue, 1 + 0.25 * (red - 1)])
    # an all-zero map is white, not NaN
    np.testing.assert_array_equal(signed_colors(np.zeros((2, 3))), np.ones((2, 3, 3)))


def test_heat_colors_known_values():
    import matplotlib

    from reportgen.imaging import heat_colors

    inferno = matplotlib.colormaps["inferno"]
    got = heat_colors(np.array([[0.0, 1.0, 2.0, 4.0, -1.0]]), vmax=2.0)[0]
    np.testing.assert_allclose(got[0], inferno(0.0)[:3])
    np.testing.assert_allclose(got[1], inferno(128 / 255)[:3])  # 1/2 of the scale: entry round(127.5) = 128
    np.testing.assert_allclose(got[2], inferno(1.0)[:3])
    np.testing.assert_allclose(got[3], inferno(1.0)[:3])  # clipped at the top
    np.testing.assert_allclose(got[4], inferno(0.0)[:3])  # negative values count as 0
    for vmax in (None, 0):
        np.testing.assert_allclose(heat_colors(np.array([[0.0, 5.0]]), vmax=vmax)[0, 1], inferno(1.0)[:3])
    np.testing.assert_allclose(heat_colors(np.zeros((1, 2))), np.tile(inferno(0.0)[:3], (1, 2, 1)))


def test_shared_and_per_image_colour_limits():
    from reportgen.analyses.influence import colour_limits

    a = np.arange(100, dtype=np.float64).reshape(1, 10, 10)
    maps = np.concatenate([a, 2 * a, np.zeros_like(a), -a])
    shared, per_image = colour_limits(maps, percentile=100)
    assert shared == 198.0  # one scale: the largest value of all maps
    np.testing.assert_array_equal(per_image, [99.0, 198.0, 1.0, 1.0])  # a zero (or negative) map falls back to 1
    shared, per_image = colour_limits(maps, percentile=50)
    assert shared == 198.0  # over half of all values are 0 (the zero map, the negative one): back to the max
    np.testing.assert_allclose(per_image[:2], [49.5, 99.0])
    shared, _ = colour_limits(maps, percentile=75)
    assert shared == pytest.approx(np.percentile(np.clip(maps, 0, None), 75)) and 0 < shared < 198


# --------------------------------------------------------------------------------------------------------------------
# CAM: the exact decomposition and the upsampling


class GapNet(nn.Module):
    """conv (stride 4) -> global average pooling -> fc: CAM applies, and the 4x4 map is smaller than the 16x16 input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 5, 4, stride=4)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def bilinear_half_pixel(m: np.ndarray, out: int) -> np.ndarray:
    """(h, w) -> (out, out) by bilinear interpolation at half-pixel centres (edge values repeated), written out."""
    h, w = m.shape

    def taps(size_in):
        src = np.clip((np.arange(out) + 0.5) * size_in / out - 0.5, 0, size_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, size_in - 1)
        return lo, hi, src - lo

    (y0, y1, fy), (x0, x1, fx) = taps(h), taps(w)
    top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1] * fx
    bottom = m[y1][:, x0] * (1 - fx) + m[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def test_cam_is_the_score_decomposition_upsampled_bilinearly():
    from reportgen.methods.cams import cam, class_activation_map, fc_weights

    model = GapNet().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 2])
    with torch.no_grad():
        acts = model.conv(x).double()  # (2, 5, 4, 4)
        logits = model(x).double()
    w, b = model.fc.weight.detach().double(), model.fc.bias.detach().double()
    m = torch.einsum("nkij,nk->nij", acts, w[target])  # M^c = sum_k w_k^c A^k, no ReLU
    # the identity the page states: the map's mean plus the bias is the logit
    torch.testing.assert_close(m.mean(dim=(1, 2)) + b[target], logits[torch.arange(2), target])
    _, lowres = class_activation_map(model, x, target, "conv", fc_weights(model, "fc"), return_lowres=True)
    torch.testing.assert_close(lowres.double(), m.clamp_min(0), rtol=1e-5, atol=1e-6)  # the display ReLU
    up = cam(model, x, target, "conv", "fc")
    assert up.shape == (2, 16, 16)
    for n in range(2):
        expected = bilinear_half_pixel(m[n].clamp_min(0).numpy(), 16)
        np.testing.assert_allclose(up[n].double().numpy(), expected, rtol=1e-5, atol=1e-6)
        nearest = np.repeat(np.repeat(m[n].clamp_min(0).numpy(), 4, axis=0), 4, axis=1)
        assert np.abs(expected - nearest).max() > 1e-3  # the check can tell bilinear from nearest


# --------------------------------------------------------------------------------------------------------------------
# sample images


def test_sample_pick_depends_on_seed_and_image_set_only():
    from reportgen.build import pick_samples

    indices = np.array([0, 1, 2, 4, 5, 6, 7, 9, 10, 11])  # 3 and 8 unreadable
    unlabelled = np.full(10, -1)
    first = pick_samples(indices, unlabelled, 4, np.random.default_rng(7))
    assert first == pick_samples(indices, unlabelled, 4, np.random.default_rng(7))
    assert len(first) == 4 and set(first) <= set(indices.tolist()) and first == sorted(first)
    # labelled: spread over the classes, round robin
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 2])
    picked = pick_samples(indices, labels, 3, np.random.default_rng(7))
    assert sorted(labels[np.searchsorted(indices, picked)].tolist()) == [0, 1, 2]
    assert pick_samples(indices, labels, 50, np.random.default_rng(7)) == indices.tolist()


class Brightness(nn.Module):
    """Class 0 for images brighter than the normalization mean, else class 1; with ``sign = 0``: always class 0."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.sign = sign
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        m = self.sign * x.mean(dim=(1, 2, 3)) * self.scale
        return torch.stack([m + (1 - abs(self.sign)), -m], dim=1)


def by_brightness() -> nn.Module:
    return Brightness(1.0)


def always_first() -> nn.Module:
    return Brightness(0.0)


def test_samples_of_an_unlabelled_set_do_not_follow_the_predictions(tmp_path):
    """Two models that predict differently on an unlabelled folder get the same samples. (Picked by predicted
    class, as before, the brightness model's two classes would get 2 samples each and the constant model's one
    class all 4: with this seed, different images.)"""
    from PIL import Image

    from reportgen.build import build
    from reportgen.config import load_config
    from reportgen.console import Output

    folder = tmp_path / "flat"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)).save(folder / f"{i:02d}.png")
    picks, preds = [], []
    for factory in ("by_brightness", "always_first"):
        cfg = load_config(model=f"test_report_values:{factory}", images=str(folder), input_size=[8, 8], channels=3,
                          mean=[0.5] * 3, std=[0.5] * 3, out=str(tmp_path / factory), only=["predictions"],
                          samples=4, seed=5)
        report = build(cfg, Output(silent=True))
        samples = report.manifest.images["samples"]
        picks.append([s["index"] for s in samples])
        preds.append([s["pred"] for s in samples])
    assert picks[0] == picks[1]
    assert set(preds[1]) == {"class 0"} and preds[0] != preds[1]  # the predictions did differ


# --------------------------------------------------------------------------------------------------------------------
# t-SNE workers


def test_tsne_workers_really_run_and_threads_do_not_change_the_result(monkeypatch):
    import concurrent.futures

    from threadpoolctl import threadpool_limits

    from reportgen.methods.embed import embed_layers, embed_tsne

    runs = []

    class SpyPool(concurrent.futures.ProcessPoolExecutor):
        def map(self, fn, *iterables, **kwargs):
            out = list(super().map(fn, *iterables, **kwargs))  # a broken pool raises here, before anything is kept
            runs.append(sorted(self._processes))
            return out

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", SpyPool)
    rng = np.random.default_rng(0)
    layers = {"a": rng.normal(size=(60, 8)).astype(np.float32), "b": rng.normal(size=(50, 70)).astype(np.float32)}
    parallel = embed_layers(layers, perplexity=8, seed=2, n_jobs=2, parallel=True)
    assert len(runs) == 1 and runs[0] and all(pid != __import__("os").getpid() for pid in runs[0])
    for name, feats in layers.items():
        with threadpool_limits(limits=1):
            alone = embed_tsne(feats, perplexity=8, seed=2, n_jobs=1)
        np.testing.assert_array_equal(parallel[name], alone)
    # the claim of `embed_tsne` and `embed_layers`: the thread count does not change the embedding
    with threadpool_limits(limits=2):
        np.testing.assert_array_equal(embed_tsne(layers["b"], perplexity=8, seed=2, n_jobs=2), alone)


# --------------------------------------------------------------------------------------------------------------------
# manifest


def test_every_file_on_disk_is_in_the_manifest(tmp_path, image_folder):
    """Not only are the listed files there with their hashes: nothing is on disk that the manifest does not list."""
    import hashlib
    import json

    from reportgen.build import build
    from reportgen.config import load_config
    from reportgen.console import Output

    out = tmp_path / "site"
    cfg = load_config(model="tiny_models:tiny_cnn", images=str(image_folder), input_size=[32, 32], channels=3,
                      out=str(out), samples=2, only=["predictions", "filters", "activation-maps", "distributions",
                                                     "gradient", "grad-cam"])
    report = build(cfg, Output(silent=True))
    assert not report.failed
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == set(manifest["files"]), (sorted(on_disk - set(manifest["files"])),
                                               sorted(set(manifest["files"]) - on_disk))
    assert any(f.endswith(".png") for f in on_disk) and "analyses/grad-cam.html" in on_disk
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel


# --------------------------------------------------------------------------------------------------------------------
# dead units where the claim holds


class FlippedBN(nn.Module):
    """conv (always > 0: bias 10 against |w . x| <= 3) -> BatchNorm with scale (-1, 1) -> ReLU -> GAP -> fc.

    The conv output is never <= 0, yet channel 0 of the ReLU never fires: only the ReLU's output says that."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(10.0)
            self.bn.weight.copy_(torch.tensor([-1.0, 1.0]))
            self.bn.bias.zero_()
            self.bn.running_mean.zero_()
            self.bn.running_var.fill_(1.0)

    def forward(self, x):
        return self.fc(self.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def flipped_bn() -> nn.Module:
    return FlippedBN()


def test_dead_units_are_measured_on_the_relu_not_on_the_conv(tmp_path, image_folder):
    from reportgen.build import build
    from reportgen.config import load_config
    from reportgen.console import Output

    cfg = load_config(model="test_report_values:flipped_bn", images=str(image_folder), input_size=[8, 8],
                      channels=3, mean=[0.5] * 3, std=[0.5] * 3, out=str(tmp_path / "site"), only=["distributions"])
    report = build(cfg, Output(silent=True))
    entry = report.manifest.entry("distributions")
    assert entry.status == "ok", entry.reason
    m = entry.metrics
    assert m["never positive conv"] == 0.0 and m["dead relu"] == 0.5
    assert not any(k == "dead conv" for k in m)  # no dead-unit claim about a pre-BatchNorm output
    dead = next(i for i in entry.items if i["key"] == "dead")
    assert dead["rows"] == [["relu", 2, 1, 0.5]]
    per_layer = next(i for i in entry.items if i["key"] == "summary")
    assert [r[:3] for r in per_layer["rows"]] == [["conv", "Conv2d", 2], ["fc", "Linear", 2]]


# --------------------------------------------------------------------------------------------------------------------
# archive invalidation


def test_archive_reuses_a_snapshot_only_while_checkpoint_images_and_config_are_the_same(tmp_path, image_folder):
    from click.testing import CliRunner
    from PIL import Image
    from test_archive import TINY, save_checkpoints

    from reportgen.cli import main

    ckpts = tmp_path / "ckpts"
    save_checkpoints(ckpts, [(1, "a.safetensors")])
    out = tmp_path / "archive"
    config = tmp_path / "c.toml"
    config.write_text("[analysis.predictions]\nworst = 3\n")

    def run(*extra):
        args = ["archive", str(ckpts), *TINY, "--images", str(image_folder), "--out", str(out), "--only",
                "predictions", "--config", str(config), "-q", *extra]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return "built" if "(1 snapshots built, 0 reused)" in result.output else \
            "reused" if "(0 snapshots built, 1 reused)" in result.output else result.output

    assert run() == "built"
    assert run() == "reused"
    assert run("--layers", "0") == "built"  # other layers
    config.write_text("[analysis.predictions]\nworst = 4\n")
    assert run("--layers", "0") == "built"  # an analysis parameter
    img = image_folder / "cat" / "img 0.png"
    arr = np.asarray(Image.open(img)).copy()
    arr[0, 0] ^= 1  # one pixel, one bit
    Image.fromarray(arr).save(img)
    assert run("--layers", "0") == "built"  # the image set's content
    img.rename(image_folder / "cat" / "img 0 renamed.png")
    assert run("--layers", "0") == "built"  # a file name (it names the image on the pages)
    assert run("--layers", "0") == "reused"


def test_ever_positive_units_of_maps_vectors_and_tokens():
    from reportgen.analyses.activations import EverPositive

    reducer = EverPositive(["map", "vec", "tok"])
    maps = torch.zeros(2, 3, 4, 4)
    maps[1, 2, 3, 0] = 0.5  # channel 2 fires once, at one image and position
    vec = torch.tensor([[-1.0, 0.0, 2.0], [-3.0, 0.0, 0.0]])
    tok = torch.zeros(2, 5, 3)
    tok[0, 4, 1] = 1e-6  # feature 1 of one token
    reducer.update(None, {"map": maps, "vec": vec, "tok": tok}, None)
    reducer.update(None, {"map": -maps, "vec": vec[:1], "tok": -tok}, None)
    assert reducer.ever["map"].tolist() == [False, False, True]
    assert reducer.ever["vec"].tolist() == [False, False, True]
    assert reducer.ever["tok"].tolist() == [False, True, False]
