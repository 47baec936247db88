"""Generated multi-object scenes: 1 to 4 of the `shapes` classes per 64x64 image, with every truth a task needs.

The shapes are drawn with `shapes._inside` (the same outlines, rotations and mild stretches as the single-shape
set) on `shapes._backgrounds` (colour gradients with soft blobs), smaller than there (circumradius 7.7 to 12.8 px)
and placed so that two circumscribed circles overlap little (centres at least 0.85 (r1 + r2) apart): a later shape
may cover a rim of an earlier one, never most of it. Two shapes of one class never touch (their circles are 2 px
apart at least), so the class map alone tells them apart. Everything comes from one seeded ``numpy.random.Generator``,
so the same seed gives the same bytes on every machine. `shapes.generate` is untouched: the single-shape entries'
data, and so their shipped weights, stay as they are.

Truths per image (`Scenes`): the class map (0 = background, k + 1 = class k; later shapes overwrite earlier ones),
one box per visible shape, tight around its visible pixels, the multi-label vector and the count per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import CLASS_NAMES, SIZE, _backgrounds, _inside

MAX_SHAPES = 4
RADIUS = (0.12, 0.20)  # circumradius as a fraction of the image side
MIN_GAP = 0.85  # centres at least MIN_GAP * (r1 + r2) apart; r1 + r2 + 2 px for two shapes of one class
_TRIES = 40  # placements tried per shape before it is left out (rare: a crowded image keeps fewer shapes)
_CHUNK = 256


@dataclass(frozen=True)
class Scenes:
    """``n`` generated scenes and their truths (K = 8 classes, `shapes.CLASS_NAMES`).

    images: uint8 (n, H, W, 3). class_maps: uint8 (n, H, W), 0 = background, k + 1 = class k.
    boxes: n float32 arrays (j, 4), xyxy in pixels (pixel (r, c) covers [c, c + 1) x [r, r + 1)), one per visible
    shape in drawing order, tight around its visible pixels. box_labels: n int64 arrays (j,), classes in [0, K).
    multilabel: uint8 (n, K) 0/1, the classes present. counts: float32 (n, K), boxes per class.
    labels: int64 (n,), the class of the shape with the most visible pixels. masks: bool (n, H, W), any shape.
    """

    images: np.ndarray
    class_maps: np.ndarray
    boxes: list[np.ndarray]
    box_labels: list[np.ndarray]
    multilabel: np.ndarray
    counts: np.ndarray
    labels: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _place(rng: np.random.Generator, n: int, size: int) -> dict[str, np.ndarray]:
    """Per image and slot (n, MAX_SHAPES): active, cls, cx, cy, radius, rot, aspect. Inactive slots draw nothing."""
    out = {k: np.zeros((n, MAX_SHAPES), np.float32) for k in ("cx", "cy", "radius", "rot", "aspect")}
    active = np.zeros((n, MAX_SHAPES), bool)
    cls = np.zeros((n, MAX_SHAPES), np.int64)
    for i in range(n):
        wanted = int(rng.integers(1, MAX_SHAPES + 1))
        placed: list[tuple[float, float, float, int]] = []
        for s in range(wanted):
            r = float(rng.uniform(*RADIUS)) * size
            c = int(rng.integers(len(CLASS_NAMES)))
            for _ in range(_TRIES):
                x, y = rng.uniform(r + 1, size - r - 1, 2)
                if all(np.hypot(x - px, y - py) >= (r + pr + 2 if c == pc else MIN_GAP * (r + pr))
                       for px, py, pr, pc in placed):
                    break
            else:
                continue
            placed.append((x, y, r, c))
            active[i, s], cls[i, s] = True, c
            out["cx"][i, s], out["cy"][i, s], out["radius"][i, s] = x, y, r
            out["rot"][i, s] = rng.uniform(0, 2 * np.pi)
            out["aspect"][i, s] = rng.uniform(0.85, 1.15)
    return dict(out, active=active, cls=cls)


def _chunk(rng: np.random.Generator, p: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (n, H, W, 3) and the instance map int8 (n, H, W): 0 = background, s + 1 = slot s visible."""
    n = len(p["active"])
    img = _backgrounds(rng, n, size)
    bg_mean = img.mean(axis=(1, 2))
    pix = np.arange(size, dtype=np.float32) + 0.5
    inst = np.zeros((n, size, size), np.int8)
    for s in range(MAX_SHAPES):
        # Each shape's colour far enough from the mean background to stay visible, as in `shapes`.
        fg = rng.uniform(0, 1, (n, 3)).astype(np.float32)
        far = np.where(bg_mean < 0.5, rng.uniform(0.75, 1, (n, 3)), rng.uniform(0, 0.25, (n, 3))).astype(np.float32)
        close = np.linalg.norm(fg - bg_mean, axis=1) < 0.45
        fg[close] = far[close]
        idx = np.flatnonzero(p["active"][:, s])
        if len(idx) == 0:
            continue
        cx, cy, radius = p["cx"][idx, s], p["cy"][idx, s], p["radius"][idx, s]
        rot, aspect = p["rot"][idx, s], p["aspect"][idx, s]
        dy = pix[None, :, None] - cy[:, None, None]
        dx = pix[None, None, :] - cx[:, None, None]
        cos, sin = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None]
        u = (cos * dx + sin * dy) / (radius * aspect)[:, None, None]
        v = (-sin * dx + cos * dy) / (radius / aspect)[:, None, None]
        mask = np.zeros((len(idx), size, size), bool)
        classes = p["cls"][idx, s]
        for c in np.unique(classes):
            sel = np.flatnonzero(classes == c)
            mask[sel] = _inside(int(c), u[sel], v[sel])
        inst[idx] = np.where(mask, np.int8(s + 1), inst[idx])
        img[idx] = np.where(mask[..., None], fg[idx, None, None, :], img[idx])
    img += rng.normal(0, 0.06, img.shape).astype(np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), inst


