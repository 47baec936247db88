"""--max-images N: a seeded sample stratified by class (folders, zoo sets and Datasets), said on the data page."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from conftest import TINY_ARGS, run
from reportgen.data import dataset_image_set, load_image_set, stratified_pick
from reportgen.models import InputSpec

SPEC = InputSpec(kind="image", size=(8, 8), channels=3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def numbered_folder(root: Path, classes=("a", "b", "c"), per_class=10) -> Path:
    """Class folders of constant-colour PNGs: image k of class c has red = c, green = k, so each decoded image
    says which file it came from."""
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.new("RGB", (8, 8), (c, k, 200)).save(root / name / f"{k:02d}.png")
    return root


def test_pick_known_answers():
    labels = np.repeat([0, 1, 2], 10)
    pick = stratified_pick(labels, 6, seed=0)
    assert Counter(labels[pick].tolist()) == {0: 2, 1: 2, 2: 2}
    assert len(set(pick.tolist())) == 6 and list(pick) == sorted(pick)
    assert np.array_equal(pick, stratified_pick(labels, 6, seed=0))  # same seed, same pick
    assert not np.array_equal(pick, stratified_pick(labels, 6, seed=1))  # another seed, another pick
    # 7 of 3 x 10: one class (drawn by the seed) gets the extra image
    assert sorted(Counter(labels[stratified_pick(labels, 7, seed=0)].tolist()).values()) == [2, 2, 3]
    extra = {max(Counter(labels[stratified_pick(labels, 7, seed=s)].tolist()).items(), key=lambda kv: kv[1])[0]
             for s in range(12)}
    assert len(extra) > 1  # not always the same class
    # a class with fewer images gives all it has, the others share the rest: 1 + 4 + 4 of (1, 10, 10)
    small = np.array([0] + [1] * 10 + [2] * 10)
    assert Counter(small[stratified_pick(small, 9, seed=3)].tolist()) == {0: 1, 1: 4, 2: 4}
    # unlabelled images (-1) are a group of their own
    mixed = np.array([-1] * 10 + [0] * 10 + [1] * 10)
    assert Counter(mixed[stratified_pick(mixed, 6, seed=0)].tolist()) == {-1: 2, 0: 2, 1: 2}
    assert np.array_equal(stratified_pick(labels, 30, seed=5), np.arange(30))  # all of them: the whole set


def test_folder_pick_reads_the_picked_files(tmp_path):
    root = numbered_folder(tmp_path / "images")
    full = load_image_set(str(root), SPEC, None, seed=0)
    assert len(full) == 30 and not full.notes
    picked = load_image_set(str(root), SPEC, None, seed=0, max_images=6)
    assert Counter(picked.labels.tolist()) == {0: 2, 1: 2, 2: 2}
    assert picked.notes == ["6 of 30 images (--max-images), a seeded sample stratified by class (seed 0): "
                            "2 per class"]
    for i, name in enumerate(picked.names):  # image i is the file named names[i], with its folder's label
        cls, k = name.split("/")
        red, green, _ = picked.display(i)[0, 0]
        assert (red, green) == ("abc".index(cls), int(k[:2])) and picked.labels[i] == red
    again = load_image_set(str(root), SPEC, None, seed=0, max_images=6)
    other = load_image_set(str(root), SPEC, None, seed=1, max_images=6)
    assert again.names == picked.names and other.names != picked.names
    assert Counter(other.labels.tolist()) == {0: 2, 1: 2, 2: 2}


def test_unlabelled_folder_pick(tmp_path):
    from PIL import Image

    for k in range(12):
        Image.new("RGB", (8, 8), (0, k, 0)).save(tmp_path / f"{k:02d}.png")
    picked = load_image_set(str(tmp_path), SPEC, None, seed=2, max_images=4)
    assert len(picked) == 4 and [picked.display(i)[0, 0, 1] for i in range(4)] == [int(n[:2]) for n in picked.names]
    assert picked.notes == ["4 of 12 images (--max-images), a seeded random sample (seed 2): the images have no "
                            "labels to stratify by"]


class Listed:
    """A map-style Dataset that lists its labels (``targets``, as torchvision's do) and records what it reads."""

    def __init__(self, targets):
        self.targets, self.read = list(targets), []

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        import torch

        self.read.append(i)
        return torch.full((3, 8, 8), i / 255.0), self.targets[i]


def test_dataset_pick():
    data = Listed(np.repeat([0, 1, 2], 10))
    source = dataset_image_set(data, max_images=6, seed=0)
    assert Counter(data.targets[j] for j in source.items) == {0: 2, 1: 2, 2: 2}
    assert source.names == [f"item {j:02d}" for j in source.items] and not data.read  # nothing read yet
    images = source.bind(SPEC)
    assert images.notes == ["6 of 30 images (--max-images), a seeded sample stratified by class (seed 0): "
                            "2 per class"]
    for i, j in enumerate(source.items):
        assert images.display(i)[0, 0, 0] == j and images.labels[i] == data.targets[j]
    assert dataset_image_set(data, 6, seed=0).items == source.items
    assert dataset_image_set(data, 6, seed=1).items != source.items


def test_dataset_without_listed_labels():
    class Bare:
        def __len__(self):
            return 20

        def __getitem__(self, i):
            import torch

            return torch.zeros(3, 8, 8), i % 2

    source = dataset_image_set(Bare(), max_images=5, seed=4)
    assert len(source.items) == 5 == len(set(source.items))
    assert source.notes == ["5 of 20 images (--max-images), a seeded random sample (seed 4): the dataset lists no "
                            "labels (targets or samples) to stratify by without reading every item"]
    assert dataset_image_set(Bare(), max_images=20).items is None  # not below its length: every item


def test_build_says_so_on_the_data_page(tmp_path):
    root = numbered_folder(tmp_path / "images")
    out = tmp_path / "site"
    result = run("build", *TINY_ARGS, "--images", root, "--max-images", "6", "--only", "predictions",
                 "--out", out, "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    note = "6 of 30 images (--max-images), a seeded sample stratified by class (seed 0): 2 per class"
    assert manifest["images"]["used"] == 6 and note in manifest["images"]["notes"]
    assert note in (out / "data.html").read_text()
