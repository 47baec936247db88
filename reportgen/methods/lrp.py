"""Layer-wise relevance propagation (LRP): the class score redistributed, layer by layer, down to the pixels.

Bach, Binder, Montavon, Klauschen, Müller & Samek, On Pixel-Wise Explanations for Non-Linear Classifier Decisions
by Layer-Wise Relevance Propagation, PLoS ONE 2015 (https://doi.org/10.1371/journal.pone.0130140); the rules and
their placement as in Montavon, Binder, Lapuschkin, Samek & Müller, Layer-Wise Relevance Propagation: An Overview,
2019 (https://doi.org/10.1007/978-3-030-28954-6_10) and Kohlbrenner, Bauer, Nakajima, Binder, Samek & Lapuschkin,
Towards Best Practice in Explaining Neural Network Predictions with LRP, IJCNN 2020
(https://arxiv.org/abs/1910.09840).

The relevance of the output is the target's logit (R = f_c(x) at class c, 0 elsewhere), as in Bach et al. and
Captum; for a callable target (`reportgen.methods.targets`) it is R = y * ds/dy over the outputs y, the same for a
class logit, allowed only where it sums to the score s (`initial_relevance`). Each layer hands the relevance R_k
of its outputs to its inputs j by a rule; with z_jk = x_j w_jk, s(.) adding ``epsilon`` (``stabilizer`` for the
other rules) with the sign of its argument (+ for 0), x+ = max(x, 0), x- = min(x, 0), w+ = max(w, 0),
w- = min(w, 0):

- epsilon (LRP-eps): R_j = sum_k x_j w_jk / s(z_k) R_k, with z_k = sum_j x_j w_jk + b_k (epsilon -> 0: LRP-0);
- gamma (LRP-gamma, in the generalized form that also takes negative inputs): w -> w + gamma w+ for the positive
  contributions of a positive output, and w -> w + gamma w- for the negative ones of a negative output (the bias
  likewise); an output of 0 hands on nothing;
- alpha-beta (LRP-alpha-beta, alpha - beta = 1): R_j = sum_k (alpha z+_jk / s(z+_k) - beta z-_jk / s(z-_k)) R_k,
  z+_jk the positive contributions (x+ w+ and x- w-, plus b+ in z+_k), z-_jk the negative ones; alpha=1, beta=0
  is the z+ rule;
- z^B box (first layer, pixels bounded in [low, high]): R_j = sum_k (x_j w_jk - l_j w+_jk - h_j w-_jk) / s(z_k -
  sum_j (l_j w+_jk + h_j w-_jk)) R_k, z_k without bias;
- flat (first layer): R_j = sum_k R_k / (the number of inputs of unit k);

and the layers without weights: ReLU passes relevance on unchanged; max pooling hands it to the maximum (the
gradient: winner takes all); average pooling and each residual addition a + b split it in proportion to each
input's contribution (R_a = a / s(a + b) R, the sum rule zennit's canonizers give an addition); reshapes and
concatenations move it along. Every layer keeps the total (conservation), except for what biases, the
stabilizers and the rules' discarded parts absorb.

A composite picks a rule per layer type (zennit's names and placement):

- ``"epsilon-gamma-box"`` (the default, zennit's EpsilonGammaBox, the composite of Montavon et al. 2019 and
  Kohlbrenner et al. 2020): z^B on the first convolution (needs ``low``/``high``), gamma on the other
  convolutions, epsilon on the dense (Linear) layers;
- ``"epsilon-plus"``: z+ (alpha=1, beta=0) on every convolution, epsilon on the dense layers;
- ``"epsilon-plus-flat"``: flat on the first convolution or dense layer, then as ``"epsilon-plus"``;
- ``"epsilon-alpha2-beta1"``: alpha=2, beta=1 on every convolution, epsilon on the dense layers.

``rule=`` instead applies one rule (``"epsilon"``, ``"gamma"`` or ``"alpha-beta"``) to every convolution and
dense layer.

How: the model is traced with torch.fx (on a deep copy, so that tracing, which runs its Python forward, cannot
touch the user's model) so that every addition of the forward pass is seen, also the ``out += identity`` of
torchvision's residual blocks that module hooks cannot see. A BatchNorm right after a convolution or dense layer
(eval mode) is folded into it (new tensors; nothing is written to any module) before the rules, as zennit's
canonizers do. The traced graph is then run node by node with each rule as a custom autograd function whose
backward is the rule (relevance travels as the "gradient"), so one backward pass gives the input relevance.
Any operation on the image's path outside the list above (GELU, LayerNorm, attention, multiplications...) has no
LRP rule here: `lrp` raises `LRPNotApplicable` naming it, and so does a model torch.fx cannot trace.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import require_python_module
from .attribution import Target, _check_inputs
from .targets import resolve_target, target_scores

RULES = ("epsilon", "gamma", "alpha-beta")
COMPOSITES = ("epsilon-gamma-box", "epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1")
DEFAULT_COMPOSITE = "epsilon-gamma-box"
Bound = Union[float, torch.Tensor, Sequence[float]]


class LRPNotApplicable(ValueError):
    """The model has an operation without an LRP rule here, or torch.fx cannot trace it (the message says which)."""


# ---------------------------------------------------------------------------------------------------------------
# The rules as autograd functions: forward = the layer, backward = relevance of the inputs from that of the output


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps * sign(z), with sign(0) = +1 (zennit's and Captum's stabilizer: the denominator keeps its sign)."""
    return z + torch.where(z >= 0, eps, -eps)


