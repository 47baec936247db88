"""The trust tables of a report, known in advance: a model whose decision depends on a known set of pixels, one
method that finds exactly that set and one that ranks it by construction after most other pixels.

The model (`tiny_models.PixelSet`): logits ``[sum of channel 0 over the 4x4 block S, 4]``, so the class "set" has
probability sigmoid(sum_S x0 - 4). Two 16x16 images, identical in channel 0 (random in channels 1 and 2, which the
model ignores): S = 191/255 (0.498 after normalization with mean = std = 0.5), the 8x8 box around S black (-1), the
rest white (+1). Deletion and insertion have 16 steps of 16 pixels, S has 16 pixels:

- the gradient is 1 on S and 0 elsewhere: S goes first, in step 1;
- Grad-CAM at ``features`` (the image itself) is ReLU(x0) / 16: the 192 white pixels first, then S (exactly step
  13, ranks 192..207), then the black box; so its deletion curve falls only at step 13 and its insertion curve
  rises only there.

Every point of every curve is then p(S as in the image), p(S deleted to the mean colour, 0) or p(S as in the
blurred copy), computed here with a second blur (`test_caught_bugs.reference_blur`). The randomization check
re-initializes the head (its only parameter w, with w's mean and std): the gradient becomes a random positive
pattern (|Spearman| small: pass), Grad-CAM keeps a positive weight and so exactly its order of pixels (1: fail),
and the edge detector ignores the model (1: fail). Catches: the deletion and insertion columns swapped, the fill
value, the insertion start, the verdicts inverted or the rows and columns reordered.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import run
from test_caught_bugs import reference_blur

ARGS = ["tiny_models:pixel_set", "--input-size", "16x16", "--channels", "3", "--mean", "0.5,0.5,0.5", "--std",
        "0.5,0.5,0.5", "--class-names", "set,other", "--samples", "2", "-q"]
CONFIG = """
[analysis.grad-cam]
layer = "features"
[analysis.deletion-insertion]
methods = ["gradient", "grad-cam"]
[analysis.randomization-test]
methods = ["gradient", "grad-cam"]
"""
S = (slice(6, 10), slice(6, 10))
STEPS = 16  # deletion-insertion's default


def channel_0() -> np.ndarray:
    """Channel 0 of both images as uint8 (16, 16): white, a black 8x8 box, S inside it at 191."""
    x0 = np.full((16, 16), 255, np.uint8)
    x0[4:12, 4:12] = 0
    x0[S] = 191
    return x0


@pytest.fixture(scope="module")
def trust_site(tmp_path_factory):
    from PIL import Image

    tmp = tmp_path_factory.mktemp("trust")
    folder = tmp / "images" / "set"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(2):
        arr = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
        arr[..., 0] = channel_0()
        Image.fromarray(arr).save(folder / f"img{k}.png")
    (tmp / "c.toml").write_text(CONFIG)
    out = tmp / "site"
    result = run("build", *ARGS, "--images", tmp / "images", "--out", out, "--config", tmp / "c.toml",
                 "--only", "gradient,grad-cam,deletion-insertion,randomization-test")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    return {a["name"]: a for a in manifest["analyses"]}, manifest


def probabilities() -> tuple[float, float, float]:
    """p("set") with S as in the image, with S deleted (the fill 0 = the mean colour) and with S blurred."""
    x0 = (channel_0().astype(np.float64) / 255 - 0.5) / 0.5

    def p(s_sum: float) -> float:
        return 1 / (1 + math.exp(-(s_sum - 4.0)))

    blurred = reference_blur(x0, 0.05)  # insertion's start: deletion-insertion's default blur
    return p(x0[S].sum()), p(0.0), p(blurred[S].sum())


def auc(curve: list[float]) -> float:
    """Trapezoid rule over [0, 1] at equal steps (a second computation of the table's areas)."""
    return float(np.trapezoid(curve, dx=1 / (len(curve) - 1)))


def test_deletion_and_insertion_table_has_the_known_areas_in_its_columns(trust_site):
    entries, manifest = trust_site
    image, deleted, blurred = probabilities()
    assert blurred < 0.2 < 0.9 < image and deleted < 0.02  # the blur hides S behind the black box
    assert [s["pred"] for s in manifest["images"]["samples"]] == ["set", "set"]
    assert [s["prob"] for s in manifest["images"]["samples"]] == pytest.approx([image] * 2, abs=1e-6)
    right = {"deletion": [image] + [deleted] * STEPS, "insertion": [blurred] + [image] * STEPS}
    wrong = {"deletion": [image] * 13 + [deleted] * 4, "insertion": [blurred] * 13 + [image] * 4}
    expected = {"gradient": right, "grad-cam": wrong}
    di = entries["deletion-insertion"]
    assert di["status"] == "ok"
    table = next(i for i in di["items"] if i.get("key") == "trust")
    assert table["columns"] == ["method", "deletion AUC ↓", "sd", "insertion AUC ↑", "sd", "best at"]
    assert [r[0] for r in table["rows"]] == ["gradient", "grad-cam", "random order"]
    for row in table["rows"][:2]:
        curves = expected[row[0]]
        assert row[1:5] == pytest.approx([auc(curves["deletion"]), 0.0, auc(curves["insertion"]), 0.0], abs=1e-6)
    assert table["rows"][0][5] == "deletion, insertion" and table["rows"][1][5] == "–"
    # a random order lies between the map that finds S and the one that keeps it for last
    rand = table["rows"][2]
    assert table["rows"][0][1] < rand[1] < table["rows"][1][1] and table["rows"][0][3] > rand[3] > table["rows"][1][3]
    assert rand[5] == "baseline"
    # each image's table: the same areas in the same column order
    per_image = [i for i in di["items"] if i.get("key", "").startswith("image-")]
    assert len(per_image) == 2
    for item in per_image:
        assert item["columns"] == ["method", "deletion AUC ↓", "insertion AUC ↑", "best at"]
        assert [r[0] for r in item["rows"]] == ["gradient", "grad-cam", "random order"]
        for row, want in zip(item["rows"][:2], table["rows"]):  # the random order is each image's own
            assert row[1:] == [pytest.approx(want[1], abs=1e-6), pytest.approx(want[3], abs=1e-6), want[5]]
    # the curves' end points, also stated as numbers
    m = di["metrics"]
    assert m["probability of the image"] == pytest.approx(image, abs=1e-6)
    assert m["probability with every pixel deleted"] == pytest.approx(deleted, abs=1e-6)
    assert m["probability of the blurred image"] == pytest.approx(blurred, abs=1e-6)
    assert m["best deletion AUC"] == pytest.approx(auc(right["deletion"]), abs=1e-6)
    assert m["best insertion AUC"] == pytest.approx(auc(right["insertion"]), abs=1e-6)


def test_randomization_table_passes_the_gradient_and_fails_grad_cam_and_the_control(trust_site):
    entries, _ = trust_site
    rt = entries["randomization-test"]
    assert rt["status"] == "ok"
    table = next(i for i in rt["items"] if i.get("key") == "trust")
    assert table["columns"] == ["method", "Spearman, 'head' randomized", "Spearman, all layers randomized",
                                "SSIM, all layers randomized", "check"]
    assert [r[0] for r in table["rows"]] == ["gradient", "grad-cam", "edge detector (control)"]
    gradient, grad_cam, control = table["rows"]
    # one step (the head owns the only parameter): both Spearman columns are the same; a random pattern against S
    assert gradient[1] == gradient[2] and abs(gradient[2]) < 0.3 and gradient[4] == "pass"
    assert grad_cam[1:4] == pytest.approx([1.0, 1.0, 1.0], abs=1e-9) and grad_cam[4] == "fail"
    assert control[1:4] == pytest.approx([1.0, 1.0, 1.0], abs=1e-9) and control[4] == "fail"
    assert rt["metrics"]["passed"] == 1 and rt["metrics"]["failed"] == 1
