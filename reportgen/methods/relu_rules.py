"""Modified backward rules through ReLUs (deconvnet, guided backprop), and a check of which rules apply exactly.

Deconvnet and guided backpropagation differ from the plain gradient only in how the gradient passes a ReLU.
Swapping ``nn.ReLU`` modules (what most libraries do) misses functional calls (``F.relu``, ``x.relu_()``) and, when
one module is reused (torchvision's BasicBlock), is easy to get wrong. Here every ReLU call is rerouted instead,
whatever form it takes, by a `torch.overrides.TorchFunctionMode` that is active only inside `relu_rule`: no module
is swapped and no hook is registered, so there is nothing to put back.
"""

from __future__ import annotations

import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..capture import require_python_module

Rule = Literal["guided", "deconv"]

# Every public spelling of ReLU. nn.ReLU.forward calls F.relu, so modules are covered too. The value says whether
# the call is in place by itself (F.relu decides through its ``inplace`` argument).
_RELU_FUNCS: dict[object, bool] = {
    F.relu: False,
    torch.relu: False,
    torch.Tensor.relu: False,
    torch.relu_: True,
    torch.Tensor.relu_: True,
    F.relu_: True,
    # a torch.export program's graphs call the ATen operators themselves (reportgen.loaders.exported)
    torch.ops.aten.relu.default: False,
    torch.ops.aten.relu_.default: True,
}


def _relu_call(func, args, kwargs) -> tuple[torch.Tensor, bool] | None:
    """``(input, inplace)`` when ``func(*args, **kwargs)`` is a ReLU on one tensor, else None."""
    try:
        fixed_inplace = _RELU_FUNCS[func]
    except (KeyError, TypeError):  # TypeError: an unhashable callable
        return None
    if not args or not isinstance(args[0], torch.Tensor) or set(kwargs) - {"inplace"}:
        return None
    if func is F.relu:
        inplace = bool(args[1]) if len(args) > 1 else bool(kwargs.get("inplace", False))
    else:
        inplace = fixed_inplace
    return args[0], inplace


class _RuleReLU(torch.autograd.Function):
    """ReLU forward, modified backward: ``deconv`` passes max(grad, 0) whatever the input was (Zeiler & Fergus);
    ``guided`` also keeps the forward mask, so only positive gradient through active units passes (Springenberg)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, guided: bool, inplace: bool) -> torch.Tensor:
        if inplace:
            out = torch.relu_(x)
            ctx.mark_dirty(x)
        else:
            out = torch.relu(x)
        ctx.guided = guided
        if guided:
            # In place, the input is gone; the output has the same positive set, so save that.
            ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_in = grad_out.clamp(min=0)
        if ctx.guided:
            (out,) = ctx.saved_tensors
            # ReLU's own backward kernel: grad_in where out > 0, else 0, in one pass (a mask product takes three)
            grad_in = torch.ops.aten.threshold_backward(grad_in, out, 0)
        return grad_in, None, None


class NonReluWarning(UserWarning):
    """A ReLU rule ran on a model with other non-linearities, which keep their plain gradient."""


class _ImagePathMode(TorchFunctionMode):
    """A function mode that knows which tensors depend on the image, once `mark` has named the model's input.

    Dependence is followed forward through every torch call the mode sees: the output of a call that received an
    image-dependent tensor is image-dependent (in-place calls return the tensor they changed, so it is marked too).
    Parameters, buffers and tensors built from them alone (Swin V2's relative-position MLP, a learned gate on a
    constant) are not: a ReLU there never sees the gradient of the image, so a modified backward rule there changes
    nothing. The rule errs towards "depends" (e.g. through ``detach``), never the other way. Unmarked, every call
    counts as depending on the image.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tracking = False
        self._dependent: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def mark(self, tensor: torch.Tensor) -> None:
        """Follow what depends on ``tensor`` (the model's input) from now on."""
        self.tracking = True
        self._dependent[id(tensor)] = tensor

    def depends(self, values) -> bool:
        """Whether any tensor in ``values`` (any nesting of lists, tuples and dicts) depends on the image."""
        return not self.tracking or any(isinstance(v, torch.Tensor) and self._dependent.get(id(v)) is v
                                        for v in tree_flatten(values)[0])

    def follow(self, out, on_path: bool):
        """Mark the tensors of ``out`` (a call's result) as depending on the image when its inputs did; returns it."""
        if self.tracking and on_path:
            for value in tree_flatten(out)[0]:
                if isinstance(value, torch.Tensor):
                    self._dependent[id(value)] = value
        return out