def generate(n: int, seed: int, size: int = SIZE) -> Scenes:
    """Draw ``n`` scenes from ``seed`` (an int or a ``numpy.random.SeedSequence``); see `Scenes` for the truths."""
    rng = np.random.default_rng(seed)
    k = len(CLASS_NAMES)
    p = _place(rng, n, size)
    images = np.empty((n, size, size, 3), np.uint8)
    inst = np.empty((n, size, size), np.int8)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        part = {key: val[start:stop] for key, val in p.items()}
        images[start:stop], inst[start:stop] = _chunk(rng, part, size)
    # Boxes and areas per slot from the visible pixels, vectorized over the images.
    box = np.zeros((n, MAX_SHAPES, 4), np.float32)
    area = np.zeros((n, MAX_SHAPES), np.int64)
    for s in range(MAX_SHAPES):
        m = inst == s + 1
        rows, cols = m.any(axis=2), m.any(axis=1)
        area[:, s] = m.sum(axis=(1, 2))
        box[:, s, 0] = cols.argmax(1)
        box[:, s, 1] = rows.argmax(1)
        box[:, s, 2] = size - cols[:, ::-1].argmax(1)
        box[:, s, 3] = size - rows[:, ::-1].argmax(1)
    visible = area > 0  # a placed shape is never covered whole (MIN_GAP), but the truths never count one that is
    cls = p["cls"]
    lut = np.concatenate([[0], np.arange(MAX_SHAPES)]).astype(np.int64)
    class_maps = np.where(inst > 0, np.take_along_axis(cls, lut[inst.reshape(n, -1).astype(np.int64)], 1).reshape(inst.shape) + 1, 0)
    counts = np.zeros((n, k), np.float32)
    np.add.at(counts, (np.repeat(np.arange(n), MAX_SHAPES)[visible.ravel()], cls[visible]), 1)
    return Scenes(
        images=images,
        class_maps=class_maps.astype(np.uint8),
        boxes=[box[i, visible[i]] for i in range(n)],
        box_labels=[cls[i, visible[i]].copy() for i in range(n)],
        multilabel=(counts > 0).astype(np.uint8),
        counts=counts,
        labels=cls[np.arange(n), area.argmax(1)],
        masks=inst > 0,
    )
