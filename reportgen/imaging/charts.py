"""General chart kinds: lines, bars, confusion matrix. Each takes a data dict and returns a matplotlib Figure."""

from __future__ import annotations

import re

import numpy as np

from . import plot_kind


def new_figure(width: float = 5.0, height: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
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


def fit_tick_labels(fig, ax) -> None:
    """Make ``fig`` larger by what its x tick labels take, measured as laid out: taller by their height beyond one
    rotated short label, and wider until no two neighbouring labels overlap.

    Without it, long labels (a transformer's layer names) leave constrained layout no room for the axes: it gives
    up ("axes sizes collapsed to zero"), and the labels and the x axis title are cut off or overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    if not labels:
        return
    one_line = 2.5 * 7 / 72  # inches: the room the chart's height already leaves a short rotated 7-pt label
    tallest = max(t.get_window_extent(renderer).height for t in labels) / fig.dpi
    fig.set_figheight(fig.get_figheight() + max(0.0, tallest - one_line))
    gap = 2.0  # pixels between neighbouring labels
    for _ in range(3):  # the layout's margins move a little as the figure grows: measure again
        fig.draw_without_rendering()
        boxes = [t.get_window_extent(renderer) for t in labels]
        xs = [ax.transData.transform((t.get_position()[0], 0.0))[0] for t in labels]
        # the spacing of two ticks must grow by their labels' overlap
        factor = max([1.0 + (a.x1 + gap - b.x0) / (x1 - x0) for a, b, x0, x1 in zip(boxes, boxes[1:], xs, xs[1:])
                      if x1 > x0 and a.x1 + gap > b.x0] or [1.0])
        if factor <= 1.0:
            return
        grow = (factor - 1.0) * ax.get_window_extent(renderer).width / fig.dpi
        fig.set_figwidth(fig.get_figwidth() + grow + 0.05)


@plot_kind("lines")
def lines(data: dict):
    """data: x (list), series {name: list of y}, xlabel, ylabel, logx (bool), logy (bool), title, marker (bool)."""
    fig, ax = new_figure(data.get("width", 5.0), data.get("height", 3.2))
    x = data["x"]
    for name, ys in data["series"].items():
        ax.plot(x[: len(ys)], ys, marker="o" if data.get("marker") else None, markersize=3, label=name)
    if data.get("logx"):
        ax.set_xscale("log")
    if data.get("logy"):
        ax.set_yscale("log")
    if data.get("xticklabels"):
        ax.set_xticks(x)
        labels = [wrap_label(t) for t in data["xticklabels"]]
        if any("\n" in t for t in labels):  # lines of a label stacked sideways: each takes one line's width
            ax.set_xticklabels(labels, rotation=90, ha="center", va="top", fontsize=7)
        else:
            ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_xlabel(data.get("xlabel", ""))
    ax.set_ylabel(data.get("ylabel", ""))
    if data.get("ylim"):
        ax.set_ylim(*data["ylim"])
    if data.get("title"):
        ax.set_title(data["title"], fontsize=10)
    if len(data["series"]) > 1:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if data.get("xticklabels"):
        fit_tick_labels(fig, ax)  # last: measured with the title and the axis labels in place
    return fig


@plot_kind("bars")
def bars(data: dict):
    """data: names (list), values (list), xlabel, ylabel, title, highlight (index or None), vlim (tuple)."""
    names = data["names"]
    fig, ax = new_figure(max(4.0, min(12.0, 0.45 * len(names) + 2)), data.get("height", 3.0))
    colors = ["#4a7bd0"] * len(names)
    if data.get("highlight") is not None:
        colors[data["highlight"]] = "#d0504a"
    ax.bar(range(len(names)), data["values"], color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center",
                       fontsize=8)
    ax.set_ylabel(data.get("ylabel", ""))
    if data.get("vlim"):
        ax.set_ylim(*data["vlim"])
    if data.get("title"):
        ax.set_title(data["title"], fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


@plot_kind("confusion")
def confusion(data: dict):
    """data: matrix (K, K') counts, rows = true class, columns = predicted; class_names (the rows, and the columns
    unless col_names gives them: a last "other" column)."""
    m = np.asarray(data["matrix"], dtype=np.float64)
    names = data["class_names"]
    cols = data.get("col_names", names)
    k = len(names)
    side = min(9.0, 2.0 + 0.45 * max(k, len(cols)))
    fig, ax = new_figure(side + 0.8, side)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    if max(k, len(cols)) <= 20:
        for i in range(k):
            for j in range(len(cols)):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cols)))
    ax.set_yticks(range(k))
    ax.set_xticklabels(cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    return fig
