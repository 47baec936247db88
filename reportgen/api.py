"""The Python entry point: `build_report` from a model object and a Dataset, a DataLoader or an image folder.

`reportgen build` is a thin layer over `build_report` (it passes its config), so both run one path
(`reportgen.build.build`) and give the same site and the same numbers for the same model and images. What a Python
caller adds: the model as an ``nn.Module`` (used as it is, never moved to another device, and left exactly as it
came: flags, ``.grad`` tensors, no hook; the manifest records its state dict's sha256) and the images as a
map-style ``Dataset`` of (image, label) pairs, read item by item so that memory does not grow with the set.

The returned `Report` shows the model card inline in Jupyter (`Report._repr_html_`): the built index page in an
iframe whose stylesheet and pictures are inlined, so no server is needed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from .build import BuildReport
from .errors import ConfigError, DataError, ModelError, ReportgenError, first_line

# BuildConfig keys that `build_report` takes as its own arguments, not through ``config`` or ``**options``
ARGUMENTS = ("out", "class_names", "mean", "std", "input_size")
PIL_ONE_CHANNEL = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


# ---------------------------------------------------------------------------------------------------------------
# The model object


def state_dict_sha256(model: Any) -> str:
    """sha256 of ``model.state_dict()``: for each entry in name order, its name, dtype, shape and the raw bytes of
    a contiguous CPU copy. Deterministic across runs and devices; the same for two models with equal tensors."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}\0{t.dtype}\0{tuple(tensor.shape)}\0".encode())
        # bytes through a uint8 view: numpy has no bfloat16, and the view copies nothing
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_device(model: Any, requested: str = "auto") -> Any:
    """The device of ``model``'s first parameter or buffer (CPU for a model with neither). The build runs there,
    never moving the user's model; a ``device`` option that names another device type is a `ConfigError`."""
    import torch

    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    if requested not in (None, "auto") and torch.device(requested).type != device.type:
        raise ConfigError(f"device='{requested}' but the model is on {device}: leave device out (the report runs "
                          "where the model is) or move the model first")
    return device


def object_spec(model: Any) -> str:
    """How the manifest names a model given as an object: its class's dotted path."""
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def loaded_from_object(model: Any, cfg: Any, sha256: Optional[str] = None) -> Any:
    """A `reportgen.models.LoadedModel` around the caller's ``model`` (put in eval mode; the caller restores it,
    see `kept_as_is`). Input size, channels, mean and std come from ``cfg`` (`build_report` fills them)."""
    from torch import nn

    from .models import LoadedModel, _input_spec

    if not isinstance(model, nn.Module):
        raise ModelError(f"model is a {type(model).__name__}, not a torch.nn.Module: give the model object, or a "
                         "model spec string (a zoo name, torchvision:ARCH, a TorchScript file, module:factory)")
    spec = object_spec(model)
    inp = _input_spec(cfg, {}, None, spec)
    model.eval()
    return LoadedModel(model=model, spec=spec, form="object", input=inp, class_names=list(cfg.class_names or []),
                       weights_path=None, weights_sha256=sha256 or state_dict_sha256(model),
                       notes=["Given as a Python object: the weights' sha256 is that of its state dict (tensors "
                              "in name order, the raw bytes of contiguous CPU copies), not of a file."])


@contextmanager
def kept_as_is(model: Any) -> Iterator[None]:
    """Give ``model`` back exactly as it came, also after an error: train/eval flags and ``requires_grad`` (see
    `reportgen.capture.preserved`) and every parameter's ``.grad`` (gradient analyses may accumulate into it).
    ``None``: nothing to keep."""
    if model is None:
        yield
        return
    from .capture import preserved

    grads = [(p, p.grad) for p in model.parameters()]
    with preserved(model):
        try:
            yield
        finally:
            for p, g in grads:
                p.grad = g


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

    def bind(self, spec: Any) -> Any:
        """The `reportgen.data.ImageSet` that reads item ``i`` on demand and fits it to ``spec``; labels are
        filled in as items are read (the build's one pass reads every item before any label is used)."""
        from .data import ImageSet

        n = len(self.names)
        image_set = ImageSet(source=self.source, names=list(self.names), labels=np.full(n, -1, dtype=np.int64),
                             class_names=None, spec=spec, _load=lambda i: None)
        counts = image_set.conversions
        counted: set[int] = set()
        dataset = self.dataset

        def load(i: int) -> np.ndarray:
            image, label = read_item(dataset, i)
            image_set.labels[i] = label
            mine: dict[str, int] = {}
            arr = fit_item(image, spec, mine, i)
            if i not in counted:  # pages read some items again: count each item's conversions once
                counted.add(i)
                for key, k in mine.items():
                    counts[key] = counts.get(key, 0) + k
            return arr

        image_set._load = load
        return image_set


