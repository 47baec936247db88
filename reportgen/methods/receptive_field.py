"""Receptive fields from layer geometry: which crop of the input one unit of a layer sees.

The arithmetic is that of Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks"
(Distill 2019), https://distill.pub/2019/computing-receptive-fields/ : per spatial dimension, a layer with kernel k,
stride s, padding p and dilation d maps (size r, jump j, start c) to

    k' = d (k - 1) + 1,   r += (k' - 1) j,   c += ((k' - 1) / 2 - p) j,   j *= s

with input pixel i centred at coordinate i, so unit (y, x) of a layer is centred at ``start + (y, x) * jump``.

The graph comes from torch.fx symbolic tracing, so functional ops and residual adds are seen: a node with several
inputs (add, cat) takes the union of their fields. When tracing fails (data-dependent control flow) the order of
module calls in one probe forward pass is composed as a plain chain instead, which ignores functional ops and side
branches. Normalization statistics are ignored, as is conventional. Ops whose geometry is unknown here (adaptive
pools, flatten, linear, interpolation, reshapes) end the field: every later unit is taken to see the whole input,
which is a true upper bound.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..capture import preserved, resolve_layer

__all__ = ["RF", "receptive_field", "rf_box"]


@dataclass(frozen=True)
class RF:
    """Receptive field of the units of one layer, in input pixel coordinates.

    ``size`` (h, w): extent in input pixels; ``jump`` (h, w): input pixels between neighbouring units (the product of
    strides); ``start`` (h, w): centre of unit (0, 0), may be negative or half-integer; ``covers_input``: every unit
    sees the whole input (after a global op), then size is the input size. ``method``: "fx" or "hooks".
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]
    covers_input: bool = False
    method: str = "fx"


# A per-node state: None (not an image tensor: constants, shapes), _GLOBAL, or ((r, j, c), (r, j, c)) for (h, w).
_GLOBAL = "global"
_Geo = tuple[tuple[int, int, float], tuple[int, int, float]]

_POINTWISE_MODULES: tuple[type, ...] = (
    nn.Identity,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.dropout._DropoutNd,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Threshold, nn.LogSigmoid, nn.Softmax2d,
)  # fmt: skip

_POINTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div, torch.cat, torch.concat, torch.relu, torch.sigmoid, torch.tanh,
    torch.clamp, torch.abs, torch.neg, torch.exp,
    F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.selu, F.hardswish, F.hardsigmoid, F.hardtanh, F.mish,
    F.dropout, F.dropout2d, F.batch_norm, F.instance_norm, F.group_norm,
}  # fmt: skip
# a torch.export program's graphs (reportgen.loaders.exported) call the ATen operators themselves
_POINTWISE_FUNCTIONS |= {
    getattr(getattr(torch.ops.aten, op), overload)
    for op, overload in (("add", "Tensor"), ("add_", "Tensor"), ("sub", "Tensor"), ("mul", "Tensor"),
                         ("mul_", "Tensor"), ("div", "Tensor"), ("neg", "default"), ("cat", "default"),
                         ("relu", "default"), ("relu_", "default"), ("hardtanh", "default"), ("hardtanh_", "default"),
                         ("gelu", "default"), ("silu", "default"), ("silu_", "default"), ("sigmoid", "default"),
                         ("tanh", "default"), ("clamp", "default"), ("dropout", "default"),
                         ("batch_norm", "default"), ("hardswish", "default"), ("hardswish_", "default"),
                         ("hardsigmoid", "default"), ("contiguous", "default"), ("clone", "default"))
}

_POINTWISE_METHODS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "abs", "relu", "relu_", "sigmoid", "tanh",
    "clamp", "clamp_", "clamp_min", "exp", "contiguous", "clone", "detach", "float", "double", "half", "to", "type_as",
}  # fmt: skip

