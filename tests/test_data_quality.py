"""Data quality (issue 28): confident learning and near-duplicates against direct computations written out loop by
loop, and one small build on a folder with planted label errors and planted duplicates (exact, near, and one under
two labels) and a hand-weighted model that truly separates the classes: the planted ones are found, the clean ones
are not, and a clean folder gives no finding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.analyses import findings as fd
from reportgen.analyses.data_quality import ThumbnailSample
from reportgen.methods.data_quality import (confident_learning, duplicate_groups, near_duplicates, psnr,
                                            thumbnails)

CLASSES = ("red", "green", "blue")  # class folder c holds pictures whose channel c is the most intense
SIDE = 32  # the folder's images: 32x32, so that the 16x16 thumbnails are exact 2x2 block means


def colour_model() -> nn.Module:
    """Logits = 8 x the mean of each colour channel (inputs in [0, 1]: mean 0, std 1): the most intense channel
    wins. On the folder below each class's channel mean is about 0.78 against 0.2 for the others, so p(class) is
    about 0.98: a model that separates the classes without being saturated."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    with torch.no_grad():  # the folder's classes are its sub-folders in sorted order (blue, green, red)
        weight = torch.zeros(3, 3)
        for k, name in enumerate(sorted(CLASSES)):
            weight[k, CLASSES.index(name)] = 8.0
        model[2].weight.copy_(weight)
        model[2].bias.zero_()
    return model.eval()


def picture(rng: np.random.Generator, channel: int) -> np.ndarray:
    arr = rng.integers(0, 100, (SIDE, SIDE, 3)).astype(np.uint8)
    arr[..., channel] += 150
    return arr