def dataset_image_set(images: Any, max_images: Optional[int] = None) -> DatasetImages:
    """A `DatasetImages` from a map-style ``Dataset`` (anything with ``__len__`` and ``__getitem__`` returning
    (image, label) pairs or bare images) or a ``DataLoader`` (read through its ``dataset`` in index order, with its
    batch size; its sampler, workers and collate function are not used, so that image ``i`` is the dataset's item
    ``i`` on every page). Only the first ``max_images`` items are used when given."""
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
    if max_images is not None:
        n = min(n, max_images)
    root = getattr(dataset, "root", None)
    source = f"{what} at {root}" if isinstance(root, (str, os.PathLike)) else f"{what} ({len(dataset)} items)"
    names = _item_names(dataset, n)
    classes = getattr(dataset, "classes", None)
    class_names = list(classes) if isinstance(classes, (list, tuple)) and classes and all(
        isinstance(c, str) for c in classes) else None
    batch_size = loader.batch_size if loader is not None else None
    return DatasetImages(dataset, source, names, class_names, batch_size)


def _item_names(dataset: Any, n: int) -> list[str]:
    """Item names for the pages: the file path below ``root`` for an ImageFolder-like dataset (``samples`` of
    (path, target) pairs), else "item 00012"."""
    samples, root = getattr(dataset, "samples", None), getattr(dataset, "root", None)
    if isinstance(samples, (list, tuple)) and len(samples) >= n and isinstance(root, (str, os.PathLike)):
        try:
            return [Path(samples[i][0]).relative_to(root).as_posix() for i in range(n)]
        except (ValueError, TypeError, IndexError):
            pass
    width = len(str(max(n - 1, 0)))
    return [f"item {i:0{width}d}" for i in range(n)]


