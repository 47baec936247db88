"""The model's layers: dotted names, types, output shapes and parameter counts from one probe forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .capture import capture, layer_names
from .methods.tokens import probe_views

# torch is imported inside functions: `reportgen layers` checks its paths before loading it.


@dataclass
class LayerRow:
    name: str  # dotted named_modules() path
    type: str
    out_shape: Optional[tuple]  # without the batch dimension; None when the module did not run
    params: int  # own parameters (not counting children)
    calls: int  # times the module ran in one forward pass (>1: a reused module)
    leaf: bool
    view: str = ""  # how a token / channels-last output is shown (`reportgen.methods.tokens.View.describe`)
    # rows of the output's first dimension per image: 1, or more when the model folds positions into the batch
    # (MobileViT's transformer runs on (N * 4, L, D) patches); 0 when it is not a multiple of the images
    batch_rows: int = 1

    @property
    def per_image(self) -> bool:
        """Whether the output has one row per image, so that per-image analyses can read it."""
        return self.batch_rows == 1


def layer_table(model: Any, input_shape: tuple) -> list[LayerRow]:
    """One row per named module, from a no-grad forward pass of one zero input of ``input_shape`` (C, H, W).

    A build learns the same table from its one probe pass (`reportgen.plan.learn_model`)."""
    import torch

    if isinstance(model, torch.jit.ScriptModule):  # no hooks on a compiled graph: names and parameters only
        return rows_from_probe(model, {}, {})
    with capture(model, layer_names(model), clone=False) as rec, torch.no_grad():
        model(torch.zeros((1, *input_shape)))
    return rows_from_probe(model, rec.acts, rec.calls, probe_views(rec.acts, tuple(input_shape)), batch=1)


def rows_from_probe(model: Any, acts: dict, calls: dict, views: Optional[dict] = None,
                    batch: Optional[int] = None) -> list[LayerRow]:
    """The layer table from a recorded probe pass: ``acts`` maps a dotted name to its (last) output tensor (N, ...),
    ``calls`` to the number of times it ran; modules missing from ``acts`` did not run (or output no tensor).
    ``views``: {name: `reportgen.methods.tokens.View`}; token and channels-last layers say how they are shown.
    ``batch``: the probe's number of images N, to find outputs without one row per image."""
    import torch

    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        kind = module.original_name if isinstance(module, torch.jit.ScriptModule) else type(module).__name__
        own = sum(p.numel() for p in module.parameters(recurse=False))
        shape = tuple(acts[name].shape[1:]) if name in acts else None
        view = (views or {}).get(name)
        shown = view.describe() if view is not None and view.kind in ("tokens", "channels-last") else ""
        rows_per_image = 1
        if batch and name in acts and acts[name].dim() and acts[name].shape[0] != batch:
            first = int(acts[name].shape[0])
            rows_per_image = first // batch if first % batch == 0 else 0
            shown = f"not one row per image ({first} rows for {batch} images): not analysed"
        rows.append(LayerRow(name, kind, shape, int(own), int(calls.get(name, 0)),
                             leaf=not any(True for _ in module.children()), view=shown, batch_rows=rows_per_image))
    return rows


def default_layers(rows: list[LayerRow], limit: int = 8) -> list[str]:
    """Conv and linear layers that ran, at most ``limit`` evenly spread, always the first and the last.

    A transformer (some layer outputs tokens or a channels-last map) gets its own spread: the patch embedding (the
    first conv), blocks evenly spread (token layers whose parent holds two or more modules of their type), the
    last such normalization layer, and the last Linear (the logits)."""
    ran = [r for r in rows if r.out_shape is not None and r.per_image]
    if any(r.view for r in ran):
        types = {}
        for r in ran:
            parent = r.name.rpartition(".")[0]
            types[(parent, r.type)] = types.get((parent, r.type), 0) + 1
        blocks = [r.name for r in ran if r.view and not r.leaf and types[(r.name.rpartition(".")[0], r.type)] >= 2]
        first_conv = next((r.name for r in ran if r.type == "Conv2d"), None)
        norm = next((r.name for r in reversed(ran) if r.view and "Norm" in r.type), None)
        last_linear = next((r.name for r in reversed(ran) if r.type == "Linear"), None)
        ends = [n for n in (first_conv, norm, last_linear) if n is not None]
        if blocks:
            picks = _spread(blocks, max(2, limit - len(ends)))
            chosen = set(picks + ends)
            return [r.name for r in ran if r.name in chosen]
    return _spread([r.name for r in ran if r.type in ("Conv2d", "Linear")], limit)


def _spread(names: list[str], limit: int) -> list[str]:
    """At most ``limit`` of ``names``, evenly spread, always the first and the last."""
    if len(names) <= limit:
        return names
    step = (len(names) - 1) / (limit - 1)
    return [names[round(i * step)] for i in range(limit)]


def penultimate_layer(rows: list[LayerRow]) -> Optional[str]:
    """The last module before the final Linear whose output is a feature vector or map (the "features" space)."""
    ran = [r for r in rows if r.out_shape is not None and r.leaf]
    last_linear = max((i for i, r in enumerate(ran) if r.type == "Linear"), default=None)
    if last_linear is None or last_linear == 0:
        return None
    return ran[last_linear - 1].name