def write_folder(root: Path, planted: bool, per_class: int = 9, seed: int = 0) -> dict:
    """Class folders of random pictures whose dominant channel is the class; with ``planted``: one picture of
    another colour in each class folder (label errors), an exact copy within red, a copy with +-3 grey levels of
    noise within green, and a copy of a green picture in the blue folder (a duplicate under two labels, and a label
    error). Returns the planted names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(picture(rng, c)).save(root / name / f"img{i}.png")
    if not planted:
        return {}
    for c, name in enumerate(CLASSES):  # a picture of the next colour, filed under this class
        Image.fromarray(picture(rng, (c + 1) % 3)).save(root / name / "wrong.png")
    shutil.copy(root / "red" / "img1.png", root / "red" / "copy.png")
    noisy = np.asarray(Image.open(root / "green" / "img2.png")).astype(np.int64)
    noisy = np.clip(noisy + rng.integers(-3, 4, noisy.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(root / "green" / "near.png")
    shutil.copy(root / "green" / "img3.png", root / "blue" / "green-copy.png")
    return {"errors": {"red/wrong.png", "green/wrong.png", "blue/wrong.png", "blue/green-copy.png"},
            "pairs": {("red/copy.png", "red/img1.png"), ("green/img2.png", "green/near.png"),
                      ("blue/green-copy.png", "green/img3.png")},
            "identical": {("red/copy.png", "red/img1.png"), ("blue/green-copy.png", "green/img3.png")},
            "two labels": {("blue/green-copy.png", "green/img3.png")}}


# --- confident learning against the paper's definition, written out -------------------------------------------------


def direct_confident_learning(probs, labels):
    """Northcutt et al. 2021, section 3.1, loop by loop: t_j the mean p_j over the examples labelled j; an example
    labelled i is counted at (i, j) for j = argmax of p_l over the classes l with p_l >= t_l."""
    m, k = len(probs), len(probs[0])
    t = []
    for j in range(k):
        own = [probs[x][j] for x in range(m) if labels[x] == j]
        t.append(sum(own) / len(own) if own else float("inf"))
    joint = [[0] * k for _ in range(k)]
    off = []
    for x in range(m):
        above = [l for l in range(k) if probs[x][l] >= t[l]]
        if not above:
            continue
        j = max(above, key=lambda l: probs[x][l])
        joint[labels[x]][j] += 1
        if j != labels[x]:
            off.append(x)
    return t, joint, sorted(off, key=lambda x: (probs[x][labels[x]], x))


def test_confident_learning_equals_the_paper_written_out():
    rng = np.random.default_rng(0)
    for m, k in ((200, 4), (57, 7)):
        labels = rng.integers(0, k, m)
        labels[labels == k - 1] = 0  # one class without a labelled image: it gets no threshold
        probs = rng.dirichlet(np.full(k, 0.5), size=m)
        found = confident_learning(probs, labels)
        t, joint, off = direct_confident_learning(probs.tolist(), labels.tolist())
        assert np.allclose(found.thresholds[:-1], t[:-1]) and found.thresholds[-1] == np.inf == t[-1]
        assert found.joint.tolist() == joint
        assert found.flagged.tolist() == off
        assert len(off) > 3  # random probabilities: many examples are counted off the diagonal


def test_confident_learning_finds_the_flipped_labels_of_a_separating_model():
    rng = np.random.default_rng(1)
    true = np.repeat(np.arange(3), 20)
    logits = 5.0 * np.eye(3)[true] + rng.normal(0, 0.3, (60, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    given = true.copy()
    flipped = [3, 25, 47, 48]
    given[flipped] = (true[flipped] + 1) % 3
    found = confident_learning(probs, given)
    assert sorted(found.flagged.tolist()) == flipped
    assert found.suspected[flipped].tolist() == true[flipped].tolist()
    assert confident_learning(probs, true).flagged.size == 0


# --- near-duplicates against a brute-force loop ---------------------------------------------------------------------


def test_near_duplicates_equal_a_brute_force_loop_over_block_mean_thumbnails():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, (30, 3, 32, 32))
    base[5] = base[4]  # exact
    base[9] = np.clip(base[8] + rng.normal(0, 0.01, base[8].shape), 0, 1)  # near
    base[20] = np.clip(base[19] + 0.02, 0, 1)  # brightness +0.02: RMS <= 0.02, PSNR >= 34 dB
    base[21] = np.clip(base[2] + rng.normal(0, 0.2, base[2].shape), 0, 1)  # too noisy: not a pair
    images = torch.from_numpy(base).float()
    thumbs = thumbnails(images)
    # independent: 2x2 block means, then every pair
    blocks = base.reshape(30, 3, 16, 2, 16, 2).mean(axis=(3, 5)).reshape(30, -1)
    assert np.allclose(thumbs, blocks, atol=1e-6)
    want = []
    for i in range(30):
        for j in range(i + 1, 30):
            rms = float(np.sqrt(np.mean((blocks[i] - blocks[j]) ** 2)))
            if -20 * np.log10(max(rms, 1e-300)) >= 30.0:
                want.append((i, j, rms))
    pairs, rms = near_duplicates(thumbs, 30.0, block=7)  # blocks that cut the rows unevenly
    assert [tuple(p) for p in pairs.tolist()] == [(i, j) for i, j, _ in sorted(want, key=lambda w: (w[2], w[0]))]
    assert np.allclose(rms, [w[2] for w in sorted(want, key=lambda w: (w[2], w[0]))], atol=1e-6)
    assert {(4, 5), (8, 9), (19, 20)} <= {tuple(p) for p in pairs.tolist()}
    assert rms[0] == 0 and psnr(rms[0]) == np.inf
    assert duplicate_groups(np.array([[1, 2], [2, 7], [4, 5]]), 10) == [[1, 2, 7], [4, 5]]


def test_thumbnail_sample_merged_from_ranks_equals_one_stream_and_holds_at_most_its_cap():
    rng = np.random.default_rng(3)
    pix = torch.from_numpy(rng.integers(0, 256, (23, 3, 20, 20))).float() / 255.0
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
    inputs = (pix - torch.tensor(mean).view(1, 3, 1, 1).float()) / torch.tensor(std).view(1, 3, 1, 1).float()

    def batch(k):
        idx = torch.arange(4 * k, min(4 * k + 4, 23))
        return SimpleNamespace(inputs=inputs[idx], indices=idx, labels=idx % 2)

    one = ThumbnailSample(8, mean, std, np.random.default_rng(5))
    for k in range(6):
        one.update(batch(k), {}, None)
    ranks = [ThumbnailSample(8, mean, std, np.random.default_rng(5)) for _ in range(3)]
    for k in range(6):
        ranks[k % 3].update(batch(k), {}, None)
    for other in ranks[1:]:
        ranks[0].merge(other)
    (t1, d1, i1), (t2, d2, i2) = one.kept(), ranks[0].kept()
    assert np.array_equal(i1, i2) and np.array_equal(t1, t2) and np.array_equal(d1, d2)
    assert len(i1) == 8 and ranks[0].seen == 23 and one.thumbs.shape[0] == 8
    # the thumbnails are those of the 8-bit pixels, denormalized back exactly
    assert np.allclose(t1, thumbnails(pix[torch.from_numpy(i1)]), atol=1e-6)


# --- the findings on their own --------------------------------------------------------------------------------------


def test_findings_say_not_checked_with_the_reason_and_grade_by_share():
    assert fd.label_error_findings(None, "'data-quality' was not chosen (--only / --skip)")[0].severity == \
        "not checked"
    assert "no labels" in fd.label_error_findings({"why": "the image set has no labels"})[0].sentence
    assert fd.duplicate_findings({"why": "only 1 image was seen"})[0].severity == "not checked"

    def errors(f, m=100):
        issues = {"checked": m, "flagged": f, "share": f / m, "accuracy": 0.9,
                  "top": [{"image": "x.png", "given": "a", "suspected": "b", "self-confidence": 0.01}] * min(f, 3)}
        return fd.label_error_findings(issues)[0].severity

    assert [errors(f) for f in (0, 3, 4, 9, 10)] == ["info", "info", "warning", "warning", "alert"]

    def dups(extra, differ=0, n=200):
        d = {"checked": n, "seen": n, "pairs": extra, "identical": 0, "different labels": differ, "groups": extra,
             "images": 2 * extra, "extra copies": extra, "min psnr": 30.0,
             "examples": [{"a": "x", "b": "y", "label a": "a", "label b": "b" if differ else "a",
                           "identical": False}]}
        return fd.duplicate_findings(d)[0]

    assert [dups(e).severity for e in (0, 1, 2, 19, 20)] == ["info", "info", "warning", "warning", "alert"]
    assert dups(1, differ=1).severity == "warning" and "two different labels" in dups(1, differ=1).sentence


# --- one build: planted label errors and duplicates are found, a clean folder gives no finding -----------------------


def build(root: Path, out: Path) -> dict:
    from conftest import run

    result = run("build", "test_data_quality:colour_model", "--input-size", f"{SIDE}x{SIDE}", "--channels", "3",
                 "--mean", "0,0,0", "--std", "1,1,1", "--images", root, "--only", "findings,predictions,data-quality",
                 "--samples", "1", "--out", out)
    assert result.exit_code == 0, result.output
    return json.loads((out / "manifest.json").read_text())


def test_planted_label_errors_and_duplicates_are_found_and_a_clean_folder_gives_no_finding(tmp_path):
    planted = write_folder(tmp_path / "planted", planted=True)
    manifest = build(tmp_path / "planted", tmp_path / "site")
    entry = next(a for a in manifest["analyses"] if a["name"] == "data-quality")
    assert entry["status"] == "ok" and entry["section"] == "data"
    tables = {i["key"]: i for i in entry["items"] if i["type"] == "table"}
    errors = {r[0] for r in tables["label-errors"]["rows"]}
    assert errors == planted["errors"]
    pairs = {tuple(sorted(r[:2])): r for r in tables["duplicate-pairs"]["rows"]}
    assert set(pairs) == planted["pairs"]
    assert {p for p, r in pairs.items() if r[6] == "yes"} == planted["identical"]
    assert {p for p, r in pairs.items() if r[2] != r[3]} == planted["two labels"]
    # the page leads with the pictures: the suspects, then the pairs side by side, then the tables
    kinds = [i["type"] for i in entry["items"]]
    assert kinds[:7] == ["picture"] * 7 and "table" not in kinds[:7]
    found = {f["id"]: f for f in manifest["findings"]}
    assert found["label-errors"]["numbers"]["flagged"] == 4 and found["label-errors"]["severity"] == "alert"
    assert found["duplicates"]["numbers"]["pairs with different labels"] == 1
    assert found["duplicates"]["severity"] == "warning" and "two different labels" in found["duplicates"]["sentence"]
    page = (tmp_path / "site" / "analyses" / "data-quality.html").read_text()
    for f in (found["label-errors"], found["duplicates"]):
        assert f["links"] and all(f'id="{lk["anchor"]}"' in page for lk in f["links"] if lk["anchor"])

    write_folder(tmp_path / "clean", planted=False)
    manifest = build(tmp_path / "clean", tmp_path / "clean-site")
    found = {f["id"]: f for f in manifest["findings"]}
    assert found["label-errors"]["severity"] == "info" and found["label-errors"]["numbers"]["flagged"] == 0
    assert found["duplicates"]["severity"] == "info" and found["duplicates"]["numbers"]["pairs"] == 0
    accuracy = next(a for a in manifest["analyses"] if a["name"] == "predictions")["metrics"]["accuracy"]
    assert accuracy == 1.0  # the model truly separates the classes
