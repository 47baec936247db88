"""Image sets: a folder of images (class sub-folders give labels), a zoo data set, or a map-style Dataset given
from Python (`dataset_image_set`).

Images are decoded lazily, batch by batch, so memory does not grow with the size of the set. Each image is
converted to the model's channel count, resized (shorter side) and centre-cropped to its input size; the uint8
"display copy" is what the pages show, the normalized tensor is what the model sees. An image that cannot be read
is skipped with a warning and listed on the report's data page. Object masks (the zoo's shapes, or a folder given
with ``--masks``: `Masks`) are read with their images, through the same pick, resize and crop.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

import models_zoo

from .errors import DataError, first_line
from .models import InputSpec

# torch and PIL are imported inside the functions that decode images or make tensors: the build lists and checks
# an image folder before it loads torch.

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_PIXELS = 64_000_000  # larger images are refused as possible decompression bombs


class BadImage(Exception):
    """One image that cannot be used; the message says why (it ends up on the data page)."""


@dataclass
class Batch:
    """One batch of the image set: ``indices`` (B,) into the set, ``inputs`` (B, C, H, W) normalized on the
    device (or (B, 2) points), ``labels`` (B,) with -1 where unknown."""

    indices: Any
    inputs: Any
    labels: Any


@dataclass
class ImageSet:
    """An ordered set of images with optional labels; decoded on demand."""

    source: str
    names: list[str]
    labels: np.ndarray  # int64 (N,), -1 = unknown
    class_names: Optional[list[str]]
    spec: Optional[InputSpec]  # None until `folder_image_set` gives a scanned folder its spec
    _load: Callable[[int], np.ndarray]
    masks: Optional["Masks"] = None  # object masks, when the data set has them or --masks gives them
    files: Optional[list[Path]] = None  # the file of each image (a scanned folder), for the masks' size check
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    notes: list[str] = field(default_factory=list)
    truth: Any = None  # labels beyond class folders (`reportgen.tasks.Truth`: --labels, a zoo task entry's truths)
    conversions: dict[str, int] = field(default_factory=dict)  # what was converted, how often

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    def display(self, i: int) -> np.ndarray:
        """The display copy of image ``i``: uint8 (H, W, C) at the model's input size (points: float32 (2,))."""
        return self._load(i)

    def normalize(self, arrays: np.ndarray) -> Any:
        """uint8 (B, H, W, C) -> float tensor (B, C, H, W) normalized with the spec's mean/std."""
        import torch

        if self.spec.kind == "points":
            return torch.as_tensor(np.asarray(arrays, dtype=np.float32))
        x = torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.spec.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def denormalize(self, inputs: Any) -> np.ndarray:
        """Model inputs (B, C, H, W) -> display floats (B, H, W, C) in [0, 1] (clipped)."""
        import torch

        mean = torch.tensor(self.spec.mean, device=inputs.device).view(1, -1, 1, 1)
        std = torch.tensor(self.spec.std, device=inputs.device).view(1, -1, 1, 1)
        x = (inputs.detach() * std + mean).clamp(0, 1)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    def load_inputs(self, indices: list[int], device: Any = "cpu") -> Any:
        """Normalized inputs for the given image indices (they must be readable ones)."""
        arrays = np.stack([self.display(i) for i in indices])
        return self.normalize(arrays).to(device)

    def batches(self, batch_size: int, device: Any = "cpu",
                on_bad: Optional[Callable[[str, str], None]] = None) -> Iterator[Batch]:
        """Decode and normalize the set in batches; unreadable images are skipped and recorded in ``skipped``."""
        self.skipped.clear()
        idx, arrays = [], []
        for i in range(len(self)):
            try:
                arrays.append(self.display(i))
            except BadImage as exc:
                self.skipped.append((self.names[i], str(exc)))
                if on_bad:
                    on_bad(self.names[i], str(exc))
                continue
            idx.append(i)
            if len(idx) == batch_size:
                yield self._batch(idx, arrays, device)
                idx, arrays = [], []
        if idx:
            yield self._batch(idx, arrays, device)

    def _batch(self, idx: list[int], arrays: list[np.ndarray], device: Any) -> Batch:
        import torch

        indices = torch.tensor(idx, dtype=torch.long)
        return Batch(indices, self.normalize(np.stack(arrays)).to(device), torch.from_numpy(self.labels[idx]))


