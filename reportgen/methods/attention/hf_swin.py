"""Hugging Face's Swin window attention (``transformers.models.swin``; v2's cosine logits are not this family):
``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``, its own relative position bias, and the shifted-window mask
handed in as ``attention_mask`` (nW, T, T). Its block, ``SwinLayer``, cuts the windows: it pads the (H, W) map,
then shifts it, as torchvision does (`place`). It has every attribute Hugging Face's ViT attention has, so the
registry tries it before that family."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .base import AttentionFamily, Split, Unsupported, Windows, heads, linears, merge, padded, per_window, plus
from .hf_vit import hf_mask


class HuggingFaceSwin(AttentionFamily):
    name = "hf-swin"
    windowed = True
    block = "Hugging Face SwinLayer"

    @classmethod
    def recognizes(cls, module: nn.Module) -> bool:
        table = getattr(getattr(module, "relative_position_bias", None), "relative_position_bias_table", None)
        return linears(module, "q_proj", "k_proj", "v_proj", "o_proj") and hasattr(module, "num_attention_heads") \
            and isinstance(table, torch.Tensor)

    @classmethod
    def split(cls, module: nn.Module, given: dict[str, Any], x: Optional[torch.Tensor]) -> Split:
        mask = hf_mask(given)  # here the shifted-window mask, (nW, T, T)
        q, k, v = (heads(proj(x), module.num_attention_heads) for proj in (module.q_proj, module.k_proj,
                                                                           module.v_proj))
        bias = plus(module.relative_position_bias(), None if mask is None else per_window(mask, x.shape[0]))
        return Split(q, k, v, float(module.scaling), lambda ctx: module.o_proj(merge(ctx)), bias)

    @classmethod
    def is_block(cls, parent: nn.Module) -> bool:
        return all(hasattr(parent, a) for a in ("window_size", "shift_size", "layernorm_before"))

    @classmethod
    def place(cls, block: nn.Module, args: tuple, kwargs: dict) -> tuple[Windows, torch.Tensor]:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("hidden_states")
        size = args[1] if len(args) > 1 else kwargs.get("input_dimensions")
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or size is None:
            raise Unsupported(f"its {cls.block} was not called on (B, H * W, C) tokens with their (H, W)")
        size = (int(size[0]), int(size[1]))
        window, shift = int(block.window_size), max(int(block.shift_size), 0)
        windows = Windows(size, padded(size, (window, window)), (window, window), (shift, shift))
        return windows, block.layernorm_before(x).view(x.shape[0], *size, x.shape[-1])
