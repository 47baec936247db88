"""Charts lay out without matplotlib warnings, whatever the names on their axes (issue 27).

A Hugging Face ViT build printed eight "constrained_layout not applied because axes sizes collapsed to zero" warnings
over the progress bars: the randomization test's similarity curves label each step of its cascade with the dotted
names of the modules it re-initializes, and those labels took all the figure's height. Here the same chart is drawn
with the labels a transformer's cascade gets, warnings as errors, and checked as drawn: every label inside the
figure, no two labels overlapping, the axes of a useful size.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from reportgen import imaging
from reportgen.imaging.charts import wrap_label


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
    assert max(len(line) for t in shown for line in t.splitlines()) <= 24


def test_short_labels_keep_their_layout():
    fig, renderer = draw("lines", {"x": [0, 1, 2, 3], "xticklabels": ["conv1", "conv2", "fc1", "logits"],
                                   "series": {"mean": [0, 1, 2, 3], "std": [1, 1, 1, 1]}})
    check_tick_labels(fig, renderer)
    assert abs(fig.get_figwidth() - 5.0) < 1e-9 and fig.get_figheight() < 3.4


def test_wrap_label():
    assert wrap_label("trained") == "trained"
    assert wrap_label("+ vit.layers.1.mlp.fc1 … vit.layers.1.layernorm_after (3 modules)", 24) == \
        "+ vit.layers.1.mlp.fc1 …\nvit.layers.1.\nlayernorm_after (3\nmodules)"
    assert wrap_label("a" * 30 + ".b", 24) == "a" * 30 + ".\nb"  # a part longer than a line keeps its own
