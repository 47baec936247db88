"""Hugging Face attention with ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj`` projections (transformers 5:
ViT, DeiT, BEiT, DINOv2...). Relative position biases (BEiT) and padding masks arrive as an additive
``attention_mask``; a head mask is refused."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .base import AttentionFamily, Split, Unsupported, additive, heads, linears, merge


def hf_mask(given: dict[str, Any]) -> Optional[torch.Tensor]:
    """The additive ``attention_mask`` of a Hugging Face attention call (None when there is none); `Unsupported`
    for a head mask."""
    if given.get("head_mask") is not None:
        raise Unsupported("attention with a head mask")
    return additive(given.get("attention_mask"))


class HuggingFaceViT(AttentionFamily):
    name = "hf-vit"

    @classmethod
    def recognizes(cls, module: nn.Module) -> bool:
        return linears(module, "q_proj", "k_proj", "v_proj", "o_proj") and hasattr(module, "num_attention_heads")

    @classmethod
    def split(cls, module: nn.Module, given: dict[str, Any], x: Optional[torch.Tensor]) -> Split:
        mask = hf_mask(given)
        q, k, v = (heads(proj(x), module.num_attention_heads) for proj in (module.q_proj, module.k_proj,
                                                                           module.v_proj))
        scale = float(getattr(module, "scaling", q.shape[-1] ** -0.5))
        return Split(q, k, v, scale, lambda ctx: module.o_proj(merge(ctx)), mask)
