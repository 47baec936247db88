"""Model specs: one string names a model, and this module turns it into a module plus what it expects as input.

Forms: a zoo name (``shapes-cnn``), ``torchvision:ARCH`` and ``timm:NAME`` (weights from ``--weights``, the number
of classes taken from them), a local Hugging Face image-classification folder, a ``torch.export`` program
(``.pt2``), a TorchScript file, or ``package.module:factory`` (a callable returning an ``nn.Module``); the
torchvision, timm, Hugging Face and ``.pt2`` forms are `reportgen.loaders.Loader` adapters, one module each, which
`load_model` finds through `reportgen.loaders.registry.loader_for`. Weights are safetensors or a PyTorch state
dict read with ``torch.load(weights_only=True)``: arbitrary pickles are never run.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ModelError, first_line
from .loaders import SPEC_HELP
from .loaders.registry import loader_for
# re-exported: the weights helpers live with the loaders, which share them (no loader imports this module)
from .loaders.weights import (IMAGENET_MEAN, IMAGENET_STD, apply_weights, read_safetensors_metadata,  # noqa: F401
                              read_state_dict)
from .loaders.weights import side_json as _side_json


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: ``kind`` "image" (N, C, H, W) or "points" (N, 2); normalization (x/255 - mean) / std."""

    kind: str
    size: Optional[tuple[int, int]]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one input without the batch dimension."""
        return (self.channels, *self.size) if self.kind == "image" else (self.channels,)


@dataclass
class LoadedModel:
    """A model ready for the report: in eval mode on its device, with its input spec and class names."""

    model: Any
    spec: str
    form: str  # "zoo", "torchvision", "timm", "huggingface", "export", "torchscript", "factory"
    input: InputSpec
    class_names: list[str]
    weights_path: Optional[str] = None
    weights_sha256: Optional[str] = None
    zoo_name: Optional[str] = None
    history: list = field(default_factory=list)  # [(iteration, state_dict)] for perceptron training snapshots
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # lines for the console, each also among ``notes``
    # the model's task (`reportgen.tasks.TASKS`), decided by `check_output` from ``task_claims`` and the output
    # (None before); ``task_source``: how it was found, for the page
    task: Optional[str] = None
    task_source: str = ""
    task_claims: list = field(default_factory=list)  # [(task, how, given)]: the user's, the model's (`given_task`)
    label_offset: int = 0  # detect: a detection's label id minus its class index (1 for torchvision: 0 = background)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _input_spec(cfg: Any, side: dict, defaults: Optional[dict], spec: str) -> InputSpec:
    def pick(key: str, cfg_value: Any):
        if cfg_value is not None:
            return cfg_value
        if key in side:
            return side[key]
        return (defaults or {}).get(key)

    size = pick("input_size", cfg.input_size)
    channels = pick("channels", cfg.channels)
    if size is None:
        raise ModelError(f"model '{spec}' does not say its input size: give --input-size HxW "
                         "(or input_size in the config or in a model.json beside the weights)")
    if channels is None:
        raise ModelError(f"model '{spec}' does not say its input channels: give --channels 1 or 3")
    if isinstance(size, int):
        size = [size, size]
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ModelError(f"input size {size!r} is not [height, width] of positive integers: fix --input-size")
    if channels not in (1, 3):
        raise ModelError(f"input channels {channels!r} must be 1 or 3: fix --channels")
    mean = pick("mean", cfg.mean) or [0.0] * channels
    std = pick("std", cfg.std) or [1.0] * channels
    for label, values in (("mean", mean), ("std", std)):
        if len(values) == 1:
            values = list(values) * channels
        if len(values) != channels:
            raise ModelError(f"--{label} has {len(values)} values for {channels} channels: give one per channel")
    mean = tuple(float(m) for m in (mean * channels if len(mean) == 1 else mean))
    std = tuple(float(s) for s in (std * channels if len(std) == 1 else std))
    if any(s <= 0 for s in std):
        raise ModelError("--std values must be positive")
    return InputSpec("image", (int(size[0]), int(size[1])), int(channels), mean, std)


def _check_fixed_size(fixed: Optional[tuple[int, int]], inp: InputSpec, spec: str) -> None:
    """A `ModelError` when ``--input-size`` asks for a size an architecture with a fixed one cannot take."""
    if fixed is not None and tuple(inp.size) != tuple(fixed):
        raise ModelError(f"model '{spec}' takes exactly {fixed[0]}x{fixed[1]} inputs (its position embeddings are "
                         f"made for that size), not {inp.size[0]}x{inp.size[1]}: drop --input-size or give "
                         f"{fixed[0]}x{fixed[1]}")


def _load_factory(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(f"cannot import '{module_name}' for model spec '{spec}' ({type(exc).__name__}: {exc}): "
                         "check the module path and that it is importable (PYTHONPATH)") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ModelError(f"'{module_name}' has no attribute '{attr}': name a callable returning an nn.Module")
    if not callable(factory):
        raise ModelError(f"'{spec}' is not callable: name a function or class returning an nn.Module")
    try:
        return factory()
    except Exception as exc:
        raise ModelError(f"model factory '{spec}' raised {type(exc).__name__}: {exc}") from None


def resolve_device(name: str) -> Any:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but CUDA is not available here: use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)



# Every model file or folder reportgen reads, and how to produce it: the error for an unreadable model file.
MODEL_FILE_FORMS = (
    "accepted: a torch.export program (torch.export.save(torch.export.export(model.eval(), (x,), dynamic_shapes="
    "({0: torch.export.Dim('batch')},)), 'model.pt2')), a Hugging Face folder (model.save_pretrained(folder)), "
    "a TorchScript file (torch.jit.script(model).save(path)), or torchvision:ARCH / timm:NAME / "
    "package.module:factory with --weights holding model.state_dict() (torch.save or safetensors)")


def load_model(cfg: Any, image_class_names: Optional[list[str]] = None, check: bool = True) -> LoadedModel:
    """Load the model that ``cfg.model`` names, with ``cfg.weights`` and its input spec; eval mode, on the CPU.

    ``image_class_names`` (the class folders of an image set) name the classes when nothing else does. With
    ``check=False`` the model is not run: the caller checks its output with `check_output` on a probe of its own
    (the build's plan does, so that a build runs the model once before the image set).
    """
    import torch
    from torch import nn

    import models_zoo

    spec = cfg.model or models_zoo.DEFAULT_MODEL
    weights = cfg.weights
    side = _side_json(weights)
    history: list = []
    notes: list[str] = []
    warnings_for_console: list[str] = []
    zoo_name = None
    declared: tuple = (None, "")  # (task, how) the model says of itself
    if spec in models_zoo.ZOO:
        entry = models_zoo.ZOO[spec]
        zoo_name = spec
        form = "zoo"
        if weights:
            model = entry.build_model()
            apply_weights(model, read_state_dict(weights), weights)
        else:
            model = entry.load_pretrained()
            weights = str(entry.weights_path())
            history = entry.history()
        if entry.kind == "points":
            inp = InputSpec("points", None, entry.channels, tuple(entry.mean), tuple(entry.std))
        else:
            inp = InputSpec("image", tuple(entry.input_size), entry.channels, tuple(entry.mean), tuple(entry.std))
        class_names = list(cfg.class_names or entry.class_names)
        # ZooEntry.task arrives with the zoo's task models; every earlier entry is a classifier
        declared = (getattr(entry, "task", "classify"), f"the zoo entry '{spec}'")
    elif (loader := loader_for(spec)) is not None:  # torchvision:, timm:, a Hugging Face folder, a .pt2 program
        source = loader.load(spec, cfg, side)
        model, notes, form = source.model, source.notes, loader.form
        weights = source.weights if source.weights is not None else weights
        side = source.side if source.side is not None else side
        inp = _input_spec(cfg, side, source.defaults, spec)
        _check_fixed_size(source.fixed_size, inp, spec)
        class_names = list(cfg.class_names or side.get("class_names") or source.class_names)
        declared = (source.task, source.task_source)
    elif re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", spec) and not Path(spec).exists():
        model = _load_factory(spec)
        if not isinstance(model, nn.Module):
            raise ModelError(f"model factory '{spec}' returned {type(model).__name__}, not an nn.Module")
        if weights:
            apply_weights(model, read_state_dict(weights), weights)
        form = "factory"
        inp = _input_spec(cfg, side, None, spec)
        class_names = list(cfg.class_names or side.get("class_names") or [])
    elif Path(spec).exists():  # not a folder, not a torch.export program: a TorchScript file
        path = Path(spec)
        side = side or _side_json(str(path))
        try:
            with warnings.catch_warnings():  # the deprecation notice of torch.jit.load is not the user's to fix
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            import zipfile

            # both formats are zip archives: a file that is not one is neither, and torch's own message about
            # it is a paragraph of internals
            first = "not a zip archive" if not zipfile.is_zipfile(path) else first_line(exc, 160)
            raise ModelError(f"'{spec}' is not a loadable TorchScript file ({first}), nor a torch.export "
                             f"program: {MODEL_FILE_FORMS}") from None
        form = "torchscript"
        inp = _input_spec(cfg, side, None, spec)
        weights = str(path)
        class_names = list(cfg.class_names or side.get("class_names") or [])
    else:
        import difflib

        close = difflib.get_close_matches(spec, list(models_zoo.ZOO), n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ModelError(f"model spec '{spec}' names nothing{hint}: give {SPEC_HELP}")
    if form in ("export", "torchscript") and cfg.mean is None and cfg.std is None and "mean" not in side \
            and "std" not in side:
        # neither file format records the normalization the model was trained with: say so, not guess
        warning = unnormalized_warning(spec, not class_names and not image_class_names)
        notes.append(warning)
        warnings_for_console = [warning]

    model.eval()
    loaded = LoadedModel(
        model=model, spec=spec, form=form, input=inp, class_names=class_names, weights_path=weights,
        weights_sha256=sha256_file(weights) if weights else None, zoo_name=zoo_name, history=history, notes=notes,
        warnings=warnings_for_console,
    )
    given_task(loaded, cfg, side, declared)
    if check:
        check_output(loaded, image_class_names)
    return loaded


def unnormalized_warning(spec: str, unnamed: bool) -> str:
    """The line for a ``.pt2`` or TorchScript model given without mean and std (``unnamed``: nor class names)."""
    classes = ", and --class-names a,b,... to name its classes" if unnamed else ""
    return (f"'{spec}' runs un-normalized: no mean/std was given, so it sees pixels scaled to [0, 1]; if it was "
            f"trained on normalized images, give --mean and --std (e.g. ImageNet's --mean 0.485,0.456,0.406 --std "
            f"0.229,0.224,0.225){classes}, or put them in a model.json beside it")


def run_probe(loaded: LoadedModel, probe: Any) -> Any:
    """``loaded.model(probe)`` under no_grad; a model that raises is one `ModelError` line that names the input
    shape (the usual cause: a wrong --input-size or --channels)."""
    import torch

    try:
        with torch.no_grad():
            return loaded.model(probe)
    except Exception as exc:
        first = first_line(exc)
        raise ModelError(f"model '{loaded.spec}' fails on an input of shape {tuple(probe.shape)} ({first}): "
                         "check --input-size and --channels") from None


def given_task(loaded: LoadedModel, cfg: Any, side: dict, declared: tuple = (None, "")) -> None:
    """Record in ``loaded.task_claims`` the task the user gave (``cfg.task``: --task, the config or ``task=``;
    else a model.json's ``task``) and the one the model declares (``declared`` (task, how) from its loader or zoo
    entry; else a torchvision segmentation or detection class), in that order of precedence; `check_output`
    decides with the output. Also the detection label offset of torchvision's detectors (label 0 = background)."""
    from .tasks import check_task_name, declared_task, torchvision_detector

    claims = []
    if getattr(cfg, "task", None):
        claims.append((check_task_name(cfg.task, "--task"), "given with --task", True))
    elif (side or {}).get("task"):
        claims.append((check_task_name(side["task"], "model.json"), "given in model.json", True))
    task, how = declared
    if task is None and (found := declared_task(loaded.model)) is not None:
        task, how = found, f"{type(loaded.model).__name__} is a torchvision {found} model"
    if task is not None:
        claims.append((task, how, False))
    loaded.task_claims = claims
    loaded.label_offset = 1 if torchvision_detector(loaded.model) else 0


def detector_classes(model: Any) -> Optional[int]:
    """The number of object classes (background excluded) of a torchvision detector, from its head; else None."""
    for path, attr in (("roi_heads.box_predictor.cls_score", "out_features"),
                       ("head.classification_head", "num_classes"), ("head.classification_head", "num_columns")):
        try:
            value = getattr(model.get_submodule(path), attr)
        except (AttributeError, ValueError):
            continue
        if isinstance(value, int):
            return value - 1  # label 0 is the background
    return None


def check_output(loaded: LoadedModel, image_class_names: Optional[list[str]] = None, probe: Any = None,
                 out: Any = None) -> None:
    """Check the model's output on a probe of two inputs (zeros unless ``probe`` and its output ``out`` are given)
    against its task, decide the task (`reportgen.tasks.decide_task`: what was given, else what the model
    declares, else the output's form) into ``loaded.task`` and ``loaded.task_source``, and fill missing class
    names (`reportgen.tasks.output_names`): one row (or one detection dict) per input, and the task's form:
    (2, K) for classify, multilabel, regress and embed, (2, 1) for binary, (2, K, H, W) or {'out': ...} for
    segment, a list of 2 detection dicts for detect. Each mistake is one `ModelError` line.

    Without names from the zoo, the config or a model.json, an image set's class folders name the classes when
    there are as many folders as outputs; else the classes are called "class 0", "class 1", ...
    """
    import torch

    from .tasks import decide_task, output_names, output_rows

    if probe is None:
        # two inputs, so that a model that mixes or drops the batch dimension is caught here, not mid-build
        probe = torch.zeros((2, *loaded.input.shape))
        out = run_probe(loaded, probe)
    given = next(((t, h) for t, h, mine in loaded.task_claims if mine), (None, ""))
    declared = next(((t, h) for t, h, mine in loaded.task_claims if not mine), (None, ""))
    task, how = decide_task(out, loaded.spec, *given, *declared)
    rows = output_rows(out)
    if rows != probe.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else f"{rows} results"
        raise ModelError(f"model '{loaded.spec}' returns {shape} for a batch of {probe.shape[0]}: "
                         "its output must have one row per input image")
    if task == "detect":
        k = detector_classes(loaded.model)
        if k is None:
            if not loaded.class_names:
                raise ModelError(f"model '{loaded.spec}' is a detector whose number of classes reportgen cannot "
                                 "read: give --class-names (its label ids are class indices 0, 1, ...)")
            k = len(loaded.class_names)
    elif task == "segment":
        k = int((out["out"] if isinstance(out, dict) else out).shape[1])
    else:
        k = int(out.shape[1])
    names = output_names(task, k, loaded.class_names or None, image_class_names, loaded.spec)
    if task == "detect" and loaded.label_offset and not loaded.class_names:
        names = [f"class {i + loaded.label_offset}" for i in range(k)]  # the name shows torchvision's label id
    loaded.class_names = names
    loaded.task, loaded.task_source = task, how
