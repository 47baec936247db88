"""The model's layers: dotted names, types, output shapes and parameter counts from one probe forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class LayerRow:
    name: str  # dotted named_modules() path
    type: str
    out_shape: Optional[tuple]  # without the batch dimension; None when the module did not run
    params: int  # own parameters (not counting children)
    calls: int  # times the module ran in one forward pass (>1: a reused module)
    leaf: bool


def layer_table(model: Any, input_shape: tuple) -> list[LayerRow]:
    """One row per named module, from a no-grad forward pass of one zero input of ``input_shape`` (C, H, W)."""
    import torch

    shapes: dict[str, tuple] = {}
    calls: dict[str, int] = {}
    handles = []

    def hook(name):
        def fn(_m, _i, out):
            out = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(out.shape[1:])
            calls[name] = calls.get(name, 0) + 1
        return fn

    modules = [(n, m) for n, m in model.named_modules() if n]
    if isinstance(model, torch.jit.ScriptModule):  # no hooks on a compiled graph: names and parameters only
        modules_only = [(n, m) for n, m in modules]
        return [LayerRow(n, m.original_name, None, int(sum(p.numel() for p in m.parameters(recurse=False))), 0,
                         leaf=not any(True for _ in m.children())) for n, m in modules_only]
    try:
        for name, module in modules:
            handles.append(module.register_forward_hook(hook(name)))
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, module in modules:
        own = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append(LayerRow(name, type(module).__name__, shapes.get(name), int(own), calls.get(name, 0),
                             leaf=not any(True for _ in module.children())))
    return rows


def default_layers(rows: list[LayerRow], limit: int = 8) -> list[str]:
    """Conv and linear layers that ran, at most ``limit`` evenly spread, always the first and the last."""
    picks = [r.name for r in rows if r.type in ("Conv2d", "Linear") and r.out_shape is not None]
    if len(picks) <= limit:
        return picks
    step = (len(picks) - 1) / (limit - 1)
    return [picks[round(i * step)] for i in range(limit)]


def penultimate_layer(rows: list[LayerRow]) -> Optional[str]:
    """The last module before the final Linear whose output is a feature vector or map (the "features" space)."""
    ran = [r for r in rows if r.out_shape is not None and r.leaf]
    last_linear = max((i for i, r in enumerate(ran) if r.type == "Linear"), default=None)
    if last_linear is None or last_linear == 0:
        return None
    return ran[last_linear - 1].name
