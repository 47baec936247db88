"""Charts lay out without matplotlib warnings, whatever the names on their axes (issue 27).

A Hugging Face ViT build printed eight "constrained_layout not applied because axes sizes collapsed to zero" warnings
over the progress bars: the randomization test's similarity curves label each step of its cascade with the dotted
names of the modules it re-initializes, and those labels took all the figure's height. Here the same chart is drawn
with the labels a transformer's cascade gets, warnings as errors, and checked as drawn: every label inside the
figure, no two labels overlapping, the axes of a useful size.

Issue 29: every chart and grid is laid out from its content (panel count, class count, label length) within the
width a page shows it at, and records where it drew what (`reportgen.imaging.figure_layout`, the grids'
`GridLayout`); `layout_problems` judges such a record (also used by the Chromium test on real-size models,
tests/test_layout_real.py).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import torch

from reportgen import imaging
from reportgen.imaging.charts import WIDTH, wrap_label
from reportgen.imaging.grids import DISPLAY_WIDTH, LABEL_PX, draw_grid, fit_lines, label_font

MIN_AXES = (120, 90)  # px as shown: the least width and height of a chart's plot area
MIN_TILE = 20  # px as shown: the least side of a grid's tile
MIN_TEXT = {"plot": 7.0, "grid": 9.0}  # px as shown: the least size of a chart's text and of a grid's labels
CHART_SHOWN = 475  # px: about the width a page gives a chart beside another (1280-px window)


def overlap(a: list, b: list, tol: float = 1.0) -> bool:
    """Boxes [x0, y0, x1, y1] share more than ``tol`` pixels both ways."""
    return min(a[2], b[2]) - max(a[0], b[0]) > tol and min(a[3], b[3]) - max(a[1], b[1]) > tol


def layout_problems(kind: str, layout: dict, width: float, height: float, scale: float) -> list[str]:
    """What is wrong with a figure ("plot" or "grid") drawn as ``layout`` says (boxes in the pixels of its
    ``width`` x ``height`` file), shown at ``scale``: a label or legend cut off or over the data, labels over each
    other, a plot area or tile or text under its least size as shown."""
    out = []
    texts = layout.get("text", [])
    legends = layout.get("legends", [])
    areas = layout.get("axes", []) + layout.get("tiles", [])
    for t in texts + legends + layout.get("notes", []):
        if t[0] < -1 or t[1] < -1 or t[2] > width + 1 or t[3] > height + 1:
            out.append(f"cut: {t} outside {width}x{height}")
    for i, a in enumerate(texts):
        out += [f"labels overlap: {a} {b}" for b in texts[i + 1:] if overlap(a, b)]
    for a in areas:
        shown = ((a[2] - a[0]) * scale, (a[3] - a[1]) * scale)
        if kind == "plot" and (shown[0] < MIN_AXES[0] or shown[1] < MIN_AXES[1]):
            out.append(f"plot area {shown[0]:.0f}x{shown[1]:.0f} px as shown")
        if kind == "grid" and min(shown) < MIN_TILE:
            out.append(f"tile {shown[0]:.0f}x{shown[1]:.0f} px as shown")
        out += [f"over the data: {t} on {a}" for t in texts + legends if overlap(a, t)]
    for g in legends:
        out += [f"legend over a label: {g} {t}" for t in texts if overlap(g, t)]
    if layout.get("font_px") is not None and layout["font_px"] * scale < MIN_TEXT[kind] - 0.05:
        out.append(f"text {layout['font_px'] * scale:.1f} px as shown")
    return out


def chart_problems(fig) -> list[str]:
    """`layout_problems` of a drawn chart, shown `CHART_SHOWN` px wide (or its own width when narrower)."""
    layout = imaging.figure_layout(fig)
    width, height = fig.bbox.width, fig.bbox.height
    return layout_problems("plot", layout, width, height, min(1.0, CHART_SHOWN / width))


def cascade_labels(folder) -> list[str]:
    """The x labels of the randomization test's similarity chart for a 2-layer ViT read from a Hugging Face
    folder, as the analysis writes them."""
    import transformers

    from reportgen.config import load_config
    from reportgen.methods.faithfulness import cascade_layers
    from reportgen.models import load_model

    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(cfg).eval().save_pretrained(str(folder))
    model = load_model(load_config(None, model=str(folder), input_size=[32, 32], channels=3)).model
    layers = cascade_layers(model, torch.zeros(2, 3, 32, 32), 8)
    labels = [" + ".join(step) if len(step) <= 2 else f"{step[0]} … {step[-1]} ({len(step)} modules)"
              for step in layers]
    return ["trained", *[f"+ {n}" for n in labels]]


def draw(kind: str, data: dict):
    """The figure of plot ``kind``, drawn (layout applied) with every warning an error; and its renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    imaging._load_plot_kinds()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = imaging.PLOT_KINDS[kind](data)
        imaging.figure_png(fig)  # savefig runs the layout: where the warning was raised
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
    return fig, canvas.get_renderer()


