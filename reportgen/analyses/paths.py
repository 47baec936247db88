"""Path attributions on the report: Input x Gradient, Integrated Gradients, GradientSHAP and DeepLIFT.

Each is an `AttributionAnalysis` (the influence section's pipeline: sample images, class targets, heat overlays,
mask scores, the trust checks) whose method function lives in `reportgen.methods.paths` or
`reportgen.methods.deeplift`. The maps drawn are |attribution|, the maximum over colour channels, like the other
gradient maps. Integrated Gradients and DeepLIFT promise that each map's attributions add up to F(x) - F(x');
their pages show, per map, how far they do (the completeness gap).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..artifacts import NotApplicable, Result, Table
from ..config import doc
from . import NOTHING, Upstream, register
from .influence import AttributionAnalysis, MapTarget, _percentile_field, _scale_field, chunk_target, target_name

BASELINE_WORDS = {"black": "a black image", "mean": "the normalization's mean colour (0 in normalized units)",
                  "blur": "a blurred copy of the image", "uniform": "uniform noise (seeded)"}
BASELINE_DOC = ("The baseline x' (what 'absence' means): black, the normalization's mean colour, a Gaussian blur of "
                "the image (standard deviation `blur` of its shorter side) or uniform noise between black and white.")


def _baseline_field() -> Any:
    return field(default="black", metadata=doc(BASELINE_DOC, choices=("black", "mean", "blur", "uniform")))


def _blur_field() -> Any:
    return field(default=0.05, metadata=doc(
        "Standard deviation of the blurred baseline, as a fraction of the shorter image side.", min=0.0, max=1.0))


@dataclass
class IntegratedGradientsParams:
    steps: int = field(default=32, metadata=doc(
        "Points on the path from the baseline to the image where the gradient is taken.", min=2, max=1000))
    method: str = field(default="gausslegendre", metadata=doc(
        "Quadrature of the path integral (Captum's names): Gauss-Legendre nodes, or Riemann sums taking each cell's "
        "left end, right end, middle, or the trapezoid rule.",
        choices=("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")))
    baseline: str = _baseline_field()
    blur: float = _blur_field()
    scale: str = _scale_field()
    percentile: float = _percentile_field()


@dataclass
class GradientShapParams:
    n: int = field(default=32, metadata=doc(
        "Draws per map: each a baseline image and a point on the path to it.", min=1, max=1000))
    baselines: int = field(default=16, metadata=doc(
        "Images of the image set drawn (seeded) as the baselines (at most the set's size).", min=1, max=1000))
    scale: str = _scale_field()
    percentile: float = _percentile_field()


@dataclass
class DeepLiftParams:
    baseline: str = _baseline_field()
    blur: float = _blur_field()
    scale: str = _scale_field()
    percentile: float = _percentile_field()


def baseline_options(ctx: Any, params: Any) -> dict:
    """The keyword arguments `make_baseline` needs besides the images: the kind, black and white in normalized
    units (from the model's normalization) and the blur."""
    spec = ctx.loaded.input
    low = [(0.0 - m) / s for m, s in zip(spec.mean, spec.std)]
    high = [(1.0 - m) / s for m, s in zip(spec.mean, spec.std)]
    return {"baseline": params.baseline, "low": low, "high": high, "blur": params.blur}


def build_baseline(inputs: Any, options: dict) -> Any:
    """The baseline (N, C, H, W) of ``inputs`` for these options (0, the mean colour, when none is named: a
    method called without options)."""
    from ..methods.paths import make_baseline

    return make_baseline(inputs, options.get("baseline", "mean"), low=options.get("low"), high=options.get("high"),
                         blur=options.get("blur", 0.05), generator=options.get("generator"))


class CompletenessPage(AttributionAnalysis):
    """A method whose attributions should add up to F(x) - F(x'): each chunk's gaps travel with its maps, and the
    page gets a table of them per map."""

    gap_words: ClassVar[str] = ""  # what makes the gap non-zero on this method (the table's caption)

    def chunk_options(self, ctx: Any, options: dict, first: MapTarget) -> dict:
        # the chunk's own list of gaps, and (uniform baseline) a noise generator named by its first map
        return {**options, "gaps": [], "generator": ctx.generator(f"{self.name}/{first.image}-{first.cls}")}

    def compute(self, ctx: Any, params: Any, targets: list[MapTarget], tset: Any = None) -> tuple[Any, dict]:
        """As `AttributionAnalysis.compute`, with the gaps: ``options["gaps"]`` is then (T, 2) float64, the gap and
        F(x) - F(x') of each target in order."""
        import torch

        inputs = ctx.sample_inputs()
        position = {i: p for p, i in enumerate(ctx.samples)}
        options = self.options(ctx, params)
        size = self.chunk_size(ctx, options)
        chunks = [targets[k:k + size] for k in range(0, len(targets), size)]
        tset = self.target_set(ctx, targets, inputs) if tset is None else tset
        row = {id(t): k for k, t in enumerate(targets)}

        def one(chunk: list[MapTarget]) -> tuple[Any, Any]:
            opts = self.chunk_options(ctx, options, chunk[0])
            picks = torch.tensor([position[t.image] for t in chunk], device=inputs.device)
            classes = chunk_target(tset, chunk, row, inputs.device)
            maps = self.attribute(ctx.model, inputs[picks], classes, **opts).detach().float().cpu()
            gap, delta = opts["gaps"][0]
            return maps, torch.stack([gap, delta], dim=1).double().cpu()

        done = ctx.map_chunks(one, chunks, self.name)
        return torch.cat([m for m, _ in done]), {**options, "gaps": torch.cat([g for _, g in done]).numpy()}

    def run(self, ctx: Any, params: Any, reduced: dict, upstream: Upstream = NOTHING) -> Result:
        targets = self.explained_targets(ctx)
        if not targets:
            return super().run(ctx, params, reduced, upstream)
        maps, options = self.compute(ctx, params, targets)
        # the shared pipeline draws these very maps: a copy of this analysis hands them over, so that the
        # registered instance keeps no state of a build
        drawing = copy.copy(self)
        drawing.compute = lambda *_: (maps, options)
        result = AttributionAnalysis.run(drawing, ctx, params, reduced, upstream)
        gaps = options["gaps"]
        rel = np.abs(gaps[:, 0]) / np.maximum(np.abs(gaps[:, 1]), 1e-12)
        score = "class logit" if ctx.task == "classify" else "target's score (the table 'What the maps explain')"
        result.items.append(Table(
            key="completeness", label="Completeness gap per map",
            caption=f"For each map: F(x) - F(x'), the change of the {score} from the baseline to the image; the "
                    f"sum of the signed attributions over all pixels and channels; their difference (the gap) and "
                    f"|gap| / |F(x) - F(x')|. {self.gap_words}",
            columns=["image", "class", "role", "F(x) - F(x')", "sum of attributions", "gap", "|gap| / |change|"],
            rows=[[ctx.images.names[t.image], target_name(ctx, t), t.role, float(d), float(g + d), float(g), float(r)]
                  for t, (g, d), r in zip(targets, gaps, rel)]))
        result.metrics["largest |completeness gap| / |F(x) - F(x')|"] = float(rel.max())
        result.metrics["mean |completeness gap|"] = float(np.abs(gaps[:, 0]).mean())
        # for readers (the findings): each map's gap and change of the logit
        result.shared["completeness"] = {(t.image, t.cls): (float(g), float(d)) for t, (g, d) in zip(targets, gaps)}
        return result


@register
class InputXGradient(AttributionAnalysis):
    name = "input-x-gradient"
    title = "Input x Gradient"
    summary = "each pixel's value times the gradient of the class score: its first-order share of the score"
    paper = ("Shrikumar, Greenside, Shcherbina & Kundaje, Not Just a Black Box: Learning Important Features Through "
             "Propagating Activation Differences, 2016")
    paper_url = "https://arxiv.org/abs/1605.01713"
    order = 22
    exact_because = "plain autograd"
    map_words = "|pixel value x d class logit / d pixel| (normalized units), the maximum over colour channels"
    blank_means = ("every pixel has a zero gradient or a zero value (0 is the normalization's mean colour) for that "
                   "score (a zero-initialized classifier head gives blank maps too)")

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.attribution import reduce_channels
        from ..methods.paths import input_x_gradient

        return reduce_channels(input_x_gradient(model, inputs, target), "max")


@register
class IntegratedGradients(CompletenessPage):
    name = "integrated-gradients"
    title = "Integrated Gradients"
    summary = "the gradient integrated along the straight path from a baseline image to the image, times their difference"
    paper = "Sundararajan, Taly & Yan, Axiomatic Attribution for Deep Networks, ICML 2017"
    paper_url = "https://arxiv.org/abs/1703.01365"
    order = 24
    Params = IntegratedGradientsParams
    chunked = False
    exact_because = "plain autograd at the path's points (the quadrature's error is the completeness gap on its page)"
    shrink = (("steps", 8),)
    blank_means = ("the path integral of the gradient is 0 at every pixel, or the image equals the baseline (a "
                   "zero-initialized classifier head gives blank maps too)")
    gap_words = ("Integrated Gradients promises a gap of 0 (completeness); a non-zero gap is the error of "
                 "approximating the path integral with this many points: raise steps until it is small.")

    def passes(self, ctx: Any, params: Any) -> float:
        # a forward and a backward pass per path point, then one forward pass of the image and of the baseline
        return 3.0 * params.steps + 2.0

    def options(self, ctx: Any, params: Any) -> dict:
        return {"steps": params.steps, "method": params.method, **baseline_options(ctx, params),
                "batch_size": ctx.batch_size(grad=True)}

    def chunk_size(self, ctx: Any, options: dict) -> int:
        return max(1, options["batch_size"] // options["steps"])  # the images whose path points fill one batch

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.attribution import reduce_channels
        from ..methods.paths import integrated_gradients

        return reduce_channels(integrated_gradients(
            model, inputs, target, baseline=build_baseline(inputs, options), steps=options.get("steps", 50),
            method=options.get("method", "gausslegendre"), batch_size=options.get("batch_size", 64),
            gaps=options.get("gaps")), "max")

    def words(self, options: dict) -> str:
        return (f"|(x - x') x the mean gradient on the path from x' = {BASELINE_WORDS[options['baseline']]} to the "
                f"image| ({options['steps']} points, {options['method']}), the maximum over colour channels")

    def short(self, options: dict) -> str:
        return f"Integrated Gradients ({options['steps']} steps, {options['baseline']} baseline)"


@register
class GradientShap(AttributionAnalysis):
    name = "gradient-shap"
    title = "GradientSHAP (expected gradients)"
    summary = "Integrated Gradients averaged over baselines drawn from the image set, estimated by random draws"
    paper = ("Erion, Janizek, Sturmfels, Lundberg & Lee, Improving performance of deep learning models with axiomatic "
             "attribution priors and expected gradients, Nature Machine Intelligence 2021")
    paper_url = "https://arxiv.org/abs/1906.10670"
    order = 26
    Params = GradientShapParams
    chunked = False
    exact_because = "plain autograd at seeded random points (a Monte Carlo estimate, as its page defines it)"
    shrink = (("n", 8),)
    blank_means = ("the gradient at every drawn point, times the image's difference from the drawn baseline, is 0 at "
                   "every pixel (a zero-initialized classifier head gives blank maps too)")

    def passes(self, ctx: Any, params: Any) -> float:
        return 3.0 * params.n  # a forward and a backward pass per draw

    def options(self, ctx: Any, params: Any) -> dict:
        rng = ctx.rng(f"{self.name}:baselines")
        unreadable = {name for name, _ in ctx.images.skipped}
        usable = [i for i, name in enumerate(ctx.images.names) if name not in unreadable]
        picks = sorted(rng.choice(len(usable), size=min(params.baselines, len(usable)), replace=False).tolist())
        chosen = [usable[p] for p in picks]
        return {"n": params.n, "batch_size": ctx.batch_size(grad=True), "baseline_images": chosen,
                "baselines": ctx.images.load_inputs(chosen, ctx.device), "generator": ctx.generator(self.name)}

    def chunk_size(self, ctx: Any, options: dict) -> int:
        return max(1, options["batch_size"] // options["n"])

    def chunk_options(self, ctx: Any, options: dict, first: MapTarget) -> dict:
        # the draws of a chunk come from a generator of its own, named by its first map (image and class)
        return {**options, "generator": ctx.generator(f"{self.name}/{first.image}-{first.cls}")}

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        import torch

        from ..methods.attribution import reduce_channels
        from ..methods.paths import gradient_shap

        generator = options.get("generator") or torch.Generator().manual_seed(0)
        return reduce_channels(gradient_shap(model, inputs, target, baselines=options.get("baselines"),
                                             n=options.get("n", 50), batch_size=options.get("batch_size", 64),
                                             generator=generator), "max")

    def words(self, options: dict) -> str:
        return (f"|mean over {options['n']} draws of (x - x') x the gradient at a uniform point of the path from x' "
                f"to the image|, x' drawn from {len(options['baseline_images'])} images of the image set (seeded), "
                "the maximum over colour channels")

    def short(self, options: dict) -> str:
        return f"GradientSHAP ({options['n']} draws, {len(options['baseline_images'])} baseline images)"


def deeplift_reason(facts: Any) -> str:
    """Why DeepLIFT's Rescale rule is not exact on the model of ``facts`` ("" when it is): this implementation has
    rules for ReLUs and 2-D max pooling only, and a normalization that divides by the image's own statistics, or any
    other non-linearity, keeps its gradient and breaks summation-to-delta."""
    report = facts.nonlinearities
    if report is None:
        return "DeepLIFT needs the Python model (its rules do not reach a compiled TorchScript graph)"
    if not report.n_relu_calls:
        return f"the model has {report.no_relu_words()}: DeepLIFT's Rescale rule is implemented here for ReLUs"
    norms = sorted({r.type for r in facts.layers if r.out_shape is not None and any(
        k in r.type for k in ("LayerNorm", "GroupNorm", "InstanceNorm", "LocalResponseNorm", "AdaptiveMaxPool",
                              "MaxPool1d", "MaxPool3d"))})
    others = report.other_kinds() + norms
    if others:
        return (f"the model also has {', '.join(others)}: DeepLIFT's Rescale rule is implemented here for ReLUs "
                "and 2-D max pooling; these would keep their gradient and the attributions would not add up to "
                "F(x) - F(x')")
    return ""


@register
class DeepLift(CompletenessPage):
    name = "deeplift"
    title = "DeepLIFT"
    summary = "the change of the class score from a baseline, propagated back with the Rescale rule through ReLUs"
    paper = ("Shrikumar, Greenside & Kundaje, Learning Important Features Through Propagating Activation "
             "Differences, ICML 2017")
    paper_url = "https://arxiv.org/abs/1704.02685"
    order = 55
    Params = DeepLiftParams
    map_passes = 6.0  # the image and its baseline forward, and both backward
    blank_means = ("every pixel's multiplier times its difference from the baseline is 0 for that score (a "
                   "zero-initialized classifier head gives blank maps too)")
    gap_words = ("DeepLIFT promises a gap of 0 (summation-to-delta) on a network of ReLUs and max pooling; what "
                 "remains is floating-point rounding.")

    def check(self, ctx: Any, params: Any) -> None:
        super().check(ctx, params)
        ctx.facts.require_python(self.title)
        reason = deeplift_reason(ctx.facts)
        if reason:
            raise NotApplicable(reason)

    def exactness(self, facts: Any) -> tuple[str, str]:
        reason = deeplift_reason(facts)
        if reason:
            return "not applicable", reason
        return "exact", "every ReLU call and 2-D max pooling rewritten (Rescale rule)"

    def options(self, ctx: Any, params: Any) -> dict:
        return baseline_options(ctx, params)

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.attribution import reduce_channels
        from ..methods.deeplift import deeplift

        return reduce_channels(deeplift(model, inputs, target, baseline=build_baseline(inputs, options),
                                        gaps=options.get("gaps")), "max")

    def words(self, options: dict) -> str:
        return (f"|(x - x') x DeepLIFT's multiplier| with x' = {BASELINE_WORDS[options['baseline']]}, the maximum "
                "over colour channels")

    def short(self, options: dict) -> str:
        return f"DeepLIFT ({options['baseline']} baseline)"
