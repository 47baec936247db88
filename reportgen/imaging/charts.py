"""General chart kinds: lines, bars, confusion matrix. Each takes a data dict and returns a matplotlib Figure."""

from __future__ import annotations

import functools
import re

import numpy as np

from . import plot_kind


WIDTH = 5.0  # inches: a chart's width at DPI (550 px), about what a page shows (34rem); charts grow down, not wide
DPI = 110
TICK_PT = 7  # the size of crowded tick labels (layer and class names)
LEGEND_MAX = 24  # a legend lists at most this many entries; more (a 1,000-class head) get a note instead


def new_figure(width: float = WIDTH, height: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(width, WIDTH), height), dpi=DPI, layout=constrained_layout())
    return fig, fig.add_subplot(1, 1, 1)


_LAYOUTS: dict = {}  # layout signature before -> (axes' and suptitle's places, signature after): constrained_layout
_LAYOUTS_MAX = 64


def _text_key(t, renderer, dims: str = "wh") -> tuple:
    """What of a text's box a layout reads: nothing when hidden or empty, else its width and/or height, in pixels
    to 1e-4 (a rotated label's width differs in its last bits from one place to another)."""
    if not t.get_visible() or not t.get_in_layout() or not t.get_text():
        return ()
    b = t.get_window_extent(renderer)
    return tuple(round(float(b.width if d == "w" else b.height), 4) for d in dims)


def _clipped_to(artist, ax) -> bool:
    """Whether ``artist`` is drawn clipped to the box of ``ax`` (to float rounding: matplotlib's own test,
    ``_fully_clipped_to_axes``, wants the same bits, and the lines of a line chart clip to a box it computes
    otherwise), so that its box in a layout never reaches beyond the axes'."""
    from matplotlib.transforms import TransformedPatchPath

    box, path = artist.get_clip_box(), artist.get_clip_path()
    return bool(artist.get_clip_on() and box is not None
                and np.allclose(box.get_points(), ax.bbox.get_points(), rtol=0, atol=1e-6)
                and (path is None or isinstance(path, TransformedPatchPath) and path._patch is ax.patch))


def _layout_signature(fig, renderer):
    """`_signature`, or None where it cannot be read: it reads matplotlib's private attributes (checked on
    matplotlib 3.11), and a matplotlib without one of them must only lose the reuse, never a chart."""
    try:
        return _signature(fig, renderer)
    except (AttributeError, TypeError, KeyError):
        return None


def _signature(fig, renderer):
    """Everything of ``fig`` that constrained layout reads, as a hashable value; None where the figure holds
    something this does not describe (colour bars, texts or legends in the axes, sub-figures...), which is then
    laid out as usual.

    Constrained layout places the axes from the boxes of their decorations relative to each axes (tick labels, axis
    labels, titles, a figure legend, a suptitle) and nothing else: the drawn ticks (location, label text, font,
    rotation, alignment), the width of a y label and the height of an x label or a title (their other side does not
    count in a layout), the figure legend's entries, the figure's size and the axes' grid and current place."""
    from matplotlib.lines import Line2D
    from matplotlib.spines import Spine

    if fig.subfigs or fig.images or fig.lines or fig.patches or fig._supxlabel is not None \
            or fig._supylabel is not None:
        return None
    eng = fig.get_layout_engine()
    key: list = [tuple(fig.get_size_inches()), fig.dpi, tuple(sorted(eng.get().items())) if eng else None]
    for ax in fig.axes:
        ss = ax.get_subplotspec()
        if ss is None or ax._colorbars or ax.get_axes_locator() is not None or ax.child_axes \
                or not ax.get_in_layout():
            return None
        for a in ax.get_default_bbox_extra_artists():
            if not (isinstance(a, Spine) or a is ax.patch or _clipped_to(a, ax)):
                return None
        key.append((ss.get_geometry(), ax.get_visible(), ax.axison, ax._frameon,
                    tuple(ax.get_position(original=True).bounds), tuple(ax.get_position().bounds),
                    str(ax.get_aspect()), ax.get_adjustable(), ax.get_box_aspect(), str(ax.get_anchor()),
                    tuple((n, s.get_visible()) for n, s in ax.spines.items())))
        if not ax.get_visible():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            ticks = axis._update_ticks() if ax.axison and axis.get_visible() else []
            drawn = []
            for t in ticks:
                labels = tuple((lab.get_visible(), lab.get_text(), hash(lab.get_fontproperties()), lab.get_rotation(),
                                lab.get_horizontalalignment(), lab.get_verticalalignment(),
                                lab.get_rotation_mode(), lab.get_linespacing())
                               for lab in (t.label1, t.label2))
                drawn.append((float(t.get_loc()), labels, t.tick1line.get_visible(), t.tick2line.get_visible(),
                              t._size, t.get_pad(), t._tickdir))
            label = _text_key(axis.label, renderer, "w" if axis is ax.yaxis else "h")
            key.append((axis.get_visible(), axis.get_scale(), tuple(axis.get_view_interval()) if ticks else None,
                        axis.get_label_position(), axis.labelpad, label, tuple(drawn),
                        axis.get_offset_text().get_text(), repr(axis._major_tick_kw), repr(axis._minor_tick_kw)))
        key.append(tuple(_text_key(t, renderer, "h") for t in (ax.title, ax._left_title, ax._right_title)))
    for leg in fig.legends:
        if not leg._outside_loc or not leg.get_visible():
            return None
        handles = []
        for h in leg.legend_handles:
            if not isinstance(h, Line2D):
                return None
            handles.append((h.get_marker(), h.get_markersize(), h.get_linewidth(), h.get_linestyle()))
        key.append((leg._outside_loc, leg._loc, leg._ncols, leg._fontsize, leg.get_frame_on(),
                    tuple(t.get_text() for t in leg.texts), tuple(handles)))
    for t in fig.texts:
        if t is not fig._suptitle:
            return None
        key.append((t.get_position(), t.get_verticalalignment(), getattr(t, "_autopos", None),
                    _text_key(t, renderer, "h")))
    return tuple(key)


