"""Hugging Face attention with ``query`` / ``key`` / ``value`` projections (older transformers ViTs, and
Data2Vec-Vision's and BEiT's self-attention where they keep that form), with BEiT's relative position biases: the
module's own (computed from the input's resolution) and the one all layers share (``relative_position_bias``).
The output projection is outside the module."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .base import AttentionFamily, Split, heads, linears, merge, plus
from .hf_vit import hf_mask


def position_bias(module: nn.Module, named: dict[str, Any], x: torch.Tensor) -> Optional[torch.Tensor]:
    """The relative position bias BEiT / Data2Vec-Vision attention adds to its scaled logits: the module's own
    (from the input's resolution) plus the one shared by all layers, when given; None for others."""
    bias = None
    if getattr(module, "has_relative_position_bias", False):
        height, width = named["resolution"]
        patch = module.config.patch_size
        bias = module.relative_position_bias((height // patch, width // patch),
                                             named.get("interpolate_pos_encoding", False), dim_size=x.shape[1])
    shared = named.get("relative_position_bias")
    return plus(bias, shared if isinstance(shared, torch.Tensor) else None)


class HuggingFaceLegacy(AttentionFamily):
    name = "hf-legacy"

    @classmethod
    def recognizes(cls, module: nn.Module) -> bool:
        return linears(module, "query", "key", "value") and all(hasattr(module, a) for a in (
            "num_attention_heads", "attention_head_size"))

    @classmethod
    def split(cls, module: nn.Module, given: dict[str, Any], x: Optional[torch.Tensor]) -> Split:
        mask = hf_mask(given)
        q, k, v = (heads(proj(x), module.num_attention_heads) for proj in (module.query, module.key, module.value))
        return Split(q, k, v, module.attention_head_size ** -0.5, merge, plus(position_bias(module, given, x), mask))