class _RuleMode(_ImagePathMode):
    def __init__(self, guided: bool) -> None:
        super().__init__()
        self.guided = guided
        self.relus = 0
        self.off_path_relus = 0  # ReLUs on parameters and buffers alone: rewritten, but no image gradient passes
        self.others: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        on_path = self.depends((args, kwargs))
        call = _relu_call(func, args, kwargs)
        if call is not None:
            x, inplace = call
            if on_path:
                self.relus += 1
            else:
                self.off_path_relus += 1
            return self.follow(_RuleReLU.apply(x, self.guided, inplace), on_path)
        try:
            # nn.MultiheadAttention's functional form hides its softmax from this mode (nested calls are not seen)
            name = "F.multi_head_attention_forward" if func is F.multi_head_attention_forward else \
                _OTHER_FUNCS.get(func)
        except TypeError:  # an unhashable callable
            name = None
        # clamp / clip are also plain arithmetic (and this module's own backward uses clamp): not counted
        if name is not None and "clamp" not in name and "clip" not in name and on_path:
            self.others[name] = self.others.get(name, 0) + 1
        return self.follow(func(*args, **kwargs), on_path)


@contextmanager
def relu_rule(rule: Rule, source: torch.Tensor | None = None) -> Iterator[None]:
    """Inside the block, every ReLU computed in this thread backpropagates with ``rule`` ("guided" or "deconv").

    Covers ``nn.ReLU`` (also reused and ``inplace=True``), ``F.relu``, ``F.relu_``, ``torch.relu``, ``torch.relu_``,
    ``Tensor.relu`` and ``Tensor.relu_``. Keep the backward pass inside the block too: code that recomputes the
    forward during backward (activation checkpointing) then gets the same rule. Other non-linearities keep their
    ordinary gradient; `inspect_nonlinearities` tells whether a model has any, and when the block computed any
    (GELU, softmax attention, sigmoid gates...) a `NonReluWarning` names them once the block ends: the result mixes
    the rule with the plain gradient, and without any ReLU it is the plain gradient. ``source``: the image tensor
    the block's forward pass starts from; with it, ReLUs and others that see only parameters and buffers (not on
    the image's path) are not counted as such, since no gradient of the image passes them.
    """
    if rule not in ("guided", "deconv"):
        raise ValueError(f"unknown ReLU rule {rule!r}: use 'guided' or 'deconv'")
    mode = _RuleMode(guided=rule == "guided")
    if source is not None:
        mode.mark(source)
    with mode:
        yield
    if mode.others or (mode.off_path_relus and not mode.relus):
        names = ", ".join(f"{name} ({calls}x)" for name, calls in sorted(mode.others.items()))
        if mode.relus:
            what = (f"{mode.relus} ReLU call(s) and other non-linearities that keep their plain gradient, so the "
                    "result mixes the rule with the gradient")
        elif mode.off_path_relus:
            what = (f"no ReLU on the image's path ({mode.off_path_relus} ReLU call(s) on parameters and buffers "
                    "alone), so the result is the plain gradient")
        else:
            what = "no ReLU at all, so the result is the plain gradient"
        detail = f": {names}" if names else ""
        warnings.warn(NonReluWarning(f"the '{rule}' ReLU rule ran on a model with {what}{detail}"), stacklevel=3)


# ---------------------------------------------------------------------------------------------------------------
# Which non-linearities does a model use, and how?

_OTHER_MODULES: tuple[type[nn.Module], ...] = (
    nn.GELU, nn.SiLU, nn.ELU, nn.CELU, nn.SELU, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ReLU6, nn.Hardtanh,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.LogSigmoid,
    nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold, nn.GLU, nn.Softmax, nn.LogSoftmax, nn.Softmin,
    nn.MultiheadAttention,
)


