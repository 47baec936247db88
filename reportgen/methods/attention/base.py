"""What every attention family adapter is made of: the contract (`AttentionFamily`), what it returns (`Split`,
`Recovered`), the window layout of shifted-window attention (`Windows`) and the small tensor helpers the adapters
share. Nothing here knows a particular library; each family's knowledge lives in its own module of this package.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn


class Unsupported(ValueError):
    """This module's attention cannot be recomputed exactly (an unknown kind, a mask, extra key/value biases)."""


class Split(NamedTuple):
    """One call of an attention module taken apart: ``q``, ``k``, ``v`` (N, h, L, d), the logit ``scale``,
    ``finish(A @ v)`` -> the module's (first) output, and the ``bias`` added to the scaled logits before the
    softmax (relative position bias, masks; None when there is none)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    finish: Callable[[torch.Tensor], torch.Tensor]
    bias: Optional[torch.Tensor]


class Recovered(NamedTuple):
    """``weights`` (N, h, L, L), rows summing to 1; the module's ``output`` recomputed from them; ``output_of(A)``,
    which recomputes the output from any weights (differentiable in ``A``); and for a shifted-window layer whose
    module cuts its own windows (torchvision) the layout of its (N * windows, h, T, T) weights, else None."""

    weights: torch.Tensor
    output: torch.Tensor
    output_of: Callable[[torch.Tensor], torch.Tensor]
    windows: Optional["Windows"]


class AttentionFamily:
    """How one family of attention modules is read. A subclass says how it recognizes its modules
    (`recognizes`: the most specific test it can, on types and attributes) and how one call is taken apart
    (`split`), or, when the module computes its output in a way `split` cannot express, recomputes it whole
    (`recover`). A windowed family (``windowed``) receives windows its block cut from the map and says where they
    sit (`is_block`, `place`). Register it in `reportgen.methods.attention.registry.FAMILIES`, where the order of
    recognition is written down, and give it a known-answer test in ``tests/test_attention_families.py``."""

    name: ClassVar[str] = ""
    windowed: ClassVar[bool] = False
    block: ClassVar[str] = ""  # what the block that cuts the windows is called, for messages (windowed families)

    @classmethod
    def recognizes(cls, module: nn.Module) -> bool:
        raise NotImplementedError  # pragma: no cover - interface

    @classmethod
    def split(cls, module: nn.Module, given: dict[str, Any], x: Optional[torch.Tensor]) -> Split:
        """``given``: the call's arguments by name (`named_arguments`); ``x``: its token input (``x`` or
        ``hidden_states``, else the first positional argument)."""
        raise NotImplementedError  # pragma: no cover - interface

    @classmethod
    def recover(cls, module: nn.Module, args: tuple, kwargs: dict) -> Recovered:
        """``softmax(q k^T * scale + bias)`` per head and the output ``finish(A v)``, from `split`."""
        given = named_arguments(module, args, kwargs)
        x = given.get("x", given.get("hidden_states", args[0] if args else None))
        q, k, v, scale, finish, bias = cls.split(module, given, x)
        logits = (q * scale) @ k.transpose(-2, -1)
        weights = torch.softmax(logits if bias is None else logits + bias, dim=-1)

        def output_of(a: torch.Tensor) -> torch.Tensor:
            return finish(a.to(v.dtype) @ v)

        return Recovered(weights, output_of(weights), output_of, None)

    @classmethod
    def is_block(cls, parent: nn.Module) -> bool:
        """Whether ``parent`` (the module holding the attention module) is the block that cuts its windows."""
        return False

    @classmethod
    def place(cls, block: nn.Module, args: tuple, kwargs: dict) -> tuple["Windows", torch.Tensor]:
        """(the window layout, the (B, H, W, C) map the block cuts) of one call of ``block`` (its arguments);
        `Unsupported` when the call is not one this family knows how to read."""
        raise Unsupported(f"its windows' places are not known to the {cls.name} reader")


def linears(module: nn.Module, *names: str) -> bool:
    """Whether ``module`` has an ``nn.Linear`` under each of ``names``."""
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in names)


def named_arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
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


def heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(N, L, h*d) -> (N, h, L, d)."""
    n, length, e = x.shape
    return x.reshape(n, length, h, e // h).transpose(1, 2)


def merge(x: torch.Tensor) -> torch.Tensor:
    """(N, h, L, d) -> (N, L, h*d)."""
    n, h, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, h * d)


def fused_qkv(qkv: torch.Tensor, h: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fused projection's output (N, L, 3 * h * d), q then k then v, as q, k, v, each (N, h, L, d)."""
    n, length, _ = qkv.shape
    return qkv.reshape(n, length, 3, h, -1).permute(2, 0, 3, 1, 4).unbind(0)


def plus(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``a + b`` of two logit biases, either of which may be absent (None)."""
    return b if a is None else a if b is None else a + b


def additive(mask: Any) -> Optional[torch.Tensor]:
    """An attention mask as what it adds to the scaled logits: a boolean one (True = may attend, the
    ``scaled_dot_product_attention`` convention) as 0 / -inf, a float one as it is."""
    if mask is None or not isinstance(mask, torch.Tensor):
        return None
    return torch.where(mask, 0.0, float("-inf")) if mask.dtype == torch.bool else mask


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


def padded(size: tuple[int, int], window: tuple[int, int]) -> tuple[int, int]:
    """``size`` (H, W) rounded up to whole windows."""
    return tuple(n + (k - n % k) % k for n, k in zip(size, window))  # type: ignore[return-value]


def per_window(mask: torch.Tensor, n: int) -> torch.Tensor:
    """A shifted-window mask (nW, T, T), the same for every image, as (n, 1, T, T) for n = B * nW windows."""
    windows, length = mask.shape[0], mask.shape[-1]
    return mask[None, :, None].expand(n // windows, -1, -1, -1, -1).reshape(n, 1, length, length)