@dataclass
class _Layer:
    """One convolution or dense layer as the rules see it: ``forward(x, weight, bias)`` and the (folded) weights."""

    forward: Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    rule: str  # "epsilon", "gamma", "alpha-beta", "box", "flat"
    epsilon: float
    gamma: float
    alpha: float
    beta: float
    stabilizer: float
    low: Optional[torch.Tensor] = None
    high: Optional[torch.Tensor] = None

    def relevance(self, x: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if self.rule == "epsilon":
            return x * _vjp(self.forward, x, w, r / stabilize(z, self.epsilon))
        if self.rule == "box":
            low, high = self.low.expand_as(x).to(x), self.high.expand_as(x).to(x)
            wp, wn = w.clamp(min=0), w.clamp(max=0)
            with torch.enable_grad():
                xs = [t.detach().requires_grad_(True) for t in (x, low, high)]
                out = (self.forward(xs[0], w, None) - self.forward(xs[1], wp, None)
                       - self.forward(xs[2], wn, None))
                g = r / stabilize(out.detach(), self.stabilizer)
                gx, gl, gh = torch.autograd.grad(out, xs, g)
            # d out / d low = -W+^T, d out / d high = -W-^T: the signs of the rule's l and h terms come with them
            return x * gx + low * gl + high * gh
        if self.rule == "flat":
            ones = torch.ones_like(x)
            g = r / stabilize(self.forward(ones, torch.ones_like(w), None), self.stabilizer)
            return _vjp(self.forward, ones, torch.ones_like(w), g)
        # gamma and alpha-beta: the positive and the negative contributions, each from x+ and x-
        if self.rule == "gamma":
            w_up, w_down = w + self.gamma * w.clamp(min=0), w + self.gamma * w.clamp(max=0)
            b_up = None if b is None else b + self.gamma * b.clamp(min=0)
            b_down = None if b is None else b + self.gamma * b.clamp(max=0)
            keep_up, keep_down = (z > 0).to(r), (z < 0).to(r)
            coef_up, coef_down = 1.0, 1.0
        else:
            w_up, w_down = w.clamp(min=0), w.clamp(max=0)
            b_up = None if b is None else b.clamp(min=0)
            b_down = None if b is None else b.clamp(max=0)
            keep_up = keep_down = None
            coef_up, coef_down = self.alpha, -self.beta
        negative_inputs = bool((x < 0).any())  # after a ReLU there are none: half the terms are 0, skip them
        xp = x.clamp(min=0).detach().requires_grad_(True)
        xn = x.clamp(max=0).detach().requires_grad_(True) if negative_inputs else None
        outs, grads = [], []
        with torch.enable_grad():
            for coef, keep, w_same, w_cross, bias in ((coef_up, keep_up, w_up, w_down, b_up),
                                                       (coef_down, keep_down, w_down, w_up, b_down)):
                if coef == 0:
                    continue
                # the contributions of this sign: x+ through weights of that sign (+ bias), x- through the others
                out = self.forward(xp, w_same, bias)
                if xn is not None:
                    out = out + self.forward(xn, w_cross, None)
                g = coef * r / stabilize(out.detach(), self.stabilizer)
                outs.append(out)
                grads.append(g if keep is None else g * keep)
            wrt = [xp] if xn is None else [xp, xn]
            got = torch.autograd.grad(outs, wrt, grads)
        return sum(t * g for t, g in zip(wrt, got))


def _vjp(forward: Callable, x: torch.Tensor, weight: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """W^T g: the vector-Jacobian product of the layer without bias at ``x`` (the layer is linear, so any x)."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        (out,) = torch.autograd.grad(forward(xr, weight, None), xr, g)
    return out


class _RuleFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: _Layer) -> torch.Tensor:
        z = layer.forward(x, layer.weight, layer.bias)
        ctx.layer = layer
        ctx.save_for_backward(x, z)
        return z

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple:
        x, z = ctx.saved_tensors
        return ctx.layer.relevance(x, z, r), None


class _PassFn(torch.autograd.Function):
    """An element-wise ReLU: relevance passes unchanged (zennit's Pass rule for activations)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> torch.Tensor:
        return r


class _NormFn(torch.autograd.Function):
    """A weightless linear map (average pooling, a spatial mean): R_in = x * J^T (R / s(out))."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable, stabilizer: float) -> torch.Tensor:
        out = fn(x)
        ctx.fn, ctx.stabilizer = fn, stabilizer
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple:
        x, out = ctx.saved_tensors
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(ctx.fn(xr), xr, r / stabilize(out, ctx.stabilizer))
        return x * g, None, None


class _SumFn(torch.autograd.Function):
    """a + b (a residual addition): each input gets the share of the relevance it contributed, a / s(a + b)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, stabilizer: float) -> torch.Tensor:
        out = a + b
        ctx.stabilizer = stabilizer
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple:
        a, b, out = ctx.saved_tensors
        share = r / stabilize(out, ctx.stabilizer)
        return a * share, b * share, None


# ---------------------------------------------------------------------------------------------------------------
# What each operation of the traced graph does to relevance


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
             nn.AdaptiveAvgPool3d)
# modules through which relevance moves as the gradient moves it: max pooling (winner takes all), reshapes,
# identities, dropout (the identity in eval mode)
GRADIENT_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                    nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d,
                    nn.Dropout2d, nn.Dropout3d)
RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
AVG_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                 F.adaptive_avg_pool3d, torch.mean}
GRADIENT_FUNCTIONS = {torch.flatten, torch.reshape, torch.cat, torch.concat, torch.squeeze, torch.unsqueeze,
                      F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                      F.adaptive_max_pool3d, F.dropout, F.dropout2d, torch.permute, torch.transpose}
GRADIENT_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "permute", "transpose",
                    "clone", "detach_", "to", "float", "type_as"}
META_METHODS = {"size", "dim", "numel"}  # they read the shape, not values: nothing to explain


def _op_name(node: torch.fx.Node, modules: dict) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} '{node.target}'"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


@dataclass
class LRPPlan:
    """The traced graph and what each node on the image's path does to relevance: ``actions`` {node name: kind},
    kinds "layer" (a convolution or dense layer, with ``folded`` {layer node: BatchNorm module} and the BatchNorm
    nodes as "folded"), "relu", "norm", "sum", "gradient"; ``layers`` the layer nodes in execution order."""

    graph_module: torch.fx.GraphModule
    actions: dict
    folded: dict
    layers: list


def lrp_plan(model: nn.Module) -> LRPPlan:
    """Trace a deep copy of ``model`` and assign a relevance action to every operation on the image's path;
    `LRPNotApplicable` (one sentence: which operation, where) when one has no rule or the model cannot be traced."""
    require_python_module(model, "LRP")
    try:
        twin = copy.deepcopy(model)
        gm = torch.fx.symbolic_trace(twin)
    except Exception as exc:  # torch.fx raises many kinds (TraceError, TypeError on data-dependent control flow)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LRPNotApplicable(f"torch.fx cannot trace the model ({first[:160]}), and LRP needs its graph to see "
                               "every addition") from None
    modules = dict(gm.named_modules())
    on_path: set = set()
    actions: dict = {}
    folded: dict = {}
    layers: list = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise LRPNotApplicable("the traced model takes no input")
    on_path.add(placeholders[0].name)

    def refuse(node: torch.fx.Node, why: str = "") -> None:
        raise LRPNotApplicable(f"{_op_name(node, modules)} on the image's path has no LRP rule here"
                               + (f" ({why})" if why else "") + "; LRP is defined here for networks of "
                               "convolutions, dense layers, BatchNorm after them, ReLU, max and average pooling "
                               "and additions")

    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        inputs = [a for a in node.all_input_nodes if a.name in on_path]
        if not inputs:
            continue  # computed from parameters, buffers or constants alone: no relevance passes here
        kind = None
        if node.op == "call_module":
            mod = modules[node.target]
            if isinstance(mod, CONVS + (nn.Linear,)):
                if isinstance(mod, CONVS) and mod.padding_mode != "zeros":
                    refuse(node, f"padding mode '{mod.padding_mode}'")
                kind = "layer"
                layers.append(node)
            elif isinstance(mod, NORMS):
                src = node.args[0] if node.args else None
                if not (isinstance(src, torch.fx.Node) and actions.get(src.name) == "layer"
                        and len(src.users) == 1 and src not in folded):
                    refuse(node, "it does not follow a convolution or dense layer directly, so it cannot be folded "
                                 "into one")
                if mod.training or mod.running_mean is None:
                    raise LRPNotApplicable(f"BatchNorm '{node.target}' is in training mode (or keeps no running "
                                           "statistics): it normalizes with the batch's statistics, which cannot be "
                                           "folded into its convolution; put the model in eval mode")
                folded[src] = mod
                kind = "folded"
            elif isinstance(mod, nn.ReLU):
                kind = "relu"
            elif isinstance(mod, AVG_POOLS):
                kind = "norm"
            elif isinstance(mod, GRADIENT_MODULES):
                kind = "gradient"
        elif node.op == "call_function":
            target = node.target
            if target in RELU_FUNCTIONS:
                kind = "relu"
            elif target in ADD_FUNCTIONS:
                tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
                if len(node.args) == 2 and len(tensors) == 2 and all(t.name in on_path for t in tensors) \
                        and not node.kwargs:
                    kind = "sum"
                else:
                    refuse(node, "an addition of a constant or a parameter")
            elif target in AVG_FUNCTIONS:
                kind = "norm"
            elif target is getattr and len(node.args) == 2 and node.args[1] in ("shape", "dtype", "device", "ndim"):
                continue  # the shape and kind of a tensor, not its values: off the image's path
            elif target in GRADIENT_FUNCTIONS:
                kind = "gradient"
        elif node.op == "call_method":
            if node.target in ("relu", "relu_"):
                kind = "relu"
            elif node.target in ("add", "add_"):
                tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
                if len(node.args) == 2 and len(tensors) == 2 and all(t.name in on_path for t in tensors) \
                        and not node.kwargs:
                    kind = "sum"
                else:
                    refuse(node, "an addition of a constant or a parameter")
            elif node.target == "mean":
                kind = "norm"
            elif node.target in GRADIENT_METHODS:
                kind = "gradient"
            elif node.target in META_METHODS:
                continue  # a shape, off the image's path
        if kind is None:
            refuse(node)
        actions[node.name] = kind
        on_path.add(node.name)
    return LRPPlan(gm, actions, {k.name: v for k, v in folded.items()}, [n.name for n in layers])


