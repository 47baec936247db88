"""The one place where arrays become PNG files: colour maps, overlays, grids, charts.

`render_item` takes an item of `reportgen.artifacts` and writes its file(s) through an `ArtifactWriter`, returning
the manifest entry that templates lay out. Charts are drawn by plot kinds registered with `plot_kind` (one function
per kind, data dict in, matplotlib figure out); modules in this package register them on import.

Colour conventions, the same on every page:
- signed values (weights, activations): blue (negative) - white (zero) - red (positive), symmetric limit;
- non-negative maps (saliency, CAMs, occlusion drops): matplotlib's "inferno", 0 = black.
"""

from __future__ import annotations

import functools
import io
import json
from typing import Any, Callable, Optional

import numpy as np

from ..artifacts import ArtifactWriter, Grid, Item, Picture, Plot, Table, slug
from .colors import color_limit, colorize, heat_colors, signed_colors, to_rgb, to_uint8  # re-exported

# PIL, matplotlib and .notebook (show's implementation; it reads the report's colour limits from
# reportgen.analyses.influence) are imported inside functions: `import reportgen.imaging` loads none of them.

MIN_SIDE = 160  # small images (8x8 filters, 28x28 digits) are enlarged with nearest-neighbour to at least this
THUMB_SIDE = 160
# zlib's level for every PNG: 3 compresses the default report's pictures and grids in half the time of PIL's default
# 6 (1.6 s of CPU instead of 3.2 s for its 579 files), at 6% more bytes (13.3 MB instead of 12.6 MB)
PNG_LEVEL = 3
LAYOUT_KEY = "reportgen-layout"  # PNG text chunk: JSON of the boxes (pixels of the file, origin top left) of what a
# figure drew: "text" (labels), "tiles" (a grid's), "axes" and "legends" (a chart's), and "font_px" (least text size)
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


def enlarge(img: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor so the shorter side reaches ``min_side``."""
    h, w = img.shape[:2]
    factor = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if factor == 1:
        return img
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def png_bytes(img: np.ndarray, layout: Optional[dict] = None) -> bytes:
    """``img`` (H, W, 3) uint8 as PNG; ``layout`` (boxes of what was drawn, see `LAYOUT_KEY`) as a text chunk."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = None
    if layout is not None:
        info = PngInfo()
        info.add_text(LAYOUT_KEY, json.dumps(layout, separators=(",", ":")))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=PNG_LEVEL, pnginfo=info)
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


def grid_tiles(item: Grid) -> np.ndarray:
    """The tiles of ``item`` in colour: (n, h, w, 3) floats in [0, 1]."""
    tiles = np.asarray(item.tiles, dtype=np.float64)
    if item.style == "rgb":
        return np.stack([to_rgb(t) for t in tiles])
    shared = None if item.per_tile_scale else color_limit(tiles, item.style, item.vmax)
    return np.stack([colorize(t, item.style, shared) for t in tiles])


def grid_rgb(item: Grid) -> np.ndarray:
    """The tiles of ``item`` as one unlabelled picture (the page draws `render_grid`'s labelled one)."""
    colored = grid_tiles(item)
    # enlarge tiles first so that the 1-pixel separators stay thin in the final picture
    h, w = colored.shape[1:3]
    factor = max(1, int(np.ceil(24 / max(1, min(h, w)))))
    if factor > 1:
        colored = np.repeat(np.repeat(colored, factor, axis=1), factor, axis=2)
    return tile_grid(colored, item.cols)


@functools.lru_cache(maxsize=256)
def colorbar_png(style: str, vmax: float) -> bytes:
    """A small horizontal colour bar with its end labels, for a signed or heat picture. Cached: the maps of a method
    drawn on one shared scale all get the same bar (the default report draws 328 bars, 169 of them distinct).

    Bars of a style differ only by their labels: the bar, its frame and ticks are drawn once per style
    (`_colorbar_figure`), and each bar puts that picture back and draws its labels on it, the pixels of a whole
    draw (a third of its time)."""
    fig, ax, canvas, background = _colorbar_figure(style)
    # the bar is drawn in units of its limit (-1 or 0 to 1): its ticks stay, their labels say the values
    labels = ax.set_xticklabels([f"{v:.3g}" for v in ([-vmax, 0, vmax] if style == "signed" else [0, vmax])],
                                fontsize=7)
    labels[0].set_horizontalalignment("left")  # the end values start and stop with the bar: never cut off
    labels[-1].set_horizontalalignment("right")
    canvas.restore_region(background)
    renderer = canvas.get_renderer()
    for tick in ax.xaxis._update_ticks():  # what Axis.draw draws of them, on what it would draw them over
        tick.label1.draw(renderer)
    return _canvas_png(canvas, fig, figure_layout(fig, renderer))


