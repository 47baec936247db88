"""General chart kinds: lines, bars, confusion matrix. Each takes a data dict and returns a matplotlib Figure."""

from __future__ import annotations

import re

import numpy as np

from . import plot_kind


WIDTH = 5.0  # inches: a chart's width at DPI (550 px), about what a page shows (34rem); charts grow down, not wide
DPI = 110
TICK_PT = 7  # the size of crowded tick labels (layer and class names)
LEGEND_MAX = 24  # a legend lists at most this many entries; more (a 1,000-class head) get a note instead


def new_figure(width: float = WIDTH, height: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(width, WIDTH), height), dpi=DPI, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    return canvas.get_renderer()


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
