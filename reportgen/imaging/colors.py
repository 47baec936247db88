"""The report's colour scales: values -> RGB floats in [0, 1] (signed: blue - white - red; heat: "inferno").

The conventions are listed in `reportgen.imaging`, which re-exports these functions; `reportgen.imaging.notebook`
draws with them too, so they live in a module of their own that imports nothing from the package.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

# matplotlib is imported inside heat_colors, once, for the colour map's table: `import reportgen.imaging` loads none.


def color_limit(x: np.ndarray, style: str, vmax: Optional[float] = None) -> float:
    """The value drawn at the end of the colour scale: ``vmax`` when given (finite and > 0), else max |x| ("signed")
    or max x ("heat") over the finite values; 1 when that is not above 0 (an all-zero map)."""
    if vmax and np.isfinite(vmax) and vmax > 0:
        return float(vmax)
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    lim = float((np.abs(x) if style == "signed" else x).max()) if x.size else 1.0
    return lim if lim > 0 else 1.0


def signed_colors(x: np.ndarray, vmax: Optional[float] = None) -> np.ndarray:
    """(H, W) values -> (H, W, 3) floats in [0, 1]: blue for -vmax, white for 0, red for +vmax.

    ``vmax`` defaults to max |x| over the finite values (1 when x is all zero), so zero always lands exactly on
    white. Non-finite values (NaN, infinity: a diverged model) are drawn mid grey, a colour the scale never takes.
    """
    x = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(x)
    lim = color_limit(x, "signed", vmax)
    x = np.where(bad, 0.0, x)
    t = np.clip(x / lim, -1.0, 1.0)[..., None]
    white = np.ones(3)
    red = np.array([0.80, 0.10, 0.10])
    blue = np.array([0.10, 0.25, 0.80])
    rgb = np.where(t >= 0, white + t * (red - white), white + (-t) * (blue - white))
    return np.where(bad[..., None], 0.5, rgb)


_HEAT_LUT: Optional[np.ndarray] = None


def heat_colors(x: np.ndarray, vmax: Optional[float] = None) -> np.ndarray:
    """(H, W) non-negative values -> (H, W, 3) in [0, 1] with the "inferno" map scaled to [0, vmax].

    ``vmax`` defaults to the largest finite value (1 when there is none above 0). Non-finite values are drawn mid
    grey, a colour inferno never takes."""
    global _HEAT_LUT
    if _HEAT_LUT is None:
        import matplotlib

        _HEAT_LUT = matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3]
    x = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(x)
    lim = color_limit(x, "heat", vmax)
    x = np.where(bad, 0.0, x)
    idx = np.clip(np.round(np.clip(x, 0, None) / lim * 255), 0, 255).astype(np.int64)
    return np.where(bad[..., None], 0.5, _HEAT_LUT[idx])


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) in [0, 1] -> (H, W, 3) float."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.clip(arr, 0, 1)


def colorize(arr: np.ndarray, style: str, vmax: Optional[float] = None, base: Any = None) -> np.ndarray:
    """Any item array -> (H, W, 3) floats in [0, 1] by its style."""
    if style == "rgb":
        return to_rgb(arr)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if style == "signed":
        return signed_colors(arr, vmax)
    if style == "heat":
        rgb = heat_colors(arr, vmax)
        if base is not None:
            # the heat map over a dimmed grey copy of the image keeps both readable
            grey = to_rgb(base).mean(axis=-1, keepdims=True)
            rgb = 0.55 * rgb + 0.45 * grey
        return rgb
    raise ValueError(f"unknown picture style '{style}'")


def to_uint8(rgb: Any) -> np.ndarray:
    """Values in [0, 1] (any shape) as bytes: x 255, rounded, clipped."""
    return np.clip(np.round(np.asarray(rgb) * 255.0), 0, 255).astype(np.uint8)
