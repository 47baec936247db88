"""Attention weights of vision transformers, recovered without changing what the model computes, and the maps
made from them: class-token attention, attention rollout and its gradient-weighted variant.

Fast attention kernels (``nn.MultiheadAttention`` with ``need_weights=False``, timm's fused attention, PyTorch's
``scaled_dot_product_attention``) never materialize the weights. Here they are recomputed from the attention
module's own input and projections, ``A = softmax(q k^T * scale + bias)`` per head (bias: the relative position bias
of BEiT and Swin, the module's attention mask, a boolean one as 0 / -inf, else none), and the module's output is
recomputed from ``A`` too: a layer whose recomputed output differs from what the module returned (by more than 1e-4
relative) is refused, so a map is never drawn from weights the model did not use. Supported modules:
``torch.nn.MultiheadAttention`` (torchvision's ViT), timm's ``Attention`` (``qkv`` + ``proj``) and its BEiT
``Attention`` (relative position bias added to the logits), Hugging Face ViT attention
(``q_proj``/``k_proj``/``v_proj``/``o_proj``, or the older ``query``/``key``/``value``, BEiT's and Data2Vec-Vision's
with their relative position biases) and torchvision's Swin ``ShiftedWindowAttention`` and
``ShiftedWindowAttentionV2`` and the Swin attention of timm (``WindowAttention``) and Hugging Face (window
attention, v2 with cosine logits: no class token; shown as the weight each position receives within its window, see
`Windows`; timm's and Hugging Face's windows are cut by the block, so their places are checked against the block's
own input).

Papers: attention rollout, Abnar & Zuidema, Quantifying Attention Flow in Transformers, ACL 2020,
https://arxiv.org/abs/2005.00928 ; gradient-weighted rollout, Chefer, Gur & Wolf, Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers, ICCV 2021,
https://arxiv.org/abs/2103.15679 .
"""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import preserved, resolve_layer
from .attribution import Target, _check_inputs, as_targets, target_scores

__all__ = ["attention_modules", "recording_attention", "attention_weights", "attention_rollout", "grad_rollout",
           "class_token_attention", "attention_maps", "attention_grids", "rollout_of_weights",
           "grad_rollout_of_weights", "Unsupported", "Windows", "mixed_token_sets", "probe_layouts"]


class Unsupported(ValueError):
    """This module's attention cannot be recomputed exactly (an unknown kind, a mask, extra key/value biases)."""


# attention modules that receive windows their block cut from the map
WINDOWED = ("timm-window", "hf-swin")


def _kind(module: nn.Module) -> Optional[str]:
    if isinstance(module, nn.MultiheadAttention):
        return "torch"
    if type(module).__name__ in ("ShiftedWindowAttention", "ShiftedWindowAttentionV2") \
            and isinstance(getattr(module, "qkv", None), nn.Linear) and hasattr(module, "get_relative_position_bias"):
        return "swin"
    linear = lambda *names: all(isinstance(getattr(module, n, None), nn.Linear) for n in names)  # noqa: E731
    # timm's ViT `Attention` (also DeiT, BEiT-free ViTs, DINOv2...); its windowed and talking-heads relatives have
    # the same projections but add biases or mix heads, and have no q_norm / k_norm
    if linear("qkv", "proj") and all(hasattr(module, a) for a in ("num_heads", "scale", "q_norm", "k_norm")):
        return "timm"
    # timm's Swin `WindowAttention`: windows cut by its block, relative position bias, shifted-window mask (BEiT's
    # attention has the same attributes and its own q / v biases)
    swin = ("num_heads", "scale", "window_size", "relative_position_bias_table", "_get_rel_pos_bias")
    if linear("qkv", "proj") and all(hasattr(module, a) for a in swin) \
            and not any(hasattr(module, a) for a in ("logit_scale", "q_bias")):
        return "timm-window"
    # timm's BEiT attention: separate q / v biases and a relative position bias added to the logits
    beit = ("num_heads", "scale", "q_bias", "v_bias", "relative_position_bias_table", "_get_rel_pos_bias")
    if linear("qkv", "proj") and all(hasattr(module, a) for a in beit):
        return "timm-beit"
    if linear("q_proj", "k_proj", "v_proj", "o_proj") and hasattr(module, "num_attention_heads"):
        # Hugging Face's Swin: windows cut by its layer, its own relative position bias, the shift mask per window
        table = getattr(getattr(module, "relative_position_bias", None), "relative_position_bias_table", None)
        return "hf-swin" if isinstance(table, torch.Tensor) else "hf"
    if linear("query", "key", "value") and hasattr(module, "num_attention_heads") \
            and hasattr(module, "attention_head_size"):
        return "hf-legacy"
    return None


