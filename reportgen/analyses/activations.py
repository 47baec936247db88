"""Activation views: maps of sample images, population statistics, embeddings, nearest neighbours, top images.

Population statistics (distributions, embeddings, neighbours, top images) come from the build's one pass over the
image set through reducers with bounded state; per-image views (activation maps, the neighbours' references) run
the model on the sample images only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..artifacts import Grid, NotApplicable, Picture, Plot, Result, Table
from ..capture import capture
from ..config import doc
from ..errors import ConfigError
from ..interactive import add_grid, point_thumbs, tile_browser
from ..methods.degenerate import degenerate_reason
from ..methods.embed import embed_layers, knn_accuracy, nearest_neighbours
from . import EVERY_TASK, Analysis, NOTHING, Reducer, register

# torch, and the methods modules that import it at their top (methods.activations, methods.receptive_field), are
# imported inside functions: `reportgen analyses` and the config checks load every analysis module without torch.


def _short(x: float) -> str:
    return f"{x:.3g}"


def enlarge_tiles(tiles: Any, min_side: int) -> np.ndarray:
    """(n, h, w[, c]) tiles repeated nearest-neighbour by an integer factor so each side reaches ``min_side``: the
    grid renderer only guarantees tiny tiles, and 24x24 maps in a row of 8 would be unreadable."""
    tiles = np.asarray(tiles)
    h, w = tiles.shape[1:3]
    factor = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if factor == 1:
        return tiles
    return np.repeat(np.repeat(tiles, factor, axis=1), factor, axis=2)


def sample_acts(ctx, indices: list[int], layers: list[str]) -> tuple[Any, dict, Any]:
    """Inputs, {layer: acts} and logits of the images ``indices`` (the samples: never the whole set)."""
    import torch

    inputs = ctx.images.load_inputs(list(indices), ctx.device)
    with capture(ctx.model, layers, as_maps=True) as rec, torch.no_grad():
        logits = ctx.model(inputs)
        acts = {name: rec.acts[name] for name in layers}
    return inputs, acts, logits


# ---------------------------------------------------------------------------------------------------------------
# activation maps


@dataclass
class ActivationMapParams:
    images: int = field(default=4, metadata=doc(
        "Show the maps of at most this many of the sample images (keeps the site light).", min=1, max=200))
    channels: int = field(default=16, metadata=doc(
        "Channels (or units) shown per layer; a layer with more gets a deterministic pick.", min=1, max=1024))
    pick: str = field(default="active", metadata=doc(
        "Which channels: 'active' = the largest mean activation over the shown images (the same channels for every "
        "image), 'seed' = a seeded random subset.", choices=("active", "seed")))


@register
class ActivationMaps(Analysis):
    name = "activation-maps"
    tasks = EVERY_TASK  # reads activations or weights only, never the output
    title = "Activation maps"
    section = "activations"
    summary = "what every selected layer computes on a few sample images, channel by channel"
    paper = "Yosinski, Clune, Nguyen, Fuchs & Lipson, Understanding Neural Networks Through Deep Visualization, 2015"
    paper_url = "https://arxiv.org/abs/1506.06579"
    order = 10
    Params = ActivationMapParams

    def run(self, ctx, params, reduced, upstream=NOTHING):
        from ..methods.activations import pick_channels, signed_range

        indices = list(ctx.samples[: params.images])
        layers = list(ctx.layers)
        inputs, acts, _ = sample_acts(ctx, indices, layers)
        picks = {}
        for name in layers:
            a = acts[name]
            if a.ndim in (2, 4):
                gen = ctx.generator(f"activation-maps/{name}")
                picks[name] = pick_channels(a, params.channels, params.pick, generator=gen).tolist()
        shown = [n for n in layers if n in picks]
        skipped = [n for n in layers if n not in picks]
        # a Conv2d's output is not what the next layer sees after BatchNorm and ReLU: each caption names the module
        kinds = {n: r.type for n in shown if (r := ctx.facts.row(n)) is not None}
        how = ("the most active on average over the shown images" if params.pick == "active"
               else "a seeded random pick")
        display = ctx.sample_display()[: len(indices)] if indices else None
        result = Result()
        browse = tile_browser(["image", "layer", "channel"])
        for pos, i in enumerate(indices):
            name_i = ctx.images.names[i]
            group = f"Image {name_i}"
            result.items.append(Picture(
                key=f"img{i}-input", array=display[pos], style="rgb", image=i, group=group,
                label="input",
                caption=f"Image {name_i} as shown to the model ({inputs.shape[-2]}x{inputs.shape[-1]})."))
            x = inputs[pos].detach().cpu().numpy()
            lim = signed_range(x)
            result.items.append(Grid(
                key=f"img{i}-normalized", tiles=enlarge_tiles(x, 96), style="signed", cols=min(len(x), 8), vmax=lim,
                image=i, group=group, label="normalized input channels",
                tile_labels=[f"channel {c}" for c in range(len(x))],
                caption=f"The {len(x)} input channel(s) after normalization ((x - mean) / std), one shared scale: "
                        f"red +{_short(lim)}, white 0, blue -{_short(lim)}."))
            for name in shown:
                a = acts[name][pos].detach().float().cpu().numpy()
                chosen = picks[name]
                if a.ndim == 3:
                    tiles = a[chosen]
                    what = f"{len(chosen)} of {a.shape[0]} channels ({a.shape[1]}x{a.shape[2]} maps)"
                else:  # a feature vector: one square per unit
                    tiles = a[chosen].reshape(-1, 1, 1)
                    what = f"{len(chosen)} of {a.shape[0]} units (one square each)"
                lim = signed_range(tiles)
                listed = ", ".join(map(str, chosen[:24])) + (", ..." if len(chosen) > 24 else "")
                cols = min(len(tiles), 8)
                add_grid(browse, f"img{i}-{name}", len(tiles), cols,
                         [(name_i, name, f"channel {c}" if a.ndim == 3 else f"unit {c}") for c in chosen])
                result.items.append(Grid(
                    key=f"img{i}-{name}", tiles=enlarge_tiles(tiles, 48), style="signed", cols=cols,
                    vmax=lim, image=i, layer=name, group=group, label=name,
                    tile_labels=[f"ch {c}" if a.ndim == 3 else f"unit {c}" for c in chosen],
                    caption=f"{name} on image {name_i}: the output of this {kinds.get(name, 'module')} itself; {what}, "
                            f"{how}: {listed} (reading order). One shared "
                            f"symmetric scale: red +{_short(lim)}, white 0, blue -{_short(lim)}."))
        if skipped:
            result.notes.append(f"Layers without a (N, C, H, W) or (N, F) output are not shown: {', '.join(skipped)}.")
        if browse["tiles"]:
            result.shared["interactive"] = browse
        return result


# ---------------------------------------------------------------------------------------------------------------
# distributions


class StatsReducer(Reducer):
    """One `RunningStats` per layer over the whole image set (constant memory)."""

    def __init__(self, layers: list[str], bins: int) -> None:
        from ..methods.activations import RunningStats

        self.layers = list(layers)
        self.stats = {name: RunningStats(bins) for name in layers}

    def update(self, batch, acts, logits):
        for name in self.layers:
            a = acts[name]
            if a.ndim >= 2:
                self.stats[name].update(a)

    def span(self, acts):
        """{layer: (min, max)} of this batch: the histograms' ranges, agreed on by the ranks of a distributed pass."""
        spans = {}
        for name in self.layers:
            a = acts[name]
            if a.ndim >= 2 and a.numel():
                lo, hi = self.stats[name].span(a.detach())
                if np.isfinite(lo) and np.isfinite(hi):  # NaN: `update` says so
                    spans[name] = (lo, hi)
        return spans

    def cover(self, span):
        for name, (lo, hi) in span.items():
            self.stats[name].cover(lo, hi)

    def merge(self, other):
        for name in self.layers:
            self.stats[name].merge(other.stats[name])


