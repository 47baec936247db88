"""Recording attention weights during forward passes, and the maps made from them: class-token attention,
attention rollout and its gradient-weighted variant. What a module is and how its call is taken apart is its
family's business (`reportgen.methods.attention.registry`); this module is the same for every family."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...capture import preserved, resolve_layer
from ..attribution import Target, _check_inputs
from ..targets import resolve_target, target_scores
from ..tokens import token_grid
from .base import AttentionFamily, Recovered, Unsupported, Windows
from .registry import family_of


def attention_modules(model: nn.Module) -> list[str]:
    """Dotted names of the attention modules this module can read, in registration order (= depth order in
    torchvision, timm and Hugging Face ViTs)."""
    return [name for name, m in model.named_modules() if name and family_of(m) is not None]


def _placed_windows(family: type[AttentionFamily], block: Optional[nn.Module], block_call: Optional[tuple],
                    x: torch.Tensor) -> Windows:
    """Where the windows a windowed family's attention module received, ``x`` (B * nW, T, C), sit on its block's
    map (``block_call``: the block's (args, kwargs)): the family's layout (`AttentionFamily.place`), accepted only
    when cutting the block's normalized input that way gives ``x`` exactly (else `Unsupported`: a map is never
    drawn in places the model did not use)."""
    if block is None or block_call is None:
        raise Unsupported(f"it attends within windows whose places on the map are not known (its block is not a "
                          f"{family.block})")
    try:
        windows, normed = family.place(block, *block_call)
    except Unsupported as exc:
        raise Unsupported(f"it attends within windows whose places on the map are not known ({exc})") from None
    cut = windows.cut(normed)
    if cut.shape != x.shape or not torch.allclose(cut, x, rtol=1e-5, atol=1e-6 * float(x.abs().max() or 1.0)):
        raise Unsupported("its input is not its block's map cut into shifted windows as this report reads them")
    return windows


def attention_from_inputs(module: nn.Module, args: tuple, kwargs: dict) -> Recovered:
    """``(A, out, output_of, windows)`` of one call of ``module`` (its arguments), as its family recovers them
    (`Recovered`): the weights (N, h, L, L), rows summing to 1, the module's output recomputed from them,
    ``output_of(A)`` and, for a layer that cuts its own windows, where its (N * windows, h, T, T) weights sit.
    `Unsupported` for a module no family reads."""
    family = family_of(module)
    if family is None:
        raise Unsupported(f"a {type(module).__name__} is not an attention module this report can read")
    return family.recover(module, args, kwargs)


@dataclass
class AttentionRecord:
    """What `recording_attention` yields: per module name, the weights (N, h, L, L) of the last forward pass, the
    gradient of the objective w.r.t. them (when asked for), and the modules whose weights could not be recovered
    exactly, with why. ``windows``: for shifted-window layers, the layout of their (N * windows, h, T, T) weights.
    ``input_size`` and ``batch``: the (H, W) and the image count N of the model's last input."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    windows: dict[str, Windows] = field(default_factory=dict)  # shifted-window layers: where the weights sit
    input_size: Optional[tuple[int, int]] = None
    batch: Optional[int] = None
    _pending: dict = field(default_factory=dict, repr=False)


