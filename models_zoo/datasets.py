"""The zoo's offline data sets: points in a disk, scikit-learn's bundled digits, generated shapes.

Every loader takes ``(split, seed, n)`` and is deterministic; train and test never share a sample.
"""

from __future__ import annotations

import numpy as np

from . import shapes

SPLITS = ("train", "test")

DISK_RADIUS = 1.2  # pi r^2 / 3^2 ~ 0.50: the two classes are balanced in the [-1.5, 1.5]^2 square
POINTS_SIZES = {"train": 2000, "test": 1000}
SHAPES_SIZES = {"train": 6000, "test": 1000}


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
