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

from .capture import capture, layer_names, preserved, resolve_layer
from .errors import LayerError
from .layers import LayerRow, default_layers, penultimate_layer, rows_from_probe
from .models import check_output, run_probe
from .tasks import finite_rows

if TYPE_CHECKING:
    from .methods.receptive_field import RF
    from .methods.relu_rules import NonlinearityReport

TORCHSCRIPT_REASON = ("needs the Python model, not a TorchScript one (hooks and ReLU rules do not reach a compiled "
                      "graph): give the model as package.module:factory with --weights")


@dataclass
class ModelFacts:
    """What one probe pass (and one backward pass of one probe image, for ``cam_layer``) taught the build about the
    model; read by every analysis.

    ``layers``: the layer table (dotted names, types, output shapes without the batch dimension, calls per forward
    pass). ``selected``: the analysed layers. ``penultimate``: the layer whose output the final Linear classifies.
    ``cam``: ``(layer, fc)`` when the logits are ``fc(spatial mean of layer)``, i.e. when CAM is defined.
    ``cam_layer``: the last layer that runs once, outputs a (K, h, w) map, h*w > 1, and gets a gradient from the top
    logit (Grad-CAM's default, `default_grad_cam_layer`), or None with ``cam_layer_reason``. ``nonlinearities``: how
    the model computes its ReLUs and other non-linearities (None for a TorchScript model). ``python``: False for a
    TorchScript model (no hooks: layer-based analyses do not apply). ``input_shape``: (C, H, W). ``output_reason``:
    why the logits cannot be used (NaN or infinite on the probe: a diverged model), else "". ``views``: {layer:
    `reportgen.methods.tokens.View`} of every layer that ran (token and channels-last layers are read as maps of
    their patches). ``attention``: the attention modules whose weights were recovered exactly on the probe
    (`reportgen.methods.attention`), in depth order; ``attention_refused``: {module: why not};
    ``attention_windowed``: those of ``attention`` that attend within shifted windows (Swin), not globally;
    ``attention_tokens``: {module: token count} of the others. ``image_bytes``: the bytes of every leaf module's
    outputs for one image (float32, a reused module counted once per call), the yardstick of
    `reportgen.context.Context.batch_size`. ``macs``: multiply-adds of one forward pass of one image, and
    ``macs_until``: {layer: those done by the time its output first exists}, the yardsticks of the compute budget
    (`reportgen.budget.count_macs`, on the first sample image after the one pass, so that no third pass runs before
    it; 0 and {} when the model cannot be counted).
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
    output_reason: str = ""
    views: dict = field(default_factory=dict)
    attention: list = field(default_factory=list)
    attention_refused: dict = field(default_factory=dict)
    attention_windowed: list = field(default_factory=list)
    attention_tokens: dict = field(default_factory=dict)
    image_bytes: int = 0
    macs: int = 0
    macs_until: dict = field(default_factory=dict)
    _model: Any = field(default=None, repr=False)
    _receptive_fields: dict = field(default_factory=dict, repr=False)

    def row(self, name: str) -> Optional[LayerRow]:
        """The layer table's row of ``name`` (None for an unknown name)."""
        return next((r for r in self.layers if r.name == name), None)

    def channels(self, name: str) -> int:
        """Channels of layer ``name``'s output as a map (C of its (C, h, w) view: a token layer's D); 1 when unknown."""
        row, view = self.row(name), self.views.get(name)
        if row is None or not row.out_shape:
            return 1
        return int(row.out_shape[0] if view is None or view.kind == "map" else row.out_shape[-1])

    def map_layers(self, names: Optional[list[str]] = None) -> list[str]:
        """Those of ``names`` (default: the selected layers) whose output is a feature map (C, H, W), tokens or a
        channels-last map (both read as maps by ``capture(..., as_maps=True)``)."""
        rows = {r.name: r for r in self.layers}
        return [n for n in (self.selected if names is None else names) if n in rows and rows[n].out_shape is not None
                and (self.views[n].spatial if n in self.views else len(rows[n].out_shape) == 3)]

    def require_python(self, what: str) -> None:
        """`NotApplicable` for a TorchScript model, saying that ``what`` needs the Python model."""
        if not self.python:
            from .artifacts import NotApplicable

            raise NotApplicable(f"{what} {TORCHSCRIPT_REASON}")

    def receptive_field(self, layer: str) -> "RF":
        """The receptive field of ``layer``'s units (computed on first use by tracing the model, then cached).

        A token or channels-last layer's "field" is the patch each cell sits on (``method`` "patch"): attention
        mixes all tokens, so no bounded field exists, but the patch is where the token is."""
        if layer not in self._receptive_fields:
            from .methods.receptive_field import RF, receptive_field

            view = self.views.get(layer)
            if view is not None and view.kind in ("tokens", "channels-last") and view.stride:
                s = view.stride
                self._receptive_fields[layer] = RF((s, s), (s, s), ((s - 1) / 2, (s - 1) / 2), method="patch")
            else:
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
    # lazy: torch, and the methods that import it at their top (the CLI starts without torch)
    import torch

    from .methods.attention import attention_modules, probe_layouts, recording_attention
    from .methods.cams import cam_layers_from_probe, linear_inputs, map_layers_from_probe
    from .methods.relu_rules import recording_nonlinearities
    from .methods.tokens import probe_views

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
            recording_nonlinearities(model, x) as nonlinear, recording_attention(model) as attention:
        logits = run_probe(loaded, x)
    check_output(loaded, image_class_names, x, logits)
    attention_tokens, no_layout = probe_layouts(attention)
    output_reason = ""
    broken = int((~finite_rows(logits)).sum())
    if broken:
        output_reason = (f"the model's logits are NaN or infinite on {broken} "
                         f"of the {len(x)} probe images (a diverged or broken checkpoint)")
    # a layer whose output folds positions into the batch (MobileViT) has no per-image reading: left out of views
    acts = {name: a for name, a in rec.acts.items() if a.dim() and a.shape[0] == len(x)}
    views = probe_views(acts, input_shape)
    rows = rows_from_probe(model, rec.acts, rec.calls, views, batch=len(x))
    for name in layers:
        row = next((r for r in rows if r.name == name), None)
        if row is not None and row.out_shape is not None and not row.per_image:
            raise LayerError(f"layer '{name}' does not output one row per image (the model folds positions into the "
                             "batch there): choose another layer (`reportgen layers MODEL` marks these)")
    candidates = map_layers_from_probe(model, acts, rec.calls, views)
    if loaded.task == "segment":
        candidates = without_pixel_classifier(candidates, acts, logits)
    cam_layer, reason = default_grad_cam_layer(model, candidates, views, x[:1])
    return ModelFacts(layers=rows, selected=list(layers) or default_layers(rows), input_shape=input_shape,
                      penultimate=penultimate_layer(rows),
                      cam=cam_layers_from_probe(acts, rec.calls, fc_inputs, logits),
                      cam_layer=cam_layer, cam_layer_reason=reason, nonlinearities=nonlinear.report(),
                      output_reason=output_reason, views=views,
                      attention=[n for n in attention_modules(model) if n in attention.weights and n not in no_layout],
                      attention_refused={**attention.refused, **no_layout}, attention_tokens=attention_tokens,
                      attention_windowed=[n for n in attention_modules(model) if n in attention.windows],
                      image_bytes=activation_bytes(rows), _model=model)


