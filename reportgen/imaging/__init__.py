"""The one place where arrays become PNG files: colour maps, overlays, grids, charts.

`render_item` takes an item of `reportgen.artifacts` and writes its file(s) through an `ArtifactWriter`, returning
the manifest entry that templates lay out. Charts are drawn by plot kinds registered with `plot_kind` (one function
per kind, data dict in, matplotlib figure out); modules in this package register them on import.

Colour conventions, the same on every page:
- signed values (weights, activations): blue (negative) - white (zero) - red (positive), symmetric limit;
- non-negative maps (saliency, CAMs, occlusion drops): matplotlib's "inferno", 0 = black.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Optional

import numpy as np

from ..artifacts import ArtifactWriter, Grid, Item, Picture, Plot, Table, slug
from .colors import color_limit, colorize, heat_colors, signed_colors, to_rgb  # re-exported: imaging.colorize etc.

# PIL, matplotlib and .notebook (show's implementation; it reads the report's colour limits from
# reportgen.analyses.influence) are imported inside functions: `import reportgen.imaging` loads none of them.

MIN_SIDE = 160  # small images (8x8 filters, 28x28 digits) are enlarged with nearest-neighbour to at least this
THUMB_SIDE = 160
PLOT_KINDS: dict[str, Callable[[dict], Any]] = {}


def plot_kind(name: str) -> Callable:
    """Register a chart function ``f(data: dict) -> matplotlib Figure`` (or a list of RGB uint8 frames -> GIF)."""

    def register(fn: Callable) -> Callable:
        PLOT_KINDS[name] = fn
        return fn

    return register


def show(maps: Any, images: Any = None, **options: Any) -> Any:
    """Draw a method function's output with the report's colour scales; a matplotlib Figure
    (`reportgen.imaging.notebook.show` documents the options)."""
    from .notebook import show as draw

    return draw(maps, images, **options)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(rgb) * 255.0), 0, 255).astype(np.uint8)


def enlarge(img: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor so the shorter side reaches ``min_side``."""
    h, w = img.shape[:2]
    factor = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if factor == 1:
        return img
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def tile_grid(tiles: np.ndarray, cols: int, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """(n, h, w, 3) floats -> one (rows*(h+pad)-pad, cols*(w+pad)-pad, 3) picture; padding drawn in ``pad_value``."""
    n, h, w = tiles.shape[:3]
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), pad_value, dtype=np.float64)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = tiles[i]
    return out


def grid_rgb(item: Grid) -> np.ndarray:
    tiles = np.asarray(item.tiles, dtype=np.float64)
    if item.style == "rgb":
        colored = np.stack([to_rgb(t) for t in tiles])
    else:
        shared = None if item.per_tile_scale else color_limit(tiles, item.style, item.vmax)
        colored = np.stack([colorize(t, item.style, shared) for t in tiles])
    # enlarge tiles first so that the 1-pixel separators stay thin in the final picture
    h, w = colored.shape[1:3]
    factor = max(1, int(np.ceil(24 / max(1, min(h, w)))))
    if factor > 1:
        colored = np.repeat(np.repeat(colored, factor, axis=1), factor, axis=2)
    return tile_grid(colored, item.cols)