def _other_functions() -> dict[object, str]:
    names = {
        F: ["gelu", "silu", "elu", "elu_", "celu", "celu_", "selu", "selu_", "leaky_relu", "leaky_relu_", "prelu",
            "rrelu", "rrelu_", "relu6", "hardtanh", "hardtanh_", "tanh", "sigmoid", "softplus", "softsign",
            "hardswish", "hardsigmoid", "mish", "logsigmoid", "tanhshrink", "softshrink", "hardshrink",
            "threshold", "threshold_", "glu", "softmax", "log_softmax", "softmin",
            "scaled_dot_product_attention"],
        torch: ["tanh", "tanh_", "sigmoid", "sigmoid_", "selu", "selu_", "celu", "celu_", "prelu", "rrelu",
                "threshold", "threshold_", "softmax", "log_softmax", "clamp", "clamp_", "clamp_min", "clamp_min_",
                "clip", "clip_"],
        torch.Tensor: ["tanh", "tanh_", "sigmoid", "sigmoid_", "softmax", "log_softmax", "clamp", "clamp_",
                       "clamp_min", "clamp_min_", "clip", "clip_"],
        torch.special: ["expit"],
    }
    table: dict[object, str] = {}
    for owner, attrs in names.items():
        prefix = {F: "F.", torch: "torch.", torch.Tensor: "Tensor."}.get(owner, "torch.special.")
        for attr in attrs:
            fn = getattr(owner, attr, None)
            if fn is not None:
                table.setdefault(fn, prefix + attr)
    # a torch.export program's graphs call ATen operators, one overload each (reportgen.loaders.exported)
    for attr in ("gelu", "silu", "silu_", "elu", "elu_", "celu", "celu_", "selu", "selu_", "leaky_relu",
                 "leaky_relu_", "prelu", "_prelu_kernel", "rrelu", "relu6", "hardtanh", "hardtanh_", "tanh", "tanh_",
                 "sigmoid", "sigmoid_", "softplus", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "mish",
                 "mish_", "log_sigmoid", "softshrink", "hardshrink", "threshold", "threshold_", "glu", "softmax",
                 "_softmax", "log_softmax", "_log_softmax", "scaled_dot_product_attention", "clamp", "clamp_",
                 "clamp_min", "clamp_min_", "clip", "clip_"):
        packet = getattr(torch.ops.aten, attr, None)
        for overload in packet.overloads() if packet is not None else ():
            table.setdefault(getattr(packet, overload), "aten." + attr.lstrip("_"))
    return table


_OTHER_FUNCS = _other_functions()


