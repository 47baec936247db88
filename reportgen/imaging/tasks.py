"""Charts of a model's outputs for the tasks beyond the single-label classifier (issue 30): multi-label AP and F1
per label and precision-recall curves, predicted against true values with residuals, per-class scores (IoU, AP), a
segmentation's normalized confusion matrix, detections and masks drawn on images, and the frames of a retrieval
strip (drawn as a grid of images, `reportgen.imaging.grids`).

Each is a plot kind (`reportgen.imaging.plot_kind`): a data dict in, a matplotlib Figure out, laid out for the width
a page shows a chart (`reportgen.imaging.charts.WIDTH`) and growing down with the number of labels or classes.
"""

from __future__ import annotations

import colorsys
import numpy as np

from . import plot_kind
from .charts import DPI, TICK_PT, WIDTH, legend_below, new_figure, set_tick_labels, wrap_label

PRED_COLOR = "#4a7bd0"
TRUE_COLOR = "#e08a2c"
LIST_LIMIT = 60  # a per-class bar chart of more classes shows the lowest and the highest LIST_LIMIT / 2


def class_color(c: int) -> tuple:
    """A colour (RGB floats in [0, 1]) per class index, the same on every figure: matplotlib's "tab20" for the
    first 20 classes, then hues spaced by the golden angle (150 classes of ADE20K stay apart from their
    neighbours)."""
    import matplotlib

    c = int(c)
    if c < 20:
        order = [*range(0, 20, 2), *range(1, 20, 2)]  # the 10 strong colours first
        return tuple(matplotlib.colormaps["tab20"](order[c])[:3])
    h = (c * 0.618033988749895) % 1.0
    return colorsys.hsv_to_rgb(h, 0.75 if c % 2 else 0.55, 0.9 if c % 3 else 0.7)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(min(width, WIDTH), height), dpi=DPI, layout="constrained")


def _values(v: list) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in v], dtype=np.float64)