def constrained_layout():
    """A constrained layout engine that lays out a figure once per content: a figure whose layout signature
    (`_layout_signature`: what the layout reads) is that of one laid out before gets its axes where that one's went,
    and is checked to describe the same figure there, instead of the layout's two passes over every tick label
    (half the time of a chart's PNG). The same positions: the layout is a function of that signature (to float
    rounding: lines clipped to the axes may reach 1e-13 px beyond them, text sizes are compared to 1e-4 px);
    anything else, or a figure the signature does not describe, is laid out as before."""
    return _engine_class()()


def _places(fig) -> tuple:
    sup = fig._suptitle
    return ([(ax.get_position(original=True).frozen(), ax.get_position().frozen()) for ax in fig.axes],
            (sup.get_position(), sup.get_verticalalignment()) if sup is not None else None)


def _place(fig, places: tuple) -> None:
    axes, suptitle = places
    for ax, (original, active) in zip(fig.axes, axes):
        ax._set_position(original, which="original")
        ax._set_position(active, which="active")
    if suptitle is not None:
        fig._suptitle.set_position(suptitle[0])
        fig._suptitle.set_verticalalignment(suptitle[1])


@functools.lru_cache(maxsize=1)
def _engine_class():
    import warnings

    from matplotlib.layout_engine import ConstrainedLayoutEngine

    class ReusedConstrainedLayout(ConstrainedLayoutEngine):
        def execute(self, fig):
            renderer = fig._get_renderer()
            before = _layout_signature(fig, renderer)
            start = _places(fig)
            known = _LAYOUTS.get(before) if before is not None else None
            if known is not None:
                _place(fig, known[0])
                if _layout_signature(fig, renderer) == known[1]:
                    return None
                _place(fig, start)  # not the same figure after all: lay it out from where it was
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = super().execute(fig)
            for w in caught:  # as they came (an error where warnings are errors); such a layout is not kept
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if before is not None and not caught:
                done = _places(fig)
                after = _layout_signature(fig, renderer)
                if after is not None:
                    while len(_LAYOUTS) >= _LAYOUTS_MAX:
                        del _LAYOUTS[next(iter(_LAYOUTS))]
                    _LAYOUTS[before] = (done, after)
            return out

    return ReusedConstrainedLayout


