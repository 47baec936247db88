"""``.pt2`` files: programs saved by ``torch.export.save``, the successor of TorchScript files.

Loading never unpickles: ``torch.export.load`` would unpickle payloads an archive marks as pickled (and falls back
to an unrestricted ``torch.load`` for sample inputs), so `check_archive` reads the archive's own JSON configs
first and refuses every such payload; what is left is raw tensor bytes and JSON.

``torch.export.unflatten`` restores the module hierarchy with the original dotted names (``conv1``,
``layer1.0.conv2``), each module an ``InterpreterModule`` running its part of the graph, so forward hooks and
gradients work as on the original model. Leaf modules whose program records say they were a standard
``torch.nn`` layer (Conv2d, Linear, ReLU, BatchNorm, pooling...) and whose graph is that layer's one ATen call are
turned back into that layer, sharing the program's parameter tensors: the layer table shows real types, the
first-layer filters and CAM's final ``Linear`` are found, and ReLU rules see ``nn.ReLU``. The restored model is
checked to give the program's own output before it is used.

A program exported with a static batch size is refused with the fix. Running it image by image would give the
right logits but make every layer run once per image inside one forward call, so each hook-based analysis would
see call counts and activations of a single image: the plan would take every layer for a reused one (no CAM, no
Grad-CAM layer) and captured maps would hold only the last image. Re-exporting with a dynamic batch dimension is
one argument (``dynamic_shapes``), and gives every analysis.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelError, first_line
from . import Loader, Source
from .weights import side_json

EXPORT_HOWTO = ("torch.export.save(torch.export.export(model.eval(), (x,), dynamic_shapes=({0: torch.export.Dim"
                "('batch')},)), 'model.pt2')")


def is_export_archive(path: Path) -> bool:
    """Whether ``path`` is a zip archive laid out by ``torch.export.save`` (an ``archive_format`` entry)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == "archive_format" or n.endswith("/archive_format") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def check_archive(path: Path) -> None:
    """Refuse (`ModelError`) a ``.pt2`` archive that ``torch.export.load`` would unpickle anything from: weights or
    constants stored as pickles, custom or opaque objects, legacy pickled weight files, and sample inputs that
    need more than ``torch.load(weights_only=True)``."""
    import torch

    def refuse(what: str) -> ModelError:
        return ModelError(f"'{path}' holds {what}, which reportgen refuses to load (unpickling can run code): "
                          f"export the model again with {EXPORT_HOWTO}")

    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        for name in names:
            base = name.split("/", 1)[-1]
            if base.startswith(("data/weights/", "data/constants/")) and base.endswith(".pt"):
                raise refuse(f"a pickled weights file ({base})")
            if base.startswith(("data/weights/", "data/constants/")) and base.endswith("_config.json"):
                config = json.loads(zf.read(name)).get("config", {})
                for fqn, meta in config.items():
                    path_name = str(meta.get("path_name", ""))
                    if meta.get("use_pickle") or path_name.startswith(("custom_obj", "opaque_obj")):
                        raise refuse(f"a pickled payload ({fqn})")
            if base.startswith("data/sample_inputs/"):
                try:
                    torch.load(io.BytesIO(zf.read(name)), weights_only=True)
                except Exception:
                    raise refuse(f"sample inputs that are not plain tensors ({base})") from None


def batch_dimension(ep: Any) -> tuple[int | None, tuple | None]:
    """``(static batch size or None when dynamic, the input's shape without the batch dimension or None)`` of the
    program's one tensor input. A `ModelError` when it takes anything but one image tensor."""
    import torch

    user = set(ep.graph_signature.user_inputs)
    inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    vals = [n.meta.get("val") for n in inputs]
    if len(vals) != 1 or not isinstance(vals[0], torch.Tensor) or vals[0].ndim != 4:
        raise ModelError(f"the program takes {len(vals)} input(s), not one image batch (N, C, H, W): export a "
                         "model whose forward takes one image tensor")
    shape = vals[0].shape
    rest = tuple(int(s) if isinstance(s, int) else None for s in shape[1:])
    return (int(shape[0]) if isinstance(shape[0], int) else None), rest


# Standard layers that a leaf module's graph can be turned back into: the module class recorded in the program
# (nn_module_stack) -> the one ATen call its graph must consist of, and the builder of the equivalent module
# from that call's arguments (tensors among them are the leaf's own parameters and buffers).
def _conv2d(w, b=None, stride=1, padding=0, dilation=1, groups=1):
    from torch import nn

    return nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
                     dilation=dilation, groups=groups, bias=b is not None, device="meta")


def _linear(w, b=None):
    from torch import nn

    return nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")


def _batch_norm(cls_name):
    def build(w, b, mean, var, training=False, momentum=0.1, eps=1e-5, cudnn=True):
        from torch import nn

        if training:
            return None
        affine = w is not None
        return getattr(nn, cls_name)(mean.shape[0], eps=eps, momentum=momentum, affine=affine, device="meta")

    return build