class EverPositive(Reducer):
    """Which units of each layer were ever > 0 over the whole image set: channels of a map (N, C, H, W), features
    of a vector (N, F) or of a token sequence (N, T, D). For the outputs of ReLU modules, where "never > 0" means
    "never fires" (a dead unit)."""

    def __init__(self, layers: list[str]) -> None:
        self.layers = list(layers)
        self.ever: dict[str, np.ndarray] = {}

    def update(self, batch, acts, logits):
        for name in self.layers:
            a = acts[name]
            if a.ndim in (2, 3, 4) and a.numel():
                unit = 2 if a.ndim == 3 else 1  # a token's ReLU (a transformer's MLP) acts on its D features
                active = (a.detach().amax(dim=[d for d in range(a.ndim) if d != unit]) > 0).cpu().numpy()
                self.ever[name] = active | self.ever[name] if name in self.ever else active

    def merge(self, other):
        for name, active in other.ever.items():
            self.ever[name] = active | self.ever[name] if name in self.ever else active.copy()


def relu_outputs(ctx) -> tuple[list[str], list[str]]:
    """(ReLU modules that run once per forward pass, whose output is measured; ReLUs that cannot be measured
    this way: reused modules and functional calls, by where they run), from the plan's non-linearity report."""
    report = ctx.facts.nonlinearities
    if report is None:
        return [], []
    others = [f"{name} (runs {n} times)" for name, n in report.reused_relu_modules.items()]
    others += [f"{where} ({n} functional call{'s' if n > 1 else ''})" for where, n in report.functional_relus.items()]
    return list(report.relu_modules), others


@dataclass
class DistributionParams:
    bins: int = field(default=64, metadata=doc("Histogram bins (an even number).", min=2, max=1024))