def wrap_label(text: str, width: int = 24) -> str:
    """``text`` on lines of about ``width`` characters, broken after a dot or a space (layer names are dotted
    paths, and a cascade step names several: "+ vit.layers.1.mlp.fc1 … vit.layers.1.layernorm_after (3 modules)");
    a part longer than ``width`` keeps a line of its own."""
    lines, line = [], ""
    for part in re.findall(r"[^.\s]*[.\s]+|[^.\s]+$", str(text)):
        if line and len(line.rstrip()) + len(part.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        line += part
    return "\n".join(lines + [line.rstrip()]) if line.strip() else "\n".join(lines)


def _renderer(fig):
    from . import agg_canvas

    return agg_canvas(fig).get_renderer()


def _lay_out(fig) -> None:
    """Place the axes as the figure's layout engine (constrained) would in a draw, without the rest of a draw: the
    tick labels' boxes follow their axes, so they can be measured after it (a third of the cost of
    ``draw_without_rendering``, which set_tick_labels called up to six times per chart)."""
    engine = fig.get_layout_engine()
    if engine is not None and fig.axes:
        engine.execute(fig)


def _overlapping(boxes, gap: float) -> bool:
    return any(a.x1 + gap > b.x0 for a, b in zip(boxes, boxes[1:]))


def set_tick_labels(fig, ax, positions, labels, fontsize: float = TICK_PT) -> None:
    """Put ``labels`` at x ``positions`` so that none overlaps another or leaves the figure.

    Labels that fit the tick spacing in at most 3 lines stay level; else short labels that fit are rotated 45°.
    Otherwise they stand upright (90°), each wrapped (`wrap_label`) to as few lines as the tick spacing holds side
    by side, and the figure grows in height by what the labels take; only when one line per label is still too wide
    for the spacing does it grow in width.

    Without it, long labels (a transformer's layer names) leave constrained layout no room for the axes: it gives
    up ("axes sizes collapsed to zero"), and the labels and the x axis title are cut off or overlap."""
    renderer = _renderer(fig)
    ax.set_xticks(positions)
    gap = 2.0  # pixels between neighbouring labels
    texts = [str(t) for t in labels]
    if not texts:
        return
    _lay_out(fig)
    xs = [ax.transData.transform((x, 0.0))[0] for x in positions]
    spacing = min([b - a for a, b in zip(xs, xs[1:]) if b > a] or [ax.get_window_extent(renderer).width])
    chars = int((spacing - 4 * gap) / (0.62 * fontsize * fig.dpi / 72.0))  # about, of DejaVu Sans
    level = [wrap_label(t, chars) for t in texts] if chars >= 6 else []
    if level and max(len(t.splitlines()) for t in level) <= 3:
        ax.set_xticklabels(level, rotation=0, ha="center", va="top", fontsize=fontsize)
        _lay_out(fig)
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        if not _overlapping(boxes, gap) and all(b.x0 >= 0 and b.x1 <= fig.bbox.width for b in boxes):
            return
    if max(map(len, texts)) <= 24:
        ax.set_xticklabels(texts, rotation=45, ha="right", va="top", rotation_mode="anchor", fontsize=fontsize)
        _lay_out(fig)
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        if not _overlapping(boxes, gap):
            return
    line = 1.25 * fontsize * fig.dpi / 72.0
    fits = max(1, int((spacing - gap) // line))  # lines of a label that fit side by side between two ticks
    width = 24
    while width < 200 and max(len(wrap_label(t, width).splitlines()) for t in texts) > fits:
        width += 4
    wrapped = [wrap_label(t, width) for t in texts]
    one_line = 2.5 * fontsize / 72  # inches: the room the chart's height already leaves a short rotated label
    ax.set_xticklabels(wrapped, rotation=90, ha="center", va="top", rotation_mode="default", fontsize=fontsize)
    tallest = max(t.get_window_extent(renderer).height for t in ax.get_xticklabels()) / fig.dpi
    fig.set_figheight(fig.get_figheight() + max(0.0, tallest - one_line))
    for _ in range(3):  # the layout's margins move a little as the figure grows: measure again
        _lay_out(fig)
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        xs = [ax.transData.transform((x, 0.0))[0] for x in positions]
        # the spacing of two ticks must grow by their labels' overlap
        factor = max([1.0 + (a.x1 + gap - b.x0) / (x1 - x0) for a, b, x0, x1 in zip(boxes, boxes[1:], xs, xs[1:])
                      if x1 > x0 and a.x1 + gap > b.x0] or [1.0])
        if factor <= 1.0:
            return
        grow = (factor - 1.0) * ax.get_window_extent(renderer).width / fig.dpi
        fig.set_figwidth(fig.get_figwidth() + grow + 0.05)


def legend_below(fig, ax=None, handles=None, labels=None, fontsize: float = 7) -> None:
    """The legend of ``ax`` (or ``handles``, ``labels``) under the chart, outside the data, in as many columns as
    fit the width."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    longest = max(len(str(t)) for t in labels)
    per_col = 0.35 + longest * fontsize * 0.55 / 72  # inches: the marker and the text of one entry, about
    ncol = max(1, min(len(labels), int(fig.get_figwidth() * 0.95 // per_col)))
    renderer = _renderer(fig)
    while True:  # fewer columns while the legend, measured, is wider than the figure
        legend = fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=fontsize,
                            frameon=False)
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            break
        legend.remove()
        ncol -= 1
    balanced = -(-len(labels) // -(-len(labels) // ncol))  # rows as full as can be: 10 entries in 2 x 5, not 9 + 1
    if balanced < ncol:
        legend.remove()
        fig.legend(handles, labels, loc="outside lower center", ncol=balanced, fontsize=fontsize, frameon=False)


@plot_kind("lines")
def lines(data: dict):
    """data: x (list), series {name: list of y}, xlabel, ylabel, logx (bool), logy (bool), title, marker (bool),
    xticklabels (one per x), ylim, width, height (inches). The legend goes under the chart."""
    series = data["series"]
    fig, ax = new_figure(data.get("width", WIDTH), data.get("height", 3.2) + 0.15 * (len(series) > 1))
    x = data["x"]
    for name, ys in series.items():
        ax.plot(x[: len(ys)], ys, marker="o" if data.get("marker") else None, markersize=3, label=name)
    if data.get("logx"):
        ax.set_xscale("log")
    if data.get("logy"):
        ax.set_yscale("log")
    ax.set_xlabel(data.get("xlabel", ""))
    ax.set_ylabel(data.get("ylabel", ""))
    if data.get("ylim"):
        ax.set_ylim(*data["ylim"])
    if data.get("title"):
        ax.set_title(data["title"], fontsize=10)
    if 1 < len(series) <= LEGEND_MAX:  # more lines than that cannot be told apart by colour anyway
        legend_below(fig, ax)
    ax.grid(alpha=0.3)
    if data.get("xticklabels"):
        set_tick_labels(fig, ax, x, data["xticklabels"])  # last: measured with the title, axis labels, legend
    return fig


@plot_kind("bars")
def bars(data: dict):
    """data: names (list), values (list), xlabel, ylabel, title, highlight (index or None), vlim (tuple). Up to 8
    bars stand upright; more lie down, one row per name (a name of a 1,000-class head reads across, whatever its
    length), and the chart grows in height by their count."""
    names = [str(t) for t in data["names"]]
    values = data["values"]
    colors = ["#4a7bd0"] * len(names)
    if data.get("highlight") is not None:
        colors[data["highlight"]] = "#d0504a"
    if len(names) <= 8:
        fig, ax = new_figure(WIDTH, data.get("height", 3.0))
        ax.bar(range(len(names)), values, color=colors)
        ax.set_ylabel(data.get("ylabel", ""))
        if data.get("vlim"):
            ax.set_ylim(*data["vlim"])
        ax.grid(axis="y", alpha=0.3)
        if data.get("title"):
            ax.set_title(data["title"], fontsize=10)
        set_tick_labels(fig, ax, list(range(len(names))), names, fontsize=8)
        return fig
    fig, ax = new_figure(WIDTH, 1.0 + 0.2 * len(names))
    ax.barh(range(len(names)), values, color=colors)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([wrap_label(t, 40) for t in names], fontsize=TICK_PT)
    ax.set_ylim(len(names) - 0.5, -0.5)  # the first name at the top
    ax.set_xlabel(data.get("ylabel", ""))
    if data.get("vlim"):
        ax.set_xlim(*data["vlim"])
    ax.grid(axis="x", alpha=0.3)
    if data.get("title"):
        ax.set_title(data["title"], fontsize=10)
    return fig


@plot_kind("confusion")
def confusion(data: dict):
    """data: matrix (K, K') counts, rows = true class, columns = predicted; class_names (the rows, and the columns
    unless col_names gives them: a last "other" column). The cells get their counts while they are large enough to
    hold them (up to 20 columns); the chart is as wide as a page shows, and its height follows the row count."""
    m = np.asarray(data["matrix"], dtype=np.float64)
    names = [str(t) for t in data["class_names"]]
    cols = [str(t) for t in data.get("col_names", names)]
    k = len(names)
    size = TICK_PT if max(k, len(cols)) <= 20 else TICK_PT - 1  # 30 names side by side in a page's width
    rows_text = [wrap_label(t, 22) for t in names]
    lines = max((len(t.splitlines()) for t in rows_text), default=1)
    # inches per row: a cell, or the lines of the longest name
    row = max(min(0.42, 3.6 / max(k, len(cols), 1)), lines * size * 1.3 / 72)
    fig, ax = new_figure(WIDTH, 1.9 + row * k)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    if max(k, len(cols)) <= 20:
        for i in range(k):
            for j in range(len(cols)):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=6 if len(cols) > 12 else 7,
                            color="white" if frac[i, j] > 0.5 else "black")
    ax.set_yticks(range(k))
    ax.set_yticklabels(rows_text, fontsize=size)
    ax.set_ylabel("true class")
    ax.set_xlabel("predicted class")
    # above the matrix, so that the columns keep the whole width
    fig.colorbar(im, ax=ax, location="top", shrink=0.6, aspect=30, label="fraction of the true class")
    set_tick_labels(fig, ax, list(range(len(cols))), cols, fontsize=size)
    return fig