def read_item(dataset: Any, i: int) -> tuple[Any, int]:
    """(image, label) of item ``i``; label -1 when the item is a bare image or its label is None. An item the
    dataset cannot produce is a `reportgen.data.BadImage` (skipped and listed, as an unreadable file is)."""
    from .data import BadImage

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
    (`reportgen.data.fit_image`): a folder and a Dataset of the same pictures give the same numbers."""
    from .data import fit_image

    return fit_image(item_picture(image, i), spec, counts)


def first_image_facts(images: Any) -> tuple[tuple[int, int], int]:
    """((height, width), channels) of the first image of a folder, a Dataset or a DataLoader (the defaults of
    ``input_size`` and the channels of a model given as an object)."""
    from PIL import Image

    if isinstance(images, (str, os.PathLike)):
        from .data import scan_folder

        scanned = scan_folder(images)
        first = Path(scanned.source) / scanned.names[0] if Path(scanned.source).is_dir() else Path(scanned.source)
        try:
            with Image.open(first) as img:
                return (img.size[1], img.size[0]), 1 if img.mode in PIL_ONE_CHANNEL else 3
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the first image '{first}' ({first_line(exc)}) to learn the input size: "
                            "give input_size= and channels=") from None
    from .data import BadImage

    source = dataset_image_set(images)
    for i in range(min(len(source.names), 16)):  # the first readable item
        try:
            image, _ = read_item(source.dataset, i)
        except BadImage:
            continue
        pic = item_picture(image, i)
        return (pic.size[1], pic.size[0]), 1 if pic.mode in PIL_ONE_CHANNEL else 3
    raise DataError("images: none of the first 16 items could be read: see what the dataset raises")


# ---------------------------------------------------------------------------------------------------------------
# The entry point


def build_report(model: Any = None, images: Any = None, *, out: Optional[Union[str, os.PathLike]] = None,
                 class_names: Optional[list[str]] = None, mean: Optional[list[float]] = None,
                 std: Optional[list[float]] = None, input_size: Optional[Union[int, tuple[int, int]]] = None,
                 config: Any = None, output: Any = None, **options: Any) -> "Report":
    """Build the report of ``model`` on ``images`` into the folder ``out`` (atomically: a failed build leaves the
    previous site as it was) and return it as a `Report`.

    Args:
        model: an ``nn.Module`` (used as it is, on its own device, and left exactly as it came: train/eval and
            ``requires_grad`` flags, ``.grad``, no hook; also after an error), or a model spec string as for
            ``reportgen build`` (a zoo name, ``torchvision:ARCH``, a TorchScript file, ``module:factory``).
            None: the config's model (default: the zoo's ``shapes-cnn``).
        images: an image folder (class sub-folders give labels) or ``"zoo:NAME"``; a map-style ``Dataset`` of
            (image, label) pairs, the image a PIL image or a tensor (C, H, W) uint8 or float in [0, 1] (not
            normalized), the label an index of the model's outputs (-1 or None: unknown); or a ``DataLoader`` over
            such a dataset (read through its ``dataset``, with its batch size). Items are read one at a time,
            some more than once (the pass, then the sample images' pages): give deterministic transforms.
            None: the config's images (a zoo model's own test split by default).
        out: output folder (default ``"site"``, or the config's ``out``).
        class_names: the model's class names in output order (default: the zoo's, the dataset's ``classes`` or
            the class folders when their number matches the outputs, else "class 0", "class 1", ...).
        mean, std: per-channel normalization of inputs in [0, 1], ``(x - mean) / std`` (default 0 and 1 for a
            model object).
        input_size: (height, width) the images are resized (shorter side) and centre-cropped to; default for a
            model object: the first image's size. Its channels default to the first image's (``channels=``).
        config: a TOML file path, a dict of config keys (as in the TOML file; ``analysis`` holds the
            per-analysis tables) or a `reportgen.config.BuildConfig`.
        output: a `reportgen.console.Output` (default: warnings only, on stderr).
        **options: any other config key, e.g. ``seed=1, only=["predictions", "grad-cam"], samples=4,
            batch_size=32, layers=["features.3"], max_images=500``; they override ``config``.

    Returns:
        a `Report`: ``out`` (the site folder), ``manifest``, ``seconds``, ``failed`` (analyses that failed).

    Raises:
        `reportgen.errors.ReportgenError` (one line: what is wrong, what to do) for every user mistake.
    """
    from .console import Output

    cfg, given = prepare(model, images, out=out, class_names=class_names, mean=mean, std=std,
                         input_size=input_size, config=config, options=options)
    from .build import build

    report = build(cfg, output or Output(quiet=True), given)
    return Report(**{f.name: getattr(report, f.name) for f in fields(BuildReport)})


def prepare(model: Any, images: Any, *, out: Any = None, class_names: Any = None, mean: Any = None, std: Any = None,
            input_size: Any = None, config: Any = None, options: Optional[dict] = None) -> tuple[Any, Any]:
    """The `reportgen.config.BuildConfig` and the `reportgen.build.Given` objects of a `build_report` call (its
    arguments, see there): ``config`` first, then ``options`` and the named arguments on top; every key checked.
    For a model object, the input size and channels default to the first image's."""
    from .build import Given
    from .config import BuildConfig, load_config, raise_errors, validate_dataclass

    options = dict(options or {})
    for key in ("model", "images"):
        if key in options:
            raise ConfigError(f"build_report: give {key} as the argument, not as an option")
    errors: list[str] = []
    if isinstance(config, BuildConfig):
        base = dict(vars(config))
    elif isinstance(config, dict):
        base = validate_dataclass(BuildConfig, dict(config), "config.", errors)
        raise_errors(errors, "build_report")
    elif config is None or isinstance(config, (str, os.PathLike)):
        base = vars(load_config(config)) if config is not None else {}
    else:
        raise ConfigError(f"config is a {type(config).__name__}: give a TOML path, a dict or a BuildConfig")
    named = {"out": None if out is None else str(out), "class_names": class_names, "mean": mean, "std": std,
             "input_size": [input_size, input_size] if isinstance(input_size, int) else input_size}
    overrides = {k: (list(v) if isinstance(v, tuple) else v) for k, v in {**options, **named}.items()
                 if v is not None}
    clean = validate_dataclass(BuildConfig, overrides, "", errors)
    raise_errors(errors, "build_report")
    values = {**{k: v for k, v in base.items() if v is not None}, **clean}
    from torch import nn

    model_object = model if isinstance(model, nn.Module) else None
    if model is not None and model_object is None:
        if not isinstance(model, str):
            raise ModelError(f"model is a {type(model).__name__}: give an nn.Module or a model spec string")
        values["model"] = model
    images_object = None
    if isinstance(images, (str, os.PathLike)):
        values["images"] = str(images)
    elif images is not None:
        images_object = images
        values.pop("images", None)  # the Dataset is the image set, not a folder the config names
        loader_batch = getattr(images, "batch_size", None)
        if "batch_size" not in options and "batch_size" not in (config if isinstance(config, dict) else {}) \
                and isinstance(loader_batch, int):
            values["batch_size"] = loader_batch
    if model_object is not None:
        values.pop("model", None)
        values.pop("weights", None)
        if values.get("input_size") is None or values.get("channels") is None:
            source = images_object if images_object is not None else values.get("images")
            if source is None or str(source).startswith("zoo:"):
                raise ConfigError("build_report: a model object needs input_size= and channels= when the images "
                                  "are not a folder or a Dataset to learn them from")
            size, channels = first_image_facts(source)
            if values.get("input_size") is None:
                values["input_size"] = list(size)
            if values.get("channels") is None:  # three means say three channels, whatever the first image is
                values["channels"] = 3 if len(values.get("mean") or []) == 3 else channels
    cfg = BuildConfig(**values)
    return cfg, Given(model_object, images_object, state_dict_sha256(model_object) if model_object is not None
                      else None)


