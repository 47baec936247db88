"""The input's influence: attribution maps of sample images, one analysis per method, plus two helpers.

Every attribution analysis runs the same pipeline (`AttributionAnalysis.run`): pick the class targets of each
sample image (predicted class, the true class where it differs, classes named in the config), compute all maps in
batches with one method function of `reportgen.methods.attribution` / `cams`, show each as a heat overlay on one
colour scale shared by every map of the method and on its own scale, and score the maps against the object masks
when the data set has them. A method differs from the others only in `attribute` (the call of its method function,
named like the analysis with '_' for '-': ``grad-cam`` is `reportgen.methods.cams.grad_cam`) and `options` (the
keyword arguments it needs, read from the plan's model facts); the CAM family shares its layer option and check.

`nonlinearities` says which ReLUs the modified backward rules see and so which maps are exact on this model;
`top-predictions` puts every sample image with its top-5 classes on that image's page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np

from ..artifacts import NotApplicable, Picture, Result, Table
from ..config import doc
from ..errors import ConfigError
from . import EVERY_TASK, Analysis, NOTHING, Upstream, python_name, register
from ..task_targets import GIVEN

SCALES = ("shared", "per-image", "both")
NO_GAP_LINEAR = "the model does not end in global average pooling + one linear layer"
# roles of a map's class target, in the order their groups appear
ROLES = ("predicted", "true", "requested", GIVEN)
ROLE_TITLES = {"predicted": "Predicted class", "true": "True class (where the prediction is wrong)",
               "requested": "Requested classes", GIVEN: "The given target (--target)"}


# ---------------------------------------------------------------------------------------------------------------
# Plain functions on arrays (tested with known answers)


def colour_limits(maps: np.ndarray, percentile: float = 99.0) -> tuple[float, np.ndarray]:
    """Upper colour limits of non-negative maps (N, H, W): ``(shared, per_image)``.

    ``shared`` is the ``percentile`` of all values of all maps (one scale, so maps can be compared); ``per_image``
    (N,) the same percentile of each map alone. Negative values count as 0. A limit of 0 (a map, or all maps, zero
    up to that percentile) falls back to the max, then to 1, so that colours stay defined.
    """
    m = np.clip(np.asarray(maps, dtype=np.float64), 0, None)
    n = m.shape[0]
    flat = m.reshape(n, -1)

    def safe(limit: float, values: np.ndarray) -> float:
        if limit > 0:
            return float(limit)
        top = float(values.max()) if values.size else 0.0
        return top if top > 0 else 1.0

    shared = safe(float(np.percentile(flat, percentile)) if flat.size else 0.0, flat)
    per_image = np.array([safe(float(np.percentile(row, percentile)), row) for row in flat]) if n else np.zeros(0)
    return shared, per_image


def mask_scores(maps: np.ndarray, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """How well non-negative maps (N, H, W) find the objects of boolean ``masks`` (N, H, W), or of a list of N
    bool (H, W) masks where None marks an image without a mask (both its scores NaN).

    Returns ``(mass, hit)``, each (N,) float: ``mass`` = the share of the map's total inside the mask, in [0, 1]
    (a uniform map scores the mask's area fraction); ``hit`` = 1.0 when the map's maximum lies inside the mask,
    else 0.0 (the pointing game of Zhang et al. 2016, https://arxiv.org/abs/1608.00507, without its tolerance
    margin; ties at the maximum count as a hit when any of them is inside). Negative values count as 0; a map that
    is zero everywhere gets NaN for both (it points nowhere).
    """
    m = np.clip(np.asarray(maps, dtype=np.float64), 0, None)
    if isinstance(masks, (list, tuple)):
        none = np.array([k is None for k in masks], dtype=bool)
        blank = np.zeros(m.shape[1:], dtype=bool)
        mass, hit = mask_scores(m, np.stack([blank if k is None else k for k in masks]) if masks else
                                np.zeros(m.shape, dtype=bool))
        mass[none], hit[none] = np.nan, np.nan
        return mass, hit
    k = np.asarray(masks, dtype=bool)
    if m.shape != k.shape:
        raise ValueError(f"maps {m.shape} and masks {k.shape} must have the same shape")
    flat, inside = m.reshape(len(m), -1), k.reshape(len(k), -1)
    total = flat.sum(axis=1)
    top = flat.max(axis=1) if flat.shape[1] else np.zeros(len(flat))
    empty = total <= 0
    mass = np.where(empty, np.nan, (flat * inside).sum(axis=1) / np.where(empty, 1.0, total))
    hit = ((flat == top[:, None]) & inside).any(axis=1).astype(np.float64)
    hit[empty] = np.nan
    return mass, hit


BLANK_MEANS = "the method gives every pixel the value 0 for that score"


def degenerate_maps(maps: np.ndarray, blank_means: str = BLANK_MEANS) -> tuple[np.ndarray, list[str], list[str]]:
    """Maps (N, H, W) with their NaN / infinite values set to 0, a sentence per map for its caption ("" when it is
    ordinary) and the notes for the page: maps that are zero at every pixel are drawn black, which a reader would
    otherwise take for a dark image; ``blank_means`` says what such a map means for the method (its
    `AttributionAnalysis.blank_means`: for the Grad-CAM family, not that no pixel moves the score)."""
    m = np.asarray(maps, dtype=np.float64)
    n, pixels = len(m), int(np.prod(m.shape[1:]))
    finite = np.isfinite(m.reshape(n, pixels)).all(axis=1)
    m = np.where(np.isfinite(m), m, 0.0)
    zero = ~(m.reshape(n, pixels) != 0).any(axis=1)
    blank = ["" for _ in range(n)]
    notes = []
    if (~finite).any():
        for k in np.flatnonzero(~finite):
            blank[k] = "This map had NaN or infinite values, drawn as 0."
        notes.append(f"{int((~finite).sum())} of the {n} maps had NaN or infinite values (the model's numbers "
                     "overflow or are already not finite there); those values are drawn as 0.")
    zero &= finite
    if zero.any():
        for k in np.flatnonzero(zero):
            blank[k] = "This map is zero at every pixel."
        notes.append(f"{int(zero.sum())} of the {n} maps are zero at every pixel and drawn black: {blank_means}.")
    return m, blank, notes


@dataclass
class MapTarget:
    """One map to draw: sample image ``image`` (index into the image set), class ``cls``, why it was chosen.
    ``choice``: for a model of another task than classify, or a --target, what the map explains
    (`reportgen.task_targets.Choice`: its words for the page and the data of its target callable); None for a
    classifier's class logit."""

    image: int
    cls: int
    role: str
    choice: Any = None


def class_targets(samples: list[int], preds: list[int], labels: list[int], requested: list[int]) -> list[MapTarget]:
    """Targets for each sample: its predicted class, its true class when known (>= 0) and different, then every
    requested class not already among them. Ordered by role, then by sample (so the first items are the
    predicted-class maps of the samples in order)."""
    per_image: dict[int, list[MapTarget]] = {}
    for i, p, t in zip(samples, preds, labels):
        chosen = [MapTarget(i, p, "predicted")]
        if t >= 0 and t != p:
            chosen.append(MapTarget(i, t, "true"))
        chosen += [MapTarget(i, c, "requested") for c in requested if c not in (p, t)]
        per_image[i] = chosen
    return [t for role in ROLES for i in samples for t in per_image[i] if t.role == role]


# ---------------------------------------------------------------------------------------------------------------
# Parameters


def _scale_field() -> Any:
    return field(default="both", metadata=doc(
        "Colour scale of the maps: one scale shared by all maps of the method (comparable), each map on its own "
        "scale, or both (side by side).", choices=SCALES))


def _percentile_field() -> Any:
    return field(default=99.0, metadata=doc(
        "Upper colour limit = this percentile of the map values (100 = the maximum); larger values are drawn in "
        "the top colour, so that a few extreme pixels do not darken everything else.", min=50.0, max=100.0))


@dataclass
class HeatmapParams:
    scale: str = _scale_field()
    percentile: float = _percentile_field()


@dataclass
class OcclusionParams:
    window: Optional[int] = field(default=None, metadata=doc(
        "Side of the square patch in pixels; empty = a quarter of the image side.", min=1))
    stride: Optional[int] = field(default=None, metadata=doc(
        "Step between patch positions in pixels; empty = half the window.", min=1))
    fill: float = field(default=0.0, metadata=doc(
        "Value of the hidden pixels in normalized input units (0 = the normalization mean colour)."))
    per_pixel: bool = field(default=True, metadata=doc(
        "Spread each patch's drop over its pixels (mean over the patches covering a pixel); false = one value "
        "per patch position, shown as a small grid of cells without the image."))
    score: str = field(default="logit", metadata=doc(
        "What drops: the class logit or its softmax probability.", choices=("logit", "prob")))
    scale: str = _scale_field()
    percentile: float = _percentile_field()


@dataclass
class SmoothGradParams:
    n: int = field(default=50, metadata=doc("Noisy copies averaged per image.", min=1, max=1000))
    sigma: float = field(default=0.15, metadata=doc(
        "Noise standard deviation as a fraction of each image's value range (max - min).", min=0.0, max=2.0))
    scale: str = _scale_field()
    percentile: float = _percentile_field()


@dataclass
class LayerMapParams:
    layer: str = field(default="", metadata=doc(
        "Dotted name of the layer whose channels are weighted; empty = the last convolutional block."))
    scale: str = _scale_field()
    percentile: float = _percentile_field()


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers


def requested_classes(ctx: Any) -> list[int]:
    """``ctx.config.classes`` as class indices; `ConfigError` naming the key and the known names otherwise."""
    names = list(ctx.class_names)
    unknown = [c for c in ctx.config.classes if c not in names]
    if unknown:
        shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
        raise ConfigError(f"classes: unknown class {', '.join(repr(c) for c in unknown)}; known classes: {shown}")
    return [names.index(c) for c in ctx.config.classes]


def check_cam_layer(ctx: Any, analysis: str, layer: str) -> None:
    """A configured CAM layer must exist (`LayerError` with the closest names), run once and output (N, K, h, w)
    (read from the plan's layer table: no forward pass)."""
    if not layer:
        return
    from ..capture import resolve_layer

    resolve_layer(ctx.model, layer)
    row = ctx.facts.row(layer)
    calls = row.calls if row else 0
    if calls != 1:
        raise ConfigError(f"analysis.{analysis}.layer: '{layer}' runs {calls} times in one forward pass; pick a "
                          "layer that runs exactly once (e.g. the block that contains it)")
    shape = row.out_shape
    if shape is None or len(shape) != 3:
        shown = (None if shape is None else (1, *shape))
        raise ConfigError(f"analysis.{analysis}.layer: '{layer}' outputs {shown}, not a (N, K, h, w) map; pick a "
                          "convolutional layer or block")


def nonlinearities(ctx: Any, what: str) -> Any:
    """The plan's non-linearity report; `NotApplicable` for a TorchScript model."""
    ctx.facts.require_python(what)
    return ctx.facts.nonlinearities


def fmt(x: float) -> str:
    return f"{x:.3g}"


def nan_mean(values: np.ndarray) -> float:
    """The mean of the values that are not NaN (NaN when there are none, without numpy's warning)."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# The attribution pipeline


def role_title(task: str, role: str) -> str:
    """The group title of an attribution page's maps of ``role`` for a model of ``task``."""
    from ..task_targets import title

    return title(task, role) or ROLE_TITLES[role]


def chunk_target(tset: Any, chunk: list[MapTarget], row: dict, device: Any) -> Any:
    """The target of a chunk of maps: their classes as a LongTensor (a classifier, ``tset`` None), else the rows
    of ``tset.target`` for the chunk (``row``: id of each map target -> its row)."""
    import torch

    if tset is None:
        return torch.tensor([t.cls for t in chunk], device=device)
    from ..methods.targets import select_target

    return select_target(tset.target, torch.tensor([row[id(t)] for t in chunk], dtype=torch.long))


def target_name(ctx: Any, t: MapTarget) -> str:
    """The class, label or output a map explains, in a few words (a classifier's class name)."""
    names = ctx.class_names
    if t.choice is not None and ctx.task == "embed":
        return "similarity"
    if t.choice is not None and ctx.task == "detect" and t.choice.label is None:
        return "no detection"
    return names[t.cls] if 0 <= t.cls < len(names) else f"output {t.cls}"


def explains_table(ctx: Any, targets: list[MapTarget], tset: Any) -> Table:
    """The table after an attribution page's maps that says what each map explains (another task, or a given
    --target): the target's words and its score on the image."""
    p = ctx.predictions
    scores = tset.scores if tset is not None else [float(p.logits[p.row(t.image), t.cls]) for t in targets]
    return Table(key="explains", label="What the maps explain", group="What the maps explain",
                 caption="Each sample image's target (--target, or the task's default: docs/targets.md) and its "
                         "score on the image (a classifier's: the class logit).",
                 columns=["image", "target", "explains", "score"],
                 rows=[[ctx.images.names[t.image], target_name(ctx, t),
                        t.choice.words.removeprefix("explains: ") if t.choice is not None else "", float(v)]
                       for t, v in zip(targets, scores)])


class AttributionAnalysis(Analysis):
    """Base of the attribution analyses: subclasses implement `attribute` (one call of their method function) and
    the caption words, and override `options` when the method needs keyword arguments (a layer, a window)."""

    section = "influence"
    needs_logits = True
    Params = HeatmapParams
    # every task: the maps explain the task's target (`reportgen.task_targets`: --target, or each task's default)
    tasks = EVERY_TASK
    task_reason = "its maps explain one class logit of each image, and it takes no target for other outputs"
    chunked: ClassVar[bool] = True  # False: the method batches its own copies itself (occlusion, SmoothGrad)
    splits: ClassVar[bool] = True  # a distributed build deals its chunks of targets to the ranks (`compute`)
    map_words: ClassVar[str] = ""  # what a map's value is (a note on the page)
    relu_rules: ClassVar[bool] = False  # True: the method changes the ReLU backward rule
    hooks: ClassVar[bool] = False  # True: the method reads a layer's output through hooks
    exact_because: ClassVar[str] = ""  # why the maps are exact on any model (methods without ReLU rules or hooks)
    blank_means: ClassVar[str] = BLANK_MEANS  # what a map that is 0 at every pixel means (a note on the page)
    map_passes: ClassVar[float] = 3.0  # forward passes of one image that one map costs (a backward pass counts 2)

    def passes(self, ctx: Any, params: Any) -> float:
        """Forward-pass equivalents of one image that one map costs (`map_passes` unless it depends on params)."""
        return self.map_passes

    def map_targets(self, ctx: Any) -> list[MapTarget]:
        """The (image, class) pairs this build draws maps of: a classifier's each sample's predicted and true class,
        then the requested ones (`class_targets`); another task's, or a given --target's, one target per sample
        (`reportgen.task_targets.choices`)."""
        from ..task_targets import choices

        picked = choices(ctx, ctx.samples)
        if picked is not None:
            return [MapTarget(c.image, c.cls, c.role, c) for c in picked]
        predictions = ctx.predictions
        preds = [int(predictions.preds[predictions.row(i)]) for i in ctx.samples]
        labels = [int(ctx.images.labels[i]) for i in ctx.samples]
        return class_targets(ctx.samples, preds, labels, requested_classes(ctx))

    def explained_targets(self, ctx: Any) -> list[MapTarget]:
        """`map_targets`, or `NotApplicable` when every one of them is 0 on every input (a detector that finds
        nothing on the samples: `reportgen.task_targets.nothing_to_explain`), whose maps would all be blank."""
        from ..task_targets import nothing_to_explain

        targets = self.map_targets(ctx)
        why = nothing_to_explain(ctx.task, [t.choice for t in targets])
        if why:
            raise NotApplicable(why)
        return targets

    def cost(self, ctx: Any, params: Any, upstream: Upstream = NOTHING) -> float:
        try:
            targets = self.explained_targets(ctx)
        except NotApplicable:  # it computes nothing: its page says why (`run`), not the budget
            return 0.0
        return len(targets) * self.passes(ctx, params) * ctx.facts.macs

    def check(self, ctx: Any, params: Any) -> None:
        from ..task_targets import parse_context

        requested_classes(ctx)
        parse_context(ctx)  # a --target that does not fit the model: one line, before any work
        if self.relu_rules or self.hooks:
            ctx.facts.require_python(self.title)
        report = ctx.facts.nonlinearities
        if self.relu_rules and report is not None and not report.n_relu_calls:
            others = ", ".join(report.other_kinds()) or "none"
            raise NotApplicable(f"the model has {report.no_relu_words()}; its non-linearities on the image's path: "
                                f"{others}; so {self.title}'s ReLU rule would change nothing: its map would be the "
                                "plain gradient")

    def exactness(self, facts: Any) -> tuple[str, str]:
        """("exact" | "approximate" | "not applicable", why) for these maps on the model of ``facts``."""
        if not self.relu_rules:
            return "exact", self.exact_because
        if not facts.nonlinearities.n_relu_calls:
            return "not applicable", facts.nonlinearities.rule_reason
        if facts.nonlinearities.rules_exact:
            return "exact", "every ReLU call rewritten"
        return "approximate", facts.nonlinearities.rule_reason

    def options(self, ctx: Any, params: Any) -> dict:
        """Keyword arguments of `attribute`, resolved once per build from the params and the model facts."""
        return {}

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        """The display map (N, H, W) of ``inputs`` (N, C, H, W) for ``target`` (N,): raw, not normalized."""
        raise NotImplementedError  # pragma: no cover - interface

    def words(self, options: dict) -> str:
        """What a map's value is, with the options actually used (a note on the page)."""
        return self.map_words

    def short(self, options: dict) -> str:
        """The method in a few words with its key options (captions)."""
        return self.title

    def caption_note(self, options: dict) -> str:
        """A sentence ending every map's caption, on how the maps were computed ("" for none)."""
        return ""

    def notes(self, ctx: Any, params: Any, options: dict, raw: np.ndarray) -> list[str]:
        """Sentences for the page about these maps (e.g. why they are not exact)."""
        if not self.relu_rules:
            return []
        report = nonlinearities(ctx, self.title)
        if report.rules_exact:
            return []
        return [f"These maps are not exact on this model: {report.rule_reason}. The non-linearities "
                "check of this section lists them."]

    def chunk_size(self, ctx: Any, options: dict) -> int:
        """Targets per call of `attribute`: one batch of `Context.batch_size` images. Methods that batch their own
        copies of each image (``chunked`` False) take as many targets as fill one of their own batches."""
        return ctx.batch_size(grad=True)

    def chunk_options(self, ctx: Any, options: dict, first: MapTarget) -> dict:
        """The keyword arguments of `attribute` for the chunk of targets that starts with ``first``: ``options``,
        or a copy with what must be the chunk's own (a method that draws random numbers gets a generator of its
        own here, so that a chunk's maps do not depend on which chunks ran before it, or on which process)."""
        return options

    def target_set(self, ctx: Any, targets: list[MapTarget], inputs: Any = None) -> Any:
        """The `reportgen.task_targets.TargetSet` of ``targets`` (row j = map j's target callable, and its score on
        the clean image), or None for a classifier, whose maps take class indices (``MapTarget.cls``) as always.
        ``inputs``: the sample images (`Context.sample_inputs`), loaded when not given."""
        if not targets or ctx.task == "classify":
            return None
        import torch

        from ..task_targets import build_targets

        inputs = ctx.sample_inputs() if inputs is None else inputs
        position = {i: p for p, i in enumerate(ctx.samples)}
        picks = torch.tensor([position[t.image] for t in targets], device=inputs.device)
        return build_targets(ctx, [t.choice for t in targets], inputs[picks])

    def compute(self, ctx: Any, params: Any, targets: list[MapTarget], tset: Any = None) -> tuple[Any, dict]:
        """Maps (T, h, w), a float32 tensor on the CPU, for ``targets`` in their order, and the options used; in
        chunks of `chunk_size` targets, which a distributed build deals to its ranks
        (`reportgen.context.Context.map_chunks`). ``tset``: their `target_set` (built when None)."""
        import torch

        inputs = ctx.sample_inputs()
        position = {i: p for p, i in enumerate(ctx.samples)}
        options = self.options(ctx, params)
        size = self.chunk_size(ctx, options)
        chunks = [targets[k:k + size] for k in range(0, len(targets), size)]
        tset = self.target_set(ctx, targets, inputs) if tset is None else tset
        row = {id(t): k for k, t in enumerate(targets)}

        def one(chunk: list[MapTarget]) -> tuple[Any, list]:
            opts = self.chunk_options(ctx, options, chunk[0])
            picks = torch.tensor([position[t.image] for t in chunk], device=inputs.device)
            classes = chunk_target(tset, chunk, row, inputs.device)
            maps = self.attribute(ctx.model, inputs[picks], classes, **opts).detach().float().cpu()
            # occlusion's engine plans, appended to the chunk's own list by its call: they travel with its maps
            return maps, opts.get("plans", [])

        done = ctx.map_chunks(one, chunks, self.name)
        maps = torch.cat([m for m, _ in done])
        if "plans" in options:
            options["plans"].extend(p for _, plans in done for p in plans)
        return maps, options

    def run(self, ctx: Any, params: Any, reduced: dict, upstream: Upstream = NOTHING) -> Result:
        result = Result()
        predictions = ctx.predictions
        targets = self.explained_targets(ctx)
        if not targets:
            result.notes.append("There is no sample image to explain.")
            return result
        tset = self.target_set(ctx, targets)
        maps, options = self.compute(ctx, params, targets, tset)
        # another task, or a --target: the page says what the maps explain, in a table after the maps (the page
        # leads with its pictures; every caption names its target too)
        given = targets[0].choice is not None
        # the very maps this page draws, for the analyses that read them (the trust checks, `Upstream`)
        result.shared["maps"] = {(t.image, t.cls): m for t, m in zip(targets, maps)}
        raw = maps.numpy().astype(np.float64)
        result.notes.extend(self.notes(ctx, params, options, raw))
        raw, blank, degenerate = degenerate_maps(raw, self.blank_means)
        result.notes.extend(degenerate)
        # for the findings: how many of this page's maps are zero at every pixel or had non-finite values
        result.shared["degenerate maps"] = (sum(bool(b) for b in blank), len(blank))
        heat = np.clip(raw, 0, None)  # heat colours start at 0; only occlusion has negative values
        shared, per_image = colour_limits(heat, params.percentile)
        result.metrics["maps"] = len(targets)
        result.metrics["shared colour limit"] = shared

        displays = ctx.sample_display()
        display = {i: displays[p] for p, i in enumerate(ctx.samples)}
        over_image = heat.shape[1:] == displays.shape[1:3]
        scores = None
        masks = ctx.images.masks
        got = [masks.get(t.image) for t in targets] if masks is not None and over_image and (
            tuple(masks.size) == heat.shape[1:]) else []
        if any(k is not None for k in got):
            scores = mask_scores(heat, got)  # an image without a mask (--masks left it out) scores NaN
            # scored on the predicted-class maps: one per sample image with a mask, whatever the configured classes
            pred = [k for k, t in enumerate(targets) if t.role in ("predicted", GIVEN) and got[k] is not None]
            result.metrics["object mass share"] = nan_mean(scores[0][pred])
            result.metrics["pointing game"] = nan_mean(scores[1][pred])
            result.metrics["object area (chance)"] = nan_mean(np.array([got[k].mean() for k in pred]))
            # per sample image, for the findings: mass on object, pointing-game hit, the object's area share and
            # the key of the map's figure on this page
            first = "shared" if params.scale in ("shared", "both") else "per-image"
            result.shared["mask scores"] = {
                int(targets[k].image): (float(scores[0][k]), float(scores[1][k]), float(got[k].mean()),
                                        f"{first}-{targets[k].role}-{targets[k].image:05d}-{targets[k].cls}")
                for k in pred}

        if tset is not None:
            result.notes.append(f"This model's task is {ctx.task}: each map explains the target its caption names "
                                "(the table 'What the maps explain'), and where these notes say the class logit, "
                                f"read that target's score; where they say its probability, {tset.measure}.")
        result.notes.append(f"Each map shows {self.words(options)}; "
                            + ("it is drawn over a dimmed grey copy of the image." if over_image else
                               f"one cell per position ({heat.shape[1]}x{heat.shape[2]})."))
        what = self.short(options)
        where = "over a dimmed grey copy of the image" if over_image else "one cell per position"
        pct = "the maximum" if params.percentile >= 100 else f"the {params.percentile:g}th percentile"
        names = ctx.class_names
        probs = predictions.probs if ctx.task == "classify" else None
        computed = self.caption_note(options)
        computed = f" {computed}" if computed else ""
        for scale in (["shared", "per-image"] if params.scale == "both" else [params.scale]):
            for k, t in enumerate(targets):
                limit = shared if scale == "shared" else float(per_image[k])
                if scale == "shared":
                    how = (f"Shared scale: 0 (black) to {fmt(limit)} (yellow), {pct} of all {len(targets)} maps "
                           "of this method, the same for every image.")
                else:
                    how = f"Per-image scale: 0 (black) to {fmt(limit)} (yellow), {pct} of this map."
                found = ""
                if scores is not None and not math.isnan(scores[0][k]):
                    found = (f" {scores[0][k]:.0%} of the map lies on the object; its maximum is "
                             f"{'on' if scores[1][k] else 'off'} it.")
                image_name, cls_name = ctx.images.names[t.image], target_name(ctx, t)
                if blank[k]:
                    found += f" {blank[k]}"
                if t.choice is None or ctx.task == "classify":
                    p = f"p={probs[predictions.row(t.image), t.cls]:.2f}"
                else:
                    p = f"score {fmt(float(tset.scores[k]))}"
                explained = (f"for class '{cls_name}' ({t.role}) of {image_name}" if t.choice is None else
                             f"of {image_name}, which {t.choice.words}")
                result.items.append(Picture(
                    key=f"{scale}-{t.role}-{t.image:05d}-{t.cls}", array=heat[k], style="heat", vmax=limit,
                    base=display[t.image] if over_image else None, colorbar=True, image=t.image,
                    group=role_title(ctx.task, t.role),
                    label=f"{image_name}: {cls_name} ({p}), {scale} scale",
                    caption=(f"{what} {explained}, {where}. {how}{found}{computed}")))
        if given:
            result.items.append(explains_table(ctx, targets, tset))
        return result


@register
class Occlusion(AttributionAnalysis):
    name = "occlusion"
    title = "Occlusion"
    summary = "how much the class score drops when a patch hides each part of the image"
    paper = "Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014"
    paper_url = "https://arxiv.org/abs/1311.2901"
    order = 10
    Params = OcclusionParams
    chunked = False
    exact_because = "forward passes only"
    blank_means = ("hiding a patch at any position left that score unchanged (a zero-initialized classifier head, "
                   "for instance, gives every image the same logits)")

    def positions(self, ctx: Any, options: dict) -> int:
        """Patch positions per image: the window slid by the stride over the input (``check`` keeps it inside)."""
        h, w = ctx.loaded.input.size
        (wh, ww), (sh, sw) = options["window"], options["stride"]
        return (max(h - wh, 0) // sh + 1) * (max(w - ww, 0) // sw + 1)

    def passes(self, ctx: Any, params: Any) -> float:
        # one forward pass of the image itself (the score each drop is taken from), then one per patch position
        # (at most: the incremental engine recomputes less of each)
        return 1.0 + self.positions(ctx, self.options(ctx, params))

    def check(self, ctx: Any, params: Any) -> None:
        super().check(ctx, params)
        h, w = ctx.loaded.input.size
        if params.window is not None and params.window > min(h, w):
            raise ConfigError(f"analysis.occlusion.window: {params.window} is larger than the {h}x{w} input")
        if params.stride is not None and params.stride < 1:
            raise ConfigError(f"analysis.occlusion.stride: must be >= 1, got {params.stride}")

    def options(self, ctx: Any, params: Any) -> dict:
        from ..methods.attribution import default_occlusion_params

        default = default_occlusion_params(*ctx.loaded.input.size)
        window = (params.window, params.window) if params.window else default["window"]
        if params.stride:
            stride = (params.stride, params.stride)
        elif params.window:
            stride = (max(1, window[0] // 2), max(1, window[1] // 2))
        else:
            stride = default["stride"]
        # ``plans`` collects what each call's incremental engine did (the captions say it): a list, so that the
        # calls made with these options append to it.
        return {"window": window, "stride": stride, "fill": params.fill, "per_pixel": params.per_pixel,
                "score": params.score, "batch_size": ctx.batch_size(grad=False), "plans": []}

    def chunk_size(self, ctx: Any, options: dict) -> int:
        # the images whose occluded copies fill one batch (at least one image)
        return max(1, options["batch_size"] // self.positions(ctx, options))

    def chunk_options(self, ctx: Any, options: dict, first: MapTarget) -> dict:
        return {**options, "plans": []}  # the chunk's own list: `compute` collects them in chunk order

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.attribution import occlusion

        return occlusion(model, inputs, target, **options)

    def words(self, options: dict) -> str:
        (wh, ww), (sh, sw) = options["window"], options["stride"]
        what = "logit" if options["score"] == "logit" else "probability"
        per = "averaged over the patches covering each pixel" if options["per_pixel"] else "one value per position"
        return (f"the drop of the class {what} when a {wh}x{ww} patch of value {fmt(options['fill'])} hides the "
                f"image (stride {sh}x{sw}, {per}); negative drops are drawn as 0")

    def short(self, options: dict) -> str:
        (wh, ww), (sh, sw) = options["window"], options["stride"]
        return f"Occlusion ({wh}x{ww} patch, stride {sh}x{sw})"

    def caption_note(self, options: dict) -> str:
        plans = options.get("plans") or []
        return plans[-1].sentence() if plans else ""

    def notes(self, ctx: Any, params: Any, options: dict, raw: np.ndarray) -> list[str]:
        plans = options.get("plans") or []
        notes = [plans[-1].sentence(limit=12)] if plans else []
        total = float(np.abs(raw).sum())
        negative = float(np.clip(-raw, 0, None).sum()) / total if total > 0 else 0.0
        if negative <= 0.05:
            return notes
        return notes + [f"{negative:.0%} of the total absolute drop is negative (hiding those patches raised the "
                        "class score); the maps show only the positive part, the evidence for the class."]


@register
class Gradient(AttributionAnalysis):
    name = "gradient"
    title = "Gradient saliency"
    summary = "the gradient of the class score with respect to each input pixel"
    paper = ("Simonyan, Vedaldi & Zisserman, Deep Inside Convolutional Networks: Visualising Image Classification "
             "Models and Saliency Maps, ICLR Workshop 2014")
    paper_url = "https://arxiv.org/abs/1312.6034"
    order = 20
    exact_because = "plain autograd"
    blank_means = ("the gradient of that score is 0 at every pixel: no small change of a pixel changes it, though a "
                   "larger one may (a zero-initialized classifier head gives every image the same logits; in a ReLU "
                   "network, units that are all off block every path)")
    map_words = "|d class logit / d pixel|, the maximum over colour channels"

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.attribution import gradient, reduce_channels

        return reduce_channels(gradient(model, inputs, target), "max")


@register
class SmoothGrad(AttributionAnalysis):
    name = "smoothgrad"
    title = "SmoothGrad"
    summary = "the gradient averaged over noisy copies of the image, which removes much of its speckle"
    paper = "Smilkov, Thorat, Kim, Viégas & Wattenberg, SmoothGrad: removing noise by adding noise, 2017"
    paper_url = "https://arxiv.org/abs/1706.03825"
    order = 30
    Params = SmoothGradParams
    chunked = False
    exact_because = "plain autograd on noisy copies"
    blank_means = ("the gradient of that score, averaged over the noisy copies, is 0 at every pixel (a "
                   "zero-initialized classifier head, for instance, gives every image the same logits)")
    shrink = (("n", 10),)

    def passes(self, ctx: Any, params: Any) -> float:
        return 3.0 * params.n  # a forward and a backward pass per noisy copy

    def options(self, ctx: Any, params: Any) -> dict:
        return {"n": params.n, "sigma": params.sigma, "batch_size": ctx.batch_size(grad=True),
                "generator": ctx.generator(self.name)}

    def chunk_size(self, ctx: Any, options: dict) -> int:
        return max(1, options["batch_size"] // options["n"])  # the images whose noisy copies fill one batch

    def chunk_options(self, ctx: Any, options: dict, first: MapTarget) -> dict:
        # the noise of a chunk comes from a generator of its own, named by its first map (image and class)
        return {**options, "generator": ctx.generator(f"{self.name}/{first.image}-{first.cls}")}

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.attribution import reduce_channels, smoothgrad

        return reduce_channels(smoothgrad(model, inputs, target, **options), "max")

    def words(self, options: dict) -> str:
        return (f"|mean gradient over {options['n']} noisy copies| (noise std {fmt(options['sigma'])} of the "
                "image's value range), the maximum over colour channels")

    def short(self, options: dict) -> str:
        return f"SmoothGrad ({options['n']} copies, noise {fmt(options['sigma'])})"


@register
class Deconvnet(AttributionAnalysis):
    name = "deconvnet"
    title = "Deconvnet"
    summary = "the class score projected back to the pixels, passing only positive signals back through ReLUs"
    paper = "Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014"
    paper_url = "https://arxiv.org/abs/1311.2901"
    order = 40
    relu_rules = True
    map_words = "|deconvnet reconstruction|, the maximum over colour channels"
    blank_means = ("no signal reached the image: the deconvnet rule passes only the positive part of the backward "
                   "signal at every ReLU, so a map can be blank while the pixels do change that score (a "
                   "zero-initialized classifier head also gives blank maps)")

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.attribution import deconvnet, reduce_channels

        return reduce_channels(deconvnet(model, inputs, target), "max")


@register
class GuidedBackprop(AttributionAnalysis):
    name = "guided-backprop"
    title = "Guided backpropagation"
    summary = "the gradient, with only positive gradients through active ReLUs: sharp, edge-like maps"
    paper = "Springenberg, Dosovitskiy, Brox & Riedmiller, Striving for Simplicity: The All Convolutional Net, " \
            "ICLR Workshop 2015"
    paper_url = "https://arxiv.org/abs/1412.6806"
    order = 50
    relu_rules = True
    map_words = "|guided backpropagation|, the maximum over colour channels"
    blank_means = ("no signal reached the image: guided backpropagation passes a backward signal through a ReLU "
                   "only where it is positive and the unit was on, so a map can be blank while the pixels do change "
                   "that score (a zero-initialized classifier head also gives blank maps)")

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.attribution import guided_backprop, reduce_channels

        return reduce_channels(guided_backprop(model, inputs, target), "max")


@register
class Cam(AttributionAnalysis):
    name = "cam"
    title = "CAM"
    summary = "class activation maps: the last conv layer's channels weighted by the final linear layer"
    paper = "Zhou, Khosla, Lapedriza, Oliva & Torralba, Learning Deep Features for Discriminative Localization, " \
            "CVPR 2016"
    paper_url = "https://arxiv.org/abs/1512.04150"
    order = 60
    hooks = True
    map_passes = 1.0  # one forward pass: the weights are the classifier's
    tasks = ("classify", "binary", "multilabel", "regress")
    task_reason = ("its map weights the channels by one output's row of the final linear layer over pooled "
                   "features, and a segmentation's region, a detection's box score or an embedding's similarity is "
                   "not one such output")
    blank_means = ("the class's map (the channels weighted by the class's classifier weights) is at most 0 at every "
                   "position and the ReLU drawn here removes it: the layer holds only evidence against the class, "
                   "which still counts in that score (a zero-initialized classifier head gives blank maps too)")

    def check(self, ctx: Any, params: Any) -> None:
        super().check(ctx, params)
        if ctx.facts.cam is None:
            raise NotApplicable(NO_GAP_LINEAR)
        from ..task_targets import parse_context

        spec = parse_context(ctx)
        if ctx.task == "binary" and spec is not None and spec.index == 0:
            raise NotApplicable("the target is the negated logit (class 0 of a one-logit model), which is no row of "
                                "the final linear layer")

    def exactness(self, facts: Any) -> tuple[str, str]:
        if facts.cam is None:
            return "not applicable", NO_GAP_LINEAR
        relu = " (rectified)" if facts.cam.rectified else ""
        weights = f"weights of '{facts.cam.fc}'" if facts.cam.fc else "its channel means are the logits"
        return "exact", f"layer '{facts.cam.layer}'{relu}, {weights}"

    def options(self, ctx: Any, params: Any) -> dict:
        layer, fc, rectified = ctx.facts.cam
        return {"layer": layer, "fc": fc, "rectified": rectified}

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.cams import cam
        from ..methods.targets import ClassTarget

        if isinstance(target, ClassTarget):  # a label's, an output's or the one logit's row of the linear layer
            if target.negate:
                raise ValueError("CAM is not applicable to the negated logit of a one-logit model (its class 0): "
                                 "its map is a row of the linear head; use Grad-CAM for it")
            target = target.index.expand(len(inputs)) if target.index.numel() == 1 else target.index
        return cam(model, inputs, target, options["layer"], options["fc"], rectified=options.get("rectified", False))

    def words(self, options: dict) -> str:
        channels = (f"ReLU of the channels of '{options['layer']}' (the model rectifies them before pooling)"
                    if options.get("rectified") else f"the channels of '{options['layer']}'")
        if not options["fc"]:  # the pooled channels are the logits themselves (SqueezeNet)
            return f"ReLU of the class's own channel of {channels}, upsampled bilinearly"
        return (f"ReLU of {channels} weighted by the class's row of '{options['fc']}', "
                "upsampled bilinearly")

    def short(self, options: dict) -> str:
        return f"CAM at '{options['layer']}'"


class CamFamily(AttributionAnalysis):
    """The Grad-CAM family: one layer's activations weighted per method. A variant is a declarative subclass (name,
    title, paper, words) whose method function in `reportgen.methods.cams` is found by the naming rule
    (``grad-cam-plus-plus`` -> ``cams.grad_cam_plus_plus(model, inputs, target, layer)``), plus its explain page."""

    Params = LayerMapParams
    hooks = True
    blank_means = ("the weighted sum of the layer's channels is at most 0 at every position and the final ReLU "
                   "removes it: the map shows only evidence for the class, the layer holds none here, and the pixels "
                   "may still change that score (zero gradients, as under a zero-initialized classifier head, also "
                   "give blank maps)")

    def check(self, ctx: Any, params: Any) -> None:
        super().check(ctx, params)
        check_cam_layer(ctx, self.name, params.layer)
        if not params.layer and ctx.facts.cam_layer is None:
            raise NotApplicable(ctx.facts.cam_layer_reason)

    def exactness(self, facts: Any) -> tuple[str, str]:
        if self.relu_rules:
            return super().exactness(facts)
        if facts.cam_layer is None:
            return "not applicable", facts.cam_layer_reason
        return "exact", f"default layer '{facts.cam_layer}'"

    def options(self, ctx: Any, params: Any) -> dict:
        return {"layer": params.layer or ctx.facts.cam_layer}

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods import cams

        return getattr(cams, python_name(self.name))(model, inputs, target, options["layer"])

    def words(self, options: dict) -> str:
        return self.map_words.format(layer=options["layer"])

    def short(self, options: dict) -> str:
        return f"{self.title} at '{options['layer']}'"


@register
class GradCam(CamFamily):
    name = "grad-cam"
    title = "Grad-CAM"
    summary = "a layer's channels weighted by the mean gradient of the class score: where the class evidence is"
    paper = ("Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, Grad-CAM: Visual Explanations from Deep "
             "Networks via Gradient-based Localization, ICCV 2017")
    paper_url = "https://arxiv.org/abs/1610.02391"
    order = 70
    map_words = "ReLU of the channels of '{layer}' weighted by their mean gradient, upsampled bilinearly"


@register
class GradCamPlusPlus(CamFamily):
    name = "grad-cam-plus-plus"
    title = "Grad-CAM++"
    summary = "Grad-CAM with each channel's gradient weighted per position, for several instances of a class"
    paper = ("Chattopadhay, Sarkar, Howlader & Balasubramanian, Grad-CAM++: Generalized Gradient-based Visual "
             "Explanations for Deep Convolutional Networks, WACV 2018")
    paper_url = "https://arxiv.org/abs/1710.11063"
    order = 72
    map_words = ("ReLU of the channels of '{layer}' weighted by the alpha-weighted sum of their positive "
                 "gradients (Grad-CAM++), upsampled bilinearly")

    def exactness(self, facts: Any) -> tuple[str, str]:
        # the closed form of alpha is the paper's derivation for a score piecewise linear in the layer (ReLU
        # networks): a smooth non-linearity or a layer / group norm after the layer makes it an approximation
        verdict, why = super().exactness(facts)
        report = facts.nonlinearities
        smooth = report.other_kinds() if report is not None else []
        norms = sorted({r.type for r in facts.layers if r.out_shape is not None and "Norm" in r.type
                        and "Batch" not in r.type})
        if verdict != "exact" or not (smooth or norms):
            return verdict, why
        return "approximate", (f"{why}; its closed-form weights assume a score piecewise linear in the layer, and "
                               f"this model also has {', '.join(smooth + norms)} (exact only if they all run "
                               "before the layer)")


@register
class XGradCam(CamFamily):
    name = "xgrad-cam"
    title = "XGrad-CAM"
    summary = "a layer's channels weighted by their gradient averaged with the activations as weights"
    paper = ("Fu, Hu, Dong, Guo, Gao & Li, Axiom-based Grad-CAM: Towards Accurate Visualization and "
             "Explanation of CNNs, BMVC 2020")
    paper_url = "https://arxiv.org/abs/2008.02312"
    order = 74
    map_words = ("ReLU of the channels of '{layer}' weighted by sum(gradient x activation) / sum(activation), "
                 "upsampled bilinearly")


@register
class LayerCam(CamFamily):
    name = "layer-cam"
    title = "LayerCAM"
    summary = "each activation weighted by its own positive gradient: finer maps that also work at early layers"
    paper = ("Jiang, Zhang, Hou, Cheng & Wei, LayerCAM: Exploring Hierarchical Class Activation Maps for "
             "Localization, IEEE TIP 2021")
    paper_url = "https://ieeexplore.ieee.org/document/9462463"
    order = 76
    map_words = ("ReLU of the sum over the channels of '{layer}' of each activation times its positive gradient, "
                 "upsampled bilinearly")


@register
class ScoreCam(CamFamily):
    name = "score-cam"
    title = "Score-CAM"
    summary = "a layer's channels weighted by the class score of the image masked by each channel: no gradients"
    paper = ("Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu, Score-CAM: Score-Weighted Visual Explanations for "
             "Convolutional Neural Networks, CVPR Workshops 2020")
    paper_url = "https://arxiv.org/abs/1910.01279"
    order = 78
    map_words = ("ReLU of the channels of '{layer}' weighted by the softmax over channels of the class logit of the "
                 "image masked by each channel (scaled to [0, 1]), upsampled bilinearly")
    blank_means = ("the weighted sum of the layer's channels is at most 0 at every position and the final ReLU "
                   "removes it; the weights are positive, so this is a property of the layer's activations on the "
                   "image and says nothing about whether the pixels change that score")

    def passes(self, ctx: Any, params: Any) -> float:
        # one forward pass for the layer's maps, then one per channel (the image masked by that channel)
        return 1.0 + ctx.facts.channels(self.options(ctx, params)["layer"])


@register
class GuidedGradCam(GradCam):
    name = "guided-grad-cam"
    title = "Guided Grad-CAM"
    summary = "guided backpropagation times Grad-CAM: fine detail, but only where the class evidence is"
    order = 80
    relu_rules = True
    map_passes = 6.0  # guided backpropagation and Grad-CAM: two forward and two backward passes
    map_words = "|guided backpropagation x Grad-CAM at '{layer}'|, the maximum over colour channels"
    blank_means = ("its Grad-CAM factor is 0 everywhere (the weighted sum of the layer's channels is at most 0 at "
                   "every position and the ReLU removes it) or no signal survived guided backpropagation's rule; "
                   "either way the pixels may still change that score")

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.attribution import reduce_channels
        from ..methods.cams import guided_grad_cam

        return reduce_channels(guided_grad_cam(model, inputs, target, options["layer"]), "max")


# ---------------------------------------------------------------------------------------------------------------
# The non-linearities check and the top predictions


@register
class Nonlinearities(Analysis):
    name = "nonlinearities"
    tasks = EVERY_TASK  # reads activations or weights only, never the output
    title = "Non-linearities check"
    section = "influence"
    summary = "which ReLUs the modified backward rules see, and so which attribution maps are exact on this model"
    order = 0

    def check(self, ctx: Any, params: Any) -> None:
        ctx.facts.require_python(self.title)

    def run(self, ctx: Any, params: Any, reduced: dict, upstream: Upstream = NOTHING) -> Result:
        from . import all_analyses

        result = Result()
        report = nonlinearities(ctx, self.title)
        rows = [[name, "nn.ReLU module, called once", 1, "no"] for name in report.relu_modules]
        rows += [[name, "nn.ReLU module, reused", calls, "yes" if name in report.inplace_relus else "no"]
                 for name, calls in report.reused_relu_modules.items()]
        for row in rows:
            if row[1].endswith("once") and row[0] in report.inplace_relus:
                row[3] = "yes"
        rows += [[where, "functional ReLU (F.relu, torch.relu, Tensor.relu...)", calls,
                  "yes" if f"functional in {where}" in report.inplace_relus else "no"]
                 for where, calls in report.functional_relus.items()]
        rows += [[where, "other non-linearity: not rewritten", calls, "-"]
                 for where, calls in report.other_nonlinearities.items()]
        rows += [[where, "not on the image's path (parameters and buffers only)", calls, "-"]
                 for where, calls in report.off_path.items()]
        result.items.append(Table(
            key="relus", label="Non-linearities in one forward pass",
            caption="Every ReLU call and every other non-linearity seen in the build's probe forward pass (two "
                    "seeded random images in one batch), with the module that ran it. Deconvnet and guided "
                    "backpropagation rewrite the backward rule of every ReLU call, whatever its form; other "
                    "non-linearities keep their gradient. A call whose input is computed from the model's "
                    "parameters and buffers alone (not from the image) is 'not on the image's path': no gradient "
                    "of the image passes it, so no rule there changes a map.",
            columns=["where", "kind", "calls", "in place"], rows=rows))

        method_rows = [[a.name, *a.exactness(ctx.facts)] for a in all_analyses() if isinstance(a, AttributionAnalysis)]
        result.items.append(Table(
            key="methods", label="Which attribution maps are exact on this model",
            caption="'Exact' = computed exactly as the method's page defines it, with nothing approximated on this "
                    "model; where a page's definition differs from the paper's (for example CAM's displayed ReLU, "
                    "the pytorch-grad-cam forms of Grad-CAM++, XGrad-CAM and Score-CAM, LayerCAM's single layer, "
                    "occlusion's logit), the page says how. 'Approximate': deconvnet, guided backpropagation and guided Grad-CAM mix the modified "
                    "ReLU rule with the plain gradient of the other non-linearities; Grad-CAM++'s closed-form "
                    "weights assume a score piecewise linear in its layer (ReLU networks).",
            columns=["method", "on this model", "why"], rows=method_rows))
        result.metrics.update({
            "ReLU calls": report.n_relu_calls, "reused ReLU modules": len(report.reused_relu_modules),
            "in-place ReLUs": len(report.inplace_relus), "functional ReLU calls": report.n_functional_relus,
            "other non-linearities": sum(report.other_nonlinearities.values())})
        if report.n_relu_calls == 0:
            result.notes.append(f"This model has {report.no_relu_words()}: deconvnet, guided backpropagation and "
                                "guided Grad-CAM would reduce to the plain gradient, so the report does not draw "
                                "them.")
        elif report.other_nonlinearities:
            result.notes.append("This model has non-linearities other than ReLU: deconvnet, guided backpropagation "
                                "and guided Grad-CAM are approximate here (" + report.rule_reason + "), "
                                "and so is Grad-CAM++ unless they all run before its layer (its closed-form weights "
                                "assume ReLU networks).")
        return result


@register
class TopPredictions(Analysis):
    name = "top-predictions"
    needs_logits = True
    tasks = EVERY_TASK  # each task's own top predictions (`task_rows`); the image pages' map viewer shows over it
    title = "Top predictions"
    section = "influence"
    summary = ("each sample image with what the model predicts for it: a classifier's five most probable classes, "
               "another task's top labels, outputs, classes by pixels, detections or nearest images")
    order = 0

    def run(self, ctx: Any, params: Any, reduced: dict, upstream: Upstream = NOTHING) -> Result:
        if ctx.task != "classify":
            return self.run_task(ctx)
        result = Result()
        predictions = ctx.predictions
        names = ctx.class_names
        k = min(5, len(names))
        order = np.argsort(-predictions.probs, axis=1, kind="stable")
        known = predictions.labels >= 0
        if known.any():
            result.metrics["top-1 accuracy"] = float((order[known, 0] == predictions.labels[known]).mean())
            if len(names) > k:
                result.metrics[f"top-{k} accuracy"] = float(
                    (order[known, :k] == predictions.labels[known, None]).any(axis=1).mean())
        displays = ctx.sample_display()
        for p, i in enumerate(ctx.samples):
            row = predictions.row(i)
            label = int(ctx.images.labels[i])
            image_name = ctx.images.names[i]
            truth = f"true class {names[label]}" if label >= 0 else "true class unknown"
            top = order[row, :k]
            result.items.append(Picture(
                key=f"image-{i:05d}", array=displays[p], style="rgb", image=i, group=image_name,
                label=image_name, caption=f"The image as the model sees it ({truth})."))
            result.items.append(Table(
                key=f"top-{i:05d}", image=i, group=image_name, label=f"Top-{k} classes",
                caption=f"The {k} most probable classes (softmax of the logits); {truth}.",
                columns=["rank", "class", "probability", "logit"],
                rows=[[r + 1, names[c] + (" (true)" if c == label else ""), float(predictions.probs[row, c]),
                       float(predictions.logits[row, c])] for r, c in enumerate(top)]))
        return result

    def run_task(self, ctx: Any) -> Result:
        """Another task's page: each sample image as the model sees it and a table of its top predictions."""
        from ..tasks import sample_prediction

        result = Result()
        predictions, names = ctx.predictions, ctx.class_names
        displays = ctx.sample_display()
        for p, i in enumerate(ctx.samples):
            row = predictions.row(i)
            image_name = ctx.images.names[i]
            said, number = sample_prediction(predictions, row, names)
            what = f"the model predicts {said}" if said is not None else "an embedding model (no class to predict)"
            result.items.append(Picture(
                key=f"image-{i:05d}", array=displays[p], style="rgb", image=i, group=image_name,
                label=image_name, caption=f"The image as the model sees it ({what})."))
            label, caption, columns, rows = task_rows(ctx, row)
            result.items.append(Table(key=f"top-{i:05d}", image=i, group=image_name, label=label, caption=caption,
                                      columns=columns, rows=rows))
        return result


def task_rows(ctx: Any, row: int, k: int = 5) -> tuple[str, str, list[str], list[list]]:
    """(label, caption, columns, rows) of the top-predictions table of the image in ``row`` for a model whose task
    is not classify: binary both classes' probabilities; multilabel the ``k`` most probable labels; regress the
    outputs (up to 10) with the true values; segment the ``k`` classes with the most predicted pixels; detect the
    ``k`` top-scoring detections; embed the ``k`` nearest other images by cosine similarity."""
    p, names, task = ctx.predictions, ctx.class_names, ctx.task
    if task == "binary":
        probs = p.probs[row]
        return ("Both classes", "The sigmoid probability of the one logit and its complement.",
                ["class", "probability"], [[names[c], float(probs[c])] for c in (1, 0)])
    if task == "multilabel":
        probs = p.probs[row]
        top = np.argsort(-probs, kind="stable")[:k]
        truth = p.labels[row]
        return (f"Top-{len(top)} labels", "The most probable labels (each its own sigmoid; a label is predicted at "
                "probability > 0.5); (true) marks a label the image has.", ["rank", "label", "probability", "logit"],
                [[r + 1, names[c] + (" (true)" if truth[c] == 1 else ""), float(probs[c]), float(p.logits[row, c])]
                 for r, c in enumerate(top)])
    if task == "regress":
        truth = p.labels[row]
        return ("Outputs", "Each output's predicted value and the true value (NaN: unknown).",
                ["output", "predicted", "true"],
                [[names[d], float(p.logits[row, d]), float(truth[d])] for d in range(min(10, p.logits.shape[1]))])
    if task == "segment":
        pixels = p.seg_pixels[row]
        top = [c for c in np.argsort(-pixels, kind="stable")[:k] if pixels[c] > 0]
        total = max(int(pixels.sum()), 1)
        return ("Classes by predicted pixels", "The classes with the most pixels predicted as theirs (the argmax "
                "over classes at each pixel), and each class's mean logit over the image.",
                ["rank", "class", "pixel share", "mean logit"],
                [[r + 1, names[c], float(pixels[c] / total), float(p.logits[row, c])] for r, c in enumerate(top)])
    if task == "detect":
        d = p.detections[row]
        return ("Top detections", "The highest-scoring detections, boxes (x0, y0, x1, y1) in input pixels.",
                ["rank", "class", "score", "box"],
                [[r + 1, names[int(d["labels"][j])], float(d["scores"][j]), ", ".join(f"{v:.0f}" for v in d["boxes"][j])]
                 for r, j in enumerate(range(min(k, len(d["scores"]))))])
    e = p.logits.astype(np.float64)  # embed: as `reportgen.task_targets.nearest_other` ranks them
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    u = e / np.where(norm > 0, norm, 1.0)
    sims = u @ u[row]
    sims[row] = -np.inf
    top = np.argsort(-sims, kind="stable")[:min(k, len(sims) - 1)]
    return ("Nearest images", "The other images whose embeddings are closest in cosine similarity.",
            ["rank", "image", "cosine similarity"],
            [[r + 1, ctx.images.names[int(p.indices[j])], float(sims[j])] for r, j in enumerate(top)])
