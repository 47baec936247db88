"""The plan: what the build learns about the model once, before the image set goes through it.

`learn_model` runs one probe forward pass with every recorder attached at once (layer outputs and call counts, the
inputs of every linear layer, every ReLU and other non-linearity call) and derives from it the `ModelFacts` that
every analysis reads: the layer table, the feature-map layers, the penultimate layer, the CAM layers, the default
Grad-CAM layer and the non-linearity report. Receptive fields are computed on demand (they trace the model, not
run it) and cached. No analysis probes the model itself: `check`, `reducers` and `run` read ``ctx.facts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from .layers import LayerRow, default_layers, penultimate_layer, rows_from_probe

if TYPE_CHECKING:
    from .methods.receptive_field import RF
    from .methods.relu_rules import NonlinearityReport

TORCHSCRIPT_REASON = ("needs the Python model, not a TorchScript one (hooks and ReLU rules do not reach a compiled "
                      "graph): give the model as package.module:factory with --weights")


@dataclass
class ModelFacts:
    """What one probe pass taught the build about the model; read by every analysis.

    ``layers``: the layer table (dotted names, types, output shapes without the batch dimension, calls per forward
    pass). ``selected``: the analysed layers. ``penultimate``: the layer whose output the final Linear classifies.
    ``cam``: ``(layer, fc)`` when the logits are ``fc(spatial mean of layer)``, i.e. when CAM is defined.
    ``cam_layer``: the last layer that runs once and outputs a (K, h, w) map, h*w > 1 (Grad-CAM's default), or
    None with ``cam_layer_reason``. ``nonlinearities``: how the model computes its ReLUs and other non-linearities
    (None for a TorchScript model). ``python``: False for a TorchScript model (no hooks: layer-based analyses do not
    apply). ``input_shape``: (C, H, W).
    """

    layers: list[LayerRow]
    selected: list[str]
    input_shape: tuple
    python: bool = True
    penultimate: Optional[str] = None
    cam: Optional[tuple[str, str]] = None
    cam_layer: Optional[str] = None
    cam_layer_reason: str = ""
    nonlinearities: Optional["NonlinearityReport"] = None
    _model: Any = field(default=None, repr=False)
    _receptive_fields: dict = field(default_factory=dict, repr=False)

    def row(self, name: str) -> Optional[LayerRow]:
        """The layer table's row of ``name`` (None for an unknown name)."""
        return next((r for r in self.layers if r.name == name), None)

    def map_layers(self, names: Optional[list[str]] = None) -> list[str]:
        """Those of ``names`` (default: the selected layers) whose output is a feature map (C, H, W)."""
        rows = {r.name: r for r in self.layers}
        return [n for n in (self.selected if names is None else names)
                if n in rows and rows[n].out_shape is not None and len(rows[n].out_shape) == 3]

    def require_python(self, what: str) -> None:
        """`NotApplicable` for a TorchScript model, saying that ``what`` needs the Python model."""
        if not self.python:
            from .artifacts import NotApplicable

            raise NotApplicable(f"{what} {TORCHSCRIPT_REASON}")

    def receptive_field(self, layer: str) -> "RF":
        """The receptive field of ``layer``'s units (computed on first use by tracing the model, then cached)."""
        if layer not in self._receptive_fields:
            from .methods.receptive_field import receptive_field

            self._receptive_fields[layer] = receptive_field(self._model, layer, self.input_shape)
        return self._receptive_fields[layer]


def probe_input(input_shape: tuple, generator: Any, device: Any = None) -> Any:
    """The probe: two seeded standard-normal inputs (2, C, H, W). Random, not zeros, so that a layer whose output
    merely happens to be zero on a blank image cannot pass the CAM check by accident; two, so that a model that
    mixes or drops the batch dimension is caught before the image set goes through it."""
    import torch

    x = torch.randn((2, *input_shape), generator=generator)
    return x.to(device) if device is not None else x


def learn_model(loaded: Any, layers: list[str], generator: Any, device: Any = None,
                image_class_names: Optional[list[str]] = None) -> ModelFacts:
    """Learn the `ModelFacts` of ``loaded.model`` from one probe forward pass (no gradient); hooks removed on exit.

    The same pass checks the model's output and names its classes (`reportgen.models.check_output`, with
    ``image_class_names`` as for `reportgen.models.load_model`). ``layers``: the configured layer names (checked to
    exist; empty = the default pick of conv/linear layers). ``generator`` seeds the probe input.
    """
    import torch

    from .capture import capture, layer_names, resolve_layer
    from .methods.cams import cam_layers_from_probe, last_map_layer_from_probe, linear_inputs
    from .methods.relu_rules import recording_nonlinearities
    from .models import check_output, run_probe

    model, input_shape = loaded.model, tuple(loaded.input.shape)
    for name in layers:
        resolve_layer(model, name)
    x = probe_input(input_shape, generator, device)
    if isinstance(model, torch.jit.ScriptModule):
        check_output(loaded, image_class_names, x, run_probe(loaded, x))
        rows = rows_from_probe(model, {}, {})
        return ModelFacts(layers=rows, selected=list(layers) or default_layers(rows), input_shape=input_shape,
                          python=False, cam_layer_reason=f"Grad-CAM {TORCHSCRIPT_REASON}", _model=model)
    with capture(model, layer_names(model)) as rec, linear_inputs(model) as fc_inputs, \
            recording_nonlinearities(model) as nonlinear:
        logits = run_probe(loaded, x)
    check_output(loaded, image_class_names, x, logits)
    rows = rows_from_probe(model, rec.acts, rec.calls)
    try:
        cam_layer, reason = last_map_layer_from_probe(model, rec.acts, rec.calls), ""
    except ValueError as exc:
        cam_layer, reason = None, str(exc)
    return ModelFacts(layers=rows, selected=list(layers) or default_layers(rows), input_shape=input_shape,
                      penultimate=penultimate_layer(rows),
                      cam=cam_layers_from_probe(rec.acts, rec.calls, fc_inputs, logits),
                      cam_layer=cam_layer, cam_layer_reason=reason, nonlinearities=nonlinear.report(), _model=model)
