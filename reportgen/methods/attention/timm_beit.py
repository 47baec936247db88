"""timm's BEiT ``Attention`` (``timm.models.beit``): a fused ``qkv`` projection whose q and v biases are separate
parameters (``q_bias``, ``v_bias``; k has none), and a relative position bias added to the logits, its own and the
one the model shares between layers (``shared_rel_pos_bias``). It has every attribute timm's Swin
``WindowAttention`` has, so the registry tries it before that family."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import AttentionFamily, Split, fused_qkv, linears, merge, plus


class TimmBEiT(AttentionFamily):
    name = "timm-beit"

    @classmethod
    def recognizes(cls, module: nn.Module) -> bool:
        return linears(module, "qkv", "proj") and all(hasattr(module, a) for a in (
            "num_heads", "scale", "q_bias", "v_bias", "relative_position_bias_table", "_get_rel_pos_bias"))

    @classmethod
    def split(cls, module: nn.Module, given: dict[str, Any], x: Optional[torch.Tensor]) -> Split:
        bias = None
        if module.q_bias is not None:
            k_bias = module.k_bias if module.k_bias is not None else torch.zeros_like(module.v_bias)
            bias = torch.cat((module.q_bias, k_bias, module.v_bias))
        q, k, v = fused_qkv(F.linear(x, module.qkv.weight, bias), module.num_heads)
        own = module._get_rel_pos_bias() if module.relative_position_bias_table is not None else None
        return Split(q, k, v, float(module.scale), lambda ctx: module.proj(merge(ctx)),
                     plus(own, given.get("shared_rel_pos_bias")))
