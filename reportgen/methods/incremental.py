"""Exact incremental occlusion: recompute only what each patch changes, from the cached whole-image pass.

Nakandala, Kumar & Papakonstantinou, "Incremental and Approximate Inference for Faster Occlusion-based Deep CNN
Explanations" (Krypton), SIGMOD 2019, https://doi.org/10.1145/3299869.3319874.

An occluding patch changes a bounded box of each layer's output: a convolution or pooling layer grows the box by its
kernel, stride, padding and dilation; batch norm (eval), activations and other element-wise ops keep it; a residual
add or a channel concatenation takes the union of its inputs' boxes. The model is traced with `torch.fx`, run once on
the unoccluded image with every node's output cached, and then, for a batch of patch positions, each node computes
only its box: the cached input is cropped with the halo the op needs (zero or -inf padding where the crop leaves the
map), the inputs' changed boxes are pasted into the crop, and the op runs with padding 0 on it. A box has one size
for every position (the largest changed region, clamped inside the map), so a batch of positions stacks into one
tensor. A node whose box covers its whole map, or an op this module does not know (flatten, linear layers, adaptive
pooling, reshapes), is computed in full for the batch, and so is every node after it that depends on it. The result
is the plain method's to float rounding: nothing is approximated, only values known to be unchanged are reused.

The model is used as it is: the traced graph calls the user's own modules and parameters (or their functional form
with padding 0 on a crop); nothing is registered on it and nothing is swapped. Where the engine does not apply (fx
cannot trace the model, a module is in training mode so batch statistics would couple the positions, a forward hook
watches the model's calls, an in-place op writes into a tensor that another node may read, or the model takes more
than one input), `IncrementalOcclusion.plan` says why and the caller runs the plain batched forward passes instead.

Shapes: ``inputs`` (N, C, H, W) float; drops (N, rows, cols) with rows = (H - wh) // sh + 1.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

# ---------------------------------------------------------------------------------------------------------------
# What the engine knows about ops

# Modules applied value by value (per channel at most) in eval mode: the changed box stays where it is.
_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                      nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
                      nn.Softsign, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
_POINTWISE_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu,
                        F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, torch.sigmoid, torch.tanh,
                        F.sigmoid, F.tanh, torch.clamp, torch.abs, torch.neg, torch.exp, operator.neg, F.softplus}
_POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
                      "clamp_min_", "clamp_max", "clamp_max_", "abs", "neg", "exp", "contiguous", "float"}
_BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
                     operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum,
                     torch.minimum}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_CAT_FUNCTIONS = {torch.cat, torch.concat}
_SHAPE_METHODS = {"size", "dim"}
_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, torch.relu_, F.relu_}
# Ops that return a new tensor (never a view of an input): an in-place op may write into their output when
# nothing else reads it.
_FRESH_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                  nn.Linear) + tuple(m for m in _POINTWISE_MODULES
                                     if m not in (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout))
_FRESH_FUNCTIONS = (_BINARY_FUNCTIONS - _INPLACE_FUNCTIONS) | _CAT_FUNCTIONS | {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.conv2d, F.batch_norm,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.linear}
_FRESH_METHODS = {"relu", "sigmoid", "tanh", "add", "sub", "mul", "div", "clamp"}


def _argument(node: fx.Node, name: str) -> Any:
    """The value of a function node's argument ``name`` however it was passed (None when it has none)."""
    if name in node.kwargs:
        return node.kwargs[name]
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):  # builtins without a signature, or a call that would fail anyway
        return None
    bound.apply_defaults()
    return bound.arguments.get(name)


def _is_inplace(node: fx.Node, module: nn.Module | None) -> bool:
    if node.op == "call_module":
        return bool(getattr(module, "inplace", False))
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS or _argument(node, "inplace") is True
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("_")
    return False


def _is_fresh(node: fx.Node, module: nn.Module | None) -> bool:
    if node.op == "call_module":
        return isinstance(module, _FRESH_MODULES) and not getattr(module, "inplace", False)
    if node.op == "call_function":
        return node.target in _FRESH_FUNCTIONS and _argument(node, "inplace") is not True
    if node.op == "call_method":
        return node.target in _FRESH_METHODS
    return False