# ops that return metadata about a tensor rather than an image-shaped tensor
_META_FUNCTIONS = {getattr, len}
_META_METHODS = {"size", "dim"}


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _geometry(module: nn.Module) -> tuple[tuple[int, int], ...] | None:
    """(kernel, stride, padding, dilation) pairs of a windowed module, or None when it is not one."""
    if isinstance(module, nn.Conv2d):
        k, s, d = _pair(module.kernel_size), _pair(module.stride), _pair(module.dilation)
        if module.padding == "valid":
            p = (0, 0)
        elif module.padding == "same":
            # PyTorch puts the smaller half of the total padding before the input
            p = tuple((di * (ki - 1)) // 2 for ki, di in zip(k, d))
        else:
            p = _pair(module.padding)
        return k, s, p, d
    if isinstance(module, nn.MaxPool2d):
        k = _pair(module.kernel_size)
        s = _pair(module.stride if module.stride is not None else module.kernel_size)
        return k, s, _pair(module.padding), _pair(module.dilation)
    if isinstance(module, nn.AvgPool2d):
        k = _pair(module.kernel_size)
        s = _pair(module.stride if module.stride is not None else module.kernel_size)
        return k, s, _pair(module.padding), (1, 1)
    return None


def _apply_module(module: nn.Module, state: Any) -> Any:
    if state is None or state == _GLOBAL:
        return state
    geom = _geometry(module)
    if geom is not None:
        out = []
        for (r, j, c), k, s, p, d in zip(state, *geom):
            k_eff = d * (k - 1) + 1
            out.append((r + (k_eff - 1) * j, j * s, c + ((k_eff - 1) / 2 - p) * j))
        return tuple(out)
    if isinstance(module, _POINTWISE_MODULES):
        return state
    return _GLOBAL


def _union(states: Sequence[Any]) -> Any:
    """The smallest field that contains every input's field; whole input when their jumps disagree."""
    states = [s for s in states if s is not None]
    if not states:
        return None
    if any(s == _GLOBAL for s in states):
        return _GLOBAL
    out = []
    for dim in range(2):
        jumps = {s[dim][1] for s in states}
        if len(jumps) > 1:
            return _GLOBAL
        lo = min(s[dim][2] - (s[dim][0] - 1) / 2 for s in states)
        hi = max(s[dim][2] + (s[dim][0] - 1) / 2 for s in states)
        out.append((int(round(hi - lo)) + 1, jumps.pop(), (lo + hi) / 2))
    return tuple(out)


class _NamingTracer(fx.Tracer):
    """A tracer that remembers which graph node holds the output of every module call, by dotted module name."""

    def __init__(self) -> None:
        super().__init__()
        self.module_outputs: dict[str, fx.Node] = {}

    def call_module(self, m, forward, args, kwargs):  # noqa: ANN001 - fx signature
        out = super().call_module(m, forward, args, kwargs)
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(first, fx.Proxy):
            try:
                self.module_outputs[self.path_of_module(m)] = first.node  # a reused module: the last call wins
            except NameError:
                pass
        return out


def _fx_state(model: nn.Module, layer: str, tracer: _NamingTracer, graph: fx.Graph) -> Any:
    states: dict[fx.Node, Any] = {}
    seen_input = False
    target: fx.Node | None = tracer.module_outputs.get(layer)
    for node in graph.nodes:
        inputs: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: inputs.append(n))
        in_states = [states.get(n) for n in inputs]
        if node.op == "placeholder":
            state = None if seen_input else ((1, 1, 0.0), (1, 1, 0.0))
            seen_input = True
        elif node.op == "get_attr":
            state = None
        elif node.op == "call_module":
            module = model.get_submodule(node.target)
            tensor_states = [s for s in in_states if s is not None]
            state = _apply_module(module, _union(tensor_states[:1])) if tensor_states else None
        elif node.op in ("call_function", "call_method"):
            meta, pointwise = ((_META_FUNCTIONS, _POINTWISE_FUNCTIONS) if node.op == "call_function"
                               else (_META_METHODS, _POINTWISE_METHODS))
            if node.target in meta:
                state = None
            elif node.target in pointwise:
                state = _union(in_states)
            else:
                state = _GLOBAL if any(s is not None for s in in_states) else None
        else:  # output
            if layer == "" and target is None:
                target = inputs[0] if inputs else None
            state = None
        states[node] = state
    if target is None:  # also accept fx node names such as "layer1_0_relu_1"
        target = next((n for n in graph.nodes if n.name == layer), None)
    if target is None:
        resolve_layer(model, layer)  # raises LayerError with suggestions for an unknown name
        raise ValueError(f"layer '{layer}' is never called in the forward pass")
    return states[target]