def lrp_reason(model: nn.Module) -> str:
    """Why LRP does not apply to ``model`` ("" when it does): `lrp_plan`'s refusal."""
    try:
        lrp_plan(model)
    except LRPNotApplicable as exc:
        return str(exc)
    return ""


# ---------------------------------------------------------------------------------------------------------------
# Rules per layer, and the propagation


def layer_rules(plan: LRPPlan, rule: Optional[str], composite: str) -> dict[str, str]:
    """{layer node: rule} for ``rule`` on every layer, or ``composite``'s placement (see the module docstring);
    "first" means first in execution order."""
    modules = dict(plan.graph_module.named_modules())
    nodes = {n.name: n for n in plan.graph_module.graph.nodes}
    out = {}
    first_conv = first_any = True
    for name in plan.layers:
        mod = modules[nodes[name].target]
        conv = isinstance(mod, CONVS)
        if rule is not None:
            out[name] = rule
        elif composite == "epsilon-gamma-box":
            out[name] = ("box" if first_conv else "gamma") if conv else "epsilon"
        elif composite == "epsilon-plus-flat" and first_any:
            out[name] = "flat"
        elif composite == "epsilon-alpha2-beta1":
            out[name] = "alpha2-beta1" if conv else "epsilon"
        else:  # epsilon-plus, and epsilon-plus-flat after its first layer
            out[name] = "zplus" if conv else "epsilon"
        first_conv = first_conv and not conv
        first_any = False
    return out


