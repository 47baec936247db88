"""timm's ViT ``Attention`` (``timm.layers.Attention``: ViT, DeiT, DINOv2, EVA-free ViTs...): a fused ``qkv``
projection, optional ``q_norm`` / ``k_norm``, an optional head gate and output norm, an optional mask. Its
windowed and talking-heads relatives have the same projections but no ``q_norm`` / ``k_norm``, and compute
otherwise: they are not this family."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .base import AttentionFamily, Split, Unsupported, additive, fused_qkv, linears, merge


class TimmViT(AttentionFamily):
    name = "timm-vit"

    @classmethod
    def recognizes(cls, module: nn.Module) -> bool:
        return linears(module, "qkv", "proj") and all(hasattr(module, a) for a in ("num_heads", "scale", "q_norm",
                                                                                    "k_norm"))

    @classmethod
    def split(cls, module: nn.Module, given: dict[str, Any], x: Optional[torch.Tensor]) -> Split:
        if given.get("is_causal"):
            raise Unsupported("causal attention")
        q, k, v = fused_qkv(module.qkv(x), module.num_heads)
        q, k = module.q_norm(q), module.k_norm(k)
        gate = module.gate(x).sigmoid() if getattr(module, "gate", None) is not None else None

        def finish(ctx: torch.Tensor) -> torch.Tensor:
            out = merge(ctx)
            out = module.norm(out) if hasattr(module, "norm") else out
            out = out * gate if gate is not None else out
            return module.proj(out)

        return Split(q, k, v, float(module.scale), finish, additive(given.get("attn_mask")))
