"""Degenerate models (a zero head, a constant layer, NaN logits) never crash a build: each affected figure says
why it is missing, and no native library receives non-finite or constant data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from reportgen.cli import main
from reportgen.methods.degenerate import DegenerateError, degenerate_reason
from reportgen.methods.embed import embed_pca, embed_tsne, knn_accuracy, nearest_neighbours

FAST = ("[analysis.class-max]\nsteps = 1\n[analysis.unit-max]\nsteps = 1\n"
        "[analysis.deepdream]\nimages = 1\noctaves = 1\nsteps_per_octave = 1\n"
        "[analysis.adversarial]\nsteps = 1\nsphere_points = 0\n[analysis.smoothgrad]\nn = 2\n"
        "[analysis.embeddings]\nperplexity = 5\n")


def test_reasons_known_answers():
    rng = np.random.default_rng(0)
    assert degenerate_reason(rng.normal(size=(5, 4))) is None
    assert "all zero" in degenerate_reason(np.zeros((12, 10), np.float32))
    assert "the same for every one" in degenerate_reason(np.tile(rng.normal(size=(1, 7)), (6, 1)))
    # a spread of float32 rounding (1e-8 relative) is constant; 1e-3 relative is not
    base = np.tile(rng.normal(size=(1, 7)) + 3.0, (6, 1))
    assert degenerate_reason(base + 1e-8 * rng.normal(size=base.shape)) is not None
    assert degenerate_reason(base + 1e-3 * rng.normal(size=base.shape)) is None
    x = rng.normal(size=(6, 3))
    x[2, 1] = np.nan
    x[4, 0] = np.inf
    assert "NaN or infinite values (in 2 of 6 images)" in degenerate_reason(x)
    assert degenerate_reason(np.ones((1, 5))) is None  # one row: nothing to compare


@pytest.mark.parametrize("features", [np.zeros((12, 10), np.float32), np.full((12, 10), np.nan, np.float32)])
def test_embedding_functions_refuse_degenerate_features(features):
    # scikit-learn's t-SNE on all-zero features used to crash the whole process (segmentation fault)
    labels = np.arange(12) % 2
    for call in (lambda: embed_tsne(features, perplexity=3), lambda: knn_accuracy(features, labels, k=2),
                 lambda: nearest_neighbours(features, [0, 1], k=3)):
        with pytest.raises(DegenerateError):
            call()
    if np.isnan(features).any():
        with pytest.raises(DegenerateError):
            embed_pca(features)
    else:  # the exact PCA needs no division by the variance: constant features project to zeros
        assert not embed_pca(features).any()


def test_colour_maps_draw_non_finite_values_grey():
    from reportgen.imaging import color_limit, heat_colors, signed_colors

    x = np.array([[np.nan, 1.0], [-2.0, np.inf]])
    assert color_limit(x, "signed") == 2.0 and color_limit(x, "heat") == 1.0
    s = signed_colors(x)
    assert np.allclose(s[0, 0], 0.5) and np.allclose(s[1, 1], 0.5)
    assert np.allclose(s[1, 0], [0.10, 0.25, 0.80])  # -2 = -vmax: full blue
    h = heat_colors(x)
    assert np.allclose(h[0, 0], 0.5) and np.allclose(h[1, 1], 0.5)
    assert np.allclose(h[0, 1], heat_colors(np.array([[1.0]]))[0, 0])  # 1 = the finite maximum: the top colour


def build(tmp_path, image_folder, factory):
    config = tmp_path / "fast.toml"
    config.write_text(FAST)
    out = tmp_path / "site"
    result = CliRunner().invoke(main, ["build", f"tiny_models:{factory}", "--input-size", "32x32", "--channels", "3",
                                       "--images", str(image_folder), "--out", str(out), "--samples", "2",
                                       "--config", str(config), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    analyses = json.loads((out / "manifest.json").read_text())["analyses"]
    assert not [a["name"] for a in analyses if a["status"] == "failed"], analyses
    return {a["name"]: a for a in analyses}


def test_zero_head_builds_and_says_the_logits_are_constant(tmp_path, image_folder):
    a = build(tmp_path, image_folder, "zero_head_cnn")
    assert any("features of logits are constant" in n and "all zero" in n for n in a["embeddings"]["notes"])
    assert a["predictions"]["status"] == "ok"  # constant logits are still predictions (all class 0)
    # no pixel moves a logit of a zero head: the gradient maps are black, and the page says why
    assert any("maps are zero at every pixel" in n for n in a["gradient"]["notes"])
    # and the findings say so, with the count of the gradient page's maps
    findings = {f["id"]: f for f in json.loads((tmp_path / "site" / "manifest.json").read_text())["findings"]}
    blank = findings["degenerate-maps"]
    maps = a["gradient"]["metrics"]["maps"]
    assert blank["severity"] == "warning" and f"gradient {maps} of {maps}" in blank["sentence"]
    assert blank["numbers"]["degenerate maps"]["gradient"] == maps


def test_constant_layer_builds_with_a_note_on_each_affected_figure(tmp_path, image_folder):
    a = build(tmp_path, image_folder, "constant_layer_cnn")
    notes = " ".join(a["embeddings"]["notes"])
    assert "features of 3 are constant" in notes and "features of logits are constant" in notes
    assert "features of 6 are constant" in " ".join(a["neighbours"]["notes"])
    assert a["neighbours"]["status"] == "ok"  # pixel-space neighbours are still shown
    hist = next(i for i in a["distributions"]["items"] if i["key"] == "hist-3")
    assert "Every value is 0.5: the layer is constant over the image set" in hist["caption"]


def test_nan_logits_make_the_class_score_analyses_not_applicable(tmp_path, image_folder):
    a = build(tmp_path, image_folder, "nan_output_cnn")
    for name in ("predictions", "top-predictions", "gradient", "grad-cam", "occlusion", "class-max", "adversarial"):
        assert a[name]["status"] == "not applicable" and "NaN or infinite" in a[name]["reason"], name
    assert any("logits contain NaN" in n for n in a["embeddings"]["notes"])
    assert a["filters"]["status"] == "ok" and a["activation-maps"]["status"] == "ok"


def test_a_shared_grid_scale_ignores_non_finite_tiles():
    from reportgen.artifacts import Grid
    from reportgen.imaging import grid_rgb, heat_colors

    tiles = np.stack([np.full((2, 2), 2.0), np.full((2, 2), np.nan), np.full((2, 2), 1.0)])
    rgb = grid_rgb(Grid(key="g", tiles=tiles, style="heat", cols=3))
    # one scale for all: the tile of 1.0 is drawn at half the scale of the tile of 2.0, the NaN tile grey
    half = heat_colors(np.array([[1.0]]), 2.0)[0, 0]
    assert np.allclose(rgb[1, -2], half)
    assert np.allclose(rgb[1, rgb.shape[1] // 2], 0.5)


def test_maps_zero_at_every_pixel_or_not_finite_are_said_so():
    from reportgen.analyses.influence import degenerate_maps

    maps = np.ones((3, 2, 2))
    maps[1] = 0.0
    maps[2, 0, 0] = np.nan
    clean, blank, notes = degenerate_maps(maps)
    assert np.isfinite(clean).all() and clean[2, 0, 0] == 0 and clean[2, 1, 1] == 1
    assert blank == ["", "This map is zero at every pixel.", "This map had NaN or infinite values, drawn as 0."]
    assert "1 of the 3 maps are zero at every pixel" in notes[1] and "1 of the 3 maps had NaN" in notes[0]
    assert degenerate_maps(np.ones((2, 2, 2)))[2] == []