def attention_modules(model: nn.Module) -> list[str]:
    """Dotted names of the attention modules this module can read, in registration order (= depth order in
    torchvision, timm and Hugging Face ViTs)."""
    return [name for name, m in model.named_modules() if name and _kind(m) is not None]


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(N, L, h*d) -> (N, h, L, d)."""
    n, length, e = x.shape
    return x.reshape(n, length, h, e // h).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(N, h, L, d) -> (N, L, h*d)."""
    n, h, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, h * d)


def _split(module: nn.Module, args: tuple, kwargs: dict
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, Callable[[torch.Tensor], torch.Tensor],
                      Optional[torch.Tensor]]:
    """(q, k, v) as (N, h, L, d), the logit scale, ``finish(A @ v)`` -> the module's (first) output, and the bias
    added to the scaled logits before the softmax (None for most kinds)."""
    kind = _kind(module)
    given = _named_arguments(module, args, kwargs)
    if kind == "torch":
        m: nn.MultiheadAttention = module  # type: ignore[assignment]
        if given.get("key_padding_mask") is not None or given.get("attn_mask") is not None or given.get("is_causal"):
            raise Unsupported("masked attention")
        if m.bias_k is not None or m.add_zero_attn:
            raise Unsupported("extra key/value biases")
        q_in, k_in, v_in = given["query"], given["key"], given["value"]
        if not m.batch_first:
            q_in, k_in, v_in = (t.transpose(0, 1) for t in (q_in, k_in, v_in))
        e, h = m.embed_dim, m.num_heads
        if m._qkv_same_embed_dim:
            w_q, w_k, w_v = m.in_proj_weight.split(e)
        else:
            w_q, w_k, w_v = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
        b_q, b_k, b_v = m.in_proj_bias.split(e) if m.in_proj_bias is not None else (None, None, None)
        q, k, v = (_heads(F.linear(t, w, b), h) for t, w, b in ((q_in, w_q, b_q), (k_in, w_k, b_k), (v_in, w_v, b_v)))

        def finish(ctx: torch.Tensor) -> torch.Tensor:
            out = m.out_proj(_merge(ctx))
            return out if m.batch_first else out.transpose(0, 1)

        return q, k, v, (e // h) ** -0.5, finish, None
    x = given.get("x", given.get("hidden_states", args[0] if args else None))
    if kind == "timm-beit":
        bias = None
        if module.q_bias is not None:
            k_bias = module.k_bias if module.k_bias is not None else torch.zeros_like(module.v_bias)
            bias = torch.cat((module.q_bias, k_bias, module.v_bias))
        q, k, v = _fused_qkv(F.linear(x, module.qkv.weight, bias), module.num_heads)
        own = module._get_rel_pos_bias() if module.relative_position_bias_table is not None else None
        return q, k, v, float(module.scale), lambda ctx: module.proj(_merge(ctx)), _plus(
            own, given.get("shared_rel_pos_bias"))
    if kind == "timm-window":
        q, k, v = _fused_qkv(module.qkv(x), module.num_heads)
        shift = given.get("mask")
        bias = _plus(module._get_rel_pos_bias(), None if shift is None else _per_window(shift, x.shape[0]))
        return q, k, v, float(module.scale), lambda ctx: module.proj(_merge(ctx)), bias
    if kind == "timm":
        if given.get("is_causal"):
            raise Unsupported("causal attention")
        q, k, v = _fused_qkv(module.qkv(x), module.num_heads)
        q, k = module.q_norm(q), module.k_norm(k)
        gate = module.gate(x).sigmoid() if getattr(module, "gate", None) is not None else None

        def finish(ctx: torch.Tensor) -> torch.Tensor:
            out = _merge(ctx)
            out = module.norm(out) if hasattr(module, "norm") else out
            out = out * gate if gate is not None else out
            return module.proj(out)

        return q, k, v, float(module.scale), finish, _additive(given.get("attn_mask"))
    if given.get("head_mask") is not None:
        raise Unsupported("attention with a head mask")
    h = module.num_attention_heads
    # Hugging Face hands relative position biases (BEiT) and padding masks in as an additive `attention_mask`
    mask = _additive(given.get("attention_mask"))
    if kind == "hf-swin":
        q, k, v = (_heads(proj(x), h) for proj in (module.q_proj, module.k_proj, module.v_proj))
        # its attention_mask is the shifted-window mask, (nW, T, T)
        bias = _plus(module.relative_position_bias(), None if mask is None else _per_window(mask, x.shape[0]))
        return q, k, v, float(module.scaling), lambda ctx: module.o_proj(_merge(ctx)), bias
    if kind == "hf":
        q, k, v = (_heads(proj(x), h) for proj in (module.q_proj, module.k_proj, module.v_proj))
        scale = float(getattr(module, "scaling", q.shape[-1] ** -0.5))
        return q, k, v, scale, lambda ctx: module.o_proj(_merge(ctx)), mask
    q, k, v = (_heads(proj(x), h) for proj in (module.query, module.key, module.value))
    return q, k, v, module.attention_head_size ** -0.5, _merge, _plus(_hf_position_bias(module, given, x), mask)


def _plus(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``a + b`` of two logit biases, either of which may be absent (None)."""
    return b if a is None else a if b is None else a + b


def _fused_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm's fused projection output (N, L, 3 * h * d) as q, k, v, each (N, h, L, d)."""
    n, length, _ = qkv.shape
    return qkv.reshape(n, length, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def _additive(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """An attention mask as what it adds to the scaled logits: a boolean one (True = may attend, the
    ``scaled_dot_product_attention`` convention) as 0 / -inf, a float one as it is."""
    if mask is None or not isinstance(mask, torch.Tensor):
        return None
    return torch.where(mask, 0.0, float("-inf")) if mask.dtype == torch.bool else mask


def _named_arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a call of ``module`` by parameter name (Hugging Face modules pass them by position or by
    keyword, in an order that differs between models); those caught by ``**kwargs`` too."""
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return dict(kwargs)
    named = {}
    for key, value in bound.arguments.items():
        if bound.signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[key] = value
    return named


def _hf_position_bias(module: nn.Module, named: dict[str, Any], x: torch.Tensor) -> Optional[torch.Tensor]:
    """The relative position bias Hugging Face's BEiT / Data2Vec-Vision attention adds to its scaled logits: the
    module's own (from the input's resolution) plus the one shared by all layers, when given; None for others."""
    bias = None
    if getattr(module, "has_relative_position_bias", False):
        height, width = named["resolution"]
        patch = module.config.patch_size
        bias = module.relative_position_bias((height // patch, width // patch),
                                             named.get("interpolate_pos_encoding", False), dim_size=x.shape[1])
    shared = named.get("relative_position_bias")
    return _plus(bias, shared if isinstance(shared, torch.Tensor) else None)


@dataclass(frozen=True)
class Windows:
    """Where the (B * windows, h, T, T) weights of a shifted-window attention layer sit on its (H, W) map
    (Liu et al., Swin Transformer, ICCV 2021, https://arxiv.org/abs/2103.14030)."""

    size: tuple[int, int]  # the layer's (H, W)
    padded: tuple[int, int]
    window: tuple[int, int]
    shift: tuple[int, int]
    # torchvision pads the map, then shifts it; timm shifts the (H, W) map, then pads
    shift_padded: bool = True

    def received(self, weights: torch.Tensor) -> torch.Tensor:
        """(B * nW, h, T, T) -> (B, h, H, W): the weight each position receives from the positions of its window,
        averaged over them (each window's values sum to 1 per query, so a uniform window gives 1 / T)."""
        return self.merge(weights.mean(dim=2).transpose(1, 2)).permute(0, 3, 1, 2)

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """A padded and shifted (B, H', W', C) map as its windows, (B * nW, T, C), in row-major window order."""
        (wh, ww), (ph, pw) = self.window, self.padded
        x = x.reshape(x.shape[0], ph // wh, wh, pw // ww, ww, x.shape[-1]).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, wh * ww, x.shape[-1])

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """A (B, H, W, C) map cut into this layout's windows, (B * nW, T, C): what the attention module sees."""
        (ph, pw) = self.padded
        pad = (0, 0, 0, pw - x.shape[2], 0, ph - x.shape[1])
        if self.shift_padded:
            x = F.pad(x, pad)
        if any(self.shift):
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        if not self.shift_padded:
            x = F.pad(x, pad)
        return self.partition(x)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of `cut`: (B * nW, T, C) windows back to the (B, H, W, C) map, shift undone, padding cut."""
        (wh, ww), (ph, pw), (h, w) = self.window, self.padded, self.size
        c = x.shape[-1]
        x = x.reshape(-1, ph // wh, pw // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ph, pw, c)
        if not self.shift_padded:
            x = x[:, :h, :w]
        if any(self.shift):
            x = torch.roll(x, shifts=self.shift, dims=(1, 2))
        return x[:, :h, :w]


def _padded(size: tuple[int, int], window: tuple[int, int]) -> tuple[int, int]:
    """``size`` (H, W) rounded up to whole windows."""
    return tuple(n + (k - n % k) % k for n, k in zip(size, window))  # type: ignore[return-value]


def _per_window(mask: torch.Tensor, n: int) -> torch.Tensor:
    """A shifted-window mask (nW, T, T), the same for every image, as (n, 1, T, T) for n = B * nW windows."""
    windows, length = mask.shape[0], mask.shape[-1]
    return mask[None, :, None].expand(n // windows, -1, -1, -1, -1).reshape(n, 1, length, length)


def _timm_windows(block: nn.Module, x: torch.Tensor) -> Windows:
    """The window layout a timm `SwinTransformerBlock` gives its attention for a (B, H, W, C) input ``x``."""
    window, shift = tuple(block.window_size), tuple(int(s) for s in block.shift_size)
    return Windows(tuple(x.shape[1:3]), _padded(tuple(x.shape[1:3]), window), window, shift, shift_padded=False)


def _hf_windows(layer: nn.Module, size: tuple[int, int]) -> Windows:
    """The window layout a Hugging Face `SwinLayer` gives its attention for a map of ``size`` (H, W): padded, then
    shifted, as torchvision does."""
    window, shift = int(layer.window_size), max(int(layer.shift_size), 0)
    return Windows(size, _padded(size, (window, window)), (window, window), (shift, shift))


def _placed_windows(block: Optional[nn.Module], block_call: Optional[tuple], x: torch.Tensor) -> Windows:
    """Where the windows a Swin attention module of timm or Hugging Face received, ``x`` (B * nW, T, C), sit on
    its block's map (``block_call``: the block's (args, kwargs)): the layout of `_timm_windows` / `_hf_windows`,
    accepted only when cutting the block's normalized input that way gives ``x`` exactly (else `Unsupported`: a map
    is never drawn in places the model did not use)."""
    args, kwargs = block_call if block_call is not None else ((), {})
    first = args[0] if args and isinstance(args[0], torch.Tensor) else None
    size = args[1] if len(args) > 1 else kwargs.get("input_dimensions")
    if block is not None and hasattr(block, "norm1") and first is not None and first.dim() == 4:
        windows, normed = _timm_windows(block, first), block.norm1(first)
    elif block is not None and hasattr(block, "layernorm_before") and first is not None and first.dim() == 3 \
            and size is not None:
        size = (int(size[0]), int(size[1]))
        windows = _hf_windows(block, size)
        normed = block.layernorm_before(first).view(first.shape[0], *size, first.shape[-1])
    else:
        raise Unsupported("it attends within windows whose places on the map are not known (its block is not a "
                          "timm SwinTransformerBlock or a Hugging Face SwinLayer)")
    cut = windows.cut(normed)
    if cut.shape != x.shape or not torch.allclose(cut, x, rtol=1e-5, atol=1e-6 * float(x.abs().max() or 1.0)):
        raise Unsupported("its input is not its block's map cut into shifted windows as this report reads them")
    return windows


def _swin(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Callable, Windows]:
    """torchvision's shifted-window attention, step by step up to the weights and back to its output."""
    _, h_in, w_in, c = x.shape
    window, shift = tuple(module.window_size), tuple(module.shift_size)
    logit_scale = getattr(module, "logit_scale", None)  # Swin v2: cosine attention with a learned temperature
    ph, pw = _padded((h_in, w_in), window)
    shift = (0 if window[0] >= ph else shift[0], 0 if window[1] >= pw else shift[1])
    layout = Windows((h_in, w_in), (ph, pw), window, shift)
    xw = layout.cut(x)
    heads = module.num_heads
    bias = module.qkv.bias
    if logit_scale is not None and bias is not None:  # Swin v2 has no key bias: torchvision zeroes that third
        bias = torch.cat([bias[: c], torch.zeros_like(bias[c: 2 * c]), bias[2 * c:]])
    q, k, v = _fused_qkv(F.linear(xw, module.qkv.weight, bias), heads)
    if logit_scale is not None:
        scale = torch.clamp(logit_scale, max=math.log(100.0)).exp()
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * scale
    else:
        logits = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    logits = logits + module.get_relative_position_bias()
    if any(shift):
        # the same region labels torchvision uses: tokens from different regions of a shifted window get -100
        label = x.new_zeros((ph, pw))
        count = 0
        for hs in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
            for ws in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
                label[hs[0]: hs[1], ws[0]: ws[1]] = count
                count += 1
        label = layout.partition(label[None, :, :, None])[..., 0]
        mask = (label[:, None, :] - label[:, :, None]).ne(0).to(logits.dtype) * -100.0
        logits = logits + _per_window(mask, xw.shape[0])
    weights = torch.softmax(logits, dim=-1)

    def output_of(a: torch.Tensor) -> torch.Tensor:
        return layout.merge(module.proj(_merge(a.to(v.dtype) @ v)))

    return weights, output_of(weights), output_of, layout


def attention_from_inputs(module: nn.Module, args: tuple, kwargs: dict
                          ) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor],
                                     Optional[Windows]]:
    """``(A, out, output_of, windows)``: the weights (N, h, L, L), rows summing to 1, the module's output
    recomputed from them, ``output_of(A)`` that recomputes the output from any weights (differentiable in ``A``),
    and None; for a shifted-window layer A is (N * windows, h, T, T) and ``windows`` says where they sit."""
    if _kind(module) == "swin":
        return _swin(module, args[0] if args else kwargs["x"])
    q, k, v, scale, finish, bias = _split(module, args, kwargs)
    logits = (q * scale) @ k.transpose(-2, -1)
    weights = torch.softmax(logits if bias is None else logits + bias, dim=-1)

    def output_of(a: torch.Tensor) -> torch.Tensor:
        return finish(a.to(v.dtype) @ v)

    return weights, output_of(weights), output_of, None


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

    blocks = {}  # Swin of timm and Hugging Face: attention module name -> its block, which cuts the windows
    for name, module in modules:
        parent = resolve_layer(model, name.rpartition(".")[0]) if "." in name else model
        if _kind(module) in WINDOWED and all(hasattr(parent, a) for a in ("window_size", "shift_size")):
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
                if _kind(module) in WINDOWED:
                    windows = _placed_windows(blocks.get(name), block_call, args[0])
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
            if _kind(module) is None:
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
    targets = as_targets(target, inputs.shape[0], inputs.device)
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
    """(prefix tokens, patch grid) of ``length`` tokens for an input of ``input_size`` (H, W).

    First as `reportgen.methods.tokens.infer_view` (patches of one integer stride tile the input); else the fewest
    prefix tokens that leave a grid of exactly the input's aspect ratio: PiT's 27 x 27 tokens of a 224-px image
    (overlapping 16-px patches at stride 8), CrossViT's 14 x 14 of a 240-px image resized to 224."""
    from .tokens import MAX_PREFIX, infer_view

    view = infer_view((length, 1), input_size, min_patches=1)  # an attention module's tokens: no ambiguity
    if view.kind == "tokens":
        return view.prefix, view.grid
    if input_size is not None:
        h_in, w_in = input_size
        for prefix in range(min(MAX_PREFIX, length)):
            n = length - prefix
            gh = max(1, round(math.sqrt(n * h_in / w_in)))
            if n % gh == 0 and gh * w_in == (n // gh) * h_in:
                return prefix, (gh, n // gh)
    raise Unsupported(f"{length} tokens do not form a patch grid of a {input_size} input")


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
            target_scores(logits, as_targets(target, inputs.shape[0], inputs.device))
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