def _layer_norm(shape, w=None, b=None, eps=1e-5, cudnn=True):
    from torch import nn

    return nn.LayerNorm(shape, eps=eps, elementwise_affine=w is not None, bias=b is not None, device="meta")


def _lifts() -> dict[str, tuple[str, Callable]]:
    from torch import nn

    return {
        "torch.nn.modules.conv.Conv2d": ("aten.conv2d.default", _conv2d),
        "torch.nn.modules.linear.Linear": ("aten.linear.default", _linear),
        "torch.nn.modules.activation.ReLU": ("aten.relu", lambda: nn.ReLU()),
        "torch.nn.modules.activation.GELU": ("aten.gelu.default", lambda approximate="none": nn.GELU(approximate)),
        "torch.nn.modules.batchnorm.BatchNorm1d": ("aten.batch_norm.default", _batch_norm("BatchNorm1d")),
        "torch.nn.modules.batchnorm.BatchNorm2d": ("aten.batch_norm.default", _batch_norm("BatchNorm2d")),
        "torch.nn.modules.normalization.LayerNorm": ("aten.layer_norm.default", _layer_norm),
        "torch.nn.modules.pooling.MaxPool2d": (
            "aten.max_pool2d.default",
            lambda k, stride=(), padding=0, dilation=1, ceil_mode=False: nn.MaxPool2d(
                k, stride=stride or None, padding=padding, dilation=dilation, ceil_mode=ceil_mode)),
        "torch.nn.modules.pooling.AdaptiveAvgPool2d": ("aten.adaptive_avg_pool2d.default",
                                                       lambda size: nn.AdaptiveAvgPool2d(size)),
        "torch.nn.modules.flatten.Flatten": ("aten.flatten.using_ints",
                                             lambda start=0, end=-1: nn.Flatten(start, end)),
        "torch.nn.modules.dropout.Dropout": ("aten.dropout.default", lambda p, train=False: nn.Dropout(p)),
    }


def module_types(ep: Any) -> dict[str, str]:
    """Dotted module path -> the qualified class name the program records for it (``nn_module_stack``)."""
    types: dict[str, str] = {}
    for node in ep.graph.nodes:
        for path, type_name in (node.meta.get("nn_module_stack") or {}).values():
            types.setdefault(path.split("@")[0], type_name)
    return types


def _lift_leaf(leaf: Any, type_name: str, lifts: dict) -> Any:
    """The standard module equivalent to ``leaf`` (an InterpreterModule), sharing its tensors, or None."""
    import torch

    if type_name not in lifts:
        return None
    op_name, build = lifts[type_name]
    nodes = [n for n in leaf.graph.nodes if n.op not in ("placeholder", "get_attr", "output")]
    inputs = [n for n in leaf.graph.nodes if n.op == "placeholder"]
    if len(nodes) != 1 or len(inputs) != 1 or nodes[0].op != "call_function":
        return None
    node = nodes[0]
    target = str(node.target)
    if not (target == op_name or (op_name == "aten.relu" and target in ("aten.relu.default", "aten.relu_.default"))):
        return None
    if not node.args or node.args[0] is not inputs[0] or node.kwargs:
        return None
    tensors = {}

    def value(arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node):
            if arg.op != "get_attr":
                raise ValueError("not a parameter")
            tensors[arg.target] = getattr(leaf, arg.target)
            return tensors[arg.target]
        return arg

    try:
        module = build(*[value(a) for a in node.args[1:]])
    except (ValueError, TypeError, AttributeError):
        return None
    if module is None:
        return None
    if target == "aten.relu_.default":
        module.inplace = True
    own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    for name in own:
        source = getattr(leaf, name, None)
        if not isinstance(source, torch.Tensor):
            return None
        if name in module._parameters:
            module._parameters[name] = source if isinstance(source, torch.nn.Parameter) else \
                torch.nn.Parameter(source, requires_grad=source.requires_grad)
        else:
            module._buffers[name] = source
    if any(t.is_meta for t in module.parameters()) or any(t.is_meta for t in module.buffers()):
        return None
    return module


def restore_layers(unflat: Any, types: dict[str, str]) -> list[str]:
    """Swap each liftable leaf of ``unflat`` for its standard module, in place; returns the swapped names."""
    lifts = _lifts()
    swapped = []
    for name, module in list(unflat.named_modules()):
        if not name or any(True for _ in module.children()) or not hasattr(module, "graph"):
            continue
        new = _lift_leaf(module, types.get(name, ""), lifts)
        if new is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = unflat.get_submodule(parent_name) if parent_name else unflat
        parent._modules[child] = new.train(module.training)
        swapped.append(name)
    return swapped


