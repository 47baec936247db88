"""Learning dynamics across checkpoints: the plain functions against known answers and direct formulas, and the
archive pages that compare its snapshots."""

from __future__ import annotations

import numpy as np
import pytest

from reportgen.methods.dynamics import (centered_gram, forgetting, linear_cka, rank_correlation,
                                        spectrum_summary)


def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA written out as in the paper: HSIC(K, L) = tr(K H L H) / (n - 1)^2 with K = X X^T, L = Y Y^T and the
    centering matrix H, normalised by sqrt(HSIC(K, K) HSIC(L, L))."""
    x, y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(k, l):
        return np.trace(k @ h @ l @ h) / (n - 1) ** 2

    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 12)), rng.normal(size=(40, 3, 2, 5))


def test_cka_of_a_matrix_with_itself_and_its_invariances(features):
    x, _ = features
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))
    assert not np.allclose(x @ q, x)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)  # an orthogonal transform
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)  # an isotropic scaling
    assert linear_cka(x, x + 3.0) == pytest.approx(1.0, abs=1e-12)  # an offset: the features are centered
    # not invariant to an anisotropic scaling: the test can fail
    assert linear_cka(x, x * np.arange(1, 13)) < 0.9


def test_cka_equals_a_direct_hsic_computation(features):
    x, y = features
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), abs=1e-6)
    mixed = x[:, :5] + 0.3 * y.reshape(40, -1)[:, :5]
    assert linear_cka(x, mixed) == pytest.approx(hsic_cka(x, mixed), abs=1e-6)
    assert 0.1 < linear_cka(x, mixed) < 1
    # the Gram form: wide features (more columns than the 4,096-column blocks) give the same Gram matrix
    wide = np.random.default_rng(2).normal(size=(6, 5000))
    assert np.allclose(centered_gram(wide), (wide - wide.mean(0)) @ (wide - wide.mean(0)).T)


def test_forgetting_counts_on_a_constructed_sequence():
    correct = np.array([[0, 1, 1, 0, 0],
                        [1, 0, 1, 0, 1],
                        [0, 1, 1, 0, 1],
                        [1, 0, 1, 0, 0],
                        [1, 1, 1, 0, 1]], dtype=bool)
    first, events = forgetting(correct)
    assert first.tolist() == [1, 0, 0, -1, 1]
    # image 0: learned at 1, forgotten at 2, learned at 3; image 1: forgotten at 1 and at 3; image 4: forgotten at 3
    assert events.tolist() == [1, 2, 0, 0, 1]
    assert forgetting(correct[:1])[1].tolist() == [0] * 5


def test_spectrum_summary_against_numpy_svd():
    w = np.random.default_rng(3).normal(size=(6, 3, 2, 2))
    s = np.linalg.svd(w.reshape(6, -1), compute_uv=False)
    got = spectrum_summary(w)
    assert got["sigma max"] == pytest.approx(s[0], rel=1e-12)
    assert got["norm"] == pytest.approx(np.sqrt((s ** 2).sum()), rel=1e-12)
    assert got["stable rank"] == pytest.approx((s ** 2).sum() / s[0] ** 2, rel=1e-12)
    assert spectrum_summary(np.outer([1.0, 2.0], [3.0, 4.0]))["stable rank"] == pytest.approx(1.0)  # rank one
    assert spectrum_summary(np.eye(5))["stable rank"] == pytest.approx(5.0)


def test_rank_correlation_against_ranks_by_hand():
    a = np.array([[1.0, 5.0], [3.0, 3.0]])
    b = np.array([[2.0, 9.0], [4.0, 1.0]])
    # ranks a: 1, 4, 2.5, 2.5; b: 2, 4, 3, 1
    ra, rb = np.array([1, 4, 2.5, 2.5]), np.array([2, 4, 3, 1.0])
    assert rank_correlation(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-12)
    assert rank_correlation(a, a ** 3) == pytest.approx(1.0)  # monotone: the ranks are the same
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert np.isnan(rank_correlation(a, np.ones((2, 2))))


# ---------------------------------------------------------------------------------------------------------------
# the archive: its values against a direct computation from the checkpoints


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory):
    """4 checkpoints of tiny_cnn: epochs 1, 2, 3 with different weights, epoch 4 with epoch 3's weights (another
    file: other metadata); 18 images; an archive of predictions."""
    from safetensors.torch import load_file, save_file

    from conftest import run, write_image_folder
    from test_archive import TINY, save_checkpoints

    root = tmp_path_factory.mktemp("dynamics")
    images = write_image_folder(root / "images")
    paths = save_checkpoints(root / "ckpts", [(1, "a.safetensors"), (2, "b.safetensors"), (3, "c.safetensors")])
    save_file(load_file(str(paths[-1])), str(root / "ckpts" / "d.safetensors"), metadata={"epoch": "4"})
    paths.append(root / "ckpts" / "d.safetensors")
    result = run("archive", root / "ckpts", *TINY, "--images", images, "--out", root / "archive",
                 "--only", "predictions", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    # "k of N" before each snapshot, and from the second on an estimate of the time left
    assert "[1 of 4] step-00001: building from a.safetensors\n" in result.output
    assert "[4 of 4] step-00004: building from d.safetensors; about " in result.output
    return root, images, paths


def direct(images, paths, layer_names):
    """Each checkpoint's predictions on every image and outputs of ``layer_names`` on them, computed here with
    plain forward hooks (not reportgen's capture), the images read by the build's loader."""
    import torch
    from safetensors.torch import load_file

    import tiny_models
    from reportgen.build import load  # the build's own image loader: the same pixels as the archive's
    from reportgen.config import load_config
    from reportgen.console import Output

    cfg = load_config(None, model="tiny_models:tiny_cnn", images=str(images), input_size=[32, 32], channels=3)
    ctx = load(cfg, Output(silent=True))
    inputs = ctx.images.load_inputs(list(range(len(ctx.images))))
    labels = np.asarray(ctx.images.labels)
    out = []
    for path in paths:
        model = tiny_models.tiny_cnn().eval()
        model.load_state_dict(load_file(str(path)))
        feats = {}
        hooks = [model.get_submodule(n).register_forward_hook(
            lambda m, i, o, n=n: feats.__setitem__(n, o.detach().reshape(len(o), -1).double().numpy()))
            for n in layer_names]
        with torch.no_grad():
            pred = model(inputs).argmax(1).numpy()
        for h in hooks:
            h.remove()
        out.append((pred, feats))
    return out, labels


def test_archive_cka_and_forgetting_equal_a_direct_computation(tiny_archive):
    import json

    root, images, paths = tiny_archive
    manifest = json.loads((root / "archive" / "manifest.json").read_text())
    dyn = manifest["dynamics"]
    layers = dyn["cka"]["layers"]
    subset = dyn["subset"]["indices"]
    assert len(layers) >= 2 and len(subset) == 18  # fewer images than the subset's size: all of them
    runs, labels = direct(images, paths, layers)
    for i, layer in enumerate(layers):
        final = runs[-1][1][layer][subset]
        for t, (_, feats) in enumerate(runs):
            assert dyn["cka"]["final"][i][t] == pytest.approx(hsic_cka(feats[layer][subset], final), abs=1e-6)
            if t:
                prev = runs[t - 1][1][layer][subset]
                assert dyn["cka"]["previous"][i][t] == pytest.approx(hsic_cka(feats[layer][subset], prev), abs=1e-6)
    assert min(v for row in dyn["cka"]["final"] for v in row) < 0.99  # the checkpoints differ
    # forgetting events and first-learned checkpoints counted by a plain loop over the direct predictions
    correct = [pred == labels for pred, _ in runs]
    T = len(runs)
    events = [sum(1 for t in range(1, T) if correct[t - 1][n] and not correct[t][n]) for n in range(len(labels))]
    p = dyn["predictions"]
    assert p["events"] == [0] + [int(sum(correct[t - 1] & ~correct[t])) for t in range(1, T)]
    assert p["forgotten"] == sum(e > 0 for e in events) > 0
    firsts = [next((t for t in range(T) if correct[t][n]), -1) for n in range(len(labels))]
    assert p["first learned"] == [firsts.count(t) for t in range(T)]
    assert p["never learned"] == firsts.count(-1)
    for f in p["most forgotten"]:
        assert f["events"] == events[f["index"]]
    # the index page shows the sections, the checkpoints named by their epochs
    html = (root / "archive" / "index.html").read_text()
    for anchor in ('id="cka"', 'id="forgetting"', 'id="weights"', ">epoch 2</a>"):
        assert anchor in html
    # epoch 4 has epoch 3's weights, in another file: marked, and the only one marked
    assert html.count("identical to ") == 1 and ">epoch 4</a>" in html.split("identical to epoch 3")[0].split(
        "<tr>")[-1]


def test_archive_weights_against_numpy(tiny_archive):
    import json

    from safetensors.numpy import load_file

    root, _, paths = tiny_archive
    w = json.loads((root / "archive" / "manifest.json").read_text())["dynamics"]["weights"]
    first = load_file(str(paths[0]))
    for t, path in enumerate(paths):
        state = load_file(str(path))
        for i, name in enumerate(w["names"]):
            m = state[f"{name}.weight"].astype(np.float64)
            s = np.linalg.svd(m.reshape(len(m), -1), compute_uv=False)
            assert w["sigma max"][i][t] == pytest.approx(s[0], rel=1e-9)
            assert w["stable rank"][i][t] == pytest.approx((s ** 2).sum() / s[0] ** 2, rel=1e-9)
            assert w["distance"][i][t] == pytest.approx(np.linalg.norm(m - first[f"{name}.weight"]), rel=1e-9)