def _bound(value: Bound, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.dim() == 1:  # one value per channel
        t = t.reshape(1, -1, *([1] * (x.dim() - 2)))
    return t


def lrp(model: nn.Module, inputs: torch.Tensor, target: Target, *, rule: Optional[str] = None,
        composite: str = DEFAULT_COMPOSITE, epsilon: float = 1e-6, gamma: float = 0.25, alpha: float = 1.0,
        beta: float = 0.0, low: Optional[Bound] = None, high: Optional[Bound] = None,
        stabilizer: float = 1e-6) -> torch.Tensor:
    """Layer-wise relevance propagation of the target's logit to the pixels: signed relevance (N, C, H, W)
    (Bach et al. 2015, https://doi.org/10.1371/journal.pone.0130140; rules and composites in the module docstring).

    ``rule``: one rule on every convolution and dense layer ("epsilon", "gamma" with ``gamma``, "alpha-beta" with
    ``alpha`` - ``beta`` = 1); else ``composite`` places the rules (default "epsilon-gamma-box", zennit's
    EpsilonGammaBox). ``epsilon`` stabilizes the epsilon rule, ``stabilizer`` every other rule. ``low`` and
    ``high``: the smallest and largest possible input values of the z^B rule (floats, one per channel, or tensors
    broadcastable to (N, C, H, W)), required by "epsilon-gamma-box": for images normalized as (p - mean) / std with
    pixels p in [0, 1], ``low = -mean / std`` and ``high = (1 - mean) / std``.

    Positive relevance speaks for the class, negative against; the map sums to the logit up to what biases and
    stabilizers absorb (conservation). The model is used as is (eval mode: BatchNorm is folded with its running
    statistics) and comes back unchanged: it is traced on a deep copy and nothing is written to any module.
    Raises `LRPNotApplicable` for an operation without a rule (see `lrp_plan`), and `ValueError` for a callable
    target whose score is not linear in the outputs (`initial_relevance`).
    """
    _check_inputs(inputs)
    if rule is not None and rule not in RULES:
        raise ValueError(f"unknown LRP rule {rule!r}: use one of {', '.join(RULES)}")
    if rule is None and composite not in COMPOSITES:
        raise ValueError(f"unknown LRP composite {composite!r}: use one of {', '.join(COMPOSITES)}")
    if rule == "alpha-beta" and (alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-9):
        raise ValueError(f"the alpha-beta rule needs alpha, beta >= 0 and alpha - beta = 1, got {alpha}, {beta}")
    if rule is None and composite == "epsilon-gamma-box" and (low is None or high is None):
        raise ValueError("the epsilon-gamma-box composite needs low and high, the input's smallest and largest "
                         "possible values (its first layer's z^B rule)")
    targets = resolve_target(target, inputs.shape[0], inputs.device)
    plan = lrp_plan(model)
    rules = layer_rules(plan, rule, composite)
    x = inputs.detach().clone()
    modules = dict(plan.graph_module.named_modules())
    nodes = {n.name: n for n in plan.graph_module.graph.nodes}
    specs = {}
    for name, kind in rules.items():
        mod = modules[nodes[name].target]
        weight, bias = mod.weight.detach(), None if mod.bias is None else mod.bias.detach()
        bn = plan.folded.get(name)
        if bn is not None:  # y = scale * (conv(x) - mean) + shift, as new tensors
            scale = (bn.running_var + bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight.detach()
            shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(scale)
            weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
            bias = ((bias if bias is not None else 0.0) - bn.running_mean) * scale + shift
        forward = mod._conv_forward if isinstance(mod, CONVS) else F.linear
        a, b = {"alpha2-beta1": (2.0, 1.0), "zplus": (1.0, 0.0)}.get(kind, (alpha, beta))
        specs[name] = _Layer(forward, weight, bias, {"alpha2-beta1": "alpha-beta", "zplus": "alpha-beta"}.get(
            kind, kind), epsilon, gamma, a, b, stabilizer,
            _bound(low, x) if kind == "box" else None, _bound(high, x) if kind == "box" else None)
    runner = _Propagator(plan, specs, stabilizer)
    x.requires_grad_(True)
    with torch.enable_grad():
        output = runner.run(x)
        outs, seeds = initial_relevance(output, targets)
        (relevance,) = torch.autograd.grad(outs, x, seeds)
    return relevance


def initial_relevance(output: Any, targets: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The output tensors and the relevance each starts with (same shapes).

    Class indices: the target's logit at its class, 0 elsewhere (Bach et al.). A callable target: ``R = y *
    ds/dy`` for every output tensor ``y``, which is the same for a class logit and sums to the score ``s`` exactly
    when ``s`` is linear in the outputs (Euler: ``sum y ds/dy = s`` for a function homogeneous of degree 1), such as
    a label's logit or a mean logit over a region. Checked per image; another score (a cosine similarity, a box
    score with its IoU) has no such split and raises `ValueError`.
    """
    if isinstance(targets, torch.Tensor):
        scores = target_scores(output, targets)
        return [output], [torch.zeros_like(output).scatter_(1, targets[:, None], scores.detach()[:, None])]
    scores = target_scores(output, targets)
    outs = [t for t in _tensors(output) if t.is_floating_point() and t.requires_grad]
    grads = torch.autograd.grad(scores.sum(), outs, retain_graph=True, allow_unused=True)
    seeds = [torch.zeros_like(t) if g is None else t.detach() * g for t, g in zip(outs, grads)]
    total = sum(s.flatten(1).sum(1) for s in seeds) if seeds else torch.zeros_like(scores)
    s = scores.detach()
    if not torch.allclose(total, s, rtol=1e-4, atol=1e-5 * max(float(s.abs().max()), 1.0)):
        raise ValueError("LRP explains class logits: its relevance starts from a score that is linear in the model's "
                         "outputs, and this target's is not (output x gradient does not sum to the score); use a "
                         "gradient method for it")
    return outs, seeds


def _tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a model output: itself, or those in its dicts, lists and tuples."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []


class _Propagator(torch.fx.Interpreter):
    """Runs the traced graph with every node on the image's path replaced by its relevance action."""

    def __init__(self, plan: LRPPlan, specs: dict, stabilizer: float):
        super().__init__(plan.graph_module)
        self.plan, self.specs, self.stabilizer = plan, specs, stabilizer

    def run_node(self, n: torch.fx.Node) -> Any:
        kind = self.plan.actions.get(n.name)
        if kind is None or kind == "gradient":
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if kind == "layer":
            return _RuleFn.apply(args[0], self.specs[n.name])
        if kind == "folded":
            return args[0]  # its convolution already applied it
        if kind == "relu":
            return _PassFn.apply(args[0])
        if kind == "sum":
            a, b = args
            if a.shape != b.shape:
                raise LRPNotApplicable(f"the addition '{n.name}' broadcasts {tuple(a.shape)} and {tuple(b.shape)}; "
                                       "the sum rule needs two tensors of the same shape")
            return _SumFn.apply(a, b, self.stabilizer)
        # "norm": the original operation, its other arguments fixed
        op = getattr(self, n.op)
        rest = args[1:]

        def fn(t: torch.Tensor) -> torch.Tensor:
            return op(n.target, (t, *rest), kwargs)

        return _NormFn.apply(args[0], fn, self.stabilizer)
