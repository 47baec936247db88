"""Chart kinds of the parameter and activation analyses: perceptron panels (strip and animation), activation
histograms, 2-D embeddings coloured by class."""

from __future__ import annotations

import numpy as np

from . import plot_kind
from .charts import DPI, LEGEND_MAX, WIDTH, constrained_layout, legend_below, new_figure, wrap_label

# the two classes of a point model and the hidden units' lines must stand out from the grey response surface
POINT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
LINE_COLOR = "#d62728"


def class_colors(k: int) -> list:
    """``k`` distinguishable colours (tab10 up to 10 classes, tab20 up to 20, then a cyclic hsv)."""
    import matplotlib

    if k <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(k)]
    if k <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(k)]
    return [matplotlib.colormaps["hsv"](i / k) for i in range(k)]


def _perceptron_panel(ax, panel: dict, data: dict, small: bool = False) -> None:
    """One view of a 2-D network: grey response, decision boundary, data points, each hidden unit's line."""
    xmin, xmax, ymin, ymax = data["extent"]
    grid = np.asarray(panel["grid"], dtype=np.float64)
    lim = float(np.abs(grid).max()) or 1.0
    # grey = the output difference; light for class 0, dark for class 1, middle grey at the boundary
    ax.imshow(grid, origin="lower", extent=(xmin, xmax, ymin, ymax), cmap="Greys", vmin=-lim, vmax=lim,
              interpolation="bilinear", aspect="equal")
    if grid.min() < 0 < grid.max():
        ys = np.linspace(ymin, ymax, grid.shape[0])
        xs = np.linspace(xmin, xmax, grid.shape[1])
        ax.contour(xs, ys, grid, levels=[0.0], colors="black", linewidths=1.2)
    points = np.asarray(data.get("points", np.zeros((0, 2))), dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(data.get("labels", np.zeros(len(points))), dtype=np.int64)
    names = data.get("class_names") or []
    for c in sorted(set(labels.tolist())):
        sel = labels == c
        ax.scatter(points[sel, 0], points[sel, 1], s=4 if small else 7, color=POINT_COLORS[c % len(POINT_COLORS)],
                   alpha=0.8, linewidths=0, label=names[c] if 0 <= c < len(names) else str(c))
    for seg in panel["lines"]:
        if seg is not None:
            (x0, y0), (x1, y1) = seg
            ax.plot([x0, x1], [y0, y1], color=LINE_COLOR, linewidth=0.9, alpha=0.9)
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    ax.set_title(panel.get("title", ""), fontsize=8 if small else 10)
    ax.set_xticks([])
    ax.set_yticks([])


@plot_kind("perceptron-strip")
def perceptron_strip(data: dict):
    """data: extent (xmin, xmax, ymin, ymax), points (M, 2), labels (M,), class_names, panels: list of
    {title, grid (R, R) output difference (row 0 = ymin), lines: per hidden unit ((x0, y0), (x1, y1)) or None}."""
    from matplotlib.figure import Figure

    panels = data["panels"]
    n = len(panels)
    cols = min(n, 3)  # rows of at most 3 panels: each about 1.6 inches wide in the chart's width
    rows = -(-n // cols)
    fig = Figure(figsize=(WIDTH, 1.85 * rows + 0.45), dpi=DPI, layout=constrained_layout())
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax, panel in zip(axes, panels):
        _perceptron_panel(ax, panel, data, small=True)
    for ax in axes[n:]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    legend_below(fig, handles=handles, labels=labels)
    return fig


@plot_kind("perceptron-frames")
def perceptron_frames(data: dict):
    """The panels of `perceptron_strip` one per frame (an animated GIF); returns a list of RGB uint8 arrays."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frames = []
    for panel in data["panels"]:
        fig = Figure(figsize=(3.4, 3.4), dpi=90, layout=constrained_layout())
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        _perceptron_panel(ax, panel, data)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    return frames


@plot_kind("histogram")
def histogram(data: dict):
    """data: edges (B+1,), counts (B,), xlabel, title, logy (default True), mean, std (drawn as lines when given)."""
    edges = np.asarray(data["edges"], dtype=np.float64)
    counts = np.asarray(data["counts"], dtype=np.float64)
    fig, ax = new_figure(data.get("width", 4.2), data.get("height", 2.8) + 0.2 * (data.get("mean") is not None))
    ax.stairs(counts, edges, fill=True, color="#4a7bd0", alpha=0.85)
    if data.get("logy", True) and counts.max() > 0:
        ax.set_yscale("log")
        ax.set_ylim(0.7, counts.max() * 2)
    if data.get("mean") is not None:
        ax.axvline(data["mean"], color="#d0504a", linewidth=1.2, label=f"mean {data['mean']:.3g}")
        if data.get("std") is not None:
            for s in (-1, 1):
                ax.axvline(data["mean"] + s * data["std"], color="#d0504a", linewidth=0.8, linestyle="--",
                           label=f"± std {data['std']:.3g}" if s == 1 else None)
        legend_below(fig, ax)  # outside: a histogram's bars fill the axes
    used = np.flatnonzero(counts)
    if len(used):  # the streamed histogram's range doubles when it grows: do not show its empty margins
        lo, hi = edges[used[0]], edges[used[-1] + 1]
        pad = 0.03 * (hi - lo)
        ax.set_xlim(lo - pad, hi + pad)
        if lo < 0 < hi:
            ax.axvline(0.0, color="black", linewidth=0.6, alpha=0.6)
    ax.set_xlabel(data.get("xlabel", "activation"))
    ax.set_ylabel("count (log)" if data.get("logy", True) else "count")
    if data.get("title"):
        ax.set_title(data["title"], fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def _scatter(ax, xy: np.ndarray, labels: np.ndarray, colors: list, size: float) -> None:
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    for c in sorted(set(labels.tolist())):
        sel = labels == c
        color = colors[c] if 0 <= c < len(colors) else (0.5, 0.5, 0.5, 1.0)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=color, linewidths=0, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")


def _legend(fig, class_names: list, labels: np.ndarray, colors: list) -> None:
    """The classes present, under the panels; more than `LEGEND_MAX` cannot be told apart by colour, and are not
    listed (the interactive view names each point)."""
    from matplotlib.lines import Line2D

    present = sorted(c for c in set(labels.tolist()) if 0 <= c < len(class_names))
    if not present or len(present) > LEGEND_MAX:
        return
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[c], markersize=5) for c in present]
    legend_below(fig, handles=handles, labels=[class_names[c] for c in present])


def _legend_rows(fig, class_names: list, labels: np.ndarray) -> float:
    """Inches the class legend under the panels takes (see `_legend`)."""
    present = [c for c in set(labels.tolist()) if 0 <= c < len(class_names)]
    if not present or len(present) > LEGEND_MAX:
        return 0.0
    longest = max(len(str(class_names[c])) for c in present)
    per_row = max(1, int(fig.get_figwidth() * 0.95 // (0.35 + longest * 7 * 0.55 / 72)))
    return 0.2 * -(-len(present) // per_row)


@plot_kind("embedding")
def embedding(data: dict):
    """data: panels [{title, xy (N, 2)}] (e.g. t-SNE and PCA of one layer), labels (N,) class indices (-1 =
    unknown, grey), class_names, title."""
    from matplotlib.figure import Figure

    labels = np.asarray(data["labels"], dtype=np.int64)
    names = list(data.get("class_names") or [])
    colors = class_colors(max(len(names), int(labels.max(initial=0)) + 1))
    panels = data["panels"]
    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(WIDTH, (WIDTH / cols) * rows + 0.3), dpi=DPI, layout=constrained_layout())
    fig.set_figheight(fig.get_figheight() + _legend_rows(fig, names, labels) + (0.25 if data.get("title") else 0))
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax, panel in zip(axes, panels):
        _scatter(ax, panel["xy"], labels, colors, 6)
        ax.set_title(wrap_label(panel["title"], int(WIDTH / cols * 72 / (9 * 0.62))), fontsize=9)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if data.get("title"):
        fig.suptitle(data["title"], fontsize=10)
    _legend(fig, names, labels, colors)
    return fig


@plot_kind("embedding-strip")
def embedding_strip(data: dict):
    """data: panels [{title, xy (N, 2)}] from the input to the logits, labels (N,), class_names; one small
    scatter per layer in one row (at most 5 per row, wrapping)."""
    from matplotlib.figure import Figure

    labels = np.asarray(data["labels"], dtype=np.int64)
    names = list(data.get("class_names") or [])
    colors = class_colors(max(len(names), int(labels.max(initial=0)) + 1))
    panels = data["panels"]
    cols = min(3, len(panels))  # panels of about 1.6 inches in the chart's width; more layers, more rows
    rows = int(np.ceil(len(panels) / cols))
    fig = Figure(figsize=(WIDTH, (WIDTH / cols + 0.2) * rows), dpi=DPI, layout=constrained_layout())
    fig.set_figheight(fig.get_figheight() + _legend_rows(fig, names, labels))
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax, panel in zip(axes, panels):
        _scatter(ax, panel["xy"], labels, colors, 3)
        ax.set_title(wrap_label(panel["title"], int(WIDTH / cols * 72 / (8 * 0.62))), fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    _legend(fig, names, labels, colors)
    return fig
