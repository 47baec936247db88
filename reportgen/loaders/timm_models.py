"""``timm:NAME``: a timm architecture, weights from ``--weights`` (optional extra
``pip install 'reportgen-vision[timm]'``).

The model is built with ``timm.create_model(NAME, pretrained=False, num_classes=K)``, K read from the weights; it
never downloads. Mean, std and input size come from timm's pretrained config of NAME
(``timm.data.resolve_data_config``, which reads ``model.pretrained_cfg`` and fetches nothing).
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelError, first_line
from . import Loader, Source, require
from .weights import apply_weights, read_state_dict

_PROBE_CLASSES = 997  # as in torchvision_models: a count no architecture uses as a width


def _create(timm: Any, name: str, device: str | None = None, img_size: tuple | None = None, **kwargs: Any):
    """``timm.create_model`` without pretrained weights; ``img_size`` (H, W) is passed to architectures that take
    it (ViTs: their position embeddings are made for it) and ignored by the others (CNNs take any size)."""
    import torch

    def create(**extra: Any) -> Any:
        if device is None:
            return timm.create_model(name, pretrained=False, **kwargs, **extra)
        with torch.device(device):
            return timm.create_model(name, pretrained=False, **kwargs, **extra)

    if img_size is not None:
        try:
            return create(img_size=tuple(img_size))
        except TypeError:  # "unexpected keyword argument 'img_size'": the architecture takes any size
            pass
    return create()


def num_classes_of(timm: Any, name: str, shapes: dict, img_size: tuple | None) -> int:
    """The number of classes of a state dict with these ``shapes`` for timm's ``name``: the size of the dimension
    that equals an unusual class count in a shapes-only (meta device) build."""
    try:
        ref = _create(timm, name, "meta", img_size, num_classes=_PROBE_CLASSES).state_dict()
    except Exception:  # builders that read tensor values at build time cannot run on meta
        ref = _create(timm, name, None, img_size, num_classes=_PROBE_CLASSES).state_dict()
    found = {int(shapes[k][tuple(v.shape).index(_PROBE_CLASSES)]) for k, v in ref.items()
             if k in shapes and _PROBE_CLASSES in tuple(v.shape) and len(shapes[k]) == v.ndim}
    if len(found) != 1:
        raise ModelError(f"the weights do not hold one classifier of timm's '{name}' "
                         f"({'no head keys' if not found else 'heads disagree: ' + str(sorted(found))}): "
                         "check that they belong to this architecture")
    return found.pop()


def load_timm(name: str, state: dict | None, weights: str | None, input_size: list | None) -> Source:
    """Build timm's ``name`` and load ``state`` strictly; ``input_size`` ([H, W], from --input-size) is the size
    the weights were made for, for the architectures whose parameters depend on it."""
    import difflib

    timm = require("timm", f"model 'timm:{name}'")
    known = timm.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        raise ModelError(f"timm has no model '{name}'" + (f" (closest: {', '.join(close)})" if close else "")
                         + ": see timm.list_models()")
    img_size = tuple(input_size) if input_size else None
    notes = []
    if state is not None:
        state = {k.removeprefix("module."): v for k, v in state.items()}  # a DistributedDataParallel checkpoint
        k = num_classes_of(timm, name, {key: tuple(v.shape) for key, v in state.items()}, img_size)
    else:
        k = 1000
        notes.append("no --weights given: the model has random weights, so its report shows an untrained net")
    try:
        model = _create(timm, name, None, img_size, num_classes=k)
    except Exception as exc:
        raise ModelError(f"timm cannot build '{name}' ({type(exc).__name__}: {first_line(exc)}): "
                         "check --input-size") from None
    if state is not None:
        apply_weights(model, state, weights)
    data = timm.data.resolve_data_config({}, model=model)
    _, h, w = data["input_size"]
    size = list(img_size) if img_size else [int(h), int(w)]
    return Source(model, {"input_size": size, "channels": int(data["input_size"][0]), "mean": list(data["mean"]),
                          "std": list(data["std"])}, notes=notes)


class TimmLoader(Loader):
    """``timm:NAME``, weights (optional) from ``--weights``; the size the weights were made for from
    ``--input-size`` or the model.json."""

    form = "timm"

    @classmethod
    def claims(cls, spec: str) -> bool:
        return spec.startswith("timm:")

    @classmethod
    def load(cls, spec: str, cfg: Any, side: dict) -> Source:
        state = read_state_dict(cfg.weights, allow_namespace=True) if cfg.weights else None
        return load_timm(spec.split(":", 1)[1], state, cfg.weights, cfg.input_size or side.get("input_size"))
