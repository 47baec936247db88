"""Image sets: a folder of images (class sub-folders give labels) or a zoo data set.

Images are decoded lazily, batch by batch, so memory does not grow with the size of the set. Each image is
converted to the model's channel count, resized (shorter side) and centre-cropped to its input size; the uint8
"display copy" is what the pages show, the normalized tensor is what the model sees. An image that cannot be read
is skipped with a warning and listed on the report's data page.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from .errors import DataError
from .models import InputSpec

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
    masks: Optional[np.ndarray] = None  # bool (N, H, W) object masks when the data set has them
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    notes: list[str] = field(default_factory=list)
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
                         class_names=class_names, spec=None, _load=lambda i: None)
    counts = image_set.conversions
    counted: set[int] = set()

    def load(i: int) -> np.ndarray:
        mine: dict[str, int] = {}
        arr = read_image(files[i], image_set.spec, mine)
        if i not in counted:  # pages decode some images again: count each image's conversions once
            counted.add(i)
            for key, n in mine.items():
                counts[key] = counts.get(key, 0) + n
        return arr

    image_set._load = load
    return image_set


def folder_image_set(root: str | Path | ImageSet, spec: InputSpec) -> ImageSet:
    """All images below ``root`` (a folder, one image file, or the result of `scan_folder`), read with ``spec``."""
    image_set = root if isinstance(root, ImageSet) else scan_folder(root)
    image_set.spec = spec
    return image_set


def zoo_image_set(name: str, spec: InputSpec, seed: int = 0, split: str = "test") -> ImageSet:
    """A zoo data set's split, held in memory (they are small)."""
    import models_zoo

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
                    _load=lambda i: inputs[i], masks=data.masks)


def load_image_set(images: Optional[str], spec: InputSpec, zoo_name: Optional[str], seed: int,
                   max_images: Optional[int] = None, scanned: Optional[ImageSet] = None) -> ImageSet:
    """The image set that ``images`` names: a folder, ``zoo:NAME``, or (None) the zoo model's own test split.

    ``scanned``: the `scan_folder` of ``images`` when the caller already listed it (it is not listed again)."""
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
    if max_images is not None and max_images < len(image_set):
        n = max_images
        image_set.names = image_set.names[:n]
        image_set.labels = image_set.labels[:n]
        if image_set.masks is not None:
            image_set.masks = image_set.masks[:n]
        image_set.notes.append(f"limited to the first {n} images (--max-images)")
    return image_set


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