# ---------------------------------------------------------------------------------------------------------------
# Notebooks


@dataclass
class Report(BuildReport):
    """A built report: ``out`` (the site folder), ``manifest``, ``seconds``, ``failed``. In Jupyter it shows its
    model card inline (`_repr_html_`); ``show()`` does the same explicitly."""

    def index(self) -> Path:
        """The model card page, ``out/index.html`` (open it in a browser; the site works from disk)."""
        return Path(self.out) / "index.html"

    def _repr_html_(self) -> str:
        """The model card in an iframe: the built index page with its stylesheet, script and pictures inlined
        (data URIs), so it shows without a server; its links to other pages point at the files on disk. The
        iframe's own styles keep the page's CSS from restyling the notebook."""
        page = inline_page(Path(self.out), "index.html")
        index = self.index().resolve()
        return (f'<iframe srcdoc="{html.escape(page, quote=True)}" title="reportgen model card" '
                'style="width:100%;height:640px;border:1px solid #ccc"></iframe>'
                f'<p>The full report: <a href="{html.escape(index.as_uri())}" target="_blank">'
                f'<code>{html.escape(str(index))}</code></a> (open it in a browser; it works from disk).</p>')

    def show(self) -> None:
        """Display the model card in a Jupyter notebook (needs IPython)."""
        try:
            from IPython.display import HTML, display
        except ImportError:
            raise ReportgenError(f"show() displays the report in Jupyter, which needs IPython: open {self.index()} "
                                 "in a browser instead") from None
        display(HTML(self._repr_html_()))


_MIME = {".png": "image/png", ".gif": "image/gif", ".svg": "image/svg+xml", ".jpg": "image/jpeg",
         ".css": "text/css", ".js": "text/javascript"}


def inline_page(folder: Path, page: str) -> str:
    """Page ``page`` of the site in ``folder`` as one self-contained HTML document: stylesheets become ``<style>``,
    scripts and pictures data URIs, links to other files of the site ``file://`` URIs opening in a new tab."""
    base = (folder / page).parent.resolve()
    text = (folder / page).read_text()

    def target(rel: str) -> Optional[Path]:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^#|^//", rel):
            return None  # absolute URL or in-page anchor: kept
        path = (base / rel.split("#")[0]).resolve()
        return path if path.is_file() else None

    def stylesheet(m: re.Match) -> str:
        path = target(html.unescape(m.group(1)))
        return f"<style>{path.read_text()}</style>" if path else m.group(0)

    text = re.sub(r'<link rel="stylesheet" href="([^"]+)">', stylesheet, text)

    def attribute(m: re.Match) -> str:
        name, rel = m.group(1), html.unescape(m.group(2))
        path = target(rel)
        if path is None:
            return m.group(0)
        if name == "src":
            data = base64.b64encode(path.read_bytes()).decode()
            return f'src="data:{_MIME.get(path.suffix, "application/octet-stream")};base64,{data}"'
        anchor = "#" + rel.split("#", 1)[1] if "#" in rel else ""
        return f'href="{html.escape(path.as_uri() + anchor)}" target="_blank"'

    return re.sub(r'\b(src|href)="([^"]*)"', attribute, text)
