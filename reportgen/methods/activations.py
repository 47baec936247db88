"""Weights and activations as numbers ready for imaging: filter tiles, channel picks, streaming population statistics.

Everything here returns arrays and numbers; the imaging module owns the colour maps. Signed quantities (weights,
activations that can be negative) are meant for a diverging map whose zero is white, symmetric around zero with the
limit from `signed_range`, so that equal colours mean equal magnitudes across a figure.

Filter pictures follow Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks" (2014),
https://arxiv.org/abs/1311.2901; the dead-unit count follows the ReLU sparsity discussion of Glorot et al. (2011).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "first_layer_tiles",
    "filter_grid",
    "signed_range",
    "pick_channels",
    "RunningStats",
    "StreamingTopK",
]


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def signed_range(x: Any) -> float:
    """Symmetric colour limit for a signed array: ``max |x|``, or 1.0 when ``x`` is empty or all zero.

    Plot with ``vmin=-limit, vmax=limit`` on a diverging map so that zero maps to white.
    """
    a = _as_numpy(x)
    if a.size == 0:
        return 1.0
    limit = float(np.abs(a).max())
    return limit if limit > 0 and np.isfinite(limit) else 1.0


def _symmetric(w: np.ndarray, shared_scale: bool) -> tuple[np.ndarray, np.ndarray]:
    """``w`` (O, ...) divided by its max |value| per filter (or one shared max), so values lie in [-1, 1]."""
    flat = np.abs(w.reshape(w.shape[0], -1))
    if shared_scale:
        scale = np.full(w.shape[0], flat.max() if flat.size else 0.0)
    else:
        scale = flat.max(axis=1) if flat.size else np.zeros(w.shape[0])
    # an all-zero filter stays zero instead of becoming NaN
    scale = np.where(scale > 0, scale, 1.0)
    return w / scale.reshape((-1,) + (1,) * (w.ndim - 1)), scale


def first_layer_tiles(weight: Any, *, shared_scale: bool = False) -> dict[str, np.ndarray]:
    """First-layer conv filters as image tiles.

    Args:
        weight: conv weight (O, I, kh, kw), tensor or array.
        shared_scale: divide every filter by the one largest |weight| of the layer (compares filter strengths)
            instead of by its own largest |weight| (the default: shows each filter's pattern at full contrast).

    Returns:
        a dict of float32 arrays:
        ``channels`` (O, I, kh, kw) in [-1, 1], zero weight = 0, for any I (one signed tile per input channel);
        ``scale`` (O,) the divisor used for each filter (1.0 for an all-zero filter);
        ``grey`` (O, kh, kw) in [-1, 1] when I == 1 (plot on a diverging map, zero = white);
        ``rgb`` (O, kh, kw, 3) in [0, 1] when I == 3, 0.5 = zero weight, channel order as the model's input.
    """
    w = _as_numpy(weight).astype(np.float64)
    if w.ndim != 4:
        raise ValueError(f"expected a conv weight (O, I, kh, kw), got shape {tuple(w.shape)}")
    normed, scale = _symmetric(w, shared_scale)
    out: dict[str, np.ndarray] = {"channels": normed.astype(np.float32), "scale": scale.astype(np.float32)}
    if w.shape[1] == 1:
        out["grey"] = normed[:, 0].astype(np.float32)
    elif w.shape[1] == 3:
        rgb = 0.5 + 0.5 * normed.transpose(0, 2, 3, 1)
        out["rgb"] = np.clip(rgb, 0.0, 1.0).astype(np.float32)
    return out


def filter_grid(weight: Any, n_in: int = 15, n_out: int = 20) -> tuple[np.ndarray, float]:
    """The first ``n_in`` input channels of the first ``n_out`` filters of a conv weight, for a filters x channels grid.

    Args:
        weight: conv weight (O, I, kh, kw).
        n_in, n_out: grid size; clipped to the I and O that exist.

    Returns:
        ``(grid, limit)``: grid (min(n_out, O), min(n_in, I), kh, kw) float32, the raw weights
        ``weight[:n_out, :n_in]`` unscaled; ``limit`` = `signed_range` of the grid, so the grid is plotted on
        [-limit, limit] with one shared scale (zero = white).
    """
    w = _as_numpy(weight)
    if w.ndim != 4:
        raise ValueError(f"expected a conv weight (O, I, kh, kw), got shape {tuple(w.shape)}")
    if n_in < 1 or n_out < 1:
        raise ValueError(f"n_in and n_out must be >= 1, got {n_in}, {n_out}")
    grid = np.array(w[:n_out, :n_in], dtype=np.float32)
    return grid, signed_range(grid)


def _channel_dim(acts: torch.Tensor) -> int:
    # (C, H, W) is one image; (N, C, H, W) and (N, F) carry a batch first
    if acts.ndim == 3:
        return 0
    if acts.ndim in (2, 4):
        return 1
    raise ValueError(f"expected acts (C, H, W), (N, C, H, W) or (N, F), got shape {tuple(acts.shape)}")


def pick_channels(
    acts: torch.Tensor,
    k: int,
    mode: str = "active",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Which ``k`` channels of a layer to show.

    Args:
        acts: (C, H, W), (N, C, H, W) or (N, F) activations.
        k: how many; clipped to C.
        mode: ``"active"``: the k channels with the largest mean activation, most active first, ties broken by the
            lower channel index; ``"seed"``: a random subset drawn with ``generator``, sorted ascending.
        generator: the randomness for ``"seed"``; None uses a fresh generator seeded with 0, so the default is
            reproducible too.

    Returns:
        LongTensor (min(k, C),) of channel indices.
    """
    dim = _channel_dim(acts)
    n_channels = acts.shape[dim]
    k = max(0, min(int(k), n_channels))
    if mode == "active":
        means = acts.detach().double().transpose(0, dim).reshape(n_channels, -1).mean(dim=1).cpu().numpy()
        # lexsort's last key is the primary one: descending mean, then ascending index
        order = np.lexsort((np.arange(n_channels), -means))
        return torch.as_tensor(order[:k], dtype=torch.long)
    if mode == "seed":
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        return torch.randperm(n_channels, generator=generator)[:k].sort().values
    raise ValueError(f"mode must be 'active' or 'seed', got {mode!r}")


class _UniformBins:
    """np.histogram's bin of each float64 value for nearly uniform edges (E,) (`RunningStats` keeps them so: a
    linspace, grown by halving and appending linspaces): bin i is [e_i, e_i+1), the last bin also holds its top edge.

    The bin is read from the position ``q = (v - e_0) / width * bins`` and only values whose ``q`` lies within the
    edges' own rounding (their distance to the exact uniform grid, plus the rounding of ``q``, in bins) of a whole
    number are tested against the edges (`torch.bucketize`): the same bins as comparing every value with the
    edges, about 3x faster than doing that, except where many values lie on an edge (a ReLU's zeros on the first
    one): there every value is tested, which is then faster than selecting them."""

    def __init__(self, edges: np.ndarray) -> None:
        self.edges = torch.from_numpy(edges)
        self.bins = len(edges) - 1
        self.start = float(edges[0])
        width = float(edges[-1]) - self.start
        self.scale = self.bins / width
        grid = self.start + np.arange(len(edges)) / self.scale
        off_grid = float(np.abs(edges - grid).max()) * self.scale
        # q's own rounding: a few ulps of the largest magnitude, in bins
        rounding = 8 * np.finfo(np.float64).eps * float(np.abs(edges).max()) * self.scale
        self.tol = off_grid + rounding + 1e-9
        self.exact = self.tol > 1e-3  # far from uniform (never in practice): every value is tested

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self.exact:
            return (torch.bucketize(v, self.edges, right=True) - 1).clamp_(max=self.bins - 1)
        q = (v - self.start).mul_(self.scale)
        whole = q.floor()
        idx = whole.to(torch.long).clamp_(0, self.bins - 1)
        frac = q.sub_(whole)
        near = (frac < self.tol) | (frac > 1.0 - self.tol)
        n_near = int(near.sum())
        if n_near * 8 > v.numel():
            # many values on an edge (a ReLU's zeros on the first edge): selecting them costs more than testing all
            return (torch.bucketize(v, self.edges, right=True) - 1).clamp_(max=self.bins - 1)
        if n_near:
            idx[near] = (torch.bucketize(v[near], self.edges, right=True) - 1).clamp_(max=self.bins - 1)
        return idx


class RunningStats:
    """Population statistics of one layer's activations, fed one batch at a time in constant memory.

    ``update(acts)`` takes (N, C, ...) or (N, F). A unit is a channel for maps (active if > 0 anywhere in its map, in
    any image) and a feature for (N, F). The histogram has ``bins`` bins whose edges are fixed by the first batch's
    range; when a later value falls outside, the range doubles (towards that side) by merging bins pairwise, so old
    counts stay exact and the final histogram counts every value: ``hist_counts`` equals
    ``np.histogram(all_values, bins=hist_edges)[0]``.

    The spread is merged batch by batch from (count, mean, M2) in float64 (Chan, Golub & LeVeque 1979) rather than
    from a raw sum of squares, which loses every digit when the mean is large against the spread.
    """

    def __init__(self, bins: int = 64, *, chunk: int = 1 << 16) -> None:
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.bins = bins
        # values converted to float64 at a time: 512 KiB stays in the cache across the passes over each slice
        # (measured 8x faster moments than 32 MiB slices on this machine)
        self.chunk = chunk
        self.count = 0
        self.total = 0.0  # float64 sum, for the mean
        self._mean = 0.0
        self._m2 = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.ever_active: np.ndarray | None = None
        self.hist_counts: np.ndarray | None = None
        self.hist_edges: np.ndarray | None = None
        # values exactly on the top edge sit in the closed last bin; they move up if the range grows upwards
        self._at_top = 0

    def update(self, acts: torch.Tensor) -> None:
        """Add a batch (N, C, ...) or (N, F) of activations (any float dtype, any device)."""
        if acts.ndim < 2:
            raise ValueError(f"expected a batch (N, C, ...) or (N, F), got shape {tuple(acts.shape)}")
        x = acts.detach()
        if x.numel() == 0:
            return
        active = (x.amax(dim=[d for d in range(x.ndim) if d != 1]) > 0).cpu().numpy()
        if self.ever_active is None:
            self.ever_active = active
        elif self.ever_active.shape != active.shape:
            raise ValueError(f"batch has {active.shape[0]} units, earlier batches had {self.ever_active.shape[0]}")
        else:
            self.ever_active = self.ever_active | active

        lo, hi = self.span(x)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("activations contain NaN or infinity")
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.cover(lo, hi)

        binner = _UniformBins(self.hist_edges)
        top = float(self.hist_edges[-1])
        # float64 in slices: exact sums and bin tests, without a float64 copy of a whole large batch
        for part in x.reshape(-1).split(self.chunk):
            v = part.to("cpu", torch.float64)
            n_b, mean_b = v.numel(), float(v.mean())
            m2_b = float(((v - mean_b) ** 2).sum())
            n = self.count + n_b
            delta = mean_b - self._mean
            self._m2 += m2_b + delta * delta * self.count * n_b / n
            self._mean += delta * n_b / n
            self.count = n
            self.total += float(v.sum())
            self.hist_counts += torch.bincount(binner(v), minlength=self.bins).numpy()
            self._at_top += int((v == top).sum())

    @staticmethod
    def span(acts: torch.Tensor) -> tuple[float, float]:
        """(min, max) of a batch of activations: what `cover` needs to know of it."""
        lo, hi = torch.aminmax(acts)  # one pass over the batch for both
        return float(lo), float(hi)

    def cover(self, lo: float, hi: float) -> None:
        """Fix (first call) or widen the histogram's range so that it holds [lo, hi], counting nothing: the first step
        of `update` with each batch's range. The ranks of a distributed pass call it with every batch's range in the
        global batch order, so that each holds the very edges that one process would hold, and `merge` then adds
        the counts bin by bin (`reportgen.distributed`)."""
        if self.hist_edges is None:
            if hi == lo:  # a constant first batch still needs a range of positive width
                lo, hi = lo - 0.5, hi + 0.5
            self.hist_edges = np.linspace(lo, hi, self.bins + 1)
            self.hist_counts = np.zeros(self.bins, dtype=np.int64)
        while hi > self.hist_edges[-1]:
            self._grow(up=True)
        while lo < self.hist_edges[0]:
            self._grow(up=False)

    def merge(self, other: "RunningStats") -> None:
        """Add the statistics of ``other`` (another share of the same stream) to these.

        Counts, min, max and dead units merge exactly; the histograms must have the same edges (both `cover`-ed with
        the same ranges in the same order), and then their counts add exactly. Mean and spread merge by Chan, Golub
        & LeVeque's parallel formula in float64: the same numbers as one stream up to rounding (a relative 1e-15).
        """
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {other.bins} and {self.bins} bins")
        if other.hist_edges is not None and self.hist_edges is not None and not np.array_equal(
                other.hist_edges, self.hist_edges):
            raise ValueError("cannot merge histograms with different edges: cover() both with the same ranges first")
        if other.count == 0:
            return
        if self.hist_edges is None:
            self.hist_edges = other.hist_edges.copy()
            self.hist_counts = np.zeros(self.bins, dtype=np.int64)
        n = self.count + other.count
        delta = other._mean - self._mean
        self._m2 += other._m2 + delta * delta * self.count * other.count / n
        self._mean += delta * other.count / n
        self.count = n
        self.total += other.total
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        if other.ever_active is not None:
            if self.ever_active is None:
                self.ever_active = other.ever_active.copy()
            elif self.ever_active.shape != other.ever_active.shape:
                raise ValueError(f"cannot merge {other.ever_active.shape[0]} units into {self.ever_active.shape[0]}")
            else:
                self.ever_active = self.ever_active | other.ever_active
        self.hist_counts = self.hist_counts + other.hist_counts
        self._at_top += other._at_top

    def _grow(self, up: bool) -> None:
        edges, counts, half = self.hist_edges, self.hist_counts, self.bins // 2
        width = edges[-1] - edges[0]
        merged_edges = edges[::2]  # a subset of the old edges: every old bin lies inside one merged bin
        merged = counts.reshape(half, 2).sum(axis=1)
        empty = np.zeros(half, dtype=np.int64)
        if up:
            new = np.linspace(edges[-1], edges[-1] + width, half + 1)[1:]
            self.hist_edges = np.concatenate([merged_edges, new])
            self.hist_counts = np.concatenate([merged, empty])
            # np.histogram closes only the last bin: values equal to the old top now belong to the bin above it
            self.hist_counts[half - 1] -= self._at_top
            self.hist_counts[half] += self._at_top
            self._at_top = 0
        else:
            new = np.linspace(edges[0] - width, edges[0], half + 1)[:-1]
            self.hist_edges = np.concatenate([new, merged_edges])
            self.hist_counts = np.concatenate([empty, merged])

    def result(self) -> dict[str, Any]:
        """``mean``, ``std`` (population, ddof=0), ``min``, ``max``, ``count`` (values seen), ``dead_fraction``
        (units never > 0), ``active_units`` (U,) bool, ``hist_counts`` (bins,) int64, ``hist_edges`` (bins+1,)."""
        if self.count == 0:
            raise ValueError("RunningStats.result() before any non-empty update()")
        assert self.ever_active is not None and self.hist_counts is not None and self.hist_edges is not None
        return {
            "mean": self.total / self.count,
            "std": float(np.sqrt(max(self._m2 / self.count, 0.0))),
            "min": self.min,
            "max": self.max,
            "count": self.count,
            "dead_fraction": float(1.0 - self.ever_active.mean()),
            "active_units": self.ever_active.copy(),
            "hist_counts": self.hist_counts.copy(),
            "hist_edges": self.hist_edges.copy(),
        }


class StreamingTopK:
    """The ``n`` images that excite each channel most, over a stream of batches, in constant memory.

    An image's score for a channel is the maximum of that channel's map (the feature itself for (N, F) outputs);
    ties go to the lower global image index, so the result does not depend on how the stream was cut into batches.
    Follows the "top-9 patches" of Zeiler & Fergus (2014), https://arxiv.org/abs/1311.2901.
    """

    def __init__(self, n: int = 9) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n
        self.values: np.ndarray | None = None  # (C, <=n) float64, kept sorted
        self.indices: np.ndarray | None = None  # (C, <=n) int64
        self.positions: np.ndarray | None = None  # (C, <=n, 2) int64, (y, x)

    def update(self, acts: torch.Tensor, indices: Any) -> None:
        """Add a batch: ``acts`` (B, C, H, W) or (B, F); ``indices`` (B,) the images' global indices."""
        if acts.ndim not in (2, 4):
            raise ValueError(f"expected acts (B, C, H, W) or (B, F), got shape {tuple(acts.shape)}")
        idx = _as_numpy(indices).astype(np.int64).reshape(-1)
        if idx.shape[0] != acts.shape[0]:
            raise ValueError(f"{acts.shape[0]} images but {idx.shape[0]} indices")
        if acts.shape[0] == 0:
            return
        a = acts.detach().cpu()
        batch, channels = a.shape[:2]
        if a.ndim == 4:
            width = a.shape[3]
            # argmax returns the first maximum in row-major order: a deterministic position
            vals, flat_pos = a.reshape(batch, channels, -1).max(dim=2)
            pos = np.stack([(flat_pos // width).numpy(), (flat_pos % width).numpy()], axis=-1)
        else:
            vals = a
            pos = np.zeros((batch, channels, 2), dtype=np.int64)  # a feature is a 1x1 map
        new_v = vals.double().numpy().T  # (C, B)
        new_i = np.broadcast_to(idx, (channels, batch))
        new_p = pos.transpose(1, 0, 2)  # (C, B, 2)
        if self.values is None:
            all_v, all_i, all_p = new_v, new_i, new_p
        else:
            if self.values.shape[0] != channels:
                raise ValueError(f"batch has {channels} channels, earlier batches had {self.values.shape[0]}")
            all_v = np.concatenate([self.values, new_v], axis=1)
            all_i = np.concatenate([self.indices, new_i], axis=1)
            all_p = np.concatenate([self.positions, new_p], axis=1)
        # per row: descending value, then ascending image index
        order = np.lexsort((all_i, -all_v), axis=1)[:, : self.n]
        self.values = np.take_along_axis(all_v, order, axis=1)
        self.indices = np.take_along_axis(all_i, order, axis=1)
        self.positions = np.take_along_axis(all_p, order[..., None], axis=1)

    def merge(self, other: "StreamingTopK") -> None:
        """Add the top images of ``other`` (another share of the same stream, other images): the same result as one
        stream of both, exactly (merged by value, ties to the lower image index)."""
        if other.values is None:
            return
        if self.values is None:
            self.values, self.indices, self.positions = (other.values.copy(), other.indices.copy(),
                                                         other.positions.copy())
            return
        if self.values.shape[0] != other.values.shape[0]:
            raise ValueError(f"cannot merge {other.values.shape[0]} channels into {self.values.shape[0]}")
        all_v = np.concatenate([self.values, other.values], axis=1)
        all_i = np.concatenate([self.indices, other.indices], axis=1)
        all_p = np.concatenate([self.positions, other.positions], axis=1)
        order = np.lexsort((all_i, -all_v), axis=1)[:, : self.n]
        self.values = np.take_along_axis(all_v, order, axis=1)
        self.indices = np.take_along_axis(all_i, order, axis=1)
        self.positions = np.take_along_axis(all_p, order[..., None], axis=1)

    def result(self) -> dict[str, np.ndarray]:
        """``values`` (C, n) float64, ``indices`` (C, n) int64, ``positions`` (C, n, 2) int64 as (y, x) of the first
        maximum in row-major order ((0, 0) for (N, F) outputs); sorted by descending value. n is smaller when fewer
        images were seen."""
        if self.values is None:
            raise ValueError("StreamingTopK.result() before any non-empty update()")
        return {"values": self.values.copy(), "indices": self.indices.copy(), "positions": self.positions.copy()}