@contextmanager
def recording_attention(model: nn.Module, names: Optional[list[str]] = None, *, grads: bool = False,
                        rtol: float = 1e-4) -> Iterator[AttentionRecord]:
    """Record the attention weights of ``names`` (default: every `attention_modules`) during forward passes.

    Each module's inputs and output are kept by hooks (removed on exit); the weights are recomputed from the inputs
    and accepted only when the output recomputed from them matches the module's own output within ``rtol`` of its
    largest magnitude. With ``grads=True`` the gradient that reaches each module's output in a backward pass is
    turned into the gradient w.r.t. its weights, ``dObjective/dA`` (N, h, L, L), exactly (the output is linear in
    ``A`` for fixed values). Read the record after the backward pass, still inside the block or after it.
    """
    names = attention_modules(model) if names is None else list(names)
    modules = [(name, resolve_layer(model, name)) for name in names]
    rec = AttentionRecord()
    handles = []

    def note_input(_m, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            rec.input_size = tuple(args[0].shape[-2:])
            rec.batch = int(args[0].shape[0])

    families = {name: family_of(module) for name, module in modules}
    blocks = {}  # windowed families (Swin of timm and Hugging Face): attention module name -> the block cutting them
    for name, module in modules:
        parent = resolve_layer(model, name.rpartition(".")[0]) if "." in name else model
        family = families[name]
        if family is not None and family.windowed and family.is_block(parent):
            blocks[name] = parent

    def make_hooks(name: str, module: nn.Module):
        def block_pre(_m, args, kwargs):
            rec._pending[name + "#block"] = (tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                                             dict(kwargs))

        def pre(_m, args, kwargs):
            rec._pending[name] = (tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                                  {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})

        def post(_m, _args, _kwargs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            args, kwargs = rec._pending.pop(name)
            block_call = rec._pending.pop(name + "#block", None)
            try:
                with torch.no_grad():
                    weights, redo, _, windows = attention_from_inputs(module, args, kwargs)
                    scale = float(out.detach().abs().max()) or 1.0
                    err = float((redo - out.detach()).abs().max())
                if not err <= rtol * scale:
                    raise Unsupported(f"the weights recomputed from its projections reproduce its output only to "
                                      f"{err / scale:.1e} relative")
                family = families[name]
                if family.windowed:
                    windows = _placed_windows(family, blocks.get(name), block_call, args[0])
                if windows is None and rec.batch is not None and weights.shape[0] != rec.batch:
                    # MobileViT attends over (N * pixels per patch) sequences: no token set belongs to one image
                    raise Unsupported(f"it attends over {weights.shape[0]} sequences for {rec.batch} images "
                                      "(windows or positions folded into the batch, as in MobileViT), not over "
                                      "one token set per image")
            except Unsupported as exc:
                rec.refused[name] = str(exc)
                return
            except Exception as exc:  # a relative of a known kind that computes differently: never break the pass
                rec.refused[name] = (f"its weights could not be recomputed from its projections "
                                     f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
                return
            rec.weights[name] = weights
            if windows is not None:
                rec.windows[name] = windows
            rec.refused.pop(name, None)
            if grads and out.requires_grad:
                def grad_hook(g, _name=name, _args=args, _kwargs=kwargs):
                    with torch.enable_grad():
                        w, _, output_of, _ = attention_from_inputs(module, _args, _kwargs)
                        a = w.detach().requires_grad_(True)
                        (grad_a,) = torch.autograd.grad(output_of(a), a, g)
                    rec.grads[_name] = grad_a.detach()

                out.register_hook(grad_hook)

        return block_pre, pre, post

    try:
        handles.append(model.register_forward_pre_hook(note_input))
        for name, module in modules:
            if families[name] is None:
                raise Unsupported(f"'{name}' is a {type(module).__name__}, not an attention module this report can "
                                  "read")
            block_pre, pre, post = make_hooks(name, module)
            if name in blocks:
                handles.append(blocks[name].register_forward_pre_hook(block_pre, with_kwargs=True))
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(post, with_kwargs=True))
        yield rec
    finally:
        for handle in handles:
            handle.remove()


def attention_weights(model: nn.Module, inputs: torch.Tensor, names: Optional[list[str]] = None
                      ) -> dict[str, torch.Tensor]:
    """Every readable attention module's weights (N, h, L, L) for ``inputs`` (N, C, H, W); one no-grad pass.
    Modules whose weights cannot be recovered exactly are left out (see `recording_attention`)."""
    _check_inputs(inputs)
    with preserved(model), recording_attention(model, names) as rec, torch.no_grad():
        model(inputs)
    return rec.weights


def attention_grids(model: nn.Module, inputs: torch.Tensor, names: Optional[list[str]] = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What the attention maps page draws, one no-grad pass of ``inputs`` (N, C, H, W): ``({name: (N, h, gh,
    gw)}, {name: why not})``. A global attention layer gives the class token's attention to each patch
    (`class_token_attention`); a shifted-window layer the weight each position receives within its window
    (`Windows.received`)."""
    _check_inputs(inputs)
    with preserved(model), recording_attention(model, names) as rec, torch.no_grad():
        model(inputs)
    grids = {}
    for name, weights in rec.weights.items():
        if name in rec.windows:
            grids[name] = rec.windows[name].received(weights)
        else:
            prefix, grid = _token_layout(weights.shape[-1], rec.input_size)
            grids[name] = class_token_attention(weights, prefix, grid)
    return grids, dict(rec.refused)


def class_token_attention(weights: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(N, h, L, L) weights -> (N, h, gh, gw): the attention of the class token (token 0) to each patch.

    Without a class token (``prefix`` 0) it is the attention each patch receives, averaged over all queries."""
    n, h = weights.shape[:2]
    row = weights[:, :, 0, prefix:] if prefix else weights[:, :, :, prefix:].mean(dim=2)
    return row.reshape(n, h, *grid)


def rollout_of_weights(weights: list[torch.Tensor], prefix: int, grid: tuple[int, int],
                       residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (N, gh, gw) >= 0 (Abnar & Zuidema 2020): per layer the mean over heads, mixed with the
    identity for the residual connection, ``A' = residual * I + (1 - residual) * mean_h A`` (rows still sum to 1),
    multiplied from the first layer to the last; the class token's row (or, without one, the column mean) over
    the patches. ``weights``: one (N, h, L, L) per layer, first layer first."""
    rollout = None
    for a in weights:
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        step = residual * eye + (1 - residual) * a.mean(dim=1)
        rollout = step if rollout is None else step @ rollout
    return class_token_attention(rollout[:, None], prefix, grid)[:, 0]


def grad_rollout_of_weights(weights: list[torch.Tensor], grads: list[torch.Tensor], prefix: int,
                            grid: tuple[int, int]) -> torch.Tensor:
    """Gradient-weighted rollout (N, gh, gw) >= 0 (Chefer, Gur & Wolf 2021, eq. 5-6): ``R = I``, then for each
    layer, first to last, ``R <- R + mean_h[(dS/dA * A)^+] R``; the class token's row over the patches (the column
    mean without a class token). ``S`` is the target's logit; ``weights`` and ``grads`` one (N, h, L, L) per layer."""
    r = None
    for a, g in zip(weights, grads):
        cam = (g * a).clamp(min=0).mean(dim=1)
        r = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(cam).clone() if r is None else r
        r = r + cam @ r
    return class_token_attention(r[:, None], prefix, grid)[:, 0]


def attention_maps(model: nn.Module, inputs: torch.Tensor, target: Target,
                   names: Optional[list[str]] = None) -> dict[str, Any]:
    """Everything the attention analyses draw, from one forward and one backward pass of ``inputs`` (N, C, H, W):
    ``{"weights": {name: (N, h, L, L)}, "class_token": {name: (N, h, gh, gw)}, "rollout": (N, gh, gw),
    "grad_rollout": (N, gh, gw), "prefix": p, "grid": (gh, gw), "refused": {name: why}}``.

    The token layout (prefix tokens, patch grid) is inferred from the token count and the input size as in
    `reportgen.methods.tokens.infer_view`.
    """
    _check_inputs(inputs)
    targets = resolve_target(target, inputs.shape[0], inputs.device)
    x = inputs.detach().clone().requires_grad_(True)
    with preserved(model), recording_attention(model, names, grads=True) as rec, torch.enable_grad():
        scores = target_scores(model(x), targets)
        torch.autograd.grad(scores.sum(), x)
    order = _global_layers(rec, names or attention_modules(model))
    p, grid = _token_layout(rec.weights[order[0]].shape[-1], rec.input_size)
    weights = [rec.weights[n] for n in order]
    return {"weights": dict(zip(order, weights)),
            "class_token": {n: class_token_attention(rec.weights[n], p, grid) for n in order},
            "rollout": rollout_of_weights(weights, p, grid),
            "grad_rollout": grad_rollout_of_weights(weights, [rec.grads[n] for n in order], p, grid),
            "prefix": p, "grid": grid, "refused": dict(rec.refused)}


def _global_layers(rec: AttentionRecord, names: list[str]) -> list[str]:
    """Those of ``names`` whose weights were recovered and that attend globally (not within windows), all over one
    token set (rollout multiplies their weights)."""
    order = [n for n in names if n in rec.weights and n not in rec.windows]
    if not order:
        why = "; ".join(f"{k}: {v}" for k, v in rec.refused.items()) or \
            "only window attention, which has no class token and no token set shared by all layers"
        raise Unsupported(f"no global attention layer's weights could be recovered ({why})")
    why = mixed_token_sets({n: int(rec.weights[n].shape[-1]) for n in order})
    if why:
        raise Unsupported(why)
    return order


def mixed_token_sets(tokens: dict[str, int]) -> str:
    """Why attention cannot be rolled out over layers with these token counts ({layer: L}), or "" when it can."""
    counts = sorted(set(tokens.values()), reverse=True)
    if len(counts) < 2:
        return ""
    return (f"the attention layers do not share one token set ({', '.join(map(str, counts))} tokens: pooling "
            "between stages, as in PiT, or several branches, as in CrossViT), so their weights cannot be multiplied "
            "through the depth")


def probe_layouts(rec: AttentionRecord) -> tuple[dict[str, int], dict[str, str]]:
    """({layer: token count} of the global attention layers whose tokens form a patch grid of the input,
    {layer: why not} for those whose tokens do not), from a recorded pass."""
    tokens, refused = {}, {}
    for name, weights in rec.weights.items():
        if name in rec.windows:
            continue
        try:
            _token_layout(int(weights.shape[-1]), rec.input_size)
        except Unsupported as exc:
            refused[name] = str(exc)
            continue
        tokens[name] = int(weights.shape[-1])
    return tokens, refused


def _token_layout(length: int, input_size: Optional[tuple[int, int]]) -> tuple[int, tuple[int, int]]:
    """(prefix tokens, patch grid) of an attention module's ``length`` tokens for an input of ``input_size`` (H, W)
    (`reportgen.methods.tokens.token_grid`); `Unsupported` when they form no patch grid of the input."""
    layout = token_grid(length, input_size)
    if layout is None:
        raise Unsupported(f"{length} tokens do not form a patch grid of a {input_size} input")
    return layout


def _to_pixels(grid_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, gh, gw) -> (N, H, W): each patch's value over its pixels (nearest: one value per patch, as computed)."""
    return F.interpolate(grid_maps[:, None], size=size, mode="nearest")[:, 0]


def attention_rollout(model: nn.Module, inputs: torch.Tensor, target: Target = None,
                      names: Optional[list[str]] = None, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (N, H, W) >= 0 of ``inputs`` (N, C, H, W), each patch's value over its pixels (Abnar &
    Zuidema 2020, https://arxiv.org/abs/2005.00928; see `rollout_of_weights`). Class-agnostic: the map is the same
    for every ``target`` (checked against the logits all the same, as every method does). ``names``: the attention
    modules, first layer first (default: every readable one). The model runs as it is (eval mode is the caller's
    choice; dropout in train mode makes the weights unrecoverable and the layer is refused)."""
    _check_inputs(inputs)
    with preserved(model), recording_attention(model, names) as rec, torch.no_grad():
        logits = model(inputs.detach())
        if target is not None:
            target_scores(logits, resolve_target(target, inputs.shape[0], inputs.device))
    order = _global_layers(rec, names or attention_modules(model))
    prefix, grid = _token_layout(rec.weights[order[0]].shape[-1], rec.input_size)
    maps = rollout_of_weights([rec.weights[n] for n in order], prefix, grid, residual)
    return _to_pixels(maps, tuple(inputs.shape[-2:]))


def grad_rollout(model: nn.Module, inputs: torch.Tensor, target: Target,
                 names: Optional[list[str]] = None) -> torch.Tensor:
    """Gradient-weighted attention rollout (N, H, W) >= 0 for the ``target`` logit, each patch's value over its
    pixels (Chefer, Gur & Wolf 2021, https://arxiv.org/abs/2103.15679; see `grad_rollout_of_weights`). One forward
    and one backward pass."""
    result = attention_maps(model, inputs, target, names)
    return _to_pixels(result["grad_rollout"], tuple(inputs.shape[-2:]))
