"""One call to draw a method function's output in a notebook, with the report's colour scales (`show`)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..analyses.influence import colour_limits
from .colors import colorize, heat_colors, signed_colors

# matplotlib is imported inside show, where a figure is drawn: display_images works without it.

SCALES = ("shared", "per-image")


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").float().numpy()
    return np.asarray(x, dtype=np.float64)


def display_images(images: Any, mean: Optional[Sequence[float]] = None,
                   std: Optional[Sequence[float]] = None) -> np.ndarray:
    """Images -> display floats (N, H, W, 3) in [0, 1].

    ``images``: model inputs (N, C, H, W) with C = 1 or 3, undone with ``mean`` and ``std`` (x * std + mean) when
    given, else taken as values in [0, 1]; or display arrays (N, H, W, 3) / (N, H, W) in [0, 1]. Values outside
    [0, 1] without ``mean``/``std`` are a ValueError (normalized inputs cannot be shown as they are).
    """
    x = _numpy(images)
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        if mean is not None or std is not None:
            c = x.shape[1]
            m = np.asarray(mean if mean is not None else [0.0] * c, dtype=np.float64).reshape(1, -1, 1, 1)
            s = np.asarray(std if std is not None else [1.0] * c, dtype=np.float64).reshape(1, -1, 1, 1)
            x = x * s + m
        x = x.transpose(0, 2, 3, 1)
    elif x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images of shape {tuple(_numpy(images).shape)}: give (N, C, H, W) inputs or "
                         "(N, H, W, 3) pictures")
    if (mean is None and std is None) and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(f"images have values in [{x.min():.3g}, {x.max():.3g}]: pass the model's mean= and std= "
                         "to undo the normalization")
    x = np.clip(x, 0, 1)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def show(maps: Any, images: Any = None, *, style: str = "heat", scale: str = "shared", percentile: float = 99.0,
         mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
         titles: Optional[Sequence[str]] = None, cols: int = 8) -> Any:
    """Draw the output of a method function (``reportgen.methods``) as the report does; returns a matplotlib
    ``Figure`` (Jupyter displays it; ``fig.savefig(path)`` writes it). No pyplot state is touched.

    Args:
        maps: (N, H, W) maps (CAMs, saliency, occlusion drops) or (N, C, H, W) attributions, a tensor or array.
            ``style="heat"`` (the report's attribution maps): (N, C, H, W) is reduced to max |x| over channels (as
            the report reduces gradient, SmoothGrad, deconvnet, guided backprop), negative values count as 0, and
            the "inferno" map runs from 0 (black) to the colour limit (yellow). ``style="signed"`` (the report's
            activations and weights): blue (negative), white (0), red (positive), symmetric limit; (N, C, H, W)
            is summed over channels.
        images: the images the maps explain (see `display_images`); when their size matches the maps', each map
            is drawn over a dimmed grey copy of its image, and the images are shown in the row above.
        scale: "shared" (one colour limit for all maps, so that they compare: the report's shared scale) or
            "per-image" (each map its own limit).
        percentile: the heat limit is this percentile of the map values (100 = the maximum), as in the report, so
            that a few extreme pixels do not darken the rest; the signed limit is the same percentile of |x|.
        mean, std: the model's normalization, to show normalized ``images`` as they were.
        titles: one title per map (e.g. the class names).
        cols: maps per row.

    Returns:
        a ``matplotlib.figure.Figure``: per row of maps, the images (when given) above the maps, and one colour
        bar per figure (shared scale) with its limits.
    """
    from matplotlib.figure import Figure  # a Figure without pyplot: no global state, no GUI backend

    if style not in ("heat", "signed"):
        raise ValueError(f"style '{style}': give 'heat' or 'signed'")
    if scale not in SCALES:
        raise ValueError(f"scale '{scale}': give one of {', '.join(SCALES)}")
    m = _numpy(maps)
    if m.ndim == 4:
        m = np.abs(m).max(axis=1) if style == "heat" else m.sum(axis=1)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"maps of shape {tuple(_numpy(maps).shape)}: give (N, H, W) or (N, C, H, W)")
    n = m.shape[0]
    values = np.clip(m, 0, None) if style == "heat" else m
    # the report's rule (heat: of the values, negatives as 0; signed: of |x|), so the colours mean the same here
    shared, limits = colour_limits(np.abs(values), percentile)
    pictures = display_images(images, mean, std) if images is not None else None
    if pictures is not None and len(pictures) != n:
        raise ValueError(f"{n} maps but {len(pictures)} images: give one image per map")
    over = pictures is not None and pictures.shape[1:3] == values.shape[1:]
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    per_row = 2 if pictures is not None else 1
    fig = Figure(figsize=(1.9 * cols, 2.0 * rows * per_row + 0.6), dpi=100, layout="constrained")
    grid = fig.add_gridspec(rows * per_row + 1, cols, height_ratios=[1.0] * (rows * per_row) + [0.08])
    for k in range(n):
        r, c = divmod(k, cols)
        limit = shared if scale == "shared" else limits[k]
        if pictures is not None:
            ax = fig.add_subplot(grid[r * per_row, c])
            ax.imshow(pictures[k], interpolation="nearest")
            ax.set_axis_off()
            if titles is not None:
                ax.set_title(str(titles[k]), fontsize=8)
        ax = fig.add_subplot(grid[r * per_row + per_row - 1, c])
        rgb = colorize(values[k], style, limit, base=pictures[k] if over and style == "heat" else None)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_axis_off()
        if scale == "per-image" or (titles is not None and pictures is None):
            ax.set_title((f"{titles[k]}\n" if titles is not None and pictures is None else "")
                         + (f"0 to {limit:.3g}" if style == "heat" else f"±{limit:.3g}"), fontsize=7)
    if scale == "shared":
        _colour_bar(fig.add_subplot(grid[-1, :]), style, shared, percentile)
    else:
        fig.add_subplot(grid[-1, :]).set_axis_off()
    return fig


def _colour_bar(ax: Any, style: str, limit: float, percentile: float) -> None:
    lo = -limit if style == "signed" else 0.0
    xs = np.linspace(lo, limit, 256)[None, :]
    rgb = signed_colors(xs, limit) if style == "signed" else heat_colors(xs, limit)
    ax.imshow(rgb, aspect="auto", extent=(lo, limit, 0, 1))
    ax.set_yticks([])
    ticks = [lo, 0.0, limit] if style == "signed" else [0.0, limit]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:.3g}" for t in ticks], fontsize=7)
    pct = "the maximum" if percentile >= 100 else f"the {percentile:g}th percentile"
    ax.set_title(f"shared scale: {'|x| up to ' if style == 'signed' else '0 to '}{pct} of all maps", fontsize=7)
