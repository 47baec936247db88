"""General chart kinds: lines, bars, confusion matrix. Each takes a data dict and returns a matplotlib Figure."""

from __future__ import annotations

import numpy as np

from . import plot_kind


def new_figure(width: float = 5.0, height: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


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
        ax.set_xticklabels(data["xticklabels"], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel(data.get("xlabel", ""))
    ax.set_ylabel(data.get("ylabel", ""))
    if data.get("ylim"):
        ax.set_ylim(*data["ylim"])
    if data.get("title"):
        ax.set_title(data["title"], fontsize=10)
    if len(data["series"]) > 1:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
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
