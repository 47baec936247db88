"""Scoped access to a model's intermediate layers.

Every hook reportgen puts on a user's model is registered inside one of the context managers here and removed in
``finally``, so the model leaves exactly as it came, also when the forward pass raises. Layers are always named by
their dotted ``named_modules()`` path.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from .artifacts import NotApplicable
from .errors import LayerError
from .methods.tokens import infer_view

if TYPE_CHECKING:  # torch is imported lazily so that ``reportgen --help`` stays fast
    import torch
    from torch import nn


def layer_names(model: "nn.Module") -> list[str]:
    """All dotted module names of ``model`` except the root, in registration order."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: "nn.Module", name: str) -> "nn.Module":
    """The sub-module called ``name``; a `LayerError` that suggests the closest names when there is none."""
    try:
        return model.get_submodule(name)
    except (AttributeError, TypeError):
        pass
    names = layer_names(model)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"closest: {', '.join(close)}; " if close else ""
    raise LayerError(
        f"unknown layer '{name}': {hint}run `reportgen layers MODEL` to list the {len(names)} layer names"
    )


def require_python_module(model: "nn.Module", what: str) -> None:
    """Raise `NotApplicable` for a TorchScript module: it runs a compiled graph, so hooks cannot be registered and
    backward rules of Python functions are never consulted."""
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        raise NotApplicable(f"{what} needs the Python model, not a TorchScript one (hooks and ReLU rules do not "
                            "reach a compiled graph): give the model as package.module:factory with --weights")


@contextmanager
def preserved(model: "nn.Module") -> Iterator["nn.Module"]:
    """Restore ``model``'s train/eval flags and every parameter's ``requires_grad`` on exit, also after an error.

    Methods that need gradients or eval mode flip these flags for their own use; this guarantees the user's model
    comes back as it was.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for param, flag in flags:
            param.requires_grad_(flag)


@contextmanager
def kept_as_is(model: Optional["nn.Module"]) -> Iterator[None]:
    """Give ``model`` back exactly as it came, also after an error: train/eval flags and ``requires_grad`` (see
    `preserved`) and every parameter's ``.grad`` (gradient analyses may accumulate into it). ``None``: nothing to
    keep."""
    if model is None:
        yield
        return
    grads = [(p, p.grad) for p in model.parameters()]
    with preserved(model):
        try:
            yield
        finally:
            for p, g in grads:
                p.grad = g


class Recorder:
    """What `capture` yields: the latest output of every watched layer, and of its gradient when asked for.

    ``acts[name]`` is a detached clone of the layer's output (first element when the output is a tuple);
    ``grads[name]`` is filled by a backward pass through that output. ``live[name]`` is the output itself, still in
    the autograd graph, for objectives that optimize through it. When a layer runs several times in one forward pass
    (a reused module) the last call wins and ``calls[name]`` counts them.
    """

    def __init__(self, layers: Sequence[str]) -> None:
        self.layers = list(layers)
        self.acts: dict[str, "torch.Tensor"] = {}
        self.grads: dict[str, "torch.Tensor"] = {}
        self.live: dict[str, "torch.Tensor"] = {}
        self.calls: dict[str, int] = {name: 0 for name in self.layers}

    def clear(self) -> None:
        self.acts.clear()
        self.grads.clear()
        self.live.clear()
        self.calls = {name: 0 for name in self.layers}


@contextmanager
def capture(
    model: "nn.Module",
    layers: Sequence[str],
    *,
    grads: bool = False,
    keep_live: bool = False,
    clone: bool = True,
    as_maps: bool = False,
) -> Iterator[Recorder]:
    """Record the outputs (and optionally output gradients) of ``layers`` during forward passes of ``model``.

    Args:
        model: any module; it is not modified apart from hooks that are removed on exit.
        layers: dotted names from ``named_modules()``; unknown names raise `LayerError` before anything is hooked.
        grads: also record d(objective)/d(output) during backward. Gradients are taken with ``Tensor.register_hook``
            on the output rather than a full backward hook, because full backward hooks break on in-place ReLUs
            that follow the layer (torchvision's BasicBlock).
        keep_live: keep the un-detached outputs in ``Recorder.live`` (for optimizing through a layer).
        clone: store clones, so that a later in-place op in the forward pass cannot change a cached activation.
        as_maps: read token outputs (N, L, D) and channels-last maps (N, H, W, C) as (N, C, h, w) maps of their
            patches (`reportgen.methods.tokens.infer_view`, from the output's shape and the input's size): acts,
            live outputs and gradients alike. Maps, vectors and other outputs are recorded as they are.

    Yields:
        a `Recorder` whose dicts are refreshed by each forward pass.
    """
    import torch

    if layers:
        require_python_module(model, "capturing layer outputs")
    modules = [(name, resolve_layer(model, name)) for name in layers]
    rec = Recorder(layers)
    handles = []
    input_size: list = [None]

    def note_input(_module, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            input_size[0] = tuple(args[0].shape[-2:])

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            rec.calls[name] += 1
            if not isinstance(out, torch.Tensor):  # e.g. a module returning a dict: counted, nothing to record
                return
            raw, view = out, None
            if as_maps and out.dim() >= 2:
                view = infer_view(tuple(out.shape[1:]), input_size[0])
                if view.kind in ("tokens", "channels-last"):
                    out = view.to_map(out)
                else:
                    view = None
            rec.acts[name] = out.detach().clone() if clone else out.detach()
            if keep_live:
                rec.live[name] = out
            if grads and raw.requires_grad:
                # on the output the model goes on with (a reshaped view of it is not on the backward path)
                def grad_hook(g, _name=name, _view=view):
                    rec.grads[_name] = (g if _view is None else _view.to_map(g)).detach().clone()

                raw.register_hook(grad_hook)

        return hook

    try:
        if as_maps and modules:
            handles.append(model.register_forward_pre_hook(note_input))
        for name, module in modules:
            handles.append(module.register_forward_hook(make_hook(name)))
        yield rec
    finally:
        for handle in handles:
            handle.remove()