def check_tick_labels(fig, renderer) -> None:
    (ax,) = fig.axes
    width, height = fig.bbox.width, fig.bbox.height
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    assert boxes
    for b in boxes:  # inside the figure (a pixel of slack for rounding)
        assert b.x0 >= -1 and b.y0 >= -1 and b.x1 <= width + 1 and b.y1 <= height + 1, (b, width, height)
    for a, b in zip(boxes, boxes[1:]):
        assert a.x1 <= b.x0 + 0.5, ("tick labels overlap", a, b)
    axes = ax.get_window_extent(renderer)
    assert axes.width >= 0.5 * width and axes.height >= 0.3 * height, (axes, width, height)


def test_similarity_chart_of_a_transformer_lays_out_without_warning(tmp_path):
    steps = cascade_labels(tmp_path / "vit")
    assert len(steps) >= 6 and max(map(len, steps)) > 40  # the long names that made the layout give up
    series = {"Spearman of |maps|": np.linspace(1, 0, len(steps)).tolist(), "SSIM": [0.5] * len(steps),
              "threshold": [0.5] * len(steps)}
    fig, renderer = draw("lines", {
        "x": list(range(len(steps))), "xticklabels": steps, "marker": True, "ylim": [-0.2, 1.05], "series": series,
        "xlabel": "layers re-initialized (cumulative, from the logits down)",
        "ylabel": "similarity to the trained maps", "title": "Grad-CAM"})
    check_tick_labels(fig, renderer)
    shown = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ["".join(t.split()) for t in shown] == ["".join(t.split()) for t in steps]  # wrapped, never shortened
    # the labels stand upright and make the chart taller, not wider: it keeps the width a page shows
    assert abs(fig.get_figwidth() - WIDTH) < 1e-9 and fig.get_figheight() > 4.0
    assert all(t.get_rotation() == 90 for t in fig.axes[0].get_xticklabels())
    assert not chart_problems(fig), chart_problems(fig)  # the legend under the chart, clear of the curves


def test_short_labels_keep_their_layout():
    fig, renderer = draw("lines", {"x": [0, 1, 2, 3], "xticklabels": ["conv1", "conv2", "fc1", "logits"],
                                   "series": {"mean": [0, 1, 2, 3], "std": [1, 1, 1, 1]}})
    check_tick_labels(fig, renderer)
    assert abs(fig.get_figwidth() - 5.0) < 1e-9 and fig.get_figheight() < 3.4
    assert all(t.get_rotation() == 0 for t in fig.axes[0].get_xticklabels())  # room enough: level
    assert not chart_problems(fig), chart_problems(fig)


