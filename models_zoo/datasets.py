"""The zoo's offline data sets: points in a disk, scikit-learn's bundled digits, generated shapes.

Every loader takes ``(split, seed, n)`` and is deterministic; train and test never share a sample.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import scenes, shapes

SPLITS = ("train", "test")

DISK_RADIUS = 1.2  # pi r^2 / 3^2 ~ 0.50: the two classes are balanced in the [-1.5, 1.5]^2 square
POINTS_SIZES = {"train": 2000, "test": 1000}
SHAPES_SIZES = {"train": 6000, "test": 1000}
SCENES_SIZES = {"train": 6000, "test": 1000}
BINARY_CLASS = shapes.CLASS_NAMES.index("triangle")  # the binary question: does the scene hold a triangle?
BINARY_NAMES = ("no triangle", "triangle")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}': use 'train' or 'test'")


def _split_seed(split: str, seed: int) -> np.random.SeedSequence:
    # Independent streams per split, so train and test stay disjoint for any seed.
    return np.random.SeedSequence([seed, SPLITS.index(split)])


def disk_points(split: str = "test", seed: int = 0, n: int | None = None):
    """Points uniform in [-1.5, 1.5]^2: float32 (n, 2); labels int64 (n,), 1 inside the centred disk, else 0."""
    _check_split(split)
    n = POINTS_SIZES[split] if n is None else n
    rng = np.random.default_rng(_split_seed(split, seed))
    points = rng.uniform(-1.5, 1.5, (n, 2)).astype(np.float32)
    labels = (np.hypot(points[:, 0], points[:, 1]) <= DISK_RADIUS).astype(np.int64)
    return points, labels, None


def digits(split: str = "test", seed: int = 0, n: int | None = None):
    """scikit-learn's 1,797 bundled 8x8 digits, scaled to 0..255 and upsampled (bilinear) to uint8 (n, 28, 28, 1).

    The split is stratified 75/25 with ``random_state=seed``; labels int64 in 0..9.
    """
    _check_split(split)
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) * (255.0 / 16.0)
    idx_train, idx_test = train_test_split(
        np.arange(len(images)), test_size=0.25, stratify=bunch.target, random_state=seed
    )
    idx = idx_train if split == "train" else idx_test
    idx = idx if n is None else idx[:n]
    small = torch.from_numpy(images[idx])[:, None]
    big = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    inputs = big.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(inputs), bunch.target[idx].astype(np.int64), None


def shapes_data(split: str = "test", seed: int = 0, n: int | None = None):
    """Generated shapes: uint8 (n, 64, 64, 3), labels int64 (n,), masks bool (n, 64, 64); see `shapes.generate`."""
    _check_split(split)
    n = SHAPES_SIZES[split] if n is None else n
    seq = _split_seed(split, seed)
    return shapes.generate(n, int(seq.generate_state(1)[0]))


def scenes_data(task: str, split: str = "test", seed: int = 0, n: int | None = None):
    """Generated scenes (`scenes.generate`) with the truths of ``task``: (inputs uint8 (n, 64, 64, 3), labels int64
    (n,), masks bool (n, 64, 64) True on any shape, truth dict or None), as `models_zoo.ZooData` documents them.

    labels: 0/1 "holds a triangle" for binary, else the class of the shape with the most visible pixels. The
    scenes of a (split, seed) are the same for every task; they are not the single-shape images of that seed.
    """
    _check_split(split)
    n = SCENES_SIZES[split] if n is None else n
    s = _scenes(split, seed, n)
    labels, truth = s.labels.copy(), None
    if task == "multilabel":
        truth = {"labels": s.multilabel.copy()}
    elif task == "regress":
        truth = {"values": s.counts.copy()}
    elif task == "segment":
        truth = {"class_masks": s.class_maps.copy()}
    elif task == "detect":
        truth = {"boxes": [b.copy() for b in s.boxes], "box_labels": [b.copy() for b in s.box_labels]}
    elif task == "binary":
        labels = s.multilabel[:, BINARY_CLASS].astype(np.int64)
    else:
        raise ValueError(f"no scenes truth for task '{task}'")
    return s.images.copy(), labels, s.masks.copy(), truth


@lru_cache(maxsize=2)
def _scenes(split: str, seed: int, n: int) -> scenes.Scenes:
    """The scenes of (split, seed, n), kept for the next task that asks (the tasks share them; callers copy)."""
    # A stream of its own (third word 1), so that a seed's scenes share no draws with its single shapes.
    return scenes.generate(n, np.random.SeedSequence([seed, SPLITS.index(split), 1]))