def unflatten(ep: Any, rest: tuple) -> tuple[Any, list[str], list[str]]:
    """``ep`` unflattened, its standard leaf layers restored when its input shape ``rest`` (C, H, W) is fixed
    (so that the restored model can be checked against the program); returns (model, restored names, notes).

    The model's class is a subclass of its own with one tensor input (``forward(x)``), traceable by torch.fx (for
    receptive fields), and a ``__deepcopy__`` that unflattens ``ep`` again and copies the current parameters in:
    the program's graphs hold shape-symbolic fake tensors, which ``copy.deepcopy`` cannot copy, and analyses copy
    models (e.g. to re-initialize their layers)."""
    import torch

    unflat = torch.export.unflatten(ep)
    notes: list[str] = []
    swapped: list[str] = []
    if None not in rest:  # a fixed input shape: the restored layers can be checked against the program
        reference = torch.export.unflatten(ep)
        swapped = restore_layers(unflat, module_types(ep))
        probe = torch.randn((2, *rest), generator=torch.Generator().manual_seed(0))
        unflat.eval()  # restored BatchNorm/Dropout must run as the program does: with its training=False baked in
        reference.eval()
        with torch.no_grad():
            same = torch.allclose(unflat(probe), reference(probe), rtol=1e-5, atol=1e-6)
        if not same:  # never expected; the program's own modules are then used as they are
            unflat, swapped = reference, []
            notes.append("the standard layers restored from the program did not reproduce its output, so its "
                         "modules are used as exported (InterpreterModule)")
    unflat.__class__ = _copyable(type(unflat))
    unflat.__dict__["_reportgen_program"] = (ep, rest)
    return unflat, swapped, notes


def _copyable(cls: type) -> type:
    class Exported(cls):  # type: ignore[misc, valid-type]
        def forward(self, x):
            from torch.fx._symbolic_trace import is_fx_symbolic_tracing

            if is_fx_symbolic_tracing():
                # torch.fx (receptive fields) passes a Proxy, which the input checks and pytree flattening of
                # UnflattenedModule.forward would iterate: run the root graph on it directly, as they then do.
                import torch

                out = torch.fx.Interpreter(self, graph=self.graph).run(x, enable_io_processing=False)
                return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
            return super().forward(x)

        def __deepcopy__(self, memo: dict) -> Any:
            import torch

            ep, rest = self.__dict__["_reportgen_program"]
            twin, _, _ = unflatten(ep, rest)
            with torch.no_grad():
                twin.load_state_dict(self.state_dict(), strict=True)
            for (_, mine), (_, theirs) in zip(self.named_modules(), twin.named_modules()):
                theirs.training = mine.training
            for mine, theirs in zip(self.parameters(), twin.parameters()):
                theirs.requires_grad_(mine.requires_grad)
            memo[id(self)] = twin
            return twin

    Exported.__name__ = Exported.__qualname__ = cls.__name__
    return Exported


def load_exported(path: Path) -> Source:
    """The program in ``path``, unflattened to its original module hierarchy, standard layers restored."""
    import torch

    check_archive(path)
    log = logging.getLogger("torch.export")
    level = log.level
    log.setLevel(logging.ERROR)  # torch logs a traceback before its own error: the one line below says it all
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise ModelError(f"'{path}' is not a loadable torch.export program ({type(exc).__name__}: "
                         f"{first_line(exc, 160)}): export it again with {EXPORT_HOWTO}") from None
    finally:
        log.setLevel(level)
    batch, rest = batch_dimension(ep)
    if batch is not None:
        raise ModelError(f"'{path}' was exported with a static batch size of {batch}, and reportgen runs batches "
                         f"of several images: export it with a dynamic batch dimension, {EXPORT_HOWTO}")
    unflat, swapped, notes = unflatten(ep, rest)
    defaults = {"channels": rest[0], "input_size": [rest[1], rest[2]]} if None not in rest else {}
    kinds = sorted({type(unflat.get_submodule(n)).__name__ for n in swapped})
    notes.append("a torch.export program, unflattened to its original module names"
                 + (f"; {len(swapped)} leaf modules restored to their torch.nn layer ({', '.join(kinds)}) from the "
                    "program's records" if swapped else "") + "; other modules run their exported graph")
    return Source(unflat, defaults, notes=notes)


class ExportLoader(Loader):
    """A ``.pt2`` file saved by ``torch.export.save`` (any other existing file is left to the TorchScript reader
    of `reportgen.models`)."""

    form = "export"

    @classmethod
    def claims(cls, spec: str) -> bool:
        return Path(spec).exists() and is_export_archive(Path(spec))

    @classmethod
    def load(cls, spec: str, cfg: Any, side: dict) -> Source:
        source = load_exported(Path(spec))
        source.weights, source.side = str(Path(spec)), side or side_json(str(Path(spec)))
        return source