def fit_image(img: Any, spec: InputSpec, counts: dict[str, int]) -> np.ndarray:
    """A PIL image -> uint8 (H, W, C) at the spec's size and channels; ``counts`` tallies conversions made."""
    from PIL import Image, ImageOps

    if getattr(img, "is_animated", False):
        counts["animated: first frame used"] = counts.get("animated: first frame used", 0) + 1
    img.seek(0) if hasattr(img, "seek") else None
    transposed = ImageOps.exif_transpose(img)
    if transposed is not img and img.getexif().get(0x0112, 1) != 1:
        counts["EXIF orientation applied"] = counts.get("EXIF orientation applied", 0) + 1
    img = transposed
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
        counts["16-bit scaled to 8-bit"] = counts.get("16-bit scaled to 8-bit", 0) + 1
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8), "L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        # composite on white: dropping alpha would paint transparent areas black
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
        counts["transparency composited on white"] = counts.get("transparency composited on white", 0) + 1
    want = "L" if spec.channels == 1 else "RGB"
    if img.mode != want:
        if not (img.mode == "RGBA" and want == "RGB"):
            key = f"{ {'L': 'greyscale', 'RGB': 'RGB'}.get(img.mode, img.mode) } converted to " \
                  f"{'greyscale' if want == 'L' else 'RGB'}"
            counts[key] = counts.get(key, 0) + 1
        img = img.convert(want)
    h, w = spec.size
    if img.size != (w, h):
        img = ImageOps.fit(img, (w, h), method=Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_image(path: Path, spec: InputSpec, counts: dict[str, int]) -> np.ndarray:
    """Decode ``path`` fully (so truncation is caught here) and fit it to ``spec``; `BadImage` when unusable."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's notes on one odd file (corrupt EXIF, ...) are noise on the console
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return fit_image(img, spec, counts)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"larger than {MAX_PIXELS:,} pixels (possible decompression bomb)") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"cannot be decoded ({str(exc)[:120] or type(exc).__name__})") from None


def scan_folder(root: str | Path) -> ImageSet:
    """List the images below ``root`` (recursive, sorted) without decoding any; labels from first-level class
    folders when every image lies inside one (the ImageFolder convention). The result reads nothing until it has a
    spec: `folder_image_set` gives it one (the model's input size and channels are known only after the model is
    loaded, and the class folders may be needed to name the model's classes)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"image path '{root}' does not exist: give a folder of images with --images")
    if root.is_file():
        files = [root] if root.suffix.lower() in IMAGE_SUFFIXES else []
        base = root.parent
    else:
        base = root
        files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                       key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"no images found in '{root}' (looked for {', '.join(sorted(IMAGE_SUFFIXES))}): "
                        "give a folder that holds images")
    rel = [p.relative_to(base) for p in files]
    labelled = root.is_dir() and all(len(r.parts) >= 2 for r in rel)
    class_names = sorted({r.parts[0] for r in rel}) if labelled else None
    labels = np.array([class_names.index(r.parts[0]) for r in rel] if labelled else [-1] * len(rel),
                      dtype=np.int64)
    image_set = ImageSet(source=str(root), names=[r.as_posix() for r in rel], labels=labels,
                         class_names=class_names, spec=None, _load=lambda i: None, files=list(files))
    count = conversions_counter(image_set.conversions)

    def load(i: int) -> np.ndarray:
        mine: dict[str, int] = {}
        arr = read_image(files[i], image_set.spec, mine)
        count(i, mine)
        return arr

    image_set._load = load
    return image_set


def conversions_counter(counts: dict[str, int]) -> Any:
    """``count(i, conversions)``: adds image ``i``'s conversions (name -> number) to ``counts`` the first time only
    (pages decode some images again: each image's conversions count once)."""
    counted: set[int] = set()

    def count(i: int, mine: dict[str, int]) -> None:
        if i not in counted:
            counted.add(i)
            for key, n in mine.items():
                counts[key] = counts.get(key, 0) + n

    return count


def folder_image_set(root: str | Path | ImageSet, spec: InputSpec) -> ImageSet:
    """All images below ``root`` (a folder, one image file, or the result of `scan_folder`), read with ``spec``."""
    image_set = root if isinstance(root, ImageSet) else scan_folder(root)
    image_set.spec = spec
    return image_set


def zoo_image_set(name: str, spec: InputSpec, seed: int = 0, split: str = "test") -> ImageSet:
    """A zoo data set's split, held in memory (they are small)."""
    if name not in models_zoo.ZOO:
        raise DataError(f"unknown zoo data set '{name}': choose one of {', '.join(models_zoo.ZOO)}")
    entry = models_zoo.ZOO[name]
    data = entry.load_dataset(split, seed=seed)
    if entry.kind == "image" and (tuple(entry.input_size) != tuple(spec.size or ()) or entry.channels != spec.channels):
        raise DataError(f"zoo data set '{name}' is {entry.channels}x{entry.input_size[0]}x{entry.input_size[1]} "
                        f"but the model takes {spec.channels}x{spec.size[0]}x{spec.size[1]}: give --images with a "
                        "folder (images are converted to the model's input)")
    inputs = data.inputs
    return ImageSet(source=f"zoo:{name} ({split} split)", names=[f"{split}/{i:05d}" for i in range(len(inputs))],
                    labels=np.asarray(data.labels, dtype=np.int64), class_names=list(entry.class_names), spec=spec,
                    _load=lambda i: inputs[i],
                    masks=None if data.masks is None else Masks(f"zoo:{name}", arrays=np.asarray(data.masks, bool)),
                    truth=zoo_truth(getattr(data, "truth", None), f"zoo:{name} ({split} split)"))


def zoo_truth(truth: Optional[dict], source: str) -> Any:
    """A zoo data set's truths (`models_zoo.ZooData.truth`: "labels", "values", "class_masks" or "boxes" and
    "box_labels") as a `reportgen.tasks.Truth`; None when it has none."""
    if not truth:
        return None
    from .tasks import Truth

    masks = truth.get("class_masks")
    return Truth(source, labels=None if truth.get("labels") is None else np.asarray(truth["labels"], np.int8),
                 values=None if truth.get("values") is None else np.asarray(truth["values"], np.float32),
                 masks=None if masks is None else Masks(source, arrays=np.asarray(masks, np.uint8), classes=True),
                 boxes=truth.get("boxes"), box_labels=truth.get("box_labels"))


def load_image_set(images: Optional[str], spec: InputSpec, zoo_name: Optional[str], seed: int,
                   max_images: Optional[int] = None, scanned: Optional[ImageSet] = None,
                   masks: Optional[str] = None) -> ImageSet:
    """The image set that ``images`` names: a folder, ``zoo:NAME``, or (None) the zoo model's own test split.

    ``scanned``: the `scan_folder` of ``images`` when the caller already listed it (it is not listed again).
    ``masks``: a folder of object masks, one per image at its relative path (`folder_masks`); they replace the
    zoo data set's own. Matched against every image before the ``max_images`` pick (a mask of an image left out
    is not an orphan), checked for size on the images used."""
    if images is None:
        if zoo_name is None:
            raise DataError("this model has no default image set: give --images FOLDER (or zoo:NAME)")
        image_set = zoo_image_set(zoo_name, spec, seed)
    elif images.startswith("zoo:"):
        image_set = zoo_image_set(images[4:], spec, seed)
    else:
        if spec.kind != "image":
            raise DataError("this model takes 2-D points, not images: leave --images out to use its own data")
        image_set = folder_image_set(scanned if scanned is not None else images, spec)
    if masks is not None:
        image_set.masks = folder_masks(masks, image_set.names, spec)
    if max_images is not None and max_images < len(image_set):
        pick = stratified_pick(image_set.labels, max_images, seed)
        image_set.notes.append(pick_note(image_set.labels, pick, seed))
        take(image_set, pick)
    if masks is not None:
        image_set.masks.check_sizes(image_set.files)
    return image_set


def stratified_pick(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded sample of ``n`` of the images whose labels are ``labels`` (int (N,), -1 = unlabelled), stratified
    by class: int64 indices (n,), ascending, 0 <= n <= N.

    The unlabelled images are a group of their own. Each group gets n / (number of groups) images, as evenly as
    the groups' counts allow: a group with fewer images gives all of them and the rest is shared among the
    others; the remainder of the division goes to groups the seed draws (so that no class is always favoured).
    Within a group the images are drawn without replacement. Same labels, n and seed = same pick. (Why not the
    first n files: a folder listing is sorted, so on an ImageFolder set the first n are often a single class.)"""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    # a stream of its own, as `reportgen.context.Context.rng` derives them: other random draws do not move it
    digest = hashlib.sha256(f"{seed}:max-images".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    groups, counts = np.unique(labels, return_counts=True)
    quota = np.zeros(len(groups), dtype=np.int64)
    left = n
    while left > 0:  # water-filling: each pass fills every group that still has images by an equal share
        room = counts - quota
        open_ = np.flatnonzero(room > 0)
        share = left // len(open_)
        if share == 0:
            quota[rng.choice(open_, size=left, replace=False)] += 1
            break
        add = np.minimum(room[open_], share)
        quota[open_] += add
        left -= int(add.sum())
    chosen = [rng.choice(np.flatnonzero(labels == g), size=int(q), replace=False) for g, q in zip(groups, quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def pick_note(labels: np.ndarray, pick: np.ndarray, seed: int) -> str:
    """The data page's line on a `stratified_pick`: how many of how many, the seed, the images per class."""
    labels = np.asarray(labels)
    head = f"{len(pick)} of {len(labels)} images (--max-images)"
    if not (labels >= 0).any():
        return f"{head}, a seeded random sample (seed {seed}): the images have no labels to stratify by"
    picked = labels[pick]
    per_class = np.array([int((picked == c).sum()) for c in np.unique(labels[labels >= 0])])
    lo, hi = int(per_class.min()), int(per_class.max())
    spread = f"{lo} per class" if lo == hi else f"{lo} to {hi} per class"
    unlabelled = int((picked < 0).sum())
    if (labels < 0).any():
        spread += f", {unlabelled} unlabelled"
    return f"{head}, a seeded sample stratified by class (seed {seed}): {spread}"


def take(image_set: ImageSet, pick: np.ndarray) -> None:
    """Keep only the images ``pick`` (indices (n,) into the set, ascending), in place; image ``i`` of the result
    reads what image ``pick[i]`` read."""
    load, pick = image_set._load, [int(j) for j in pick]
    image_set.names = [image_set.names[j] for j in pick]
    image_set.labels = image_set.labels[pick]
    if image_set.files is not None:
        image_set.files = [image_set.files[j] for j in pick]
    if image_set.masks is not None:
        image_set.masks.take(pick)
    if image_set.truth is not None:
        image_set.truth.take(pick)
    image_set._load = lambda i: load(pick[i])


def map_labels(image_set: ImageSet, model_classes: list[str]) -> None:
    """Re-index folder labels to the model's class order by name; folders the model does not know become -1."""
    if image_set.class_names is None or image_set.class_names == model_classes:
        return
    lookup = {name: i for i, name in enumerate(model_classes)}
    unknown = [c for c in image_set.class_names if c not in lookup]
    remap = np.array([lookup.get(c, -1) for c in image_set.class_names], dtype=np.int64)
    image_set.labels = np.where(image_set.labels >= 0, remap[np.clip(image_set.labels, 0, None)], -1)
    if unknown:
        image_set.notes.append(
            f"class folders not among the model's classes, so treated as unlabelled: {', '.join(unknown[:10])}")
    image_set.class_names = list(model_classes)


# ---------------------------------------------------------------------------------------------------------------
# Object masks


MASKS_HELP = ("give one mask per image at the image's relative path (any image format, non-zero = object), e.g. "
              "images/cat/001.jpg -> masks/cat/001.png")


@dataclass
class Masks:
    """The object masks of an image set, image ``i``'s read on demand at the model's input size (`get`).

    Either in memory (``arrays``: bool (N, H, W) at the input size, the zoo's shapes) or files (``paths``: image
    ``i``'s mask file, None when it has none; read with `read_mask`, which resizes and crops it exactly as
    `fit_image` does its image, nearest-neighbour). ``problems``: (image name, why) for the images used whose mask
    is missing or cannot be read; those images get no mask score (the data page lists them, as it lists the
    unreadable images)."""

    source: str
    arrays: Optional[np.ndarray] = None
    paths: Optional[list[Optional[Path]]] = None
    names: list[str] = field(default_factory=list)
    size: Optional[tuple[int, int]] = None  # (H, W) of the masks `get` returns
    classes: bool = False  # label masks of class indices (uint8, 255 = ignore; `read_mask`), not object masks
    problems: list[tuple[str, str]] = field(default_factory=list)
    _cache: dict[int, Optional[np.ndarray]] = field(default_factory=dict)
    _checked: set[int] = field(default_factory=set)  # Dataset items whose mask size `check_item` has seen

    def __post_init__(self) -> None:
        if self.arrays is not None:
            self.size = tuple(self.arrays.shape[1:3])

    def get(self, i: int) -> Optional[np.ndarray]:
        """Image ``i``'s mask: bool (H, W) at `size`, True on the object; None when it has none (a mask file that
        cannot be decoded is recorded in ``problems`` the first time)."""
        if self.arrays is not None:
            return self.arrays[i]
        if i not in self._cache:
            path = self.paths[i]
            try:
                self._cache[i] = None if path is None else read_mask(path, self.size, self.classes)
            except BadImage as exc:
                self.problems.append((self.names[i], f"mask '{path}' {exc}"))
                self._cache[i] = None
        return self._cache[i]

    def take(self, pick: Any) -> None:
        """Keep the masks of images ``pick`` only (as `take` does the images)."""
        pick = [int(j) for j in pick]
        if self.arrays is not None:
            self.arrays = self.arrays[pick]
        else:
            self.paths = [self.paths[j] for j in pick]
            self.names = [self.names[j] for j in pick]
            self._cache.clear()
            self._checked.clear()

    def check_sizes(self, files: Optional[list[Path]]) -> None:
        """Before the pass, for the images used: list the images without a mask in ``problems``, and refuse a
        mask whose size is not its image's (`DataError`: one line naming it and what to do). ``files``: each
        image's file (a folder), or None for images held at the input size (a zoo set). A mask whose header cannot
        be read is a problem of its image; an unreadable image is left to the pass, which lists it."""
        if self.paths is None:
            return
        self.list_missing()
        wrong = []
        for i, path in enumerate(self.paths):
            if path is None:
                continue
            try:
                got = oriented_size(path)
            except BadImage as exc:
                self.problems.append((self.names[i], f"mask '{path}' {exc}"))
                self.paths[i] = None
                continue
            if files is None:
                want = (self.size[1], self.size[0])
            else:
                try:
                    want = oriented_size(files[i])
                except BadImage:
                    continue
            if got != want:
                wrong.append((path, got, want))
        if wrong:
            path, got, want = wrong[0]
            more = f" (and {len(wrong) - 1} more masks)" if len(wrong) > 1 else ""
            raise DataError(f"mask '{path}' is {got[0]}x{got[1]} px but its image is {want[0]}x{want[1]}{more}: "
                            "give each mask the size of its image (width x height), so that it is resized and "
                            "cropped with it")

    def list_missing(self) -> None:
        """Record every image used that has no mask file in ``problems``."""
        for i, path in enumerate(self.paths or []):
            if path is None:
                self.problems.append((self.names[i], f"no mask in '{self.source}'"))

    def check_item(self, i: int, size: tuple[int, int]) -> None:
        """Image ``i`` of a Dataset was read and is ``size`` (width, height): refuse a mask of another size
        (`DataError`), record a mask that cannot be read in ``problems``."""
        path = self.paths[i] if self.paths is not None else None
        if path is None or i in self._checked or i in self._cache:
            return
        self._checked.add(i)
        try:
            got = oriented_size(path)
        except BadImage as exc:
            self.problems.append((self.names[i], f"mask '{path}' {exc}"))
            self._cache[i] = None
            return
        if got != tuple(size):
            raise DataError(f"mask '{path}' is {got[0]}x{got[1]} px but its image (item '{self.names[i]}' of the "
                            f"dataset) is {size[0]}x{size[1]}: give each mask the size of its image (width x "
                            "height), so that it is resized and cropped with it")


def mask_key(name: str) -> str:
    """What an image name and a mask file have in common: the relative path without its extension."""
    path = Path(name)
    return (path.with_suffix("") if path.suffix.lower() in IMAGE_SUFFIXES else path).as_posix()


def folder_masks(root: str | Path, names: list[str], spec: InputSpec) -> Masks:
    """The masks below ``root`` matched to the images ``names`` (relative paths, or a zoo set's 'test/00012'):
    the mask of 'cat/001.jpg' is 'cat/001.*' (any image suffix). Checked before anything is decoded (no torch):
    ``root`` must be a folder holding masks, and every mask must name an image (a misnamed mask would otherwise
    silently leave its image without one) and be the only mask of its image; each is a `DataError` with what to
    do. Images without a mask are listed by `Masks.check_sizes` (on the images used)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"masks folder '{root}' does not exist or is not a folder: {MASKS_HELP}")
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"no masks found in '{root}' (looked for {', '.join(sorted(IMAGE_SUFFIXES))}): "
                        f"{MASKS_HELP}")
    by_key: dict[str, Path] = {}
    for f in files:
        key = mask_key(f.relative_to(root).as_posix())
        if key in by_key:
            raise DataError(f"two masks for the image '{key}' in '{root}': '{by_key[key].name}' and '{f.name}': "
                            "keep one mask per image")
        by_key[key] = f
    keys = [mask_key(n) for n in names]
    known = set(keys)
    orphans = [p for k, p in by_key.items() if k not in known]
    if orphans:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise DataError(f"mask '{orphans[0]}'{more} matches no image (it would be the mask of an image "
                        f"'{mask_key(orphans[0].relative_to(root).as_posix())}.*' beside the others): "
                        f"{MASKS_HELP}; rename or remove it")
    return Masks(str(root), paths=[by_key.get(k) for k in keys], names=list(names),
                 size=tuple(spec.size) if spec is not None and spec.size else None)


def oriented_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image file ``path`` as it is shown (EXIF orientation applied), from its header
    alone; `BadImage` when it cannot be opened."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                w, h = img.size
                turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # a quarter turn swaps the sides
    except Image.UnidentifiedImageError:
        raise BadImage("is not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"cannot be opened ({str(exc)[:120] or type(exc).__name__})") from None
    return (h, w) if turned else (w, h)


def read_mask(path: Path, size: tuple[int, int], classes: bool = False) -> np.ndarray:
    """The mask file ``path`` as bool (H, W) = ``size``, True where any colour value is non-zero (alpha is not a
    colour: a mask with an opaque alpha channel is not all object). Resized and centre-cropped like its image
    (`fit_image`: the same `ImageOps.fit` box, so the mask stays on its object), with nearest-neighbour
    resampling so that it stays binary. `BadImage` when it cannot be decoded.

    ``classes``: a label mask instead (segmentation, `reportgen.tasks`): uint8 (H, W), each pixel's value (a
    class index, 255 = ignore) kept as it is, from a greyscale or palette image (a palette PNG's indices, as in
    PASCAL VOC), or a colour image whose colour channels are equal; resized and cropped the same way."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                arr = np.asarray(img)
                bands = img.getbands()
    except Image.UnidentifiedImageError:
        raise BadImage("is not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"cannot be decoded ({str(exc)[:120] or type(exc).__name__})") from None
    if arr.ndim == 3:
        colour = [k for k, b in enumerate(bands) if b != "A"] or [0]
        if classes and len(colour) > 1 and (arr[..., colour] != arr[..., colour[:1]]).any():
            raise BadImage("has colours: a label mask holds one class index per pixel (a greyscale or palette PNG)")
        if classes or len(colour) == 1:
            arr = arr[..., colour[0]]
        else:
            arr = arr[..., colour].any(axis=-1)
    if classes and (arr.min(initial=0) < 0 or arr.max(initial=0) > 255):
        raise BadImage(f"has value {int(arr.max())}: label mask values are class indices 0 to 254 (255 = ignore)")
    on = Image.fromarray(arr.astype(np.uint8) if classes else np.where(arr != 0, 255, 0).astype(np.uint8), "L")
    h, w = size
    if on.size != (w, h):
        on = ImageOps.fit(on, (w, h), method=Image.Resampling.NEAREST)
    return np.asarray(on).copy() if classes else np.asarray(on) > 127


# ---------------------------------------------------------------------------------------------------------------
# A Dataset as an image set


@dataclass
class DatasetImages:
    """A map-style Dataset (or a DataLoader's) before the model's input spec is known. ``class_names``: the
    dataset's ``classes`` attribute when it is a list of strings (they may name the model's classes);
    ``batch_size``: a DataLoader's."""

    dataset: Any
    source: str
    names: list[str]
    class_names: Optional[list[str]] = None
    batch_size: Optional[int] = None
    items: Optional[list[int]] = None  # the dataset index of image i (None: item i)
    notes: list[str] = field(default_factory=list)

    def item(self, i: int) -> int:
        """The dataset index of image ``i``."""
        return i if self.items is None else self.items[i]

    def bind(self, spec: Any, masks: Optional[str] = None) -> Any:
        """The `ImageSet` that reads item ``i`` on demand and fits it to ``spec``; labels are
        filled in as items are read (the build's one pass reads every item before any label is used).

        ``masks``: a folder of object masks matched to the items by their file paths below the dataset's root
        (`folder_masks`; a dataset without ``samples`` and ``root`` has no paths to match); each mask's size is
        checked against its item's image when the pass reads the item (`Masks.check_item`)."""
        n = len(self.names)
        image_set = ImageSet(source=self.source, names=list(self.names), labels=np.full(n, -1, dtype=np.int64),
                             class_names=None, spec=spec, _load=lambda i: None, notes=list(self.notes))
        count = conversions_counter(image_set.conversions)
        dataset, item = self.dataset, self.item
        if masks is not None:
            every = _item_names(dataset, list(range(len(dataset))))
            if every and every[0].startswith("item "):
                raise DataError(f"masks: the {type(dataset).__name__}'s items have no file paths (an ImageFolder's "
                                "samples and root), so no mask can be matched to them: give the images as a "
                                "folder (--images) or a dataset with samples and root")
            image_set.masks = folder_masks(masks, every, spec)
            if self.items is not None:
                image_set.masks.take(self.items)
            image_set.masks.list_missing()

        def load(i: int) -> np.ndarray:
            image, label = read_item(dataset, item(i))
            image_set.labels[i] = label
            mine: dict[str, int] = {}
            if image_set.masks is not None:
                picture = item_picture(image, item(i))
                w, h = picture.size
                turned = picture.getexif().get(0x0112, 1) in (5, 6, 7, 8)
                image_set.masks.check_item(i, (h, w) if turned else (w, h))
                image = picture
            arr = fit_item(image, spec, mine, item(i))
            count(i, mine)
            return arr

        image_set._load = load
        return image_set


def dataset_image_set(images: Any, max_images: Optional[int] = None, seed: int = 0) -> DatasetImages:
    """A `DatasetImages` from a map-style ``Dataset`` (anything with ``__len__`` and ``__getitem__`` returning
    (image, label) pairs or bare images) or a ``DataLoader`` (read through its ``dataset`` in index order, with its
    batch size; its sampler, workers and collate function are not used, so that image ``i`` is the dataset's item
    ``i`` on every page). With ``max_images`` below its length, a `stratified_pick` of that many items (``seed``:
    the build seed), as for a folder: by the labels the dataset lists without reading its items (``targets``, or
    ``samples`` of (path, label) pairs, as torchvision's data sets have), else a seeded random sample."""
    from torch.utils.data import DataLoader, IterableDataset

    loader = images if isinstance(images, DataLoader) else None
    dataset = loader.dataset if loader is not None else images
    what = f"DataLoader over {type(dataset).__name__}" if loader is not None else type(dataset).__name__
    if isinstance(dataset, IterableDataset):
        raise DataError(f"images: {what} is an IterableDataset; reportgen needs random access to show sample "
                        "images: give a map-style Dataset (with __len__ and __getitem__)")
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise DataError(f"images is a {type(images).__name__}: give an image folder, a map-style Dataset of (image, "
                        "label) pairs or a DataLoader over one")
    n = len(dataset)
    if n == 0:
        raise DataError(f"images: the {what} is empty: give a Dataset with at least one image")
    items, notes = None, []
    if max_images is not None and max_images < n:
        labels = _listed_labels(dataset, n)
        pick = stratified_pick(labels if labels is not None else np.full(n, -1, dtype=np.int64), max_images, seed)
        note = pick_note(labels, pick, seed) if labels is not None else (
            f"{len(pick)} of {n} images (--max-images), a seeded random sample (seed {seed}): the dataset lists no "
            "labels (targets or samples) to stratify by without reading every item")
        items, notes = [int(j) for j in pick], [note]
    root = getattr(dataset, "root", None)
    source = f"{what} at {root}" if isinstance(root, (str, os.PathLike)) else f"{what} ({len(dataset)} items)"
    names = _item_names(dataset, items if items is not None else list(range(n)))
    classes = getattr(dataset, "classes", None)
    class_names = list(classes) if isinstance(classes, (list, tuple)) and classes and all(
        isinstance(c, str) for c in classes) else None
    batch_size = loader.batch_size if loader is not None else None
    return DatasetImages(dataset, source, names, class_names, batch_size, items, notes)


def _listed_labels(dataset: Any, n: int) -> Optional[np.ndarray]:
    """int64 (n,) labels that ``dataset`` lists without reading its items: ``targets`` (torchvision's MNIST, CIFAR,
    ImageFolder), else the second element of ``samples`` pairs; None when it lists neither (or not as integers).
    Used only to stratify a `stratified_pick`: the labels on the pages are those the items return."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        samples = getattr(dataset, "samples", None)
        try:
            targets = [s[1] for s in samples] if isinstance(samples, (list, tuple)) else None
        except (TypeError, IndexError):
            return None
    try:
        labels = np.asarray(targets.tolist() if hasattr(targets, "tolist") else targets)
    except (TypeError, ValueError):
        return None
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        return None
    return np.where(labels >= 0, labels, -1).astype(np.int64)


def _item_names(dataset: Any, items: list[int]) -> list[str]:
    """Names for the pages of the dataset's items ``items``: the file path below ``root`` for an ImageFolder-like
    dataset (``samples`` of (path, target) pairs), else "item 00012" (the dataset index)."""
    samples, root = getattr(dataset, "samples", None), getattr(dataset, "root", None)
    if isinstance(samples, (list, tuple)) and len(samples) >= len(items) and isinstance(root, (str, os.PathLike)):
        try:
            return [Path(samples[i][0]).relative_to(root).as_posix() for i in items]
        except (ValueError, TypeError, IndexError):
            pass
    width = len(str(max(max(items, default=0), 0)))
    return [f"item {i:0{width}d}" for i in items]


def read_item(dataset: Any, i: int) -> tuple[Any, int]:
    """(image, label) of item ``i``; label -1 when the item is a bare image or its label is None. An item the
    dataset cannot produce is a `reportgen.data.BadImage` (skipped and listed, as an unreadable file is)."""
    try:
        item = dataset[i]
    except Exception as exc:  # e.g. a damaged file behind an ImageFolder: that item is skipped, the build goes on
        raise BadImage(f"the dataset raised {type(exc).__name__}: {first_line(exc, 120)}") from None
    if isinstance(item, (tuple, list)):
        if len(item) < 2:
            raise DataError(f"images: item {i} is a {type(item).__name__} of {len(item)}, not an (image, label) "
                            "pair")
        image, label = item[0], item[1]
    else:
        image, label = item, None
    return image, _label(label, i)


def _label(label: Any, i: int) -> int:
    if label is None:
        return -1
    try:
        value = label.item() if hasattr(label, "item") else label
    except (ValueError, RuntimeError):
        value = label
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DataError(f"images: item {i} has label {label!r}; labels must be integers (indices of the model's "
                        "outputs) or None")
    if value < -1:
        raise DataError(f"images: item {i} has label {value}; labels are indices of the model's outputs (-1 = "
                        "unknown)")
    return int(value)


def item_picture(image: Any, i: int) -> Any:
    """A PIL image from a dataset item's image: a PIL image as it is; a tensor (C, H, W) or (H, W) with C = 1, 3
    or 4, uint8 or float in [0, 1] (as ``transforms.ToTensor`` gives), as 8-bit pixels like an image file's."""
    import torch
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, torch.Tensor):
        raise DataError(f"images: item {i} is a {type(image).__name__}; give PIL images or tensors (C, H, W)")
    t = image.detach().to("cpu")
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise DataError(f"images: item {i} is a tensor of shape {tuple(image.shape)}, not an image (C, H, W) with "
                        "C = 1, 3 or 4")
    if t.dtype == torch.uint8:
        arr = t.numpy()
    elif t.is_floating_point():
        lo, hi = float(t.min()), float(t.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise DataError(f"images: item {i} is a float tensor with values in [{lo:.3g}, {hi:.3g}], not an image "
                            "in [0, 1]: drop Normalize from the dataset's transform and pass mean= and std= to "
                            "build_report (reportgen normalizes, and shows the images as they were)")
        arr = np.round(t.float().clamp(0, 1).numpy() * 255.0).astype(np.uint8)
    else:
        raise DataError(f"images: item {i} is a {t.dtype} tensor; give uint8 or float images")
    arr = np.ascontiguousarray(arr.transpose(1, 2, 0))
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr, {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[-1]])


def fit_item(image: Any, spec: Any, counts: dict[str, int], i: int) -> np.ndarray:
    """A dataset item's image -> uint8 (H, W, C) at ``spec``'s size and channels, exactly as an image file is read
    (`fit_image`): a folder and a Dataset of the same pictures give the same numbers."""
    return fit_image(item_picture(image, i), spec, counts)