def test_wrap_label():
    assert wrap_label("trained") == "trained"
    assert wrap_label("+ vit.layers.1.mlp.fc1 … vit.layers.1.layernorm_after (3 modules)", 24) == \
        "+ vit.layers.1.mlp.fc1 …\nvit.layers.1.\nlayernorm_after (3\nmodules)"
    assert wrap_label("a" * 30 + ".b", 24) == "a" * 30 + ".\nb"  # a part longer than a line keeps its own


def test_fit_lines_breaks_after_dots_and_only_where_needed():
    font = label_font(LABEL_PX)
    width = font.getlength("vit.encoder.")  # the first part and its dot fill a line exactly
    assert fit_lines("vit.encoder.layer.11", font, width) == ["vit.encoder.", "layer.11"]
    assert fit_lines("head 3", font, width) == ["head 3"]
    long = "a" * 40  # no place to break: cut where the line is full
    lines = fit_lines(long, font, width)
    assert "".join(lines) == long and all(font.getlength(ln) <= width for ln in lines) and len(lines) > 1


def tile_colours(n: int) -> np.ndarray:
    """``n`` tiles of 7 x 7 px, each one flat colour of its own: (n, 7, 7, 3)."""
    rng = np.random.default_rng(0)
    return np.repeat(np.repeat(rng.uniform(0.1, 0.9, (n, 1, 1, 3)), 7, axis=1), 7, axis=2)


def test_grid_tiles_and_labels_as_drawn():
    """Each tile lands whole in its box, enlarged by a whole factor towards 48 px, with its label over it; the
    origin and pitch the entry gives point at the same boxes."""
    tiles = tile_colours(16)
    g = draw_grid(tiles, 8, tile_labels=[f"ch {i}" for i in range(16)])
    h, w = g.image.shape[:2]
    assert g.tile == (49, 49) and g.scale == 1.0 and w <= DISPLAY_WIDTH
    for i, (x0, y0, x1, y1) in enumerate(g.boxes["tiles"]):
        r, c = divmod(i, 8)
        assert (x0, y0) == (g.origin[0] + c * g.pitch[1], g.origin[1] + r * g.pitch[0])
        expected = np.round(tiles[i, 0, 0] * 255)
        assert np.abs(g.image[y0:y1, x0:x1].reshape(-1, 3) - expected).max() <= 0.5  # the whole tile, no label on it
    assert len(g.boxes["text"]) == 16
    for (tx0, ty0, tx1, ty1), (x0, y0, x1, y1) in zip(g.boxes["text"], g.boxes["tiles"]):
        assert x0 <= (tx0 + tx1) / 2 <= x1 and ty1 <= y0  # centred over its tile, above it
        assert (g.image[ty0:ty1, tx0:tx1] < 128).any()  # and drawn
    assert not layout_problems("grid", {**g.boxes, "font_px": g.font_px}, w, h, 1.0)


def test_a_wide_grid_keeps_legible_labels_in_its_thumbnail():
    """12 layers x (mean + 12 heads) of 56-px maps, rows named by a Hugging Face ViT's long module names: the grid
    is wider than a page, so its labels are drawn large enough to be LABEL_PX px in the thumbnail a page shows."""
    names = [f"vit.encoder.layer.{i}.attention.attention" for i in range(12)]
    tiles = np.repeat(np.repeat(tile_colours(12 * 13), 8, axis=1), 8, axis=2)  # 56 x 56
    g = draw_grid(tiles, 13, row_labels=names, col_labels=["mean", *[f"head {h}" for h in range(12)]])
    h, w = g.image.shape[:2]
    assert w > DISPLAY_WIDTH and abs(g.scale - DISPLAY_WIDTH / w) < 1e-9
    assert abs(g.font_px * g.scale - LABEL_PX) < 1.0
    assert not layout_problems("grid", {**g.boxes, "font_px": g.font_px}, w, h, g.scale)
    first_tile_x = g.boxes["tiles"][0][0]
    row_label_boxes = [b for b in g.boxes["text"] if b[2] <= first_tile_x]
    assert len(row_label_boxes) >= 12  # every row named (a long name on two lines)
    assert min(b[2] - b[0] for b in g.boxes["tiles"]) * g.scale >= 36  # 13 columns in what the names leave