@functools.lru_cache(maxsize=2)
def _colorbar_figure(style: str) -> tuple:
    """The figure, axes and canvas `colorbar_png` draws each bar of ``style`` in, made once, and the bar drawn in it
    without labels: the colours, frame and tick marks of a bar do not depend on its limit (its ticks are at the
    ends and the middle)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6, 0.42), dpi=100)  # the size a page shows it at (160 px)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes([0.05, 0.55, 0.9, 0.32], label="<colorbar>")  # matplotlib's name for a colour bar's axes
    lo = -1.0 if style == "signed" else 0.0
    xs = np.linspace(lo, 1.0, 256)[None, :]
    ax.imshow(signed_colors(xs, 1.0) if style == "signed" else heat_colors(xs, 1.0), aspect="auto",
              extent=(lo, 1.0, 0, 1))
    ax.set_yticks([])
    ax.set_xticks([lo, 0, 1.0] if style == "signed" else [0, 1.0])
    ax.set_xticklabels([""] * len(ax.get_xticks()))
    canvas.draw()
    return fig, ax, canvas, canvas.copy_from_bbox(fig.bbox)


def _canvas_png(canvas: Any, fig: Any, layout: Optional[dict]) -> bytes:
    """The pixels of ``canvas`` (drawn) as PNG; ``layout`` (`figure_layout`) in its `LAYOUT_KEY` text chunk."""
    import matplotlib.image

    metadata: dict = {"Software": None}
    if layout is not None:
        metadata[LAYOUT_KEY] = json.dumps(layout, separators=(",", ":"))
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, canvas.buffer_rgba(), format="png", origin="upper", dpi=fig.dpi,
                            metadata=metadata, pil_kwargs={"compress_level": PNG_LEVEL})
    return buf.getvalue()


_RENDERERS: dict = {}  # (width, height, dpi) -> an Agg renderer that the figures of that size share (agg_canvas)


def agg_canvas(fig: Any) -> Any:
    """``fig``'s Agg canvas, made on first use with a renderer shared by every figure of its size and dpi: the
    text measures matplotlib caches per renderer (tick labels, titles, mathtext's parse of "10^{3}") then serve
    every chart, not one. A draw clears the renderer first, so a figure's pixels are those of a renderer of its
    own."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if isinstance(fig.canvas, FigureCanvasAgg):
        return fig.canvas
    return _shared_canvas_class()(fig)


@functools.lru_cache(maxsize=1)
def _shared_canvas_class() -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg

    class SharedRendererCanvas(FigureCanvasAgg):
        def get_renderer(self):
            w, h = self.get_width_height(physical=True)
            key = (w, h, self.figure.dpi)
            if self._lastKey != key:
                if key not in _RENDERERS:
                    while len(_RENDERERS) >= 8:
                        del _RENDERERS[next(iter(_RENDERERS))]
                    _RENDERERS[key] = RendererAgg(w, h, self.figure.dpi)
                self.renderer = _RENDERERS[key]
                self._lastKey = key
            return self.renderer

    return SharedRendererCanvas


def figure_png(fig: Any, layout: bool = False) -> bytes:
    """``fig`` as PNG at its own dpi; with ``layout``, the boxes of what it drew (`figure_layout`) in the PNG's
    `LAYOUT_KEY` text chunk.

    The figure is drawn once: the boxes are read from the renderer of the draw that made the pixels (what
    ``savefig`` does, less its second draw: it lays the figure out in a draw of its own before the one it prints,
    and `figure_layout` would add a third)."""
    canvas = agg_canvas(fig)
    canvas.draw()  # the layout engine (constrained) runs first in it, as in savefig
    return _canvas_png(canvas, fig, figure_layout(fig, canvas.get_renderer()) if layout else None)


def figure_layout(fig: Any, renderer: Any = None) -> dict:
    """Where ``fig`` draws its parts once laid out, as boxes [x0, y0, x1, y1] in pixels of its PNG (origin top
    left): "axes" (the data areas; colour bars under "colorbars"), "legends", "text" (tick labels, axis labels,
    titles: everything that must stay inside the figure, clear of the data and of each other), "notes" (text drawn
    on the data: counts in cells), and "font_px" (the smallest text's size). ``renderer``: that of a draw just
    made (`figure_png`'s); without it the figure is laid out in a draw of its own that renders nothing."""
    if renderer is None:
        canvas = agg_canvas(fig)
        fig.draw_without_rendering()
        renderer = canvas.get_renderer()
    height = fig.bbox.height

    def box(artist) -> list:
        b = artist.get_window_extent(renderer)
        return [round(b.x0, 1), round(height - b.y1, 1), round(b.x1, 1), round(height - b.y0, 1)]

    out: dict = {"axes": [], "colorbars": [], "legends": [], "text": [], "notes": []}
    sizes = []

    def text(t, kind: str = "text") -> None:
        if t.get_visible() and t.get_text().strip():
            out[kind].append(box(t))
            sizes.append(t.get_fontsize() * fig.dpi / 72.0)

    for ax in fig.axes:
        if not ax.get_visible():
            continue
        if ax.axison:
            out["colorbars" if ax.get_label() == "<colorbar>" else "axes"].append(box(ax.patch))
            for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
                lo, hi = min(lim), max(lim)
                k = 0 if axis is ax.xaxis else 1
                for t in axis.get_ticklabels():
                    if lo - 1e-9 * (hi - lo) <= t.get_position()[k] <= hi + 1e-9 * (hi - lo):  # drawn ticks only
                        text(t)
                text(axis.label)
                text(axis.get_offset_text())
        for t in (ax.title, ax._left_title, ax._right_title):
            text(t)
        for t in ax.texts:
            text(t, "notes")
        if ax.get_legend() is not None:
            out["legends"].append(box(ax.get_legend()))
    for legend in fig.legends:
        out["legends"].append(box(legend))
    for t in fig.texts:  # the suptitle among them
        text(t)
    out["font_px"] = round(min(sizes), 2) if sizes else None
    return out


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
            "image": item.image, "group": item.group, "detail": item.detail,
            "alt": item.label or item.caption.split(".")[0] or item.key}


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
        return render_grid(item, writer, rel)
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


