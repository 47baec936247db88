"""The input's influence by random perturbations: RISE, KernelSHAP and LIME, one page each.

Each is an `AttributionAnalysis` (the pipeline of `reportgen.analyses.influence`) whose method function in
`reportgen.methods.perturbation` evaluates many masked copies of an image in batches of its own (``chunked``
False). Every map is computed alone (one target per chunk) with a generator named by its image and class, so a
map does not depend on the batch size, on the other maps or on the process that drew it. KernelSHAP and LIME
segment the image the model sees (its display copy) into SLIC superpixels with scikit-image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import doc
from . import register
from .influence import AttributionAnalysis, MapTarget, _percentile_field, _scale_field, fmt

SCORES = ("logit", "prob")
SCORE_WORDS = {"logit": "logit", "prob": "softmax probability"}


@dataclass
class RiseParams:
    masks: int = field(default=500, metadata=doc(
        "Random masks per map (the paper's ImageNet experiments use thousands).", min=1,
        max=100000))
    cells: int = field(default=7, metadata=doc(
        "Cells per side of each mask's random grid before upsampling (the paper: 7 on 224-pixel images).", min=1))
    p: float = field(default=0.5, metadata=doc("Probability that a cell of a mask keeps the image.", min=0.01,
                                               max=1.0))
    score: str = field(default="prob", metadata=doc(
        "What each masked copy is scored by: the class's softmax probability (the paper) or its logit.",
        choices=SCORES))
    scale: str = _scale_field()
    percentile: float = _percentile_field()


def _segments_fields() -> tuple[Any, Any]:
    return (field(default=50, metadata=doc("Superpixels per image asked of SLIC (it may make a few fewer).",
                                           min=2, max=1000)),
            field(default=10.0, metadata=doc(
                "SLIC compactness: higher = more square superpixels, lower = closer to colour edges.", min=0.01)))


@dataclass
class KernelShapParams:
    samples: int = field(default=200, metadata=doc(
        "Coalitions of superpixels evaluated per map (the full and the empty one included).", min=2, max=100000))
    segments: int = _segments_fields()[0]
    compactness: float = _segments_fields()[1]
    score: str = field(default="logit", metadata=doc("What is explained: the class logit or its softmax probability.",
                                                     choices=SCORES))
    scale: str = _scale_field()
    percentile: float = _percentile_field()


@dataclass
class LimeParams:
    samples: int = field(default=200, metadata=doc(
        "Perturbed copies evaluated per map (the whole image included).", min=2, max=100000))
    segments: int = _segments_fields()[0]
    compactness: float = _segments_fields()[1]
    kernel_width: float = field(default=0.25, metadata=doc(
        "Width of the exponential kernel on the cosine distance to the whole image (the lime package: 0.25).",
        min=0.01, max=100.0))
    alpha: float = field(default=1.0, metadata=doc("Ridge penalty of the fitted linear model (the lime package: 1).",
                                                   min=0.0))
    score: str = field(default="logit", metadata=doc("What is explained: the class logit or its softmax probability.",
                                                     choices=SCORES))
    scale: str = _scale_field()
    percentile: float = _percentile_field()


class PerturbationAnalysis(AttributionAnalysis):
    """A method that scores masked copies of each image: forward passes only, in batches of its own, each map from
    a generator of its own."""

    chunked = False
    exact_because = "forward passes only (a seeded random estimate, as its page defines it)"
    count_key = "samples"  # the setting that is the forward passes of one map

    def passes(self, ctx: Any, params: Any) -> float:
        return float(getattr(params, self.count_key))

    def chunk_size(self, ctx: Any, options: dict) -> int:
        return 1  # one map per call: its own generator (and segments), whatever the batch size

    def chunk_options(self, ctx: Any, options: dict, first: MapTarget) -> dict:
        return {**options, "generator": ctx.generator(f"{self.name}/{first.image}-{first.cls}")}

    def notes(self, ctx: Any, params: Any, options: dict, raw: np.ndarray) -> list[str]:
        total = float(np.abs(raw).sum())
        negative = float(np.clip(-raw, 0, None).sum()) / total if total > 0 else 0.0
        if negative <= 0.05:
            return []
        return [f"{negative:.0%} of the maps' total absolute value is negative (regions whose presence lowers the "
                "class score); the maps show only the positive part, the evidence for the class."]


@register
class Rise(PerturbationAnalysis):
    name = "rise"
    title = "RISE"
    summary = "the class probability averaged over random masks of the image, weighted by how much each keeps a pixel"
    paper = "Petsiuk, Das & Saenko, RISE: Randomized Input Sampling for Explanation of Black-box Models, BMVC 2018"
    paper_url = "https://arxiv.org/abs/1806.07421"
    order = 13
    Params = RiseParams
    count_key = "masks"
    shrink = (("masks", 200),)
    blank_means = ("every masked copy scored 0 for that class (with the logit score, the weighted scores cancel "
                   "out)")

    def options(self, ctx: Any, params: Any) -> dict:
        h, w = ctx.loaded.input.size
        return {"n_masks": params.masks, "cells": min(params.cells, h, w), "p": params.p, "score": params.score,
                "batch_size": ctx.batch_size(grad=False)}

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.perturbation import rise

        return rise(model, inputs, target, **options)

    def words(self, options: dict) -> str:
        return (f"the mean class {SCORE_WORDS[options['score']]} over {options['n_masks']} randomly masked copies "
                f"of the image, each weighted by its mask at the pixel and divided by p = {fmt(options['p'])} "
                f"(masks: {options['cells']}x{options['cells']} random cells upsampled with a random shift)")

    def short(self, options: dict) -> str:
        return f"RISE ({options['n_masks']} masks, {options['cells']}x{options['cells']} cells)"


class SuperpixelAnalysis(PerturbationAnalysis):
    """KernelSHAP and LIME: values per SLIC superpixel of the image the model sees."""

    shrink = (("samples", 100),)
    blank_means = "no superpixel changed that score when hidden (its regression gave every superpixel 0)"

    def chunk_options(self, ctx: Any, options: dict, first: MapTarget) -> dict:
        from ..methods.perturbation import superpixels

        image = np.asarray(ctx.images.display(first.image), dtype=np.float64) / 255.0
        segments = superpixels(image[None], n_segments=options["n_segments"],
                               compactness=options["compactness"])[0]
        kept = {k: v for k, v in options.items() if k not in ("n_segments", "compactness")}
        return {**kept, "segments": segments, "generator": ctx.generator(f"{self.name}/{first.image}-{first.cls}")}

    def options(self, ctx: Any, params: Any) -> dict:
        return {"n_samples": params.samples, "n_segments": params.segments, "compactness": params.compactness,
                "score": params.score, "batch_size": ctx.batch_size(grad=False)}

    def notes(self, ctx: Any, params: Any, options: dict, raw: np.ndarray) -> list[str]:
        from ..methods.perturbation import superpixels

        # the segmentation again (milliseconds per image), to say how many superpixels SLIC really made
        counts = [int(superpixels(np.asarray(ctx.images.display(i), dtype=np.float64)[None] / 255.0,
                                  n_segments=params.segments, compactness=params.compactness)[0].max()) + 1
                  for i in ctx.samples]
        low, high = min(counts), max(counts)
        made = f"{low}" if low == high else f"{low} to {high}"
        note = (f"SLIC (scikit-image, compactness {fmt(params.compactness)}, Gaussian smoothing sigma 1 pixel) cut "
                f"each sample image into {made} superpixels ({params.segments} asked)"
                + (f"; with {params.samples} samples for up to {high} superpixels the estimate is underdetermined "
                   "and noisy: raise samples." if params.samples < 2 * high else "."))
        return [note, *super().notes(ctx, params, options, raw)]


@register
class KernelShap(SuperpixelAnalysis):
    name = "kernel-shap"
    title = "KernelSHAP"
    summary = "the Shapley value of each superpixel for the class score, estimated from sampled coalitions"
    paper = "Lundberg & Lee, A Unified Approach to Interpreting Model Predictions, NeurIPS 2017"
    paper_url = "https://arxiv.org/abs/1705.07874"
    order = 15
    Params = KernelShapParams

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.perturbation import kernel_shap

        return kernel_shap(model, inputs, target, **options)

    def words(self, options: dict) -> str:
        return (f"the Shapley value of the pixel's superpixel (about {options['n_segments']} SLIC superpixels) for the "
                f"class {SCORE_WORDS[options['score']]}, a hidden superpixel taking the mean colour, estimated from "
                f"{options['n_samples']} coalitions; negative values are drawn as 0")

    def short(self, options: dict) -> str:
        return f"KernelSHAP ({options['n_samples']} coalitions, ~{options['n_segments']} superpixels)"


@register
class Lime(SuperpixelAnalysis):
    name = "lime"
    title = "LIME"
    summary = "a weighted linear model of the class score on which superpixels are present, fitted near the image"
    paper = ("Ribeiro, Singh & Guestrin, \"Why Should I Trust You?\": Explaining the Predictions of Any Classifier, "
             "KDD 2016")
    paper_url = "https://arxiv.org/abs/1602.04938"
    order = 17
    Params = LimeParams

    def options(self, ctx: Any, params: Any) -> dict:
        return {**super().options(ctx, params), "kernel_width": params.kernel_width, "alpha": params.alpha}

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.perturbation import lime

        return lime(model, inputs, target, **options)

    def words(self, options: dict) -> str:
        return (f"the coefficient of the pixel's superpixel (about {options['n_segments']} SLIC superpixels) in a "
                f"ridge regression (alpha {fmt(options['alpha'])}) of the class {SCORE_WORDS[options['score']]} on "
                f"which superpixels are present, over {options['n_samples']} copies with random superpixels set to "
                f"the mean colour, weighted by closeness to the image (kernel width {fmt(options['kernel_width'])}); "
                "negative values are drawn as 0")

    def short(self, options: dict) -> str:
        return f"LIME ({options['n_samples']} samples, ~{options['n_segments']} superpixels)"