def _listed(names: list, values: np.ndarray, limit: int = LIST_LIMIT) -> tuple[list, str]:
    """The rows (indices) a per-class chart lists: classes with a value, highest first; over ``limit``, the lowest
    and the highest ``limit // 2`` and a note saying so."""
    have = [i for i in np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable") if np.isfinite(values[i])]
    if len(have) <= limit:
        return have, ""
    half = limit // 2
    return have[:half] + have[-half:], f"the {half} highest and {half} lowest of {len(have)}"


@plot_kind("label-scores")
def label_scores(data: dict):
    """Per-label bars of two scores side by side, one row per label (best first), so that 80+ labels read: data:
    names (K,), series {name: (K,) values or None} (at most 3, e.g. AP and F1), sort_by (a series name), xlabel,
    title. Labels with no value in ``sort_by`` are left out (their count goes in the title)."""
    names = [str(t) for t in data["names"]]
    series = {k: _values(v) for k, v in data["series"].items()}
    key = data.get("sort_by") or next(iter(series))
    rows, note = _listed(names, series[key])
    n = len(rows)
    height = 0.9 + 0.1 * n * len(series) + 0.3
    fig, ax = new_figure(WIDTH, max(2.2, height))
    bar = 0.8 / len(series)
    colors = [PRED_COLOR, TRUE_COLOR, "#6a9f58"]
    for s, (label, vals) in enumerate(series.items()):
        ax.barh(np.arange(n) - 0.4 + bar * (s + 0.5), np.nan_to_num(vals[rows]), height=bar, color=colors[s],
                label=label)
    ax.set_yticks(range(n))
    ax.set_yticklabels([wrap_label(names[i], 40) for i in rows], fontsize=TICK_PT)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel(data.get("xlabel", ""))
    ax.grid(axis="x", alpha=0.3)
    title = data.get("title", "")
    left = len(names) - int(np.isfinite(series[key]).sum())
    extra = [t for t in (note, f"{left} without a value left out" if left else "") if t]
    if title or extra:
        ax.set_title(title + (" (" + "; ".join(extra) + ")" if extra else ""), fontsize=9)
    if len(series) > 1:
        legend_below(fig, ax)
    return fig


@plot_kind("pr-curves")
def pr_curves(data: dict):
    """Precision against recall: data: curves [{"name", "precision", "recall"}] (one per label), micro {"precision",
    "recall"} or None (all labels pooled), title. Up to 10 labels get a colour and a legend entry; more are drawn
    thin and grey behind the pooled curve (a legend of 80 colours tells nothing apart)."""
    curves = data["curves"]
    fig, ax = new_figure(WIDTH, 4.0)
    few = len(curves) <= 10
    for i, c in enumerate(curves):
        r, p = np.r_[0.0, c["recall"]], np.r_[1.0 if len(c["precision"]) else 0.0, c["precision"]]
        if few:
            ax.step(r, p, where="pre", color=class_color(i), linewidth=1.2, label=str(c["name"]))
        else:
            ax.step(r, p, where="pre", color="0.6", linewidth=0.6, alpha=0.5)
    if data.get("micro") is not None:
        m = data["micro"]
        ax.step(np.r_[0.0, m["recall"]], np.r_[1.0, m["precision"]], where="pre", color="black", linewidth=2,
                label="all labels pooled (micro)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    if data.get("title"):
        ax.set_title(data["title"], fontsize=9)
    legend_below(fig, ax)
    return fig


@plot_kind("predicted-vs-true")
def predicted_vs_true(data: dict):
    """One row per output: predicted against true value (a point per image, the dashed identity line a perfect
    model follows) and the histogram of the residuals (prediction - truth). data: outputs [{"name", "true" (n,),
    "pred" (n,), "r2" (or None), "mae"}]."""
    outs = data["outputs"]
    fig = _figure(WIDTH, 0.4 + 2.3 * len(outs))
    axes = fig.subplots(len(outs), 2, squeeze=False, gridspec_kw={"width_ratios": [1.15, 1]})
    for row, o in zip(axes, outs):
        t, p = np.asarray(o["true"], dtype=np.float64), np.asarray(o["pred"], dtype=np.float64)
        ax = row[0]
        ax.scatter(t, p, s=6, alpha=0.6, color=PRED_COLOR, linewidths=0)
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="grey", linewidth=1)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel(f"true {o['name']}", fontsize=8)
        ax.set_ylabel("predicted", fontsize=8)
        r2 = "" if o.get("r2") is None else f"R² {o['r2']:.3f}, "
        ax.set_title(f"{r2}MAE {o['mae']:.3g}", fontsize=8)
        ax.tick_params(labelsize=TICK_PT)
        ax.grid(alpha=0.3)
        ax = row[1]
        e = p - t
        ax.hist(e, bins=min(40, max(5, int(np.sqrt(len(e))))), color=PRED_COLOR)
        ax.axvline(0, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"residuals of {o['name']}", fontsize=8)
        ax.set_xlabel("residual (predicted − true)", fontsize=8)
        ax.set_ylabel("images", fontsize=8)
        ax.tick_params(labelsize=TICK_PT)
        ax.grid(alpha=0.3)
    return fig


@plot_kind("output-histograms")
def output_histograms(data: dict):
    """Histograms of values, one panel per series, two per row: data: series [{"name", "values" (n,), "counts"
    (bool: whole numbers, one bar per value)}], xlabel, ylabel."""
    series = data["series"]
    cols = 1 if len(series) == 1 else 2
    rows = -(-len(series) // cols)
    fig = _figure(WIDTH, 0.3 + 2.1 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[len(series):]:
        ax.set_visible(False)
    for ax, s in zip(axes.ravel(), series):
        v = np.asarray(s["values"], dtype=np.float64)
        v = v[np.isfinite(v)]
        if s.get("counts") and len(v):
            # at least three whole numbers on the axis: with one value (8 images of 0 detections) the integer
            # locator finds too few ticks in one bar's width and falls back to fractions (-0.4, -0.2...)
            lo, hi = v.min(), max(v.max(), v.min() + 2)
            ax.hist(v, bins=np.arange(lo - 0.5, hi + 1.5), color=PRED_COLOR, rwidth=0.85)
            ax.set_xlim(lo - 0.7, hi + 0.7)
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:
            ax.hist(v, bins=min(40, max(5, int(np.sqrt(max(len(v), 1))))), color=PRED_COLOR)
        ax.set_title(str(s["name"]), fontsize=8)
        ax.set_xlabel(data.get("xlabel", ""), fontsize=8)
        ax.set_ylabel(data.get("ylabel", "images"), fontsize=8)
        ax.tick_params(labelsize=TICK_PT)
        ax.grid(alpha=0.3)
    return fig


@plot_kind("class-scores")
def class_scores(data: dict):
    """A score per class (IoU, AP) as horizontal bars, best first, each bar in its class's colour (`class_color`),
    a line at the mean over the classes with a value: data: names (K,), values (K,) (None: no value, left out),
    mean, mean_label, xlabel, title. Over `LIST_LIMIT` classes, the lowest and the highest half of it."""
    names = [str(t) for t in data["names"]]
    vals = _values(data["values"])
    rows, note = _listed(names, vals)
    n = len(rows)
    fig, ax = new_figure(WIDTH, max(2.0, 1.1 + 0.17 * n))
    ax.barh(range(n), vals[rows], color=[class_color(i) for i in rows], height=0.8)
    ax.set_yticks(range(n))
    ax.set_yticklabels([wrap_label(names[i], 40) for i in rows], fontsize=TICK_PT)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0, 1)
    if data.get("mean") is not None:
        ax.axvline(data["mean"], color="black", linestyle="--", linewidth=1,
                   label=f"{data.get('mean_label', 'mean')} {data['mean']:.3f}")
        legend_below(fig, ax)
    ax.set_xlabel(data.get("xlabel", ""))
    ax.grid(axis="x", alpha=0.3)
    title = data.get("title", "")
    if title or note:
        ax.set_title(title + (f" ({note})" if note else ""), fontsize=9)
    return fig


@plot_kind("pixel-confusion")
def pixel_confusion(data: dict):
    """A confusion matrix of pixel counts normalized by row (the share of each true class's pixels predicted as
    each class): data: matrix (R, C) counts (rows true classes, columns predicted; a last "other" column allowed),
    class_names (R), col_names (C, default class_names). Up to 22 columns the cells give their share in percent
    (from 1%); the chart keeps the page's width and grows down with the rows."""
    m = np.asarray(data["matrix"], dtype=np.float64)
    names = [str(t) for t in data["class_names"]]
    cols = [str(t) for t in data.get("col_names", names)]
    k = len(names)
    size = TICK_PT if max(k, len(cols)) <= 22 else TICK_PT - 1
    row = max(min(0.3, 3.6 / max(k, len(cols), 1)), size * 1.3 / 72)
    fig, ax = new_figure(WIDTH, 1.9 + row * k)
    total = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, total, out=np.zeros_like(m), where=total > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    if len(cols) <= 22:
        for i in range(k):
            for j in range(len(cols)):
                if frac[i, j] >= 0.01:
                    ax.text(j, i, f"{100 * frac[i, j]:.0f}", ha="center", va="center",
                            fontsize=5.5 if len(cols) > 12 else 7, color="white" if frac[i, j] > 0.5 else "black")
    ax.set_yticks(range(k))
    ax.set_yticklabels([wrap_label(t, 22) for t in names], fontsize=size)
    ax.set_ylabel("true class")
    ax.set_xlabel("predicted class")
    fig.colorbar(im, ax=ax, location="top", shrink=0.6, aspect=30, label="share of the true class's pixels")
    set_tick_labels(fig, ax, list(range(len(cols))), cols, fontsize=size)
    return fig


def _image_axes(ax, image: np.ndarray) -> None:
    ax.imshow(np.asarray(image), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


@plot_kind("detections")
def detections(data: dict):
    """An image with its detections (solid boxes in the class's colour, "class score" on a tab above) and its true
    boxes (dashed, in the class's colour): data: image (H, W, 3) floats in [0, 1], boxes (j, 4) x0 y0 x1 y1,
    labels (j,), scores (j,), truth_boxes (t, 4) and truth_labels (t,) or None, class_names, title."""
    from matplotlib.patches import Rectangle

    img = np.asarray(data["image"])
    h, w = img.shape[:2]
    fig = _figure(WIDTH * 0.62, max(2.0, WIDTH * 0.62 * h / max(w, 1) + 0.5))
    ax = fig.add_subplot(1, 1, 1)
    _image_axes(ax, img)
    names = data["class_names"]
    if data.get("truth_boxes") is not None:
        for b, c in zip(np.asarray(data["truth_boxes"]).reshape(-1, 4), data["truth_labels"]):
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, linestyle="--",
                                   linewidth=1.4, edgecolor=class_color(c)))
    for b, c, s in zip(np.asarray(data["boxes"]).reshape(-1, 4), data["labels"], data["scores"]):
        color = class_color(c)
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, linewidth=1.6, edgecolor=color))
        top = b[1] < 0.08 * h  # no room above the box: the tab goes inside it, under its top edge
        ax.text(b[0], max(b[1], 0), f"{names[int(c)]} {s:.2f}", fontsize=6.5, color="white",
                va="top" if top else "bottom", ha="left", clip_on=True,
                bbox={"facecolor": color, "edgecolor": "none", "pad": 1.0, "alpha": 0.85})
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    if data.get("title"):
        ax.set_title(wrap_label(data["title"], 50), fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="black", linewidth=1.6, label="predicted")]
    if data.get("truth_boxes") is not None:
        handles.append(Line2D([], [], color="black", linewidth=1.4, linestyle="--", label="true"))
    legend_below(fig, handles=handles, labels=[h.get_label() for h in handles])
    return fig


