"""The reliability diagram (Guo et al., On Calibration of Modern Neural Networks, ICML 2017, figure 1): one bar per
confidence bin, its height the accuracy of the predictions in it, beside the diagonal a calibrated model follows."""

from __future__ import annotations

import numpy as np

from . import plot_kind
from .charts import legend_below, new_figure


@plot_kind("reliability")
def reliability(data: dict):
    """data: lower, upper (B,) bin edges; accuracy, confidence (B,) (None for an empty bin); count (B,); ece;
    title. Bars: accuracy per bin; red outline: the bin's mean confidence (the gap to the bar is the bin's
    miscalibration); dashed: the diagonal; the numbers over the bars are the bins' counts."""
    lower = np.asarray(data["lower"], dtype=np.float64)
    upper = np.asarray(data["upper"], dtype=np.float64)
    acc = np.array([np.nan if v is None else v for v in data["accuracy"]], dtype=np.float64)
    conf = np.array([np.nan if v is None else v for v in data["confidence"]], dtype=np.float64)
    count = np.asarray(data["count"])
    fig, ax = new_figure(5.0, 4.2)
    width = upper - lower
    full = count > 0
    ax.bar(lower[full], acc[full], width=width[full], align="edge", color="#4a7bd0", edgecolor="white",
           label="accuracy of the bin")
    ax.bar(lower[full], conf[full], width=width[full], align="edge", fill=False, edgecolor="#d0504a",
           linewidth=1.2, label="mean confidence of the bin")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="calibrated")
    for lo, w, a, c in zip(lower[full], width[full], acc[full], count[full]):
        ax.text(lo + w / 2, min(a, 0.93) + 0.02, str(int(c)), ha="center", va="bottom", fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(data.get("title") or f"ECE {data['ece']:.3f}", fontsize=10)
    legend_below(fig, ax)  # outside: the bars fill the axes
    ax.grid(alpha=0.3)
    return fig