@register
class Distributions(Analysis):
    name = "distributions"
    tasks = EVERY_TASK  # reads activations or weights only, never the output
    title = "Activation distributions"
    section = "activations"
    summary = ("histogram, mean and spread of every selected layer, and dead units of every ReLU, over the whole "
               "image set")
    paper = "Glorot, Bordes & Bengio, Deep Sparse Rectifier Neural Networks, AISTATS 2011"
    paper_url = "https://proceedings.mlr.press/v15/glorot11a.html"
    order = 20
    needs_images = False
    Params = DistributionParams

    def check(self, ctx, params):
        if params.bins % 2:
            raise ConfigError(f"analysis.distributions.bins: must be even, got {params.bins}")

    def reducers(self, ctx, params):
        return {"stats": StatsReducer(ctx.layers, params.bins), "relus": EverPositive(relu_outputs(ctx)[0])}

    def run(self, ctx, params, reduced, upstream=NOTHING):
        reducer = reduced["stats"]
        result = Result()
        rows, names, means, stds, dead = [], [], [], [], []
        for name in reducer.layers:
            st = reducer.stats[name]
            if st.count == 0:
                continue
            r = st.result()
            units = len(r["active_units"])
            n_dead = int((~r["active_units"]).sum())
            names.append(name)
            means.append(r["mean"])
            stds.append(r["std"])
            dead.append(r["dead_fraction"])
            row = ctx.facts.row(name)
            rows.append([name, row.type if row else "", units, r["mean"], r["std"], r["min"], r["max"], n_dead,
                         r["dead_fraction"]])
            result.metrics[f"mean {name}"] = r["mean"]
            result.metrics[f"std {name}"] = r["std"]
            result.metrics[f"never positive {name}"] = r["dead_fraction"]
            result.items.append(Plot(
                key=f"hist-{name}", kind="histogram", layer=name, label=name, group="Histograms",
                caption=f"All {r['count']:,} values of {name} over {len(ctx.predictions.indices)} images "
                        f"({params.bins} bins, log counts); red: mean {_short(r['mean'])} ± std {_short(r['std'])}; "
                        f"{n_dead} of {units} units never positive."
                        + (f" Every value is {_short(r['min'])}: the layer is constant over the image set (a "
                           "zero-initialized or dead layer), and the one bar only marks where." if r["min"] == r["max"]
                           else ""),
                data={"edges": r["hist_edges"], "counts": r["hist_counts"], "mean": r["mean"], "std": r["std"],
                      "xlabel": f"{name} output", "title": name}))
        if not rows:
            raise NotApplicable("no selected layer produced a batch of activations")
        result.items.insert(0, Table(
            key="summary", label="Per layer", group=None,
            caption="Over every value of every image: mean, population std, range, and units (channels of a map, "
                    "features of a vector) never > 0 on any image. This is the sign of the module's own output: "
                    "for a Conv2d or Linear followed by BatchNorm it says nothing about whether a later ReLU fires "
                    "(see the dead units of the ReLUs).",
            columns=["layer", "module", "units", "mean", "std", "min", "max", "never positive", "fraction"],
            rows=rows))
        x = list(range(len(names)))
        result.items.insert(1, Plot(
            key="across-layers", kind="lines", label="Across layers",
            caption="Mean and standard deviation of each layer's outputs, and the fraction of its units never "
                    "positive, from the first selected layer to the last.",
            data={"x": x, "xticklabels": names, "series": {"mean": means, "std": stds,
                                                           "never-positive fraction": dead},
                  "marker": True, "ylabel": "value"}))
        measured, unmeasured = relu_outputs(ctx)
        relus = reduced["relus"]
        # for the findings: dead units of each ReLU (dead, units) and the layers constant over the image set
        shared_units = result.shared["units"] = {"dead": {}, "constant": [r[0] for r in rows if r[5] == r[6]]}
        dead_rows = []
        for name in measured:
            if name in relus.ever:
                ever = relus.ever[name]
                n_dead = int((~ever).sum())
                dead_rows.append([name, len(ever), n_dead, n_dead / len(ever)])
                shared_units["dead"][name] = (n_dead, len(ever))
                result.metrics[f"dead {name}"] = n_dead / len(ever)
        if dead_rows:
            result.items.insert(2, Table(
                key="dead", label="Dead units of the ReLUs", group=None,
                caption="Units (channels of a map, features of a vector) of each ReLU module's output that are 0 on "
                        "every image and position of the set: ReLUs that never fire here.",
                columns=["ReLU", "units", "dead", "fraction"], rows=dead_rows))
        else:
            result.notes.append("No ReLU module runs exactly once per forward pass, so no dead units are measured.")
        if unmeasured:
            result.notes.append("ReLUs without one output to measure (not in the dead-unit table): "
                                + ", ".join(unmeasured[:10]) + (", ..." if len(unmeasured) > 10 else "") + ".")
        return result


# ---------------------------------------------------------------------------------------------------------------
# embeddings


def pool_to(acts, max_dim: int):
    """(N, C, H, W) maps average-pooled to the largest square size s with C*s*s <= max_dim (at least 1x1); (N, F)
    unchanged. Returns (N, D) float32 on the CPU."""
    import torch.nn.functional as F

    a = acts.detach().float()
    if a.ndim == 4 and a[0].numel() > max_dim:
        c, h, w = a.shape[1:]
        side = max(1, int(np.floor(np.sqrt(max_dim / c))))
        a = F.adaptive_avg_pool2d(a, (min(side, h), min(side, w)))
    return a.reshape(a.shape[0], -1).cpu()


