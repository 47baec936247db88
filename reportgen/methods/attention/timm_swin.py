"""timm's Swin ``WindowAttention`` (``timm.models.swin_transformer``): a fused ``qkv`` projection, a relative
position bias, the shifted-window mask handed in per window (``mask``, (nW, T, T)). Its block,
``SwinTransformerBlock``, cuts the windows: it shifts the (H, W) map, then pads it (`place`). timm's Swin v2
attention (cosine logits, ``logit_scale``) is not this family."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .base import AttentionFamily, Split, Unsupported, Windows, fused_qkv, linears, merge, padded, per_window, plus


class TimmSwin(AttentionFamily):
    name = "timm-swin"
    windowed = True
    block = "timm SwinTransformerBlock"

    @classmethod
    def recognizes(cls, module: nn.Module) -> bool:
        return linears(module, "qkv", "proj") and all(hasattr(module, a) for a in (
            "num_heads", "scale", "window_size", "relative_position_bias_table", "_get_rel_pos_bias")) \
            and not hasattr(module, "logit_scale")

    @classmethod
    def split(cls, module: nn.Module, given: dict[str, Any], x: Optional[torch.Tensor]) -> Split:
        q, k, v = fused_qkv(module.qkv(x), module.num_heads)
        shift = given.get("mask")
        bias = plus(module._get_rel_pos_bias(), None if shift is None else per_window(shift, x.shape[0]))
        return Split(q, k, v, float(module.scale), lambda ctx: module.proj(merge(ctx)), bias)

    @classmethod
    def is_block(cls, parent: nn.Module) -> bool:
        return all(hasattr(parent, a) for a in ("window_size", "shift_size", "norm1"))

    @classmethod
    def place(cls, block: nn.Module, args: tuple, kwargs: dict) -> tuple[Windows, torch.Tensor]:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("x")
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise Unsupported(f"its {cls.block} was not called on a (B, H, W, C) map")
        size = (int(x.shape[1]), int(x.shape[2]))
        window, shift = tuple(block.window_size), tuple(int(s) for s in block.shift_size)
        return Windows(size, padded(size, window), window, shift, shift_padded=False), block.norm1(x)
