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
import html
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

from .build import BuildReport, Given, build
from .capture import kept_as_is
from .config import BuildConfig, load_config, raise_errors, validate_dataclass
from .console import Output
from .data import (BadImage, DatasetImages, dataset_image_set, fit_item, item_picture, read_item,
                   scan_folder)
from .errors import ConfigError, DataError, ModelError, ReportgenError, first_line
from .given import loaded_from_object, model_device, object_spec, state_dict_sha256

# kept_as_is, DatasetImages, fit_item, loaded_from_object, model_device, object_spec (and the names used here) are
# re-exported: they moved to the core modules the build imports, and reportgen.api.NAME goes on working.
# IPython (optional) is imported inside Report.show; torch and PIL inside the functions that use them, as in the
# modules above, so that importing the API costs no torch start-up until a model is handled.

# BuildConfig keys that `build_report` takes as its own arguments, not through ``config`` or ``**options``
ARGUMENTS = ("out", "class_names", "mean", "std", "input_size")
PIL_ONE_CHANNEL = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


# ---------------------------------------------------------------------------------------------------------------
# A Dataset's first image


def first_image_facts(images: Any) -> tuple[tuple[int, int], int]:
    """((height, width), channels) of the first image of a folder, a Dataset or a DataLoader (the defaults of
    ``input_size`` and the channels of a model given as an object)."""
    from PIL import Image

    if isinstance(images, (str, os.PathLike)):
        scanned = scan_folder(images)
        first = Path(scanned.source) / scanned.names[0] if Path(scanned.source).is_dir() else Path(scanned.source)
        try:
            with Image.open(first) as img:
                return (img.size[1], img.size[0]), 1 if img.mode in PIL_ONE_CHANNEL else 3
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the first image '{first}' ({first_line(exc)}) to learn the input size: "
                            "give input_size= and channels=") from None
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
            batch_size=32, layers=["features.3"], max_images=500``; they override ``config``. ``masks="DIR"``:
            object masks, one per image at its relative path (for a Dataset, its items' paths below its ``root``);
            see docs/masks.md. ``task="segment"``: what the model is for, when it does not say it itself (classify,
            binary, multilabel, regress, segment, detect, embed); ``labels="PATH"``: the image set's labels for
            such a task (a CSV, a folder of label masks, a COCO JSON); see docs/tasks.md. ``target="..."``: what
            the attribution maps and the trust checks explain (a class, label or output name or index,
            ``"class=NAME"``, ``"box=x0,y0,x1,y1:NAME"``, ``"image=PATH"``); see docs/targets.md.

    Returns:
        a `Report`: ``out`` (the site folder), ``manifest``, ``seconds``, ``failed`` (analyses that failed).

    Raises:
        `reportgen.errors.ReportgenError` (one line: what is wrong, what to do) for every user mistake.
    """
    cfg, given = prepare(model, images, out=out, class_names=class_names, mean=mean, std=std,
                         input_size=input_size, config=config, options=options)
    report = build(cfg, output or Output(quiet=True), given)
    return Report(**{f.name: getattr(report, f.name) for f in fields(BuildReport)})


def prepare(model: Any, images: Any, *, out: Any = None, class_names: Any = None, mean: Any = None, std: Any = None,
            input_size: Any = None, config: Any = None, options: Optional[dict] = None) -> tuple[Any, Any]:
    """The `reportgen.config.BuildConfig` and the `reportgen.build.Given` objects of a `build_report` call (its
    arguments, see there): ``config`` first, then ``options`` and the named arguments on top; every key checked.
    For a model object, the input size and channels default to the first image's."""
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
