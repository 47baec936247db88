"""torchvision's Swin attention, ``ShiftedWindowAttention`` and ``ShiftedWindowAttentionV2`` (cosine logits with a
learned temperature, no key bias). The module cuts its own windows (it pads the (H, W) map, then shifts it), so
the whole computation is redone here step by step, up to the weights and back to its output."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import AttentionFamily, Recovered, Windows, fused_qkv, merge, padded, per_window


class TorchvisionSwin(AttentionFamily):
    name = "torchvision-swin"

    @classmethod
    def recognizes(cls, module: nn.Module) -> bool:
        return type(module).__name__ in ("ShiftedWindowAttention", "ShiftedWindowAttentionV2") \
            and isinstance(getattr(module, "qkv", None), nn.Linear) and hasattr(module, "get_relative_position_bias")

    @classmethod
    def recover(cls, module: nn.Module, args: tuple, kwargs: dict) -> Recovered:
        x = args[0] if args else kwargs["x"]
        _, h_in, w_in, c = x.shape
        window, shift = tuple(module.window_size), tuple(module.shift_size)
        logit_scale = getattr(module, "logit_scale", None)  # Swin v2: cosine attention with a learned temperature
        ph, pw = padded((h_in, w_in), window)
        shift = (0 if window[0] >= ph else shift[0], 0 if window[1] >= pw else shift[1])
        layout = Windows((h_in, w_in), (ph, pw), window, shift)
        xw = layout.cut(x)
        bias = module.qkv.bias
        if logit_scale is not None and bias is not None:  # Swin v2 has no key bias: torchvision zeroes that third
            bias = torch.cat([bias[: c], torch.zeros_like(bias[c: 2 * c]), bias[2 * c:]])
        q, k, v = fused_qkv(F.linear(xw, module.qkv.weight, bias), module.num_heads)
        if logit_scale is not None:
            scale = torch.clamp(logit_scale, max=math.log(100.0)).exp()
            logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * scale
        else:
            logits = (q * (c // module.num_heads) ** -0.5) @ k.transpose(-2, -1)
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
            logits = logits + per_window(mask, xw.shape[0])
        weights = torch.softmax(logits, dim=-1)

        def output_of(a: torch.Tensor) -> torch.Tensor:
            return layout.merge(module.proj(merge(a.to(v.dtype) @ v)))

        return Recovered(weights, output_of(weights), output_of, layout)