def _hooks_state(model: nn.Module, layer: str, input_shape: Sequence[int]) -> Any:
    """Compose the geometry of leaf modules in call order up to ``layer``'s last output (a chain approximation)."""
    resolve_layer(model, layer)
    calls: list[nn.Module] = []
    upto: list[int] = []
    handles = []

    def leaf_hook(module, _inputs, _output):
        calls.append(module)

    def target_hook(_module, _inputs, _output):
        upto.append(len(calls))

    try:
        for name, module in model.named_modules():
            if not any(True for _ in module.children()):
                handles.append(module.register_forward_hook(leaf_hook))
        # registered after the leaf hook, so a leaf target counts itself
        handles.append(model.get_submodule(layer).register_forward_hook(target_hook))
        param = next(iter(model.parameters()), None)
        probe = torch.zeros(
            tuple(input_shape) if len(input_shape) == 4 else (1, *input_shape),
            dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32,
            device=param.device if param is not None else "cpu",
        )
        with preserved(model), torch.no_grad():
            model.eval()  # the probe must not move batch-norm running statistics
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    if not upto:
        raise ValueError(f"layer '{layer}' is never called in the forward pass")
    state: Any = ((1, 1, 0.0), (1, 1, 0.0))
    for module in calls[: upto[-1]]:
        state = _apply_module(module, state)
    return state


def receptive_field(model: nn.Module, layer: str, input_shape: Sequence[int]) -> RF:
    """Receptive field of the units of ``layer`` (dotted module name; "" for the model output).

    Args:
        model: any module; it is traced, not changed (the hooks fallback runs one eval-mode probe and restores modes).
        layer: dotted ``named_modules()`` name; with fx tracing an fx node name is accepted too.
        input_shape: (C, H, W) or (N, C, H, W); only H, W matter, except for the probe of the fallback.

    Returns:
        an `RF`; ``covers_input`` is True after a global op (size is then the input size).
    """
    in_h, in_w = int(input_shape[-2]), int(input_shape[-1])
    tracer = _NamingTracer()
    try:
        graph = tracer.trace(model)
    except Exception:  # noqa: BLE001 - any failure to trace (control flow on values, asserts) means: use the probe
        graph = None
    if graph is not None:
        state, method = _fx_state(model, layer, tracer, graph), "fx"
    else:
        state, method = _hooks_state(model, layer, input_shape), "hooks"
    if state is None or state == _GLOBAL:
        return RF((in_h, in_w), (in_h, in_w), ((in_h - 1) / 2, (in_w - 1) / 2), covers_input=True, method=method)
    (rh, jh, ch), (rw, jw, cw) = state
    return RF((rh, rw), (jh, jw), (ch, cw), method=method)


def rf_box(rf: RF, y: int, x: int, input_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """The input crop unit (y, x) sees: ``(top, left, bottom, right)`` with bottom/right exclusive, clipped to the image.

    ``image[..., top:bottom, left:right]`` is the crop (PIL's ``crop((left, top, right, bottom))`` order differs).
    """
    in_h, in_w = int(input_hw[0]), int(input_hw[1])
    if rf.covers_input:
        return 0, 0, in_h, in_w
    top = int(round(rf.start[0] + y * rf.jump[0] - (rf.size[0] - 1) / 2))
    left = int(round(rf.start[1] + x * rf.jump[1] - (rf.size[1] - 1) / 2))
    bottom, right = top + rf.size[0], left + rf.size[1]
    return max(top, 0), max(left, 0), min(max(bottom, 0), in_h), min(max(right, 0), in_w)