# ---------------------------------------------------------------------------------------------------------------
# Boxes along one axis


@dataclass
class _Axis:
    """The changed interval of one map axis for each patch position along that axis, and the box computed there.

    ``exact[i] = (a, b)``: values a..b-1 may differ from the cached pass at position i (a == b: none do).
    ``size``: the box length, the same at every position (the largest change, at least 1, at most ``length``);
    ``start[i]``: where the box begins at position i (the change's start, clamped so the box stays in the map).
    """

    length: int
    exact: list[tuple[int, int]]
    size: int = 0
    start: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.size = min(self.length, max([1] + [b - a for a, b in self.exact]))
        self.start = [min(max(a, 0), self.length - self.size) for a, _ in self.exact]

    @property
    def full(self) -> bool:
        return self.size >= self.length


def _window_axis(inp: _Axis, kernel: int, stride: int, pad: int, dilation: int, out_len: int) -> _Axis:
    """Output o of a sliding window reads inputs o*stride - pad + j*dilation, j < kernel: it changes when that
    range meets a changed input."""
    reach = (kernel - 1) * dilation
    exact = []
    for a, b in inp.exact:
        if a >= b:
            exact.append((0, 0))
            continue
        lo = max(0, -((reach - a - pad) // stride))  # ceil((a + pad - reach) / stride)
        hi = min(out_len - 1, (b - 1 + pad) // stride)
        exact.append((lo, hi + 1) if lo <= hi else (0, 0))
    return _Axis(out_len, exact)


def _union_axis(axes: Sequence[_Axis]) -> _Axis:
    exact = []
    for spans in zip(*(ax.exact for ax in axes)):
        real = [(a, b) for a, b in spans if a < b]
        exact.append((min(a for a, _ in real), max(b for _, b in real)) if real else (0, 0))
    return _Axis(axes[0].length, exact)


# ---------------------------------------------------------------------------------------------------------------
# Values of a node for a batch of positions


class _Boxed:
    """A 4-D node value for a batch of B positions: ``base`` (1, C, H, W) everywhere except per-sample boxes,
    whose values are ``patch`` (B, C, h, w) with sample b's box at rows ``tops[b]``, columns ``lefts[b]``."""

    __slots__ = ("base", "patch", "tops", "lefts")

    def __init__(self, base: torch.Tensor, patch: torch.Tensor, tops: list[int], lefts: list[int]) -> None:
        self.base, self.patch, self.tops, self.lefts = base, patch, tops, lefts


class _Full:
    """A node value computed for the whole batch (a tensor with batch dimension B, or any Python value)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Static:
    """A node value that does not depend on the image (parameters, constants): the cached value itself."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _flat(base: torch.Tensor, pad: tuple[int, int, int, int], value: float) -> torch.Tensor:
    """(1, C, H, W) -> (Hp * Wp, C): padded by ``pad`` = (left, right, top, bottom) with ``value``, one row per
    pixel, so that a window of any sample is a set of row indices (one gather for the whole batch)."""
    padded = F.pad(base, pad, value=value) if any(pad) else base
    return padded[0].permute(1, 2, 0).reshape(-1, base.shape[1])


def _read(rep: _Boxed | _Static, tops: list[int], lefts: list[int], h: int, w: int, flat: torch.Tensor,
          width: int, pad: tuple[int, int]) -> torch.Tensor:
    """The values of ``rep`` (B, C, h, w) on per-sample windows starting at map coordinates (tops[b], lefts[b]);
    rows or columns outside the map read the padding of ``flat``, the cached value as `_flat` rows, padded by
    ``pad`` = (top, left) above and left (and enough below and right), ``width`` columns wide.

    One ``index_select`` of whole pixel rows (C contiguous values) gathers the batch: the changed box of each sample
    where it overlaps the window, the cache elsewhere. Per-sample slice copies are each too small to use the cores
    well and, under load, each pays for waking them. The result is channels-last, as convolutions prefer it."""
    device = flat.device
    rows = torch.tensor(tops, device=device)[:, None] + torch.arange(h, device=device)  # (B, h) map rows
    cols = torch.tensor(lefts, device=device)[:, None] + torch.arange(w, device=device)  # (B, w)
    index = (rows + pad[0])[:, :, None] * width + (cols + pad[1])[:, None, :]  # (B, h, w) rows of flat
    source = flat
    if isinstance(rep, _Boxed):
        patch = rep.patch
        batch, channels, ph, pw = patch.shape
        pr = rows - torch.tensor(rep.tops, device=device)[:, None]  # row within the sample's box
        pc = cols - torch.tensor(rep.lefts, device=device)[:, None]
        inside = ((pr >= 0) & (pr < ph))[:, :, None] & ((pc >= 0) & (pc < pw))[:, None, :]
        sample = torch.arange(batch, device=device)[:, None, None]
        in_patch = flat.shape[0] + (sample * ph + pr[:, :, None]) * pw + pc[:, None, :]
        index = torch.where(inside, in_patch, index)
        source = torch.cat([flat, patch.permute(0, 2, 3, 1).reshape(-1, channels)])
    out = source.index_select(0, index.reshape(-1))
    return out.view(len(tops), h, w, -1).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------------------
# The plan: what each node does for a batch


@dataclass
class _Step:
    node: fx.Node
    kind: str  # "input", "static", "window", "pointwise", "merge", "full", "output"
    rows: _Axis | None = None  # the node's box (for boxed kinds)
    cols: _Axis | None = None
    window: dict | None = None  # kernel/stride/padding/dilation per axis, pad value, the op on a crop
    spatial: list[fx.Node] = field(default_factory=list)  # inputs read on the box (merge)
    macs_full: int = 0  # multiply-adds of the plain op per image (conv, linear)
    macs_done: int = 0  # of which this plan computes


@dataclass
class IncrementalPlan:
    """What the engine does on one model for one input size, window and stride.

    ``used``: the incremental engine applies (else ``reason`` says why, and the caller runs full forward passes).
    ``fallbacks``: (layer, why) for each node where full recomputation begins while all its inputs were still
    boxes; every node that reads it is then computed in full too. ``mac_fraction``: the multiply-adds of the
    convolution and linear layers computed per position over those of a full forward pass.
    """

    used: bool
    reason: str = ""
    nodes: int = 0
    boxed_nodes: int = 0
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    mac_fraction: float = 1.0

    def sentence(self, limit: int = 3) -> str:
        """One or two sentences for a caption: whether incremental inference ran and where it fell back."""
        if not self.used:
            return f"Computed with full forward passes (incremental inference does not apply: {self.reason})."
        text = (f"Computed by exact incremental inference (Krypton): each patch position recomputes only the part of "
                f"each layer it changes ({self.mac_fraction:.0%} of the multiply-adds of the convolution and linear "
                "layers in full forward passes)")
        if not self.fallbacks:
            return text + "."
        shown = [f"{layer} ({why})" for layer, why in self.fallbacks[:limit]]
        more = len(self.fallbacks) - limit
        tail = f" and {more} more" if more > 0 else ""
        return text + "; full recomputation from " + ", ".join(shown) + tail + " on."


class IncrementalOcclusion:
    """The traced model and its plan; `drops` gives the occlusion drops of one image for all patch positions.

    Build it with `IncrementalOcclusion.prepare(model, inputs[:1], window, stride)`; when ``plan.used`` is False
    the engine does not apply and the caller must use full forward passes.
    """

    def __init__(self, model: nn.Module, graph: fx.GraphModule | None, plan: IncrementalPlan) -> None:
        self.model, self.graph, self.plan = model, graph, plan
        self.steps: list[_Step] = []
        self.mutated: set[fx.Node] = set()
        self.last_use: dict[fx.Node, int] = {}
        self._first: tuple[torch.Tensor, dict] | None = None

    # -- construction -----------------------------------------------------------------------------------------

    @classmethod
    def prepare(cls, model: nn.Module, image: torch.Tensor, window: tuple[int, int],
                stride: tuple[int, int]) -> "IncrementalOcclusion":
        """Trace ``model`` and plan the boxes for (1, C, H, W) ``image``, patches ``window`` moved by ``stride``."""
        refused = _refusal(model)
        if refused:
            return cls(model, None, IncrementalPlan(False, refused))
        try:
            graph = fx.symbolic_trace(model)
        except Exception as err:  # fx raises many kinds (TraceError, TypeError, NotImplementedError...)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return cls(model, None, IncrementalPlan(False, f"torch.fx cannot trace the model ({type(err).__name__}"
                                                             + (f": {first[:120]}" if first else "") + ")"))
        engine = cls(model, graph, IncrementalPlan(True))
        why = engine._check_graph()
        if why:
            return cls(model, None, IncrementalPlan(False, why))
        with torch.inference_mode():
            cache = engine._base_pass(image)
        engine._make_plan(cache, image.shape, window, stride)
        engine._first = (image, cache)  # `drops` of this image reuses the pass
        return engine

    def _module(self, node: fx.Node) -> nn.Module | None:
        return self.model.get_submodule(node.target) if node.op == "call_module" else None

    def _check_graph(self) -> str:
        nodes = list(self.graph.graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            return f"the traced model takes {len(inputs)} inputs, not one image batch"
        depends = self._depends(nodes)
        writers: set[fx.Node] = set()  # in-place ops accepted so far: their output may be written again
        for node in nodes:
            module = self._module(node)
            if not _is_inplace(node, module):
                continue
            target = node.args[0] if node.args else None
            if not isinstance(target, fx.Node) or not depends.get(target, False):
                return f"the in-place op {node.name} writes into a tensor that does not come from the image"
            users = list(target.users)
            safe = users == [node] and (_is_fresh(target, self._module(target)) or target in writers)
            if not safe:
                return (f"the in-place op {node.name} writes into {target.name}, which another node may read "
                        "(a shared or aliased tensor)")
            self.mutated.add(target)
            writers.add(node)
        order = {n: i for i, n in enumerate(nodes)}
        for node in nodes:
            for user in node.users:
                self.last_use[node] = max(self.last_use.get(node, -1), order[user])
        return ""

    @staticmethod
    def _depends(nodes: list[fx.Node]) -> dict[fx.Node, bool]:
        depends: dict[fx.Node, bool] = {}
        for node in nodes:
            depends[node] = node.op == "placeholder" or any(depends.get(a, False) for a in node.all_input_nodes)
        return depends

    def _run_node(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        if node.op == "call_module":
            return self._module(node)(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            value: Any = self.graph
            for part in str(node.target).split("."):
                value = getattr(value, part)
            return value
        raise AssertionError(node.op)  # pragma: no cover - placeholder and output are handled by the callers

    def _base_pass(self, image: torch.Tensor) -> dict[fx.Node, Any]:
        """Every node's output for the unoccluded (1, C, H, W) image. An output that a later in-place op
        overwrites is cached as a copy, so the cache holds what each node returned."""
        env: dict[fx.Node, Any] = {}
        cache: dict[fx.Node, Any] = {}
        for node in self.graph.graph.nodes:
            if node.op == "placeholder":
                out = image
            elif node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda n: env[n])
            else:
                args = fx.node.map_arg(node.args, lambda n: env[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
                out = self._run_node(node, args, kwargs)
            env[node] = out
            cache[node] = out.clone() if node in self.mutated and isinstance(out, torch.Tensor) else out
        return cache

    def _make_plan(self, cache: dict[fx.Node, Any], shape: torch.Size, window: tuple[int, int],
                   stride: tuple[int, int]) -> None:
        _, _, height, width = shape
        (wh, ww), (sh, sw) = window, stride
        rows = [(i * sh, i * sh + wh) for i in range((height - wh) // sh + 1)]
        cols = [(j * sw, j * sw + ww) for j in range((width - ww) // sw + 1)]
        depends = self._depends(list(self.graph.graph.nodes))
        boxes: dict[fx.Node, tuple[_Axis, _Axis]] = {}
        plan = self.plan
        for node in self.graph.graph.nodes:
            step = self._plan_node(node, cache, boxes, depends, rows, cols)
            if step.kind in ("input", "window", "pointwise", "merge"):
                if step.rows.full and step.cols.full:
                    step.kind = "full"
                    self._note_fallback(node, step, "its changed region covers the whole "
                                        f"{step.rows.length}x{step.cols.length} map")
                else:
                    boxes[node] = (step.rows, step.cols)
                    plan.boxed_nodes += 1
            elif step.kind == "full" and any(a in boxes for a in node.all_input_nodes) and not _is_shape(node):
                # the first node computed in full on boxes (other inputs: constants, or sizes such as x.shape[0])
                if all(a in boxes or not depends[a] or not isinstance(cache[a], torch.Tensor)
                       for a in node.all_input_nodes):
                    self._note_fallback(node, step, f"{_describe(node, self._module(node))} is not computed "
                                        "by region")
            if node.op not in ("placeholder", "output") and depends[node]:
                plan.nodes += 1
            self._count_macs(step, cache)
            self.steps.append(step)
        full = sum(s.macs_full for s in self.steps)
        plan.mac_fraction = sum(s.macs_done for s in self.steps) / full if full else 1.0

    def _note_fallback(self, node: fx.Node, step: _Step, why: str) -> None:
        step.window = None
        self.plan.fallbacks.append((str(node.target) if node.op == "call_module" else node.name, why))

    def _plan_node(self, node: fx.Node, cache: dict, boxes: dict, depends: dict, rows: list, cols: list) -> _Step:
        if node.op == "placeholder":
            return _Step(node, "input", _Axis(cache[node].shape[2], rows), _Axis(cache[node].shape[3], cols))
        if node.op == "output":
            return _Step(node, "output")
        if not depends[node]:
            return _Step(node, "static")
        module = self._module(node)
        out = cache[node]
        spatial_in = [a for a in node.all_input_nodes if a in boxes]
        others_static = all(a in boxes or not depends[a] for a in node.all_input_nodes)
        if not spatial_in or not others_static or not _is_map(out):
            return _Step(node, "full")
        first = node.args[0] if node.args else None
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and first in boxes and len(node.args) == 1 \
                and not node.kwargs:
            spec = _window_spec(module)
            if spec is not None:
                r_in, c_in = boxes[first]
                k, s, p, d = spec["kernel"], spec["stride"], spec["padding"], spec["dilation"]
                return _Step(node, "window", _window_axis(r_in, k[0], s[0], p[0], d[0], out.shape[2]),
                             _window_axis(c_in, k[1], s[1], p[1], d[1], out.shape[3]), window=spec)
        if _is_pointwise(node, module) and first in boxes and cache[first].shape == out.shape \
                and len(spatial_in) == 1 and _static_ok(node, cache, boxes, first):
            r_in, c_in = boxes[first]
            return _Step(node, "pointwise", r_in, c_in)
        if _is_merge(node, out) and _merge_ok(node, cache, boxes, out):
            spatial = [a for a in _tensor_args(node) if a in boxes or _is_map(cache[a])]
            axes = [boxes[a] for a in spatial if a in boxes]
            return _Step(node, "merge", _union_axis([r for r, _ in axes]), _union_axis([c for _, c in axes]),
                         spatial=spatial)
        return _Step(node, "full")

    def _count_macs(self, step: _Step, cache: dict) -> None:
        node = step.node
        if node.op != "call_module" or step.kind == "static":
            return
        module = self._module(node)
        out = cache[node]
        if isinstance(module, nn.Conv2d):
            per = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            step.macs_full = per * out.shape[1] * out.shape[2] * out.shape[3]
            done = step.rows.size * step.cols.size if step.kind == "window" else out.shape[2] * out.shape[3]
            step.macs_done = per * out.shape[1] * done
        elif isinstance(module, nn.Linear):
            step.macs_full = step.macs_done = module.in_features * module.out_features * (out.numel() // out.shape[-1])

    # -- running ------------------------------------------------------------------------------------------------

    def drops(self, image: torch.Tensor, fill: torch.Tensor, target: int, score: Callable, batch_size: int,
              window: tuple[int, int]) -> torch.Tensor:
        """Score drops (rows * cols,) of one (1, C, H, W) ``image`` (row-major positions), the patches set to
        ``fill`` (C, H, W); ``score(logits, targets)`` gives the (B,) scores."""
        first = self._first
        same = first is not None and first[0].data_ptr() == image.data_ptr() and first[0].shape == image.shape \
            and first[0].stride() == image.stride() and first[0].dtype == image.dtype
        cache = first[1] if same else self._base_pass(image)
        out_node = self.steps[-1].node
        base = score(cache[out_node], torch.tensor([target], device=image.device))
        ncols = len(self.steps[0].cols.exact)
        total = len(self.steps[0].rows.exact) * ncols
        padded: dict[tuple, torch.Tensor] = {}
        drops = image.new_empty(total)
        for start in range(0, total, batch_size):
            positions = list(range(start, min(total, start + batch_size)))
            logits = self._batch(cache, padded, image, fill, positions, ncols, window)
            targets = torch.full((len(positions),), target, dtype=torch.long, device=image.device)
            drops[start:start + len(positions)] = base - score(logits, targets)
        return drops

    def _batch(self, cache: dict, padded: dict, image: torch.Tensor, fill: torch.Tensor, positions: list[int],
               ncols: int, window: tuple[int, int]) -> Any:
        ri = [p // ncols for p in positions]
        ci = [p % ncols for p in positions]
        env: dict[fx.Node, Any] = {}
        for index, step in enumerate(self.steps):
            node = step.node
            if step.kind == "output":
                result = fx.node.map_arg(node.args[0], lambda n: self._as_value(env[n]))
                return result
            tops = [step.rows.start[i] for i in ri] if step.rows is not None else []
            lefts = [step.cols.start[j] for j in ci] if step.cols is not None else []
            if step.kind == "static":
                env[node] = _Static(cache[node])
            elif step.kind == "input":
                env[node] = self._input(image, fill, tops, lefts, window)
            elif step.kind == "window":
                env[node] = self._window(step, env[node.args[0]], cache, padded, tops, lefts)
            elif step.kind == "pointwise":
                src = env[node.args[0]]
                args = (src.patch,) + tuple(fx.node.map_arg(node.args[1:], lambda n: env[n].value))
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n].value)
                env[node] = _Boxed(cache[node], self._run_node(node, args, kwargs), src.tops, src.lefts)
            elif step.kind == "merge":
                env[node] = self._merge(step, env, cache, padded, tops, lefts)
            elif step.kind == "full" and node.op == "placeholder":  # the patch covers the whole image
                zeros = [0] * len(positions)
                env[node] = _Full(self._materialize(self._input(image, fill, zeros, zeros, window)))
            else:
                env[node] = self._generic(node, env, cache, len(positions))
            for arg in node.all_input_nodes:  # free what no later node reads (batch-sized values add up)
                if self.last_use.get(arg, -1) <= index and arg in env:
                    del env[arg]
        raise AssertionError("the traced graph has no output")  # pragma: no cover

    def _input(self, image: torch.Tensor, fill: torch.Tensor, tops: list[int], lefts: list[int],
               window: tuple[int, int]) -> _Boxed:
        wh, ww = window
        patch = torch.stack([fill[:, r:r + wh, c:c + ww] for r, c in zip(tops, lefts)])
        return _Boxed(image, patch, tops, lefts)

    def _window(self, step: _Step, src: _Boxed, cache: dict, padded: dict, tops: list[int],
                lefts: list[int]) -> _Boxed:
        spec = step.window
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = spec["kernel"], spec["stride"], spec["padding"], spec["dilation"]
        h = (step.rows.size - 1) * sh + (kh - 1) * dh + 1
        w = (step.cols.size - 1) * sw + (kw - 1) * dw + 1
        flat, width = self._padded(step.node.args[0], src.base, padded, (ph, pw), (sh, sw), spec["pad_value"])
        crop = _read(src, [t * sh - ph for t in tops], [c * sw - pw for c in lefts], h, w, flat, width, (ph, pw))
        return _Boxed(cache[step.node], spec["op"](crop), tops, lefts)

    @staticmethod
    def _padded(node: fx.Node, base: torch.Tensor, padded: dict, pad: tuple[int, int], extra: tuple[int, int],
                value: float) -> tuple[torch.Tensor, int]:
        """The cached value of ``node`` as `_flat` rows padded by ``pad`` (+ ``extra`` below and right), and the
        padded width; computed once per image."""
        key = (node, pad, extra, value)
        if key not in padded:
            # Past the bottom/right edge a ceil-mode window may read up to one stride more than the padding.
            padded[key] = (_flat(base, (pad[1], pad[1] + extra[1], pad[0], pad[0] + extra[0]), value),
                           base.shape[3] + 2 * pad[1] + extra[1])
        return padded[key]

    def _merge(self, step: _Step, env: dict, cache: dict, padded: dict, tops: list[int], lefts: list[int]) -> _Boxed:
        h, w = step.rows.size, step.cols.size
        read: dict[fx.Node, torch.Tensor] = {}
        for arg in step.spatial:
            rep = env[arg]
            if isinstance(rep, _Boxed) and rep.tops == tops and rep.lefts == lefts and rep.patch.shape[2:] == (h, w):
                read[arg] = rep.patch
            else:
                base = rep.base if isinstance(rep, _Boxed) else rep.value
                flat, width = self._padded(arg, base, padded, (0, 0), (0, 0), 0.0)
                read[arg] = _read(rep, tops, lefts, h, w, flat, width, (0, 0))
        node = step.node
        args = fx.node.map_arg(node.args, lambda n: read[n] if n in read else env[n].value)
        kwargs = fx.node.map_arg(node.kwargs, lambda n: read[n] if n in read else env[n].value)
        return _Boxed(cache[node], self._run_node(node, args, kwargs), tops, lefts)

    def _materialize(self, rep: _Boxed) -> torch.Tensor:
        """The whole (B, C, H, W) value, contiguous as the model's own ops would see it (a ``.view()`` may need it)."""
        n = len(rep.tops)
        _, _, h, w = rep.base.shape
        if rep.patch.shape[2:] == (h, w):
            return rep.patch.contiguous()
        return _read(rep, [0] * n, [0] * n, h, w, _flat(rep.base, (0, 0, 0, 0), 0.0), w, (0, 0)).contiguous()

    def _as_value(self, rep: Any) -> Any:
        if isinstance(rep, _Boxed):
            return self._materialize(rep)
        return rep.value

    def _generic(self, node: fx.Node, env: dict, cache: dict, batch: int) -> _Full:
        if _is_shape(node):
            # Shape questions about a boxed value are answered for the batch without building it.
            def meta(n: fx.Node) -> Any:
                rep = env[n]
                if isinstance(rep, _Boxed):
                    return torch.empty((batch, *rep.base.shape[1:]), dtype=rep.base.dtype, device="meta")
                return rep.value
            args = fx.node.map_arg(node.args, meta)
            kwargs = fx.node.map_arg(node.kwargs, meta)
        else:
            args = fx.node.map_arg(node.args, lambda n: self._as_value(env[n]))
            kwargs = fx.node.map_arg(node.kwargs, lambda n: self._as_value(env[n]))
        return _Full(self._run_node(node, args, kwargs))


# ---------------------------------------------------------------------------------------------------------------
# Helpers of the plan


def _refusal(model: nn.Module) -> str:
    if isinstance(model, torch.jit.ScriptModule):
        return "a TorchScript model cannot be traced by torch.fx"
    if not isinstance(model, nn.Module):
        return "the model is not an nn.Module"
    training = [name or "the model" for name, m in model.named_modules() if m.training]
    if training:
        return (f"{training[0]} is in training mode (batch statistics and dropout would make each position depend "
                "on the others)")
    # A hook watches (or counts, or changes) the model's calls: the engine's crops and skipped calls would escape it.
    hooked = [name or "the model" for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        return f"a forward hook on {hooked[0]} watches the model's calls, which the engine would bypass"
    return ""


def _is_shape(node: fx.Node) -> bool:
    """A question about a value's shape (``x.size()``, ``x.dim()``, ``x.shape``), answerable without the value."""
    return (node.op == "call_method" and node.target in _SHAPE_METHODS) or \
        (node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim"))


def _is_map(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[0] == 1


def _pairs(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _window_spec(module: nn.Module) -> dict | None:
    """Kernel, stride, padding, dilation (pairs), the padding value and the op on a crop (padding 0), or None
    when the module is not computed by region (string padding, non-zero padding modes, ceil-mode averages...)."""
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return None
        weight, bias = module.weight, module.bias
        stride, dilation, groups = module.stride, module.dilation, module.groups
        return {"kernel": _pairs(module.kernel_size), "stride": _pairs(stride), "padding": _pairs(module.padding),
                "dilation": _pairs(dilation), "pad_value": 0.0,
                "op": lambda crop: F.conv2d(crop, weight, bias, stride, 0, dilation, groups)}
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices:
            return None
        k, s = _pairs(module.kernel_size), _pairs(module.stride if module.stride is not None else module.kernel_size)
        d = _pairs(module.dilation)
        # -inf padding is what max pooling pads with; a ceil-mode window past the edge reads padding too.
        return {"kernel": k, "stride": s, "padding": _pairs(module.padding), "dilation": d,
                "pad_value": float("-inf"), "op": lambda crop: F.max_pool2d(crop, k, s, 0, d)}
    if isinstance(module, nn.AvgPool2d):
        p = _pairs(module.padding)
        if module.ceil_mode or (p != (0, 0) and not module.count_include_pad):
            return None
        k, s = _pairs(module.kernel_size), _pairs(module.stride if module.stride is not None else module.kernel_size)
        divisor = module.divisor_override
        # With count_include_pad the zero padding counts in the mean, exactly as zeros read from a padded crop.
        return {"kernel": k, "stride": s, "padding": p, "dilation": (1, 1), "pad_value": 0.0,
                "op": lambda crop: F.avg_pool2d(crop, k, s, 0, False, True, divisor)}
    return None


def _is_pointwise(node: fx.Node, module: nn.Module | None) -> bool:
    if node.op == "call_module":
        if isinstance(module, nn.BatchNorm2d):  # eval mode with running statistics: a per-channel affine map
            return module.running_mean is not None and not module.training
        return isinstance(module, _POINTWISE_MODULES)
    if node.op == "call_function":
        if node.target is F.dropout:
            return _argument(node, "training") is False
        return node.target in _POINTWISE_FUNCTIONS
    if node.op == "call_method":
        return node.target in _POINTWISE_METHODS
    return False


def _is_merge(node: fx.Node, out: torch.Tensor) -> bool:
    if node.op == "call_function" and node.target in _CAT_FUNCTIONS:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        return isinstance(dim, int) and dim in (1, -3)
    if node.op == "call_function":
        return node.target in _BINARY_FUNCTIONS
    if node.op == "call_method":
        return node.target in _BINARY_METHODS
    return False


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    seen: list[fx.Node] = []
    for arg in node.all_input_nodes:
        if arg not in seen:
            seen.append(arg)
    return seen


def _static_ok(node: fx.Node, cache: dict, boxes: dict, boxed: fx.Node) -> bool:
    """The box is the op's first argument and nowhere else; the other tensor arguments are per-channel at most
    (they do not vary over the map)."""
    uses: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), uses.append)
    if uses.count(boxed) != 1 or not node.args or node.args[0] is not boxed:
        return False
    for arg in _tensor_args(node):
        if arg is boxed:
            continue
        value = cache[arg]
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[-2:] != (1, 1) and value.numel() > 1:
            return False
        if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() > 1:
            return False  # a 1-D tensor broadcasts along the map's columns
    return True


def _merge_ok(node: fx.Node, cache: dict, boxes: dict, out: torch.Tensor) -> bool:
    """Every tensor argument is a box of the output's map size, a cached map of that size, or does not vary over
    the map (a scalar or a per-channel tensor)."""
    for arg in _tensor_args(node):
        value = cache[arg]
        if arg in boxes or (_is_map(value) and value.shape[2:] == out.shape[2:]):
            if value.shape[2:] != out.shape[2:]:
                return False
            continue
        if not isinstance(value, torch.Tensor):
            return False
        if value.numel() > 1 and (value.dim() < 2 or value.shape[-2:] != (1, 1)):
            return False
    return True


def _describe(node: fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        return type(module).__name__
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))