def colorbar_png(style: str, vmax: float) -> bytes:
    """A small horizontal colour bar with its end labels, for a signed or heat picture."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.4, 0.55), dpi=100)
    ax = fig.add_axes([0.06, 0.55, 0.88, 0.3])
    lo = -vmax if style == "signed" else 0.0
    xs = np.linspace(lo, vmax, 256)[None, :]
    rgb = signed_colors(xs, vmax) if style == "signed" else heat_colors(xs, vmax)
    ax.imshow(rgb, aspect="auto", extent=(lo, vmax, 0, 1))
    ax.set_yticks([])
    ax.set_xticks([lo, 0, vmax] if style == "signed" else [0, vmax])
    ax.set_xticklabels([f"{v:.3g}" for v in ([lo, 0, vmax] if style == "signed" else [0, vmax])], fontsize=7)
    return figure_png(fig)


def figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
    return buf.getvalue()


def _thumb(img: np.ndarray) -> Optional[np.ndarray]:
    h, w = img.shape[:2]
    if max(h, w) <= THUMB_SIDE * 1.5:
        return None
    from PIL import Image

    scale = THUMB_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def _write_image(img: np.ndarray, writer: ArtifactWriter, rel: str) -> dict:
    entry = {"file": writer.write_bytes(rel, png_bytes(img)), "width": int(img.shape[1]), "height": int(img.shape[0])}
    small = _thumb(img)
    if small is not None:
        entry["thumb"] = writer.write_bytes(rel[:-4] + ".thumb.png", png_bytes(small))
    else:
        entry["thumb"] = entry["file"]
    return entry


def _base_entry(item: Item, kind: str) -> dict:
    return {"type": kind, "key": item.key, "caption": item.caption, "label": item.label, "layer": item.layer,
            "image": item.image, "group": item.group, "alt": item.label or item.caption.split(".")[0] or item.key}


def render_picture(item: Picture, writer: ArtifactWriter, rel: str) -> dict:
    img = to_uint8(colorize(item.array, item.style, item.vmax, item.base))
    entry = {**_base_entry(item, "picture"), **_write_image(enlarge(img), writer, rel)}
    if item.colorbar and item.style in ("signed", "heat"):
        vmax = color_limit(item.array, item.style, item.vmax)
        entry["colorbar"] = writer.write_bytes(rel[:-4] + ".colorbar.png", colorbar_png(item.style, vmax))
    return entry


def render_item(item: Item, writer: ArtifactWriter, prefix: str) -> dict:
    """Write ``item``'s file(s) under ``prefix`` (e.g. "img/occlusion") and return its manifest entry."""
    rel = f"{prefix}/{slug(item.key)}.png"
    if isinstance(item, Picture):
        return render_picture(item, writer, rel)
    if isinstance(item, Grid):
        img = to_uint8(grid_rgb(item))
        entry = {**_base_entry(item, "grid"), **_write_image(img, writer, rel), "count": int(len(item.tiles))}
        return entry
    if isinstance(item, Plot):
        return render_plot(item, writer, rel)
    if isinstance(item, Table):
        entry = {**_base_entry(item, "table"), "columns": list(item.columns), "rows": [list(r) for r in item.rows]}
        if item.images is not None:
            entry["row_images"] = [
                [render_picture(p, writer, f"{prefix}/{slug(item.key)}-{r}-{slug(p.key)}.png") for p in row]
                for r, row in enumerate(item.images)]
        return entry
    raise TypeError(f"cannot render {type(item).__name__}")


def render_plot(item: Plot, writer: ArtifactWriter, rel: str) -> dict:
    _load_plot_kinds()
    if item.kind not in PLOT_KINDS:
        raise KeyError(f"no plot kind '{item.kind}' (known: {', '.join(sorted(PLOT_KINDS))})")
    out = PLOT_KINDS[item.kind](item.data)
    entry = _base_entry(item, "plot")
    if isinstance(out, list):  # frames -> animated GIF, plus the last frame as a still
        from PIL import Image

        frames = [Image.fromarray(f) for f in out]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=400, loop=0)
        entry["animation"] = writer.write_bytes(rel[:-4] + ".gif", buf.getvalue())
        entry.update(_write_image(out[-1], writer, rel))
        return entry
    data = figure_png(out)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
    entry.update({"file": writer.write_bytes(rel, data), "width": w, "height": h})
    entry["thumb"] = entry["file"]
    return entry


_LOADED = False


def _load_plot_kinds() -> None:
    """Import every module of this package once so their plot kinds are registered."""
    global _LOADED
    if _LOADED:
        return
    import importlib
    import pkgutil

    import matplotlib

    matplotlib.use("Agg")
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    _LOADED = True