def activation_bytes(rows: list[LayerRow]) -> int:
    """Bytes of the outputs of every leaf module that ran, for one image in float32 (times its calls).

    The activations a backward pass keeps are close to this sum: measured peak resident memory of one forward and
    backward pass per image / this sum was 0.94 (resnet50), 1.24 (efficientnet_b0) and 1.28 (vit_b_16) at 224 px
    on this project's CPU machine; without gradients the peak was 0.10 of it (resnet50)."""
    import math

    return sum(4 * math.prod(r.out_shape) * max(r.calls, 1) * max(r.batch_rows, 1)
               for r in rows if r.leaf and r.out_shape is not None)


DETECTOR_PROBE_SIDE = 160  # px: the backbone's levels depend on its layers the same way at any size; 160 is cheap


def detector_cam_layer(model: Any, candidates: list[str], probe: Any) -> Optional[str]:
    """The deepest map layer of a torchvision detector's backbone that every one of the backbone's feature levels
    depends on (FPN levels P3 to P7, SSD's scales), or None when none does (or the backbone cannot be run here).

    A detection comes from one level (RetinaNet, FCOS and SSD score each level's anchors; Faster R-CNN pools a box
    from the level its size picks), so Grad-CAM at a layer of one level is zero for the detections of every other
    level: the last map layer of the pass (RetinaNet's P7, SSDlite's head of one scale, Faster R-CNN's finest FPN
    output) gave blank maps for most boxes. The layer found here feeds them all: the lateral projection of the
    backbone's last stage (``backbone.fpn.inner_blocks.N`` of torchvision's FeaturePyramidNetwork, whose top-down
    path adds it, upsampled, to every finer level) or the first scale's stage of an SSD. Found from the autograd
    graph of one forward pass of the backbone alone (on the probe image resized to `DETECTOR_PROBE_SIDE` px and
    normalized by the model's own transform): a layer feeds a level when the level's graph reaches the layer's
    output. No backward pass runs and no gradient is stored."""
    import torch

    backbone, transform = getattr(model, "backbone", None), getattr(model, "transform", None)
    pool = [n for n in candidates if n.startswith("backbone.")]
    if backbone is None or transform is None or not pool:
        return None
    x = torch.nn.functional.interpolate(probe.detach()[:1].float(), size=(DETECTOR_PROBE_SIDE,) * 2,
                                        mode="bilinear", align_corners=False)
    x = transform.normalize(x[0])[None].requires_grad_(True)  # a graph even when every parameter is frozen
    try:
        with preserved(model), capture(model, pool, keep_live=True, clone=False) as rec, torch.enable_grad():
            levels = backbone(x)
            levels = list(levels.values()) if isinstance(levels, dict) else [levels]
            feeds = set.intersection(*(_graph_nodes(level.grad_fn) for level in levels))
            found = next((n for n in reversed(pool) if n in rec.live and rec.live[n].grad_fn in feeds), None)
    except Exception:  # a backbone that does not run on its own: the last map layer, as for any model
        return None
    return found


