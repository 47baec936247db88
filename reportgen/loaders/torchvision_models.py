"""``torchvision:ARCH``: every classification architecture of ``torchvision.models``, weights from a state dict.

The number of classes is read from the weights whatever the classifier is (a Linear, squeezenet's final 1x1 conv,
a Sequential head, the auxiliary heads of GoogLeNet and Inception v3): the architecture is built once on the
``meta`` device (no memory, no initialization) with an unusual class count, and the state-dict entries that carry
that count are the classifier's. The input size is the one the architecture's default torchvision weights were
trained at (299 for Inception v3, 600 for EfficientNet-B7), read from the weights enum without any download; a
ViT takes exactly the size its position embeddings were made for, read from the weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import ModelError
from . import Loader, Source
from .weights import IMAGENET_MEAN, IMAGENET_STD, apply_weights, read_state_dict

# A class count no torchvision architecture uses for a channel width: the dimensions equal to it are classes.
_PROBE_CLASSES = 997
# Architectures with auxiliary classifier heads, and the state-dict prefix of those heads.
_AUX_PREFIXES = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


def task_names(module: str) -> list[str]:
    """The architectures of ``torchvision.models.<module>`` ("segmentation" or "detection")."""
    import torchvision

    return torchvision.models.list_models(module=getattr(torchvision.models, module))


# a detector's input size when its transform resizes to more (the model resizes its input to its own min_size
# inside, so the input size sets the resolution of the report's pictures and of its boxes, not what it computes on)
DETECTION_SIZE = 512


def task_kwargs(arch: str, shapes: dict, task: str) -> dict:
    """The builder arguments of the segmentation or detection model ``arch`` that fit a state dict with these
    ``shapes`` ({key: shape}): ``num_classes`` (background included, as torchvision counts them), ``aux_loss``
    (a segmentation model's auxiliary head when the weights have it), ``weights_backbone=None`` (nothing is
    downloaded). A head dimension may be a multiple of the classes (RetinaNet's and SSD's anchors per position):
    the architecture is built twice on the meta device with 997 and 998 classes, and each dimension that changes
    between the two is ``a * classes + b``, solved for the weights' classes. A `ModelError` when none is found or
    the heads disagree."""
    kwargs: dict[str, Any] = {"weights_backbone": None}
    if task == "segment":
        kwargs["aux_loss"] = any(k.startswith("aux_classifier.") for k in shapes)
    one = reference_state(arch, num_classes=_PROBE_CLASSES, **kwargs)
    two = reference_state(arch, num_classes=_PROBE_CLASSES + 1, **kwargs)
    found = {}
    for key, value in one.items():
        if key not in shapes or len(shapes[key]) != value.ndim:
            continue
        for dim, (d1, d2) in enumerate(zip(value.shape, two[key].shape)):
            if d1 != d2:
                a = d2 - d1
                b = d1 - a * _PROBE_CLASSES
                got = int(shapes[key][dim]) - b
                if got % a == 0 and got // a >= 1:
                    found[key] = got // a
    if not found:
        raise ModelError(f"the weights hold no class head of torchvision's '{arch}' (none of its head's keys): "
                         "check that they are a state dict of this architecture")
    if len(set(found.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in list(found.items())[:4])
        raise ModelError(f"the class heads of the '{arch}' weights disagree on the number of classes ({shown}): "
                         "check the weights")
    kwargs["num_classes"] = next(iter(found.values()))
    return kwargs


def load_task_model(arch: str, task: str, state: dict | None, weights: str | None, side: dict) -> Source:
    """Build the torchvision segmentation or detection model ``arch`` (no pretrained backbone, nothing
    downloaded), load ``state`` strictly, and say what it takes: a segmenter ImageNet-normalized inputs at its
    default weights' resize size (520); a detector pixels in [0, 1] (mean 0, std 1: its own transform normalizes
    and resizes inside) at its transform's size, at most `DETECTION_SIZE`."""
    notes = []
    if state is not None:
        kwargs = task_kwargs(arch, {k: tuple(v.shape) for k, v in state.items()}, task)
    else:
        kwargs = {"weights_backbone": None, "num_classes": int(side.get("num_classes") or
                                                                (21 if task == "segment" else 91))}
        notes.append("no --weights given: the model has random weights, so its report shows an untrained net")
    model = _build(arch, **kwargs)
    if state is not None:
        apply_weights(model, state, weights)
    if task == "segment":
        try:
            import torchvision

            size = int(torchvision.models.get_model_weights(arch).DEFAULT.transforms.keywords["resize_size"])
        except (AttributeError, KeyError, ValueError):
            size = 520
        if kwargs.get("aux_loss"):
            notes.append("the weights' auxiliary classifier head is loaded; the report reads the main head's "
                         "output ('out')")
        return Source(model, {"input_size": [size, size], "channels": 3, "mean": list(IMAGENET_MEAN),
                              "std": list(IMAGENET_STD)}, notes=notes, task="segment",
                      task_source=f"torchvision's {arch} is a segmentation model")
    size = min(int(model.transform.min_size[0]), DETECTION_SIZE)
    notes.append(f"{arch} normalizes and resizes its input itself (its {type(model.transform).__name__}): the "
                 "report feeds it pixels in [0, 1] (mean 0, std 1), and its boxes are in the input's pixels; "
                 f"its class index i is its label id i + 1 (label 0 is the background)")
    return Source(model, {"input_size": [size, size], "channels": 3, "mean": [0.0, 0.0, 0.0],
                          "std": [1.0, 1.0, 1.0]}, notes=notes, task="detect",
                  task_source=f"torchvision's {arch} is a detection model")