def render_grid(item: Grid, writer: ArtifactWriter, rel: str) -> dict:
    """A grid with its row, column and tile labels (`reportgen.imaging.grids`); a thumbnail as wide as the page
    shows it when wider. The entry's ``tiles`` says where the tiles lie in ``file``: ``origin`` [x, y] of the first,
    ``pitch`` [dy, dx] to the next row and column, ``size`` [h, w]."""
    from PIL import Image

    from .grids import DISPLAY_WIDTH, draw_grid

    g = draw_grid(grid_tiles(item), item.cols, item.row_labels, item.col_labels, item.tile_labels)
    h, w = g.image.shape[:2]
    layout = {"text": g.boxes["text"], "tiles": g.boxes["tiles"], "font_px": g.font_px}
    entry = {**_base_entry(item, "grid"), "file": writer.write_bytes(rel, png_bytes(g.image, layout)),
             "width": int(w), "height": int(h), "count": int(len(item.tiles)),
             "tiles": {"origin": list(g.origin), "pitch": list(g.pitch), "size": list(g.tile)}}
    entry["thumb"] = entry["file"]
    if w > DISPLAY_WIDTH:
        size = (DISPLAY_WIDTH, max(1, round(h * DISPLAY_WIDTH / w)))
        small = np.asarray(Image.fromarray(g.image).resize(size, Image.Resampling.LANCZOS))
        entry["thumb"] = writer.write_bytes(rel[:-4] + ".thumb.png", png_bytes(small))
    return entry


def render_plot(item: Plot, writer: ArtifactWriter, rel: str) -> dict:
    _load_plot_kinds()
    if item.kind not in PLOT_KINDS:
        raise KeyError(f"no plot kind '{item.kind}' (known: {', '.join(sorted(PLOT_KINDS))})")
    out = PLOT_KINDS[item.kind](item.data)
    entry = {**_base_entry(item, "plot"), "kind": item.kind}
    if isinstance(out, list):  # frames -> animated GIF, plus the last frame as a still
        from PIL import Image

        frames = [Image.fromarray(f) for f in out]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=400, loop=0)
        entry["animation"] = writer.write_bytes(rel[:-4] + ".gif", buf.getvalue())
        entry.update(_write_image(out[-1], writer, rel))
        return entry
    data = figure_png(out, layout=True)
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