def test_render_grid_writes_a_page_wide_thumbnail_and_its_layout(tmp_path):
    from PIL import Image

    from reportgen.artifacts import ArtifactWriter, Grid

    writer = ArtifactWriter(tmp_path)
    item = Grid(key="heads", tiles=np.random.default_rng(0).random((2 * 13, 56, 56)), style="heat", cols=13,
                per_tile_scale=True, row_labels=["blocks.0.attn", "blocks.1.attn"],
                col_labels=["mean", *[f"head {h}" for h in range(12)]])
    entry = imaging.render_item(item, writer, "img")
    with Image.open(tmp_path / entry["file"]) as full, Image.open(tmp_path / entry["thumb"]) as thumb:
        assert full.size == (entry["width"], entry["height"]) and full.size[0] > DISPLAY_WIDTH
        assert thumb.size[0] == DISPLAY_WIDTH
        layout = json.loads(full.text[imaging.LAYOUT_KEY])
    at = entry["tiles"]
    assert layout["tiles"][14][:2] == [at["origin"][0] + at["pitch"][1], at["origin"][1] + at["pitch"][0]]
    assert len(layout["text"]) >= 2 + 13


def draw_checked(kind: str, data: dict):
    imaging._load_plot_kinds()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = imaging.PLOT_KINDS[kind](data)
        imaging.figure_png(fig, layout=True)
    assert fig.get_figwidth() <= WIDTH + 1e-9, (kind, fig.get_figwidth())
    assert not chart_problems(fig), (kind, chart_problems(fig))
    return fig


def test_charts_of_a_thousand_class_head():
    """A 1,000-class head's names as long as ImageNet's: the bars lie down (one row per name), the confusion matrix
    keeps its width, the scatters list no 1,000-entry legend; none wider than a page, nothing cut or overlapping."""
    rng = np.random.default_rng(0)
    names = [f"{i:03d} American Staffordshire terrier" for i in range(1000)]
    fig = draw_checked("bars", {"names": names[:30], "values": list(range(30)), "ylabel": "images"})
    assert len(fig.axes[0].patches) == 30 and fig.get_figheight() > 6
    draw_checked("bars", {"names": ["cat", "dog", "bird"], "values": [1, 2, 3], "ylabel": "images"})
    draw_checked("confusion", {"matrix": rng.integers(0, 3, (30, 31)).tolist(), "class_names": names[:30],
                               "col_names": [*names[:30], "other"]})
    labels = rng.integers(0, 1000, 300)
    panels = [{"title": t, "xy": rng.normal(size=(300, 2))} for t in ("t-SNE", "PCA (first 2 components)")]
    fig = draw_checked("embedding", {"panels": panels, "labels": labels, "class_names": names})
    assert not fig.legends
    fig = draw_checked("embedding", {"panels": panels, "labels": labels % 3, "class_names": names})
    assert len(fig.legends) == 1
    digits = [str(d) for d in range(10)]  # the zoo's digits: a legend of 10 in rows that fit the width
    fig = draw_checked("embedding", {"panels": panels, "labels": labels % 10, "class_names": digits})
    assert len(fig.legends) == 1 and fig.legends[0]._ncols < 10
    strip = [{"title": f"vit.encoder.layer.{i}.output", "xy": rng.normal(size=(30, 2))} for i in range(11)]
    draw_checked("embedding-strip", {"panels": strip, "labels": labels[:30] % 3, "class_names": names})


