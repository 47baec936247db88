"""Parameter views: a 2-D perceptron's hidden units over its training, and convolution filters as pictures."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ..artifacts import Grid, NotApplicable, Plot, Result
from ..config import doc
from . import EVERY_TASK, Analysis, NOTHING, register
from .activations import enlarge_tiles


@dataclass
class PerceptronParams:
    panels: int = field(default=6, metadata=doc(
        "Panels in the strip: training snapshots evenly spread from the first to the last kept one.", min=1, max=12))
    frames: int = field(default=40, metadata=doc(
        "At most this many snapshots in the animation (evenly spread, always the first and the last).",
        min=1, max=200))
    resolution: int = field(default=120, metadata=doc(
        "Grid points per axis at which the network's response is evaluated.", min=20, max=400))
    max_points: int = field(default=1500, metadata=doc(
        "At most this many data points drawn (a seeded pick).", min=0, max=20000))


def spread(n: int, k: int) -> list[int]:
    """``k`` indices into ``range(n)`` evenly spread, first and last included, ascending and distinct."""
    if n <= 0 or k <= 0:
        return []
    if k == 1:
        return [n - 1]
    return sorted(set(np.round(np.linspace(0, n - 1, min(k, n))).astype(int).tolist()))


def plane_extent(points: np.ndarray, margin: float = 0.08) -> tuple[float, float, float, float]:
    """A square (xmin, xmax, ymin, ymax) around ``points`` (M, 2) with a relative margin; [-1, 1]^2 when empty."""
    if len(points) == 0:
        return (-1.0, 1.0, -1.0, 1.0)
    lo, hi = points.min(axis=0), points.max(axis=0)
    centre = (lo + hi) / 2
    half = max(float((hi - lo).max()) / 2, 1e-6) * (1 + margin)
    return (float(centre[0] - half), float(centre[0] + half), float(centre[1] - half), float(centre[1] + half))


@register
class Perceptron(Analysis):
    name = "perceptron"
    title = "Hidden units of a 2-D network"
    section = "parameters"
    summary = ("each first-layer unit's line w·x + b = 0 over the data and the network's response, at every kept "
               "training snapshot")
    paper = "Montúfar, Pascanu, Cho & Bengio, On the Number of Linear Regions of Deep Neural Networks, NeurIPS 2014"
    paper_url = "https://arxiv.org/abs/1402.1869"
    order = 10
    needs_images = False
    Params = PerceptronParams
    # any task reaches `check`, so that an image model hears the first reason (it is no 2-D network), not its task
    tasks = EVERY_TASK

    def check(self, ctx, params):
        from ..methods.perceptron import find_first_linear2

        if find_first_linear2(ctx.model) is None:
            raise NotApplicable("the model's first layer is not a Linear(2, n) layer on points of the plane")
        if ctx.task != "classify":
            raise NotApplicable(self.not_for_task(ctx.task))

    def run(self, ctx, params, reduced, upstream=NOTHING):
        from ..methods.perceptron import find_first_linear2, hidden_lines, response_grid

        name, first = find_first_linear2(ctx.model)
        predictions = ctx.predictions
        rows = predictions.indices
        if params.max_points and len(rows) > params.max_points:
            rows = np.sort(ctx.rng("perceptron").choice(rows, params.max_points, replace=False))
        elif not params.max_points:
            rows = rows[:0]
        points = np.stack([np.asarray(ctx.images.display(int(i)), dtype=np.float64).reshape(-1)[:2] for i in rows]) \
            if len(rows) else np.zeros((0, 2))
        labels = ctx.images.labels[rows] if len(rows) else np.zeros(0, dtype=np.int64)
        if len(rows) and (labels < 0).all():  # unlabelled points: colour them by the model's prediction
            labels = predictions.preds[np.searchsorted(predictions.indices, rows)]
        extent = plane_extent(points)

        history = list(ctx.loaded.history or [])
        # the snapshots are loaded into a copy, so the user's model keeps its weights
        twin = copy.deepcopy(ctx.model) if history else ctx.model
        snapshots = history or [(None, None)]
        wanted = sorted(set(spread(len(snapshots), params.frames)) | set(spread(len(snapshots), params.panels)))
        panels = {}
        for pos in ctx.iterate(wanted, length=len(wanted), label="perceptron snapshots"):
            iteration, state = snapshots[pos]
            if state is not None:
                twin.load_state_dict(state)
            layer = twin.get_submodule(name)
            panels[pos] = {
                "title": "current weights" if iteration is None else f"iteration {iteration}",
                "grid": response_grid(twin, extent, params.resolution),
                "lines": hidden_lines(layer.weight, layer.bias if layer.bias is not None
                                      else np.zeros(layer.out_features), extent),
            }
        base = {"extent": extent, "points": points, "labels": labels, "class_names": ctx.class_names}
        strip = [panels[p] for p in spread(len(snapshots), params.panels)]
        frames = [panels[p] for p in spread(len(snapshots), params.frames)]
        final = panels[len(snapshots) - 1]
        in_view = sum(seg is not None for seg in final["lines"])
        units = first.out_features
        what = (f"{len(strip)} of the {len(history)} kept training snapshots" if history
                else "the current weights (the model has no training history)")
        shading = ("Grey: the difference of the two outputs (logit 1 - logit 0), light for class 0 and dark for "
                   "class 1, each panel on its own symmetric scale; black curve: the decision boundary (difference "
                   "0); red lines: w·x + b = 0 of each of the first layer's units; dots: the data coloured by "
                   f"{'label' if (ctx.images.labels >= 0).any() else 'predicted class'}.")
        result = Result()
        result.items.append(Plot(
            key="strip", kind="perceptron-strip", label="Hidden units over training", layer=name,
            caption=f"{what}. {shading}", data={**base, "panels": strip}))
        if len(frames) > 1:
            result.items.append(Plot(
                key="animation", kind="perceptron-frames", label="Training, animated", layer=name,
                caption=f"All {len(frames)} drawn snapshots, one per frame (the still is the last). {shading}",
                data={**base, "panels": frames}))
        result.metrics.update({"hidden units": int(units), "unit lines in view": int(in_view),
                               "snapshots": len(history)})
        if in_view < units:
            result.notes.append(f"{units - in_view} of the {units} units' lines lie outside the drawn square: "
                                "such a unit's input w·x + b has one sign at every point shown (a ReLU unit is on, "
                                "or off, for all of them).")
        return result


@dataclass
class FilterParams:
    n_in: int = field(default=15, metadata=doc(
        "Later conv layers: show the first n_in input channels of each filter (grid columns).", min=1, max=128))
    n_out: int = field(default=20, metadata=doc(
        "Later conv layers: show the first n_out filters (grid rows).", min=1, max=256))
    first_max: int = field(default=128, metadata=doc(
        "First layer: show at most this many filters.", min=1, max=1024))
    shared_scale: bool = field(default=False, metadata=doc(
        "First layer: one colour scale for all filters (compares strengths) instead of one per filter "
        "(shows each pattern at full contrast)."))


def conv_layers(model) -> list[tuple[str, object]]:
    from torch import nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@register
class Filters(Analysis):
    name = "filters"
    tasks = EVERY_TASK  # reads activations or weights only, never the output
    title = "Convolution filters"
    section = "parameters"
    summary = "the first conv layer's filters as small pictures, and the weights of later conv layers as grids"
    paper = "Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014"
    paper_url = "https://arxiv.org/abs/1311.2901"
    order = 20
    Params = FilterParams

    def check(self, ctx, params):
        if not conv_layers(ctx.model):
            raise NotApplicable("the model has no Conv2d layer")

    def run(self, ctx, params, reduced, upstream=NOTHING):
        from ..methods.activations import filter_grid, first_layer_tiles

        convs = conv_layers(ctx.model)
        first_name, first = convs[0]
        weight = first.weight.detach().cpu()[: params.first_max]
        out_ch, in_ch, kh, kw = weight.shape
        tiles = first_layer_tiles(weight, shared_scale=params.shared_scale)
        scale = tiles["scale"]
        how = (f"all on one scale (±{float(scale.max()):.3g})" if params.shared_scale
               else f"each filter on its own scale (its largest |weight|, between {float(scale.min()):.3g} "
                    f"and {float(scale.max()):.3g})")
        of = f"{out_ch} filters" + (f" (the first {out_ch} of {first.weight.shape[0]})"
                                    if first.weight.shape[0] > out_ch else "")
        cols = min(out_ch, 8)
        result = Result()
        group = f"First layer: {first_name}"
        if in_ch == 3:
            result.items.append(Grid(
                key="first-rgb", tiles=enlarge_tiles(tiles["rgb"], 40), style="rgb", cols=cols, layer=first_name, group=group,
                tile_labels=[str(f) for f in range(out_ch)],
                label=f"{first_name}: {of} as colour pictures",
                caption=f"{kh}x{kw} filters of {first_name}, the three input channels as red, green and blue in the "
                        f"model's input order; grey (0.5) = zero weight, {how}."))
            for c, colour in enumerate(("red", "green", "blue")):
                result.items.append(Grid(
                    key=f"first-channel-{c}", tiles=enlarge_tiles(tiles["channels"][:, c], 40), style="signed", cols=cols, vmax=1.0,
                    layer=first_name, group=group, label=f"{first_name}: weights on the {colour} input channel",
                    tile_labels=[str(f) for f in range(out_ch)],
                    caption=f"Input channel {c} ({colour}) of every filter; red = positive, blue = negative, white = "
                            f"0, {how}."))
        elif in_ch == 1:
            result.items.append(Grid(
                key="first-grey", tiles=enlarge_tiles(tiles["grey"], 40), style="signed", cols=cols, vmax=1.0, layer=first_name,
                group=group, label=f"{first_name}: {of}", tile_labels=[str(f) for f in range(out_ch)],
                caption=f"{kh}x{kw} filters of {first_name} on the greyscale input; red = positive weight (responds "
                        f"to bright pixels), blue = negative, white = 0, {how}."))
        else:
            for c in range(min(in_ch, 3)):
                result.items.append(Grid(
                    key=f"first-channel-{c}", tiles=enlarge_tiles(tiles["channels"][:, c], 40), style="signed", cols=cols, vmax=1.0,
                    layer=first_name, group=group, label=f"{first_name}: weights on input channel {c}",
                    tile_labels=[str(f) for f in range(out_ch)],
                    caption=f"Input channel {c} of every filter; red = positive, blue = negative, white = 0, {how}."))
        result.metrics[f"mean |w| {first_name}"] = float(first.weight.detach().abs().mean())

        selected = set(ctx.layers)
        for name, module in convs[1:]:
            if name not in selected:
                continue
            grid, limit = filter_grid(module.weight.detach().cpu(), params.n_in, params.n_out)
            n_out, n_in, kh, kw = grid.shape
            result.items.append(Grid(
                key=f"layer-{name}", tiles=enlarge_tiles(grid.reshape(n_out * n_in, kh, kw), 20), style="signed", cols=n_in, vmax=limit,
                layer=name, group="Later layers", label=f"{name}: {n_out} filters x {n_in} input channels",
                row_labels=[f"filter {f}" for f in range(n_out)], col_labels=[f"in {j}" for j in range(n_in)],
                caption=f"Raw {kh}x{kw} weights of {name}: row i = filter i, column j = its weights on input channel "
                        f"j (the first {n_out} of {module.weight.shape[0]} filters and {n_in} of "
                        f"{module.weight.shape[1]} channels). One shared scale: red +{limit:.3g}, white 0, "
                        f"blue -{limit:.3g}."))
            result.metrics[f"mean |w| {name}"] = float(module.weight.detach().abs().mean())
        if len(convs) > 1 and not any(n in selected for n, _ in convs[1:]):
            result.notes.append("No later conv layer is among the selected layers (--layers): only the first layer "
                                "is shown.")
        return result
