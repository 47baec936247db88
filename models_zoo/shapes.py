"""A generated data set of coloured shapes on textured, noisy backgrounds, with a ground-truth mask per image.

Every image is drawn with vectorized numpy over a whole chunk of images at once (well under 1 ms per 64x64 image),
from a seeded ``numpy.random.Generator`` only, so the same seed gives the same bytes on every machine. The shape
classes are chosen to stay distinguishable at small sizes (no hexagon next to the disk).
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("disk", "square", "triangle", "star", "ring", "cross", "crescent", "heart")
SIZE = 64
_CHUNK = 256  # images per vectorized step: bounds the float32 temporaries to a few tens of MB


def _inside(cls: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of shape ``cls`` in normalized coordinates (shape roughly filling the unit disk).

    ``x``, ``y``: (n, H, W) float32, already translated, rotated and scaled so the shape's circumradius is ~1.
    """
    r = np.hypot(x, y)
    if cls == 0:  # disk
        return r <= 0.85
    if cls == 1:  # square, side 1.5 so its area is close to the disk's
        return np.maximum(np.abs(x), np.abs(y)) <= 0.72
    if cls == 2:  # equilateral triangle: distance to each of the 3 edges, circumradius 1
        theta = np.arctan2(y, x)
        sector = np.mod(theta, 2 * np.pi / 3) - np.pi / 3
        return r * np.cos(sector) <= 0.5
    if cls == 3:  # five-pointed star: radius swings between outer 1 and inner 0.42 along a triangle wave
        theta = np.arctan2(y, x)
        phase = np.mod(theta, 2 * np.pi / 5) / (2 * np.pi / 5)  # 0..1 within one arm
        wave = np.abs(2 * phase - 1)  # 1 at a tip, 0 between tips
        return r <= 0.42 + 0.58 * wave
    if cls == 4:  # ring
        return (r <= 0.95) & (r >= 0.55)
    if cls == 5:  # plus-shaped cross, arms 0.5 wide
        ax, ay = np.abs(x), np.abs(y)
        return ((ax <= 0.25) & (ay <= 0.95)) | ((ay <= 0.25) & (ax <= 0.95))
    if cls == 6:  # crescent: a disk minus a shifted disk
        return (r <= 0.9) & (np.hypot(x - 0.45, y) > 0.7)
    if cls == 7:  # heart: the implicit curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled and centred
        hx, hy = x * 1.25, -y * 1.25 + 0.25
        return (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy**3 <= 0
    raise ValueError(f"unknown shape class {cls}")


def _backgrounds(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size, size, 3) float32 in [0, 1]: a linear colour gradient plus a few soft low-frequency blobs."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    c0 = rng.uniform(0, 1, (n, 1, 1, 3)).astype(np.float32)
    c1 = rng.uniform(0, 1, (n, 1, 1, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    t = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) / np.float32(np.sqrt(0.5)) + 0.5
    bg = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
    for _ in range(3):  # blobs: large gaussians that shift the colour locally, like uneven lighting or stains
        cx = rng.uniform(0, 1, (n, 1, 1)).astype(np.float32)
        cy = rng.uniform(0, 1, (n, 1, 1)).astype(np.float32)
        sigma = rng.uniform(0.1, 0.3, (n, 1, 1)).astype(np.float32)
        colour = rng.uniform(-0.35, 0.35, (n, 1, 1, 3)).astype(np.float32)
        weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        bg += weight[..., None] * colour
    return bg


def _chunk(rng: np.random.Generator, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(labels)
    bg = _backgrounds(rng, n, size)
    # A foreground colour far enough from the mean background that the shape stays visible: where a random colour
    # is too close, each channel is pushed to the far side of the background's (at least 0.25 away per channel).
    fg = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    bg_mean = bg.mean(axis=(1, 2))
    far = np.where(bg_mean < 0.5, rng.uniform(0.75, 1, (n, 3)), rng.uniform(0, 0.25, (n, 3))).astype(np.float32)
    close = np.linalg.norm(fg - bg_mean, axis=1) < 0.45
    fg[close] = far[close]
    radius = rng.uniform(0.16, 0.34, n).astype(np.float32) * size
    margin = radius + 1
    cx = rng.uniform(margin, size - margin).astype(np.float32)
    cy = rng.uniform(margin, size - margin).astype(np.float32)
    rot = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    aspect = rng.uniform(0.85, 1.15, n).astype(np.float32)  # mild stretch so no two disks are identical up to size

    pix = np.arange(size, dtype=np.float32) + 0.5
    dy = pix[None, :, None] - cy[:, None, None]
    dx = pix[None, None, :] - cx[:, None, None]
    cos, sin = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None]
    u = (cos * dx + sin * dy) / (radius * aspect)[:, None, None]
    v = (-sin * dx + cos * dy) / (radius / aspect)[:, None, None]

    masks = np.zeros((n, size, size), dtype=bool)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        masks[idx] = _inside(int(cls), u[idx], v[idx])

    img = np.where(masks[..., None], fg[:, None, None, :], bg)
    # Shading on the shape too, so colour alone is not a perfect segmenter.
    img += rng.normal(0, 0.06, img.shape).astype(np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), masks


def generate(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` images with balanced classes.

    Returns:
        images: uint8 (n, size, size, 3); labels: int64 (n,) in [0, 8) indexing `CLASS_NAMES`;
        masks: bool (n, size, size), True on the shape's pixels (never empty).
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        images[start:stop], masks[start:stop] = _chunk(rng, labels[start:stop], size)
    return images, labels, masks