def test_other_chart_kinds_lay_out():
    rng = np.random.default_rng(0)
    draw_checked("histogram", {"edges": np.linspace(-3, 3, 41), "counts": rng.integers(0, 1000, 40), "mean": 0.1,
                               "std": 1.0, "xlabel": "layer1.0.conv1 output", "title": "layer1.0.conv1"})
    draw_checked("reliability", {"lower": np.linspace(0, 0.9, 10), "upper": np.linspace(0.1, 1, 10),
                                 "accuracy": [*rng.random(9).tolist(), None], "confidence": [*np.linspace(
                                     0.05, 0.85, 9).tolist(), None], "count": [3] * 9 + [0], "ece": 0.1})
    panel = {"grid": rng.normal(size=(20, 20)), "lines": [((-1, -1), (1, 1)), None], "title": "epoch 3"}
    fig = draw_checked("perceptron-strip", {"extent": (-2, 2, -2, 2), "points": rng.normal(size=(40, 2)),
                                            "labels": rng.integers(0, 2, 40), "class_names": ["a", "b"],
                                            "panels": [panel] * 7})
    assert len([ax for ax in fig.axes if ax.axison]) == 7
    series = {f"class {c}": rng.random(20).tolist() for c in range(6)}
    draw_checked("lines", {"x": list(range(1, 21)), "series": series, "xlabel": "step", "ylabel": "objective",
                           "width": 6.0, "height": 3.6})


