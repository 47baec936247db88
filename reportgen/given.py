"""A model given as a Python object (``build_report(model, ...)``, `reportgen.Snapshots`), as the core build uses it.

The build runs such a model where it is (never moving it) and records its state dict's sha256 in the manifest in
place of a weights file's. `reportgen.api` re-exports these names; they live here so that the build does not
import the Python API.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from .errors import ConfigError, ModelError
from .models import LoadedModel, _input_spec, given_task

# torch is imported inside the functions: `reportgen.build` imports this module, and the build checks its config
# and paths before torch is loaded.


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


def loaded_from_object(model: Any, cfg: Any, sha256: Optional[str] = None) -> LoadedModel:
    """A `reportgen.models.LoadedModel` around the caller's ``model`` (put in eval mode; the caller restores it,
    see `reportgen.capture.kept_as_is`). Input size, channels, mean and std come from ``cfg`` (`build_report`
    fills them)."""
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ModelError(f"model is a {type(model).__name__}, not a torch.nn.Module: give the model object, or a "
                         "model spec string (a zoo name, torchvision:ARCH, a TorchScript file, module:factory)")
    spec = object_spec(model)
    inp = _input_spec(cfg, {}, None, spec)
    model.eval()
    loaded = LoadedModel(model=model, spec=spec, form="object", input=inp, class_names=list(cfg.class_names or []),
                         weights_path=None, weights_sha256=sha256 or state_dict_sha256(model),
                         notes=["Given as a Python object: the weights' sha256 is that of its state dict (tensors "
                                "in name order, the raw bytes of contiguous CPU copies), not of a file."])
    given_task(loaded, cfg, {})
    return loaded