def classifier_names() -> list[str]:
    """Every classification architecture in ``torchvision.models`` (not detection, segmentation, video...)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _build(arch: str, device: str | None = None, **kwargs: Any) -> Any:
    import torch
    import torchvision

    with warnings.catch_warnings():  # GoogLeNet's note on its init scheme is not the user's to fix
        warnings.simplefilter("ignore")
        if device is None:
            return torchvision.models.get_model(arch, weights=None, **kwargs)
        with torch.device(device):
            return torchvision.models.get_model(arch, weights=None, **kwargs)


@contextmanager
def _regnet_widths_on_cpu() -> Iterator[None]:
    """RegNet's builders compute their block widths with tensors and read the values (``.tolist()``), which a meta
    device cannot give: inside this block that one computation runs on the CPU (restored on exit)."""
    import torch
    from torchvision.models import regnet

    original = regnet.BlockParams.__dict__["from_init_params"]

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return original.__func__(cls, *args, **kwargs)

    regnet.BlockParams.from_init_params = classmethod(on_cpu)
    try:
        yield
    finally:
        regnet.BlockParams.from_init_params = original


def reference_state(arch: str, **kwargs: Any) -> dict:
    """``arch``'s state dict built with ``kwargs`` on the meta device: shapes only, no memory and no
    initialization, instant even for 600M parameters."""
    if arch.startswith("regnet_"):
        with _regnet_widths_on_cpu():
            return _build(arch, "meta", **kwargs).state_dict()
    return _build(arch, "meta", **kwargs).state_dict()


def arch_kwargs(arch: str, shapes: dict) -> dict:
    """The builder arguments that make ``arch`` fit a state dict with these ``shapes`` ({key: shape}):
    ``num_classes``, ``aux_logits`` (GoogLeNet, Inception v3) and ``image_size`` (ViT). A `ModelError` when the
    class count cannot be found or is not the same in every classifier head."""
    kwargs: dict[str, Any] = {}
    prefixes = _AUX_PREFIXES.get(arch)
    if prefixes:
        kwargs["aux_logits"] = any(k.startswith(prefixes) for k in shapes)
        kwargs["init_weights"] = False  # the weights are loaded next: skip the slow truncated-normal init
    if arch.startswith("vit_") and "encoder.pos_embedding" in shapes:
        patch = int(shapes["conv_proj.weight"][-1]) if "conv_proj.weight" in shapes else None
        tokens = int(shapes["encoder.pos_embedding"][1]) - 1  # minus the class token
        side = math.isqrt(max(tokens, 0))
        if patch and side * side == tokens:
            kwargs["image_size"] = side * patch
    ref = reference_state(arch, num_classes=_PROBE_CLASSES, **kwargs)
    found = {}
    for key, value in ref.items():
        if key in shapes and _PROBE_CLASSES in tuple(value.shape):
            dim = tuple(value.shape).index(_PROBE_CLASSES)
            if len(shapes[key]) == value.ndim:
                found[key] = int(shapes[key][dim])
    if not found:
        raise ModelError(f"the weights hold no classifier of torchvision's '{arch}' (none of its head's keys): "
                         "check that they are a state dict of this architecture")
    if len(set(found.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in found.items())
        raise ModelError(f"the classifier heads of the '{arch}' weights disagree on the number of classes "
                         f"({shown}): check the weights")
    kwargs["num_classes"] = next(iter(found.values()))
    return kwargs


def default_input_size(arch: str) -> int:
    """The crop size of ``arch``'s default torchvision weights (their transforms' ``crop_size``), no download."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        return int(weights.transforms.keywords["crop_size"])
    except (AttributeError, KeyError, ValueError):
        return 224


