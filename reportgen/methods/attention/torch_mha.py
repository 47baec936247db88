"""``torch.nn.MultiheadAttention`` (torchvision's ViT, and any model built on it), without masks or extra key /
value biases. Its fast path (``need_weights=False``) never materializes the weights."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import AttentionFamily, Split, Unsupported, heads, merge


class TorchMultiheadAttention(AttentionFamily):
    name = "torch-mha"

    @classmethod
    def recognizes(cls, module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention)

    @classmethod
    def split(cls, module: nn.Module, given: dict[str, Any], x: Optional[torch.Tensor]) -> Split:
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
        q, k, v = (heads(F.linear(t, w, b), h) for t, w, b in ((q_in, w_q, b_q), (k_in, w_k, b_k), (v_in, w_v, b_v)))

        def finish(ctx: torch.Tensor) -> torch.Tensor:
            out = m.out_proj(merge(ctx))
            return out if m.batch_first else out.transpose(0, 1)

        return Split(q, k, v, (e // h) ** -0.5, finish, None)