def test_layout_problems_sees_what_issue_29_saw():
    """The checker itself: a legend over the curves, a label past the figure's edge and a plot area squeezed to
    30 px (the resnet18 randomization chart of issue 29) are each reported."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 1.2), dpi=110)  # no layout engine: matplotlib's fixed margins
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], label="Spearman of |maps|")
    ax.plot([0, 1], [1, 0], label="SSIM")
    ax.legend(loc="center")
    ax.set_xlabel("layers re-initialized (cumulative, from the logits down)")
    ax.set_ylabel("similarity to the trained maps")  # taller than the figure: cut at both ends
    problems = chart_problems(fig)
    assert any(p.startswith("over the data") for p in problems), problems
    assert any(p.startswith("cut") for p in problems), problems
    assert any(p.startswith("plot area") for p in problems), problems


def test_one_draw_gives_savefigs_picture_and_the_layout_of_a_draw_of_its_own():
    """`figure_png` draws a figure once and reads the layout boxes from that draw: its pixels are those of
    matplotlib's own savefig (which lays out in a draw of its own first), and its layout chunk equals
    `figure_layout` taken from a separate layout-only draw of the same chart built again."""
    import io

    from PIL import Image

    imaging._load_plot_kinds()
    data = {"x": [0, 1, 2, 3], "xticklabels": ["conv1", "conv2", "fc1", "logits"], "title": "t", "xlabel": "layer",
            "ylabel": "value", "series": {"mean": [0, 1, 2, 3], "std": [1, 1, 1, 2]}}
    fig = imaging.PLOT_KINDS["lines"](data)
    with Image.open(io.BytesIO(imaging.figure_png(fig, layout=True))) as im:
        ours, layout = np.asarray(im.convert("RGBA")), json.loads(im.text[imaging.LAYOUT_KEY])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    with Image.open(buf) as im:
        assert np.array_equal(ours, np.asarray(im.convert("RGBA")))
    again = imaging.figure_layout(imaging.PLOT_KINDS["lines"](data))
    assert layout.keys() == again.keys() and layout["font_px"] == again["font_px"]
    for key in ("axes", "legends", "text"):
        assert len(layout[key]) == len(again[key]) > 0, key
        assert np.abs(np.array(layout[key]) - np.array(again[key])).max() <= 0.5, key


def test_colour_bars_drawn_in_one_figure_are_those_drawn_alone():
    """The colour bars share one figure per style (`imaging._colorbar_figure`): a bar drawn after others of both
    styles is byte for byte the bar drawn first in a fresh figure."""
    import io

    from PIL import Image

    imaging.colorbar_png.cache_clear()
    imaging._colorbar_figure.cache_clear()
    alone = imaging.colorbar_png("signed", 0.0123)
    imaging.colorbar_png("heat", 7.5)
    imaging.colorbar_png("signed", 250.0)
    imaging.colorbar_png.cache_clear()
    assert imaging.colorbar_png("signed", 0.0123) == alone
    # its labels drawn over the bar drawn once without them: the pixels of a whole draw of the figure
    fig, ax, canvas, _ = imaging._colorbar_figure("signed")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["-0.0123", "0", "0.0123"]
    canvas.draw()
    with Image.open(io.BytesIO(alone)) as im:
        assert np.array_equal(np.asarray(im.convert("RGBA")), np.asarray(canvas.buffer_rgba()))


def test_a_reused_layout_is_the_layout_of_a_fresh_figure():
    """`charts.constrained_layout` places a figure whose layout signature it has seen where that one went: the PNG
    is the one a layout of its own gives, for the same decorations with other data (reused) and for other tick
    labels (laid out anew: the x range, hence the ticks, differ)."""
    from reportgen.imaging import charts

    imaging._load_plot_kinds()

    def chart(ys, x_end=1.0, title="one"):
        xs = list(np.linspace(0.0, x_end, len(ys)))
        return imaging.PLOT_KINDS["lines"]({"x": xs, "series": {"a": ys, "b": ys[::-1]}, "ylim": [0, 1.02],
                                            "xlabel": "fraction", "ylabel": "probability", "title": title})

    charts._LAYOUTS.clear()
    imaging.figure_png(chart([0.1, 0.5, 0.9]))
    stored = dict(charts._LAYOUTS)
    reused = imaging.figure_png(chart([0.8, 0.2, 0.4], title="two"), layout=True)
    assert all(charts._LAYOUTS[k] is v for k, v in stored.items()) and len(charts._LAYOUTS) == len(stored)  # reused
    other = imaging.figure_png(chart([0.8, 0.2, 0.4], x_end=250.0), layout=True)
    assert len(charts._LAYOUTS) == len(stored) + 1
    charts._LAYOUTS.clear()
    assert reused == imaging.figure_png(chart([0.8, 0.2, 0.4], title="two"), layout=True)
    charts._LAYOUTS.clear()
    assert other == imaging.figure_png(chart([0.8, 0.2, 0.4], x_end=250.0), layout=True)


def test_figures_that_share_a_renderer_draw_as_with_their_own():
    """`imaging.agg_canvas` gives figures of one size one renderer (and its text caches): a chart drawn after
    another of its size has the pixels of one drawn on a renderer of its own."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    imaging._load_plot_kinds()

    def chart(label):
        return imaging.PLOT_KINDS["histogram"]({"edges": np.linspace(-2, 3, 31), "xlabel": label,
                                                "counts": np.exp(-np.linspace(-2, 3, 30) ** 2) * 1e4})

    imaging.figure_png(chart("x² (other text, other measures)"))
    shared = imaging.figure_png(chart("activation"))
    own = chart("activation")
    FigureCanvasAgg(own)
    buf = io.BytesIO()
    own.savefig(buf, format="png", dpi=own.dpi)
    with Image.open(io.BytesIO(shared)) as a, Image.open(buf) as b:
        assert a.size == b.size and np.array_equal(np.asarray(a.convert("RGBA")), np.asarray(b.convert("RGBA")))


def test_a_count_histogram_has_whole_number_ticks_even_for_one_value():
    # a random RetinaNet finds no box in any image: 8 counts of 0, which once got ticks at -0.4, -0.2, ... 0.4
    from reportgen.imaging.tasks import output_histograms

    for values, first in ((np.zeros(8), 0), (np.array([3, 3, 3]), 3), (np.array([0, 1, 5, 40]), 0)):
        fig = output_histograms({"series": [{"name": "detections", "values": values, "counts": True}]})
        fig.canvas.draw()
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert len(shown) >= 3 and all(float(t).is_integer() for t in shown), shown
        assert lo < first < hi and values.max() < hi