def index_hash(indices: np.ndarray, key: int) -> np.ndarray:
    """A seeded 64-bit hash of image indices (B,) int -> (B,) uint64: SplitMix64's finalizer (Steele, Lea & Flood,
    Fast Splittable Pseudorandom Number Generators, OOPSLA 2014) of ``index + key``. Uniform enough that the
    ``k`` smallest hashes are a uniform sample of the indices, and a pure function of (index, key)."""
    z = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        z = z + np.uint64(key % 2**64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class FeatureSample(Reducer):
    """A uniform sample of at most ``max_points`` images' flattened features per layer, their labels, predictions and
    indices. Memory: max_points x the sum of the (pooled) feature sizes, whatever the image set's size. Keys "input"
    and "logits" hold the pixels and the logits.

    The images kept are those whose seeded hash of the image index is smallest (a bottom-k sample; the key is drawn
    from ``rng``): the same images whatever the order of the stream, its cut into batches or the number of ranks that
    share it (`merge`), and a stream of at most ``max_points`` images is kept whole.
    """

    def __init__(self, layers: list[str], max_points: int, max_dim: int, rng: np.random.Generator) -> None:
        self.layers = list(layers)
        self.max_points = max_points
        self.max_dim = max_dim
        self.key = int(rng.integers(0, 2**63))
        self.seen = 0
        self.filled = 0  # slots in use
        self.hashes = np.zeros(max_points, dtype=np.uint64)
        self.feats: dict[str, np.ndarray] = {}
        self.indices = np.zeros(max_points, dtype=np.int64)
        self.labels = np.zeros(max_points, dtype=np.int64)
        self.preds = np.zeros(max_points, dtype=np.int64)
        self.alias: set[str] = set()  # selected layers whose output is the logits themselves
        self.raw_dims: dict[str, int] = {}  # numbers per image before pooling

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Admit the images ``indices`` (B,) into the sample: (rows of ``indices`` kept, the slot of each). Kept
        images displace those with the largest (hash, index); the caller fills the slots' data."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        h = index_hash(idx, self.key)
        m = self.filled
        cand_h, cand_i = np.concatenate([self.hashes[:m], h]), np.concatenate([self.indices[:m], idx])
        keep = np.zeros(len(cand_h), dtype=bool)
        keep[np.lexsort((cand_i, cand_h))[: self.max_points]] = True
        rows = np.nonzero(keep[m:])[0]
        # the slots of displaced images first, then empty ones: every displaced image's slot is refilled here
        free = np.concatenate([np.nonzero(~keep[:m])[0], np.arange(m, self.max_points)])
        slots = free[: len(rows)]
        self.hashes[slots], self.indices[slots] = h[rows], idx[rows]
        self.filled = min(self.max_points, m + len(idx))
        return rows, slots

    def merge(self, other: "FeatureSample") -> None:
        """Add the sample of ``other`` (another share of the same stream): exactly the sample of one stream of both."""
        self.alias |= other.alias
        self.raw_dims.update(other.raw_dims)
        self.seen += other.seen
        m = other.filled
        rows, slots = self.take(other.indices[:m])
        for key, f in other.feats.items():
            if key not in self.feats:
                self.feats[key] = np.zeros((self.max_points, f.shape[1]), dtype=np.float32)
            self.feats[key][slots] = f[:m][rows]
        self.labels[slots] = other.labels[:m][rows]
        self.preds[slots] = other.preds[:m][rows]

    def update(self, batch, acts, logits):
        import torch

        n = int(batch.inputs.shape[0])
        if self.seen == 0:
            for name in self.layers:
                a = acts[name]
                if a.shape == logits.shape and torch.equal(a, logits):
                    self.alias.add(name)
        named = {"input": batch.inputs, **{k: v for k, v in acts.items() if k not in self.alias},
                 "logits": logits}
        kept, slots = self.take(batch.indices.numpy())
        self.seen += n
        if not len(kept):
            return
        rows = torch.as_tensor(kept)
        for key, a in named.items():
            f = pool_to(a[rows.to(a.device)], self.max_dim).numpy()
            if key not in self.feats:
                self.feats[key] = np.zeros((self.max_points, f.shape[1]), dtype=np.float32)
                self.raw_dims[key] = int(a[0].numel())
            self.feats[key][slots] = f
        self.indices[slots] = batch.indices.numpy()[rows.numpy()]
        self.labels[slots] = batch.labels.numpy()[rows.numpy()]
        self.preds[slots] = logits.argmax(dim=1).cpu().numpy()[rows.numpy()]

    def collected(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """({key: (M, D)}, indices, labels, preds), rows sorted by image index, keys from input to logits."""
        m = self.filled
        order = np.argsort(self.indices[:m], kind="stable")
        keys = ["input"] + [k for k in self.layers if k in self.feats and k != "input"] + ["logits"]
        return ({k: self.feats[k][:m][order] for k in keys if k in self.feats}, self.indices[:m][order],
                self.labels[:m][order], self.preds[:m][order])


@dataclass
class EmbeddingParams:
    max_points: int = field(default=1000, metadata=doc(
        "Embed at most this many images (a seeded uniform sample of the set, kept during the one pass).",
        min=10, max=20000))
    perplexity: float = field(default=30.0, metadata=doc("t-SNE perplexity (effective number of neighbours).",
                                                        min=2.0, max=200.0))
    max_dim: int = field(default=4096, metadata=doc(
        "Maps with more numbers per image are average-pooled spatially to at most this many before they are "
        "kept (bounds memory; t-SNE reduces to 50 PCA dimensions anyway).", min=16, max=1_000_000))
    k: int = field(default=5, metadata=doc("Neighbours of the held-out k-NN accuracy.", min=1, max=50))
    jobs: int = field(default=2, metadata=doc(
        "Worker threads (processes for layers of more than 3,000 images) for the t-SNE of several layers at once "
        "(the result does not depend on it).",
        min=1, max=64))


@register
class Embeddings(Analysis):
    name = "embeddings"
    task_reason = "it colours its points and scores its neighbours by one predicted class per image"
    title = "Embeddings of the layers"
    section = "activations"
    summary = "t-SNE and PCA of every selected layer's features, from the pixels to the logits, with k-NN accuracy"
    paper = "van der Maaten & Hinton, Visualizing Data using t-SNE, JMLR 2008"
    paper_url = "https://www.jmlr.org/papers/v9/vandermaaten08a.html"
    order = 30
    Params = EmbeddingParams
    splits = True  # a distributed build deals its layers' t-SNE to the ranks

    def reducers(self, ctx, params):
        return {"sample": FeatureSample(ctx.layers, params.max_points, params.max_dim, ctx.rng("embeddings"))}

    def run(self, ctx, params, reduced, upstream=NOTHING):
        reducer: FeatureSample = reduced["sample"]
        feats, indices, labels, preds = reducer.collected()
        if len(indices) < 3:
            raise NotApplicable(f"only {len(indices)} images: at least 3 are needed for an embedding")
        labelled = labels >= 0
        colour = np.where(labelled, labels, preds)
        seed = int(ctx.rng("embeddings-tsne").integers(0, 2**31 - 1))
        result = Result()
        for key in list(feats):
            reason = degenerate_reason(feats[key], f"the features of {key}")
            if reason is not None:
                del feats[key]
                result.notes.append(f"{reason[0].upper()}{reason[1:]}: no embedding.")
        if not feats:
            raise NotApplicable("no layer has features that vary over the images: " + " ".join(result.notes))
        t0 = time.perf_counter()
        # each layer's PCA comes with its t-SNE, from the eigendecomposition both start from
        if ctx.group is None:
            both = embed_layers(feats, params.perplexity, seed, n_jobs=params.jobs, pca=True)
        else:  # one layer per chunk, dealt to the ranks; each layer is embedded as `embed_layers` embeds it alone
            both = dict(zip(feats, ctx.map_chunks(
                lambda key: embed_layers({key: feats[key]}, params.perplexity, seed, n_jobs=1, pca=True)[key],
                list(feats), self.name)))
        tsne, pcas = {k: v[0] for k, v in both.items()}, {k: v[1] for k, v in both.items()}
        t_tsne = time.perf_counter() - t0
        per_layer = []
        knn = {}
        for key, f in feats.items():
            pca = pcas[key]
            if labelled.sum() >= 2 * params.k and len(set(labels[labelled].tolist())) > 1:
                knn[key] = knn_accuracy(f[labelled], labels[labelled], k=params.k, seed=seed % (2**31))
            dims = f.shape[1]
            raw = reducer.raw_dims[key]
            view = ctx.facts.views.get(key)
            tokens = (f" of its patch tokens read as a map ({view.describe()}; prefix tokens such as the class "
                      "token left out)" if view is not None and view.kind == "tokens" and view.prefix else "")
            caption = (f"{len(indices)} images, {dims} numbers each"
                       + (f" (its {raw} values{tokens} average-pooled spatially)" if dims < raw else
                          f" (the values{tokens})" if tokens else "")
                       + f"; colours = {'true class' if labelled.all() else 'true class (predicted where unknown)'}."
                       + (f" Held-out {params.k}-NN accuracy {knn[key]:.3f}." if key in knn else ""))
            per_layer.append(Plot(
                key=f"layer-{key}", kind="embedding", label=key, group="Per layer",
                layer=key if key not in ("input", "logits") else None, caption=caption,
                data={"panels": [{"title": "t-SNE", "xy": tsne[key]}, {"title": "PCA (first 2 components)",
                                                                        "xy": pca}],
                      "labels": colour, "class_names": ctx.class_names, "title": key}))
        keys = list(feats)
        result.items.append(Plot(
            key="overview", kind="embedding-strip", label="From the input to the logits",
            caption=f"t-SNE of {len(indices)} images at each stage (perplexity {params.perplexity:g}), left to "
                    "right and top to bottom from the pixels to the logits; colours = class. Clusters that "
                    "separate as the layers go deeper show where the network forms its classes.",
            data={"panels": [{"title": k + (f" (k-NN {knn[k]:.2f})" if k in knn else ""), "xy": tsne[k]}
                             for k in keys], "labels": colour, "class_names": ctx.class_names}))
        if knn:
            ks = [k for k in keys if k in knn]
            result.items.append(Plot(
                key="knn", kind="lines", label="k-NN accuracy across layers",
                caption=f"Accuracy of a {params.k}-nearest-neighbour classifier (Euclidean) on a held-out 30% of "
                        f"the {int(labelled.sum())} labelled images, fitted on the other 70%, in each layer's "
                        "feature space.",
                data={"x": list(range(len(ks))), "xticklabels": ks, "series": {"k-NN accuracy": [knn[k] for k in ks]},
                      "marker": True, "ylabel": "accuracy", "ylim": [0, 1.02]}))
            for k in ks:
                result.metrics[f"k-NN {k}"] = float(knn[k])
        else:
            result.notes.append("The images have too few labels for a k-NN accuracy.")
        result.items.extend(per_layer)
        # every point of every layer, for the page's explorer (pointed at: its image, class and prediction)
        result.shared["interactive"] = {
            "kind": "embedding", "classes": list(ctx.class_names),
            "points": {"index": indices, "name": [ctx.images.names[int(i)] for i in indices], "label": labels,
                       "pred": preds},
            "layers": [{"key": k, "views": {"t-SNE": tsne[k], "PCA": pcas[k]}, "knn": knn.get(k)} for k in keys],
            "thumbs": point_thumbs(ctx, indices)}
        result.metrics["embedded images"] = int(len(indices))
        result.metrics["t-SNE seconds per layer"] = t_tsne / len(keys)
        if reducer.seen > reducer.max_points:
            result.notes.append(f"A seeded uniform sample of {reducer.max_points} of the {reducer.seen} images is "
                                "embedded (max_points).")
        if reducer.alias:
            result.notes.append(f"{', '.join(sorted(reducer.alias))} outputs the logits themselves: shown as 'logits'.")
        return result


# ---------------------------------------------------------------------------------------------------------------
# nearest neighbours


class FeatureBank(Reducer):
    """A seeded uniform sample of at most ``max_points`` images, chosen as `FeatureSample` chooses (by a seeded hash
    of the image index, whatever the order or the number of ranks): their pixels (the normalized inputs) and their
    features at ``layer``. Memory: max_points x (pixels + features) float32."""

    def __init__(self, layer: str, max_points: int, rng: np.random.Generator) -> None:
        self.layers = [layer]
        self.layer = layer
        self.max_points = max_points
        self.sampler = FeatureSample([], max_points, 1 << 62, rng)
        self.pixels: np.ndarray | None = None
        self.feats: np.ndarray | None = None
        self.indices = np.full(max_points, -1, dtype=np.int64)

    def update(self, batch, acts, logits):
        n = int(batch.inputs.shape[0])
        rows, slots = self.sampler.take(batch.indices.numpy())
        self.sampler.seen += n
        if not len(rows):
            return
        pix = batch.inputs.detach().float().reshape(n, -1).cpu().numpy()[rows]
        f = acts[self.layer].detach().float().reshape(n, -1).cpu().numpy()[rows]
        if self.pixels is None:
            self.pixels = np.zeros((self.max_points, pix.shape[1]), dtype=np.float32)
            self.feats = np.zeros((self.max_points, f.shape[1]), dtype=np.float32)
        self.pixels[slots] = pix
        self.feats[slots] = f
        self.indices[slots] = batch.indices.numpy()[rows]

    @property
    def seen(self) -> int:
        return self.sampler.seen

    def merge(self, other: "FeatureBank") -> None:
        """Add the bank of ``other`` (another share of the same stream): exactly the bank of one stream of both."""
        self.sampler.seen += other.sampler.seen
        if other.pixels is None:
            return
        m = other.sampler.filled
        rows, slots = self.sampler.take(other.indices[:m])
        if self.pixels is None:
            self.pixels = np.zeros((self.max_points, other.pixels.shape[1]), dtype=np.float32)
            self.feats = np.zeros((self.max_points, other.feats.shape[1]), dtype=np.float32)
        self.pixels[slots] = other.pixels[:m][rows]
        self.feats[slots] = other.feats[:m][rows]
        self.indices[slots] = other.indices[:m][rows]

    def kept(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pixels (M, P), features (M, F), image indices (M,)) of the kept images, sorted by image index (so that
        the bank reads the same whatever the order it was filled in)."""
        m = self.sampler.filled
        order = np.argsort(self.indices[:m], kind="stable")
        return self.pixels[:m][order], self.feats[:m][order], self.indices[:m][order]


def feature_layer(ctx) -> str | None:
    """The penultimate layer (the features the last Linear classifies), else the last selected layer."""
    return ctx.facts.penultimate or (ctx.layers[-1] if ctx.layers else None)


@dataclass
class NeighbourParams:
    k_refs: int = field(default=6, metadata=doc("Reference images (the first of the sample images).", min=1, max=50))
    k: int = field(default=6, metadata=doc("Nearest neighbours shown per reference.", min=1, max=30))
    max_points: int = field(default=2000, metadata=doc(
        "Search among at most this many images (a seeded uniform sample kept during the one pass; memory grows "
        "with it, not with the image set).", min=10, max=100000))


@register
class Neighbours(Analysis):
    name = "neighbours"
    task_reason = "it compares each image's predicted class (one per image) with its neighbours'"
    title = "Nearest neighbours"
    section = "activations"
    summary = "the images closest to a reference in the network's feature space, beside the closest in pixels"
    paper = "Krizhevsky, Sutskever & Hinton, ImageNet Classification with Deep Convolutional Neural Networks, 2012"
    paper_url = ("https://papers.nips.cc/paper/2012/hash/c399862d3b9d6b76c8436e924a68c45b-Abstract.html")
    order = 40
    Params = NeighbourParams

    def check(self, ctx, params):
        if feature_layer(ctx) is None:
            raise NotApplicable("no layer before a final Linear layer to take features from")

    def reducers(self, ctx, params):
        return {"bank": FeatureBank(feature_layer(ctx), params.max_points, ctx.rng("neighbours"))}

    def run(self, ctx, params, reduced, upstream=NOTHING):
        bank: FeatureBank = reduced["bank"]
        m = min(bank.seen, bank.max_points)
        if bank.pixels is None or m < 2:
            raise NotApplicable("fewer than 2 images were seen")
        refs = list(ctx.samples[: params.k_refs])
        pixels, feats, index = bank.kept()
        in_bank = {int(i): pos for pos, i in enumerate(index)}
        missing = [i for i in refs if i not in in_bank]
        if missing:  # references outside the sample: their features from the sample images themselves
            inputs, acts, _ = sample_acts(ctx, missing, [bank.layer])
            pixels = np.concatenate([pixels, inputs.detach().float().reshape(len(missing), -1).cpu().numpy()])
            feats = np.concatenate([feats, acts[bank.layer].float().reshape(len(missing), -1).cpu().numpy()])
            index = np.concatenate([index, np.asarray(missing, dtype=np.int64)])
            for j, i in enumerate(missing):
                in_bank[i] = m + j
        q = [in_bank[i] for i in refs]
        result = Result()
        spaces = {}
        for space, values, what in (("features", feats, f"the features of {bank.layer}"),
                                    ("pixels", pixels, "the pixels")):
            reason = degenerate_reason(values, what)
            if reason is None:
                spaces[space] = nearest_neighbours(values, q, k=params.k)
            else:
                result.notes.append(f"{reason[0].upper()}{reason[1:]}: no neighbours in that space.")
        if not spaces:
            raise NotApplicable(" ".join(result.notes))
        labels = ctx.images.labels
        names = ctx.class_names
        has_labels = bool((labels >= 0).any())
        same = {space: [] for space in spaces}

        def pic(i: int, role: str) -> Picture:
            lab = int(labels[i])
            pred = int(ctx.predictions.preds[ctx.predictions.row(i)])
            return Picture(key=f"{role}-{i}", array=ctx.images.display(i).astype(np.float64) / 255.0, style="rgb",
                           label=ctx.images.names[i],
                           caption=f"{role} {ctx.images.names[i]}: class {names[lab] if lab >= 0 else '?'}, "
                                   f"predicted {names[pred]}")

        for r, i in enumerate(refs):
            rows, images = [], []
            for space, near_all in spaces.items():
                near = near_all[r]
                found = [int(index[j]) for j in near]
                agree = (sum(int(labels[j] == labels[i]) for j in found) if has_labels and labels[i] >= 0 else None)
                if agree is not None:
                    same[space].append(agree / max(1, len(found)))
                rows.append([f"{bank.layer} features" if space == "features" else "pixels",
                             "-" if agree is None else f"{agree} of {len(found)}",
                             ", ".join(names[int(labels[j])] if labels[j] >= 0 else "?" for j in found)])
                images.append([pic(i, "reference")] + [pic(j, "neighbour") for j in found])
            lab = int(labels[i])
            result.items.append(Table(
                key=f"ref-{i}", image=i, label=f"Reference {ctx.images.names[i]}"
                + (f" ({names[lab]})" if lab >= 0 else ""),
                caption=f"First image of each row: the reference; then its {params.k} nearest images (Euclidean "
                        f"distance, nearest first) among {m} images, "
                        + " and ".join(f"in the feature space of {bank.layer}" + (" (top)" if len(spaces) > 1 else "")
                                       if space == "features" else
                                       "in pixel space" + (" (bottom" if len(spaces) > 1 else " (")
                                       + ", the normalized inputs)" for space in spaces) + ".",
                columns=["space", "same class", "neighbour classes"], rows=rows, images=images))
        for space, values in same.items():
            if values:
                result.metrics[f"same-class neighbours ({space})"] = float(np.mean(values))
        if bank.seen > bank.max_points:
            result.notes.append(f"Neighbours are searched among a seeded uniform sample of {bank.max_points} of the "
                                f"{bank.seen} images (max_points), so a nearer image may exist outside it.")
        return result


# ---------------------------------------------------------------------------------------------------------------
# top images


class TopReducer(Reducer):
    """Per conv layer: a `StreamingTopK` over every channel and the running sum of channel means (bounded: C x n)."""

    def __init__(self, layers: list[str], n: int) -> None:
        from ..methods.activations import StreamingTopK

        self.layers = list(layers)
        self.top = {name: StreamingTopK(n) for name in layers}
        self.sums: dict[str, np.ndarray] = {}
        self.count = 0

    def update(self, batch, acts, logits):
        for name in self.layers:
            a = acts[name]
            self.top[name].update(a, batch.indices)
            s = a.detach().double().mean(dim=(2, 3)).sum(dim=0).cpu().numpy()
            self.sums[name] = self.sums.get(name, 0) + s
        self.count += int(batch.inputs.shape[0])

    def merge(self, other):
        """Top images merge exactly; the sums of channel means add in float64 (one stream's up to rounding)."""
        for name in self.layers:
            self.top[name].merge(other.top[name])
            if name in other.sums:
                self.sums[name] = self.sums.get(name, 0) + other.sums[name]
        self.count += other.count


@dataclass
class TopParams:
    n: int = field(default=9, metadata=doc("Top images per channel.", min=1, max=64))
    channels: int = field(default=8, metadata=doc(
        "Channels per layer: the ones with the largest mean activation over the image set.", min=1, max=256))


def top_layers(ctx) -> list[str]:
    """The selected layers whose output is a map: conv-like maps, tokens and channels-last maps (their patches)."""
    return ctx.facts.map_layers()


def crop_padded(img: np.ndarray, rf, y: int, x: int) -> np.ndarray:
    """The receptive field of unit (y, x) cut from ``img`` (H, W, C) floats, padded with mid grey where the field
    extends past the image, so that every crop of one layer has the field's full size. A field as large as the
    image in either direction gives the whole image (a padded crop would be mostly grey, and a 2,000-pixel field
    of a deep network would take gigabytes over a grid of crops)."""
    from ..methods.receptive_field import rf_box

    h, w = img.shape[:2]
    top, left, bottom, right = rf_box(rf, y, x, (h, w))
    if rf.covers_input or rf.size[0] >= h or rf.size[1] >= w:
        return img
    full_top = int(round(rf.start[0] + y * rf.jump[0] - (rf.size[0] - 1) / 2))
    full_left = int(round(rf.start[1] + x * rf.jump[1] - (rf.size[1] - 1) / 2))
    out = np.full((rf.size[0], rf.size[1], img.shape[2]), 0.5)
    out[top - full_top: bottom - full_top, left - full_left: right - full_left] = img[top:bottom, left:right]
    return out


@register
class TopImages(Analysis):
    name = "top-images"
    tasks = EVERY_TASK  # reads activations or weights only, never the output
    title = "Top images per channel"
    section = "activations"
    summary = "the image crops that excite a channel most, over the whole image set"
    paper = "Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014"
    paper_url = "https://arxiv.org/abs/1311.2901"
    order = 50
    Params = TopParams

    def check(self, ctx, params):
        if not top_layers(ctx):
            raise NotApplicable("none of the selected layers outputs a feature map or patch tokens")

    def reducers(self, ctx, params):
        return {"top": TopReducer(top_layers(ctx), params.n)}

    def run(self, ctx, params, reduced, upstream=NOTHING):
        reducer: TopReducer = reduced["top"]
        if reducer.count == 0:
            raise NotApplicable("no image was seen")
        cache: dict[int, np.ndarray] = {}

        def image(i: int) -> np.ndarray:
            if i not in cache:
                cache[i] = ctx.images.display(i).astype(np.float64) / 255.0
            return cache[i]

        result = Result()
        browse = tile_browser(["layer", "channel"])
        for name in reducer.layers:
            top = reducer.top[name].result()
            means = reducer.sums[name] / reducer.count
            # most active on average, ties to the lower channel index
            chosen = np.lexsort((np.arange(len(means)), -means))[: params.channels]
            rf = ctx.facts.receptive_field(name)
            tiles = []
            for c in chosen:
                for v, i, (y, x) in zip(top["values"][c], top["indices"][c], top["positions"][c]):
                    tiles.append(crop_padded(image(int(i)), rf, int(y), int(x)))
            n = top["values"].shape[1]
            add_grid(browse, f"top-{name}", len(tiles), n, [(name, f"channel {c}") for c in chosen.tolist()], span=n)
            patch = rf.method == "patch"
            in_h, in_w = ctx.facts.input_shape[-2:]
            whole = rf.covers_input or rf.size[0] >= in_h or rf.size[1] >= in_w  # as `crop_padded` decides
            size = "the whole image" if whole else f"{rf.size[0]}x{rf.size[1]} pixels"
            where = (f"cropped to the patch of the maximal token ({size}); attention lets every token see the whole "
                     "image, so the patch is where the token sits, not all it sees" if patch else
                     f"cropped to the receptive field of the maximal unit ({size}; grey where it extends past the "
                     "image)")
            result.items.append(Grid(
                key=f"top-{name}", tiles=enlarge_tiles(np.stack(tiles), 56), style="rgb", cols=n, layer=name,
                label=name, row_labels=[f"ch {c}" for c in chosen.tolist()],
                caption=f"Row by row, channels {', '.join(map(str, chosen.tolist()))} of {name} (the {len(chosen)} "
                        f"with the largest mean activation over {reducer.count} images); in each row the {n} images "
                        f"whose map reaches the highest maximum, highest first, {where}."))
            result.metrics[f"receptive field {name}"] = int(rf.size[0])
        if browse["tiles"]:
            result.shared["interactive"] = browse
        return result