def load_torchvision(arch: str, state: dict | None, weights: str | None, side: dict) -> Source:
    """Build ``torchvision:arch`` with random weights, then load ``state`` strictly (``weights`` is its path,
    for messages). ``side`` is the model.json beside the weights (``num_classes`` when there are no weights)."""
    import difflib

    for task, module in (("segment", "segmentation"), ("detect", "detection")):
        if arch in task_names(module):
            return load_task_model(arch, task, state, weights, side)
    names = classifier_names()
    if arch not in names:
        close = difflib.get_close_matches(arch, names + task_names("segmentation") + task_names("detection"), n=3)
        raise ModelError(f"torchvision has no classification, segmentation or detection model '{arch}'"
                         + (f" (closest: {', '.join(close)})" if close else "")
                         + ": see torchvision.models.list_models()")
    notes = []
    if state is not None:
        kwargs = arch_kwargs(arch, {k: tuple(v.shape) for k, v in state.items()})
    else:
        kwargs = {"num_classes": int(side.get("num_classes") or 1000)}
        if arch in _AUX_PREFIXES:
            kwargs.update(aux_logits=False, init_weights=False)
        notes.append("no --weights given: the model has random weights, so its report shows an untrained net")
    model = _build(arch, **kwargs)
    if state is not None:
        apply_weights(model, state, weights)
    fixed = None
    size = default_input_size(arch)
    if hasattr(model, "image_size") and arch.startswith("vit_"):
        size = int(model.image_size)
        fixed = (size, size)
    if kwargs.get("aux_logits"):
        notes.append("the weights' auxiliary classifier heads are loaded; in eval mode the model returns the main "
                     "head's logits only")
    return Source(model, {"input_size": [size, size], "channels": 3, "mean": list(IMAGENET_MEAN),
                          "std": list(IMAGENET_STD)}, notes=notes, fixed_size=fixed)


class TorchvisionLoader(Loader):
    """``torchvision:ARCH``, weights (optional) from ``--weights``; ``num_classes`` from the model.json when there
    are none."""

    form = "torchvision"

    @classmethod
    def claims(cls, spec: str) -> bool:
        return spec.startswith("torchvision:")

    @classmethod
    def load(cls, spec: str, cfg: Any, side: dict) -> Source:
        state = read_state_dict(cfg.weights) if cfg.weights else None
        return load_torchvision(spec.split(":", 1)[1], state, cfg.weights, side)