@dataclass
class NonlinearityReport:
    """How a model computed its non-linearities in one forward pass; module names are dotted paths.

    ``rule_reason`` says why a modified ReLU backward rule (`relu_rule`) does not give the map its paper defines on
    this model, "" when it does (`rules_exact`): the rule changes only the backward pass of ReLUs, so any other
    non-linearity (GELU, SiLU, sigmoid gates, softmax attention...) keeps its plain gradient and the maps are a
    hybrid; without a ReLU on the image's path the map is the plain gradient. Which methods use such a rule is said
    once, by the attribution analyses (their ``relu_rules``), not here. Whether CAM applies (global average pooling
    + one linear layer) is `reportgen.methods.cams`'s call.
    """

    relu_modules: list[str] = field(default_factory=list)  # nn.ReLU modules called exactly once
    reused_relu_modules: dict[str, int] = field(default_factory=dict)  # name -> calls in one forward pass
    inplace_relus: list[str] = field(default_factory=list)  # where an in-place ReLU ran (module or caller)
    functional_relus: dict[str, int] = field(default_factory=dict)  # calling module -> functional ReLU calls
    other_nonlinearities: dict[str, int] = field(default_factory=dict)  # "where (kind)" -> calls
    # "where (kind)" -> calls of ReLUs and others whose input does not depend on the image: no rule reaches them
    off_path: dict[str, int] = field(default_factory=dict)
    rule_reason: str = ""

    def other_kinds(self) -> list[str]:
        """The kinds of the other non-linearities on the image's path, sorted ("GELU", "F.softmax", ...)."""
        return sorted({k.rsplit("(", 1)[-1].rstrip(")") if k.endswith(")") else k.split(" in ")[0]
                       for k in self.other_nonlinearities})

    @property
    def off_path_relus(self) -> list[str]:
        """Where ReLUs ran on values that do not depend on the image (their rule cannot change a map)."""
        return [k.rpartition(" (")[0] for k in self.off_path if k.endswith(" (ReLU)")]

    def no_relu_words(self) -> str:
        """"no ReLU", or when ReLUs ran only off the image's path, "no ReLU on the image's path (...)"."""
        off = self.off_path_relus
        if not off:
            return "no ReLU"
        more = f" and {len(off) - 3} more" if len(off) > 3 else ""
        return (f"no ReLU on the image's path (its ReLUs, in {', '.join(off[:3])}{more}, see only parameters "
                "and buffers)")

    @property
    def rules_exact(self) -> bool:
        """Whether a modified ReLU rule gives exactly the map its paper defines on this model."""
        return not self.rule_reason

    @property
    def n_functional_relus(self) -> int:
        return sum(self.functional_relus.values())

    @property
    def n_relu_calls(self) -> int:
        return len(self.relu_modules) + sum(self.reused_relu_modules.values()) + self.n_functional_relus

    def lines(self) -> list[str]:
        """Short human-readable lines for a report page."""

        def listing(items, limit=6):
            items = list(items)
            more = f", ... (+{len(items) - limit})" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        out = [f"ReLU calls in one forward pass: {self.n_relu_calls}"]
        if self.relu_modules:
            out.append(f"ReLU modules used once: {len(self.relu_modules)}")
        if self.reused_relu_modules:
            out.append("ReLU modules reused: "
                       + listing(f"{k} (x{v})" for k, v in self.reused_relu_modules.items()))
        if self.inplace_relus:
            out.append(f"in-place ReLUs: {len(self.inplace_relus)} ({listing(self.inplace_relus)})")
        if self.functional_relus:
            out.append(f"functional ReLU calls: {self.n_functional_relus} in "
                       + listing(f"{k} (x{v})" for k, v in self.functional_relus.items()))
        if self.other_nonlinearities:
            out.append("other non-linearities: "
                       + listing(f"{k} x{v}" for k, v in self.other_nonlinearities.items()))
        if self.off_path:
            out.append("not on the image's path: " + listing(f"{k} x{v}" for k, v in self.off_path.items()))
        out.append("modified ReLU rules: " + ("exact" if self.rules_exact else f"approximate: {self.rule_reason}"))
        return out


class _RecordMode(_ImagePathMode):
    """Records every ReLU and known non-linearity call together with the innermost running module, and whether its
    input depends on the image (see `_ImagePathMode`)."""

    def __init__(self, stack: list[nn.Module]) -> None:
        super().__init__()
        self.stack = stack
        self.calls: list[tuple[str, nn.Module | None, bool, bool]] = []  # (kind, innermost module, inplace, on path)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        top = self.stack[-1] if self.stack else None
        on_path = self.depends((args, kwargs))
        call = _relu_call(func, args, kwargs)
        if call is not None:
            self.calls.append(("relu", top, call[1], on_path))
        else:
            try:
                kind = _OTHER_FUNCS.get(func)
            except TypeError:
                kind = None
            if kind is not None:
                self.calls.append((kind, top, False, on_path))
        return self.follow(func(*args, **kwargs), on_path)


class NonlinearityRecorder:
    """What `recording_nonlinearities` yields: the ReLU and non-linearity calls of the forward passes in its block.

    `report` turns them into a `NonlinearityReport` (call it after the block)."""

    def __init__(self, names: dict[nn.Module, str]) -> None:
        self.names = names
        self.stack: list[nn.Module] = []
        self.module_calls: dict[nn.Module, int] = {}
        self.mode = _RecordMode(self.stack)

    def report(self) -> NonlinearityReport:
        return _make_report(self.names, self.mode.calls, self.module_calls)