def mask_rgb(image: np.ndarray, mask: np.ndarray, alpha: float = 0.55, ignore: int = 255) -> np.ndarray:
    """``image`` (H, W, 3) floats in [0, 1] with the classes of ``mask`` (H, W) ints laid over it in their colours
    (`class_color`); ``ignore`` pixels left as they are."""
    img = np.asarray(image, dtype=np.float64)
    mask = np.asarray(mask).astype(np.int64)
    out = img.copy()
    for c in np.unique(mask):
        if c == ignore:
            continue
        sel = mask == c
        out[sel] = (1 - alpha) * img[sel] + alpha * np.asarray(class_color(c))
    return out


@plot_kind("masks")
def masks(data: dict):
    """An image, its true class mask (when given) and the predicted one, each laid over the image in the classes'
    colours, with a legend of the classes they show (the most common 24): data: image (H, W, 3) floats in [0, 1],
    pred (H, W) class indices, truth (H, W) or None (255 = not scored, drawn as the bare image), class_names,
    title."""
    img = np.asarray(data["image"], dtype=np.float64)
    pred = np.asarray(data["pred"])
    truth = None if data.get("truth") is None else np.asarray(data["truth"])
    panels = [("image", img), *([("true classes", mask_rgb(img, truth))] if truth is not None else []),
              ("predicted classes", mask_rgb(img, pred))]
    h, w = img.shape[:2]
    side = WIDTH / len(panels)
    fig = _figure(WIDTH, side * h / max(w, 1) + 0.9)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, rgb) in zip(axes, panels):
        _image_axes(ax, rgb)
        ax.set_title(title, fontsize=8)
    if data.get("title"):
        fig.suptitle(wrap_label(data["title"], 70), fontsize=8)
    from matplotlib.patches import Patch

    values = np.concatenate([pred.ravel(), truth.ravel() if truth is not None else np.zeros(0, np.int64)])
    counts = np.bincount(values[values != 255].astype(np.int64))
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0][:24]
    names = data["class_names"]
    handles = [Patch(color=class_color(c), label=str(names[c])) for c in sorted(present)]
    legend_below(fig, handles=handles, labels=[p.get_label() for p in handles])
    return fig


SAME_COLOR = (0.18, 0.62, 0.31)  # a retrieved image of the query's class
OTHER_COLOR = (0.82, 0.31, 0.29)  # of another class


def framed(image: np.ndarray, color: tuple, share: float = 0.06) -> np.ndarray:
    """``image`` (H, W, 3) floats in [0, 1] inside a frame of ``color`` (RGB floats) ``share`` of its shorter side
    thick (at least 1 pixel), the same size: how a retrieval strip (a `reportgen.artifacts.Grid`) marks a
    neighbour of the query's class (`SAME_COLOR`) or of another (`OTHER_COLOR`)."""
    out = np.array(image, dtype=np.float64, copy=True)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    t = max(1, int(round(share * min(out.shape[:2]))))
    c = np.asarray(color, dtype=np.float64)
    out[:t], out[-t:], out[:, :t], out[:, -t:] = c, c, c, c
    return out
