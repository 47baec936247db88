"""Layer outputs as spatial maps: token sequences and channels-last maps read as (N, C, h, w).

A vision transformer's block outputs tokens (N, L, D): a few prefix tokens (the class token, register or
distillation tokens) and then one token per image patch, row by row (Dosovitskiy et al., An Image is Worth 16x16
Words, ICLR 2021, https://arxiv.org/abs/2010.11929). Swin and timm's ConvNeXt/Swin stages output channels-last
maps (N, H, W, C). Every map analysis (activation maps, distributions, top images, Grad-CAM, channel images) reads
such a layer through its `View` as a (N, D, h, w) map of its patch tokens, the prefix tokens set aside. The view is
inferred from the output's shape and the input's size alone, so a plain function on tensors and the build's layer
table always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

# Prefix tokens tried, fewest first: a class token, plus up to 8 register / distillation tokens (DeiT has 2,
# "Vision Transformers Need Registers" uses 4).
MAX_PREFIX = 9
# Fewer patches than a 4x4 grid are not read as tokens: a short sequence would otherwise tile almost any input
# (7 = 3 + 2x2 patches of 112 px at 224 px).
MIN_PATCHES = 16


@dataclass(frozen=True)
class View:
    """How one layer's output (N, ...) is read.

    ``kind``: "map" (C, H, W), "tokens" (L, D) = ``prefix`` tokens then a ``grid`` (h, w) of patch tokens row by
    row, "channels-last" (H, W, C), "vector" (F,) or "other". ``stride``: input pixels per map cell (the patch
    size of a token layer), None when it is not an integer.
    """

    kind: str
    grid: Optional[tuple[int, int]] = None
    prefix: int = 0
    stride: Optional[int] = None

    @property
    def spatial(self) -> bool:
        return self.kind in ("map", "tokens", "channels-last")

    def to_map(self, out: Any) -> Any:
        """(N, ...) output -> (N, C, h, w) map (a view of the same numbers, differentiable); unchanged for "map"."""
        if self.kind == "tokens":
            n, _, d = out.shape
            return out[:, self.prefix:].reshape(n, *self.grid, d).permute(0, 3, 1, 2)
        if self.kind == "channels-last":
            return out.permute(0, 3, 1, 2)
        return out

    def describe(self) -> str:
        """A short phrase for the layer table, e.g. "tokens: class token + 14x14 patches of 16 px"."""
        if self.kind == "tokens":
            patches = f"{self.grid[0]}x{self.grid[1]} patches" + (f" of {self.stride} px" if self.stride else "")
            prefix = {0: "", 1: "class token + "}.get(self.prefix, f"{self.prefix} prefix tokens + ")
            return f"tokens: {prefix}{patches}"
        if self.kind == "channels-last":
            return f"channels-last {self.grid[0]}x{self.grid[1]} map"
        return {"map": "feature map", "vector": "vector"}.get(self.kind, "")


def probe_views(acts: dict, input_shape: tuple) -> dict[str, View]:
    """{layer: `View`} of a recorded probe pass: ``acts`` maps a name to its output (N, ...), ``input_shape`` is one
    input without the batch dimension ((C, H, W) for images; other shapes know maps only)."""
    size = tuple(input_shape[-2:]) if len(input_shape) == 3 else None
    return {name: infer_view(tuple(a.shape[1:]), size) for name, a in acts.items()}


def _stride(size: tuple[int, int], grid: tuple[int, int]) -> Optional[int]:
    """The common integer stride of a grid over the input, or None."""
    (h_in, w_in), (h, w) = size, grid
    if h < 1 or w < 1 or h_in % h or w_in % w or h_in // h != w_in // w:
        return None
    return h_in // h


def _same_aspect(size: tuple[int, int], grid: tuple[int, int]) -> bool:
    """The grid has the input's aspect ratio up to one cell of rounding (a conv map of any padding)."""
    (h_in, w_in), (h, w) = size, grid
    return abs(h * w_in - w * h_in) <= max(h_in, w_in)


def infer_view(shape: tuple, input_size: Optional[tuple[int, int]], min_patches: int = MIN_PATCHES) -> View:
    """The `View` of an output of ``shape`` (without the batch dimension) for an input of ``input_size`` (H, W).

    (C, H, W) is a map unless only the channels-last reading fits the input (its first two sizes tile the input
    with one integer stride and the last two do not have the input's aspect ratio: Swin's (56, 56, 96) at 224 px).
    (L, D) is tokens when, for the fewest prefix tokens p < `MAX_PREFIX`, L - p patches tile the input with one
    integer stride (197 = 1 + 14 x 14 at 224 px with 16 px patches), with at least ``min_patches`` patches (lower
    it only for outputs known to be tokens, such as an attention module's). Without an input size only maps are
    known.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return View("vector")
    if input_size is None:
        return View("map", shape[1:]) if len(shape) == 3 else View("other")
    if len(shape) == 3:
        c, h, w = shape
        if not _same_aspect(input_size, (h, w)):
            stride = _stride(input_size, (c, h))
            if stride is not None:
                return View("channels-last", (c, h), stride=stride)
        return View("map", (h, w), stride=_stride(input_size, (h, w)))
    if len(shape) == 2:
        length = shape[0]
        h_in, w_in = input_size
        for prefix in range(min(MAX_PREFIX, length - min_patches + 1)):
            n = length - prefix
            # n patches of a square stride p: (h_in / p) * (w_in / p) = n
            p2 = h_in * w_in / n
            p = round(p2 ** 0.5)
            if p >= 1 and p * p * n == h_in * w_in and h_in % p == 0 and w_in % p == 0:
                return View("tokens", (h_in // p, w_in // p), prefix=prefix, stride=p)
    return View("other")


def token_grid(length: int, input_size: Optional[tuple[int, int]]) -> Optional[tuple[int, tuple[int, int]]]:
    """(prefix tokens, patch grid (gh, gw)) of a sequence of ``length`` tokens known to be patch tokens (an attention
    module's) for an input of ``input_size`` (H, W), or None when they form no grid of the input.

    First as `infer_view` (patches of one integer stride tile the input, however few); else the fewest prefix tokens
    that leave a grid of exactly the input's aspect ratio: PiT's 27 x 27 tokens of a 224-px image (overlapping 16-px
    patches at stride 8), CrossViT's 14 x 14 of a 240-px image resized to 224."""
    view = infer_view((length, 1), input_size, min_patches=1)
    if view.kind == "tokens":
        return view.prefix, view.grid
    if input_size is not None:
        h_in, w_in = input_size
        for prefix in range(min(MAX_PREFIX, length)):
            n = length - prefix
            gh = max(1, round(math.sqrt(n * h_in / w_in)))
            if n % gh == 0 and gh * w_in == (n // gh) * h_in:
                return prefix, (gh, n // gh)
    return None