def _graph_nodes(fn: Any) -> set:
    """Every autograd node that ``fn`` (a tensor's ``grad_fn``) reaches through ``next_functions``."""
    seen, stack = set(), [fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(f for f, _ in node.next_functions)
    return seen


def without_pixel_classifier(candidates: list[str], acts: dict, out: Any) -> list[str]:
    """A segmenter's map layers (in the order they finished) without the trailing ones that output its K class
    logits (the per-pixel classifier and anything after it). Grad-CAM at the logits themselves only hands back a
    class's own logit map; pytorch-grad-cam's segmentation tutorial takes the features before the head
    (``model.backbone.layer4`` of a torchvision DeepLabV3). Unchanged when every map layer has K channels."""
    from .tasks import seg_maps

    maps = seg_maps(out)
    if maps is None:
        return candidates
    k = maps.shape[1]
    kept = list(candidates)
    while kept and acts[kept[-1]].dim() == 4 and acts[kept[-1]].shape[1] == k:
        kept.pop()
    return kept or candidates


def default_grad_cam_layer(model: Any, candidates: list[str], views: dict, probe: Any) -> tuple[Optional[str], str]:
    """(Grad-CAM's default layer, "") or (None, why there is none), from the map layers of the probe pass in the
    order they finished.

    The last of them that gets a gradient from the top logit of one probe image (one backward pass): in a CNN the
    last conv block. A layer whose output the head never reads has none (PiT's last stage hands only its class
    token on), and neither do the patch tokens of the last blocks of a transformer whose head reads only its prefix
    tokens (ViT's class token): their Grad-CAM would be zero. There the default is the last token layer whose patch
    tokens do get a gradient (in a ViT, the input normalization of the last block, as pytorch-grad-cam's
    documentation recommends). When no map layer gets one (a zero-initialized head), a CNN keeps its last layer.
    """
    if not candidates:
        return None, "no layer outputs a (N, K, h, w) map with h*w > 1: give the CAM layer explicitly"
    from .tasks import torchvision_detector

    if torchvision_detector(model):
        shared = detector_cam_layer(model, candidates, probe)
        if shared is not None:
            return shared, ""
    last = candidates[-1]
    token_head = views.get(last) is not None and views[last].kind == "tokens" and bool(views[last].prefix)
    import torch  # lazy: the CLI starts without torch

    pool = [n for n in candidates if views.get(n) is not None and views[n].kind == "tokens"] if token_head \
        else candidates
    x = probe.detach().clone().requires_grad_(True)
    try:
        with preserved(model), capture(model, pool, grads=True, as_maps=True) as rec, torch.enable_grad():
            out = model(x)
            (g_input,) = torch.autograd.grad(out[0, out[0].argmax()], x, allow_unused=True)
    except Exception:  # a model that cannot be differentiated here: the page's own pass will say why
        return last, ""
    for name in reversed(pool):
        g = rec.grads.get(name)
        if g is not None and float(g.abs().max()) > 0:
            return name, ""
    if not token_head:
        return last, ""
    if g_input is None or not float(g_input.abs().max()) > 0:
        return None, ("the top logit does not depend on the input at all (e.g. a zero-initialized classifier head), "
                      "so no layer gets a gradient")
    return None, ("no token layer's patch tokens get a gradient from the logits (the head reads only the class "
                  "token): give the CAM layer explicitly")
