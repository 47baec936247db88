"""One typed build configuration: a TOML file, then command-line flags on top.

Every key has a type and a docstring (``field(metadata={"doc": ...})``); validation collects every problem with its
key path and reports them together. Unknown keys are errors that list the known ones. Each analysis declares its own
parameter dataclass, configured under ``[analysis.NAME]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from .errors import ConfigError, DataError, ModelError, did_you_mean  # noqa: F401 (did_you_mean: re-exported)
from .models import SPEC_HELP
from .tasks import TASKS


def doc(text: str, **limits: Any) -> dict:
    """Field metadata: a docstring and optional ``min``/``max``/``choices`` limits."""
    return {"doc": text, **limits}


@dataclass
class BuildConfig:
    """Everything a build needs; same config + seed = same report."""

    model: Optional[str] = field(default=None, metadata=doc(
        "Model spec: a zoo name, torchvision:ARCH, a TorchScript file or package.module:factory. "
        "Empty = the default zoo model."))
    weights: Optional[str] = field(default=None, metadata=doc(
        "Weights file: .safetensors or a PyTorch state dict (loaded with weights_only=True)."))
    images: Optional[str] = field(default=None, metadata=doc(
        "Image set: a folder (class sub-folders give labels) or zoo:NAME for a zoo data set. "
        "Empty = the zoo model's own test split."))
    masks: Optional[str] = field(default=None, metadata=doc(
        "Folder of object masks: one per image at the image's relative path (any image format, the extension may "
        "differ; non-zero = object), read, resized and cropped with their images; the attribution pages and the "
        "findings score the maps against them. Empty = the zoo data set's own masks, where it has them."))
    out: str = field(default="site", metadata=doc("Output folder of the site."))
    device: str = field(default="auto", metadata=doc("auto, cpu or cuda.", choices=("auto", "cpu", "cuda")))
    seed: int = field(default=0, metadata=doc("Seed of every random choice; same seed = same report.", min=0))
    only: list[str] = field(default_factory=list, metadata=doc("Run only these analyses (names)."))
    skip: list[str] = field(default_factory=list, metadata=doc("Skip these analyses (names)."))
    layers: list[str] = field(default_factory=list, metadata=doc(
        "Dotted layer names to analyse; empty = every conv/linear layer (at most 8, evenly spread)."))
    max_images: Optional[int] = field(default=None, metadata=doc(
        "Use at most this many images of the set: a sample stratified by class, drawn with the seed.", min=1))
    batch_size: int = field(default=64, metadata=doc("Images per forward pass.", min=1, max=4096))
    memory: float = field(default=2.0, metadata=doc(
        "GiB that one batch's activations may take: a large model at a large input size gets batches smaller than "
        "batch_size (down to 1 image), measured from its layers' output sizes.", min=0.01))
    budget: float = field(default=2000.0, metadata=doc(
        "Billions of multiply-adds (GMAC) each costly analysis may spend (2000 = about 160 forward and backward "
        "passes of one 224-px image through a ResNet-50); over it, the analysis lowers the settings the config "
        "does not set, down to their floors, and its page says what ran; one still over at its floors does not run "
        "and says which budget would run it (`reportgen.budget`); 0 = no limit.", min=0.0))
    samples: int = field(default=8, metadata=doc(
        "Number of sample images for per-image analyses (a seeded pick).", min=1, max=200))
    classes: list[str] = field(default_factory=list, metadata=doc(
        "Extra target classes (names) for attribution maps, beside the predicted and the true class."))
    target: Optional[str] = field(default=None, metadata=doc(
        "What the attribution maps and the trust checks explain (docs/targets.md): a class, label or output name "
        "or index; segment class=NAME[,region=mask]; detect box=x0,y0,x1,y1[:class]; embed image=PATH. Empty = "
        "each task's default (a classifier: each image's predicted class)."))
    input_size: Optional[list[int]] = field(default=None, metadata=doc(
        "Model input size [height, width] (non-zoo models)."))
    channels: Optional[int] = field(default=None, metadata=doc("Model input channels, 1 or 3.", choices=(1, 3)))
    mean: Optional[list[float]] = field(default=None, metadata=doc("Per-channel normalization mean (0..1 scale)."))
    std: Optional[list[float]] = field(default=None, metadata=doc("Per-channel normalization std (0..1 scale)."))
    class_names: Optional[list[str]] = field(default=None, metadata=doc("Class names, in output order."))
    task: Optional[str] = field(default=None, metadata=doc(
        "What the model is for: classify, binary, multilabel, regress, segment, detect or embed (docs/tasks.md). "
        "Empty = what the model says (torchvision segmentation and detection models, a Hugging Face config, a zoo "
        "entry) or its output's form; embed and regress are never guessed.",
        choices=TASKS))
    labels: Optional[str] = field(default=None, metadata=doc(
        "Labels of the image set for a task beyond class folders (docs/tasks.md): a CSV (multilabel, regress: "
        "image,<name>,...), a folder of class masks (segment: pixel = class index, 255 = ignore) or a COCO JSON "
        "of boxes (detect)."))
    analysis: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=doc(
        "Per-analysis parameters: [analysis.NAME] tables; `reportgen analyses` lists names and keys."))


def check_paths(cfg: BuildConfig) -> None:
    """Raise the loaders' own error for a name or path in ``cfg`` that cannot work, checked without torch: an
    image folder that does not exist or an unknown zoo data set (`DataError`), a weights file that does not exist,
    a model spec that names nothing (`ModelError`). The CLI calls it before it imports torch and loads the model
    (10 s or more), so that a typo is reported in about a second; the loaders check the same again later (the
    Python API reaches them directly)."""
    import models_zoo

    if cfg.images and cfg.images.startswith("zoo:"):
        if cfg.images[4:] not in models_zoo.ZOO:
            raise DataError(f"unknown zoo data set '{cfg.images[4:]}': choose one of {', '.join(models_zoo.ZOO)}")
    elif cfg.images and not Path(cfg.images).exists():
        raise DataError(f"image path '{cfg.images}' does not exist: give a folder of images with --images")
    if cfg.masks:
        from .data import folder_masks, scan_folder

        if cfg.images and not cfg.images.startswith("zoo:"):
            folder_masks(cfg.masks, scan_folder(cfg.images).names, None)  # orphans and doubles, before the model
        elif not Path(cfg.masks).is_dir():
            folder_masks(cfg.masks, [], None)  # its error: no such folder
    if cfg.labels and not Path(cfg.labels).exists():
        raise DataError(f"labels '{cfg.labels}' do not exist: give a CSV, a folder of label masks or a COCO JSON "
                        "(docs/tasks.md)")
    if cfg.weights and not Path(cfg.weights).is_file():
        raise ModelError(f"weights file '{cfg.weights}' does not exist: check the --weights path")
    # a spec without ':' is a zoo name or a path (`reportgen.models.load_model`): neither means it names nothing
    spec = cfg.model
    if spec and ":" not in spec and spec not in models_zoo.ZOO and not Path(spec).exists():
        close = difflib.get_close_matches(spec, list(models_zoo.ZOO), n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ModelError(f"model spec '{spec}' names nothing{hint}: give {SPEC_HELP}")


def known_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        return f"a list of {plural.get(args[0], _type_name(args[0]))}" if args else "a list"
    if origin is dict:
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _check_limits(value: Any, meta: dict) -> Optional[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if "min" in meta and v < meta["min"]:
                return f"must be >= {meta['min']}"
            if "max" in meta and v > meta["max"]:
                return f"must be <= {meta['max']}"
    if "choices" in meta and value is not None and value not in meta["choices"]:
        return "must be one of " + ", ".join(map(str, meta["choices"]))
    return None


def validate_dataclass(cls: type, data: dict, prefix: str, errors: list[str]) -> dict:
    """Check ``data`` against the fields of ``cls``: unknown keys, types and limits; return the clean values.

    Problems are appended to ``errors`` as "key.path: what is wrong"; nothing is raised here so that every problem
    can be reported at once.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    clean: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            errors.append(f"{path}: unknown key{did_you_mean(key, fields)}; known keys: {', '.join(fields)}")
            continue
        tp = hints[key]
        if isinstance(value, int) and not isinstance(value, bool) and _type_ok(float(value), tp) \
                and not _type_ok(value, tp):
            value = float(value)
        if not _type_ok(value, tp):
            errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
            continue
        problem = _check_limits(value, fields[key].metadata)
        if problem:
            errors.append(f"{path}: {problem}, got {value!r}")
            continue
        clean[key] = list(value) if isinstance(value, tuple) else value
    return clean


