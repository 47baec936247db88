"""Weights and the facts beside them, read the same way for every model form: a state dict from a safetensors file
or a PyTorch file (``torch.load(weights_only=True)``: arbitrary pickles are never run), loaded strictly into a
module, and the small JSON file of input facts beside the weights. Used by `reportgen.models` and by every loader;
it imports neither (torch is imported inside the functions that need it, for the CLI's start-up time)."""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from pathlib import Path

from ..errors import ModelError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_state_dict(path: str | Path, allow_namespace: bool = False) -> dict:
    """A flat {name: tensor} dict from a .safetensors file or a torch state dict (``weights_only=True``).

    A training checkpoint dict holding the state dict under ``state_dict`` or ``model`` is unwrapped. Anything that
    would need arbitrary unpickling is refused with a `ModelError`. ``allow_namespace`` also admits
    ``argparse.Namespace`` objects (plain attribute holders), which timm's training script stores as ``args`` in
    its checkpoints.
    """
    import argparse

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file '{path}' does not exist: check the --weights path")
    if path.stat().st_size == 0:
        raise ModelError(f"weights file '{path}' is empty: give a .safetensors or .pt state dict")
    with open(path, "rb") as fh:
        head = fh.read(16)
    is_safetensors = path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{")
    if is_safetensors:
        try:
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise ModelError(f"weights file '{path}' is not a valid safetensors file ({exc}): re-export it") from None
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are noise to the user
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals([argparse.Namespace] if allow_namespace else []):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = first_line(exc)
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise ModelError(
                f"weights file '{path}' holds pickled objects beyond tensors, which reportgen refuses to load "
                "(it could run code): save model.state_dict() or use safetensors"
            ) from None
        raise ModelError(f"weights file '{path}' cannot be read as a state dict ({msg}): give a .pt state dict "
                         "or a .safetensors file") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"weights file '{path}' is not a state dict of tensors: save model.state_dict()")
    return dict(obj)


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file ({} when there is none or the file is another format)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:
        return {}


def apply_weights(model: Any, state: dict, path: str | Path) -> None:
    """Load ``state`` strictly into ``model``; a `ModelError` lists missing, unexpected and mis-shaped keys.

    A parameter the model shares under several names (CoaT's positional convolutions, tied weights) may be stored
    under one of them only (safetensors' ``save_model`` drops the aliases): the others take it from that name."""
    shared: dict[int, list[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        shared.setdefault(id(value), []).append(key)
    state = dict(state)
    for keys in shared.values():
        stored = [k for k in keys if k in state]
        for key in keys if stored else ():
            state.setdefault(key, state[stored[0]])
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
                parts.append(f"{label}: {shown}")
        raise ModelError(f"weights '{path}' do not fit the architecture ({'; '.join(parts)}): "
                         "check that the weights belong to this model")
    # Some modules read a format version from the state dict's metadata (torchvision's MNASNet refuses to load
    # without one); a flat dict (safetensors, or our own reading) has none: the weights fit this code, so give them
    # this code's versions.
    if getattr(state, "_metadata", None) is None:
        state = OrderedDict(state)
        state._metadata = getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=True)


def side_json(weights: Optional[str]) -> dict:
    """Input facts from a small JSON file beside the weights: ``<weights>.json`` or ``model.json``."""
    if not weights:
        return {}
    w = Path(weights)
    for candidate in (w.with_suffix(w.suffix + ".json"), w.with_suffix(".json"), w.parent / "model.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, ValueError) as exc:
                raise ModelError(f"model info file '{candidate}' is not valid JSON ({exc}): fix or remove it") from None
            if not isinstance(data, dict):
                raise ModelError(f"model info file '{candidate}' must hold a JSON object")
            return data
    return {}