@contextmanager
def recording_nonlinearities(model: nn.Module, source: torch.Tensor | None = None) -> Iterator[NonlinearityRecorder]:
    """Record how ``model`` computes its non-linearities during the forward passes run inside the block.

    ``source``: the input tensor the block will give the model; calls whose input does not depend on it are kept
    apart (`NonlinearityReport.off_path`). Without it every call counts as on the image's path.

    Module calls are followed with forward hooks that are removed on exit (also after an error); function calls are
    seen by a `TorchFunctionMode`, so ``F.relu`` inside a ``forward`` is found and credited to the innermost module
    running it. Other hooks (e.g. `reportgen.capture.capture`) may be active in the same block: the build's plan
    learns the layer table, the CAM layers and this report from one forward pass.
    """
    require_python_module(model, "the non-linearity check")
    recorder = NonlinearityRecorder({module: name for name, module in model.named_modules()})
    if source is not None:
        recorder.mode.mark(source)
    stack, module_calls = recorder.stack, recorder.module_calls
    handles = []

    def pre_hook(module, _args):
        stack.append(module)
        module_calls[module] = module_calls.get(module, 0) + 1

    def post_hook(module, _args, _output):
        if stack and stack[-1] is module:
            stack.pop()

    try:
        for module in recorder.names:
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(post_hook))
        with recorder.mode:
            yield recorder
    finally:
        for handle in handles:
            handle.remove()


def inspect_nonlinearities(model: nn.Module, example_input: torch.Tensor) -> NonlinearityReport:
    """Run ``model`` once on ``example_input`` (N, C, H, W) and report how it uses ReLUs and other non-linearities
    (see `recording_nonlinearities`). Runs under ``torch.no_grad``; the model's mode is left as the caller set it.
    """
    with recording_nonlinearities(model, example_input) as recorder, torch.no_grad():
        model(example_input)
    return recorder.report()


def _make_report(names: dict[nn.Module, str], recorded: list, module_calls: dict[nn.Module, int]) -> NonlinearityReport:
    report = NonlinearityReport()

    def label(module: nn.Module | None) -> str:
        return names.get(module) or "<model>"

    seen_modules: set[nn.Module] = set()
    off_modules: set[nn.Module | None] = set()
    for kind, top, inplace, on_path in recorded:
        is_module = top is not None and not any(True for _ in top.children())
        if not on_path:
            key = f"{label(top)} ({'ReLU' if kind == 'relu' else kind})"
            report.off_path[key] = report.off_path.get(key, 0) + 1
            off_modules.add(top)
        elif kind == "relu":
            if is_module and isinstance(top, nn.ReLU):
                if top not in seen_modules:
                    seen_modules.add(top)
                    calls = module_calls.get(top, 1)
                    if calls > 1:
                        report.reused_relu_modules[label(top)] = calls
                    else:
                        report.relu_modules.append(label(top))
                    if inplace:
                        report.inplace_relus.append(label(top))
            else:
                where = label(top)
                report.functional_relus[where] = report.functional_relus.get(where, 0) + 1
                if inplace and f"functional in {where}" not in report.inplace_relus:
                    report.inplace_relus.append(f"functional in {where}")
        else:
            if is_module and isinstance(top, _OTHER_MODULES):
                key = f"{label(top)} ({type(top).__name__})"
            else:
                key = f"{kind} in {label(top)}"
            report.other_nonlinearities[key] = report.other_nonlinearities.get(key, 0) + 1
    # Modules that compute their non-linearity without a Python-visible call (e.g. fused or scripted ones).
    for module, calls in module_calls.items():
        if isinstance(module, _OTHER_MODULES) and module not in off_modules and not any(
                k.startswith(label(module) + " (") for k in report.other_nonlinearities):
            report.other_nonlinearities[f"{label(module)} ({type(module).__name__})"] = calls

    if report.n_relu_calls == 0:
        report.rule_reason = f"the model has {report.no_relu_words()}: the map is the plain gradient"
    elif report.other_nonlinearities:
        report.rule_reason = (f"non-ReLU non-linearities ({', '.join(report.other_kinds())}) keep their plain "
                              "gradient, so the map mixes the modified rule with the gradient")
    return report