def raise_errors(errors: list[str], source: str) -> None:
    if errors:
        more = f" (and {len(errors) - 1} more: " + "; ".join(errors[1:]) + ")" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {errors[0]}{more}")


def read_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist: give the path of a TOML file")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not valid TOML: {exc}; fix the syntax there") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {exc}") from None


def load_config(path: Optional[str | Path] = None, **overrides: Any) -> BuildConfig:
    """The config from a TOML file (optional) with ``overrides`` on top; ``None`` overrides are ignored.

    Raises `ConfigError` listing every problem with its key path.
    """
    data: dict[str, Any] = {}
    source = "options"
    if path is not None:
        data = read_toml(Path(path))
        source = f"config file '{path}'"
    errors: list[str] = []
    clean = validate_dataclass(BuildConfig, data, "", errors)
    raise_errors(errors, source)
    flag_values = {k: v for k, v in overrides.items() if v is not None and v != ()}
    clean.update(validate_dataclass(BuildConfig, flag_values, "--", errors))
    raise_errors(errors, "options")
    return BuildConfig(**clean)


def analysis_params(cls: type, name: str, values: dict, errors: list[str]) -> Any:
    """Build an analysis's ``Params`` dataclass from ``[analysis.NAME]`` values, collecting problems in ``errors``."""
    clean = validate_dataclass(cls, values, f"analysis.{name}.", errors)
    return cls(**clean)


def describe_params(cls: type) -> list[tuple[str, str, Any, str]]:
    """(key, type, default, doc) for every field of a params dataclass: for `reportgen analyses` and the pages."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("doc", "")))
    return rows


def config_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a config dataclass (for the manifest)."""
    return dataclasses.asdict(cfg)
