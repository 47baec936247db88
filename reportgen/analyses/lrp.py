"""Layer-wise relevance propagation (LRP) as an attribution page of the influence section.

The influence section's pipeline (`reportgen.analyses.influence.AttributionAnalysis`) computes the maps and
scores them; LRP's maps are signed (relevance for the class and against it), so this page redraws the pipeline's
pictures, which show only the positive part over the image, as signed maps (red for, blue against, white 0) and
says in each caption how much of the logit the map holds (conservation). The method is
`reportgen.methods.lrp.lrp`; where it has no rule for an operation of the model, the page is "not applicable"
with the operation named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..artifacts import NotApplicable, Picture, Result
from ..config import doc
from . import NOTHING, Upstream, register
from .influence import AttributionAnalysis, _percentile_field, _scale_field, fmt, target_name

# kept in step with reportgen.methods.lrp.COMPOSITES (that module imports torch; listing the analyses must not)
COMPOSITES = ("epsilon-gamma-box", "epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1")
RULE_WORDS = {"box": "z^B (pixels in their [0, 1] range, in normalized units)", "gamma": "gamma = {gamma}",
              "epsilon": "epsilon = {epsilon}", "zplus": "z+ (alpha 1, beta 0)", "alpha2-beta1": "alpha 2, beta 1",
              "flat": "the flat rule"}


@dataclass
class LRPParams:
    composite: str = field(default="epsilon-gamma-box", metadata=doc(
        "Which rule each layer type gets (zennit's composites): epsilon-gamma-box (z^B on the first convolution, "
        "gamma on the others, epsilon on dense layers; Montavon et al. 2019, Kohlbrenner et al. 2020), "
        "epsilon-plus, epsilon-plus-flat or epsilon-alpha2-beta1.", choices=COMPOSITES))
    epsilon: float = field(default=1e-6, metadata=doc(
        "Stabilizer of the epsilon rule on dense layers (added to each denominator with its sign; larger values "
        "absorb weak or contradictory relevance; above 0, or a unit with output 0 divides by 0).", min=1e-12))
    gamma: float = field(default=0.25, metadata=doc(
        "Weight of the positive weights added by the gamma rule on convolutions (0 = LRP-0).", min=0.0))
    scale: str = _scale_field()
    percentile: float = _percentile_field()


def signed_limits(maps: np.ndarray, percentile: float) -> tuple[float, np.ndarray]:
    """Symmetric colour limits of signed maps (N, H, W): ``(shared, per_image)``, the ``percentile`` of |value|
    over all maps and over each map; 0 falls back to the largest |value|, then to 1."""
    a = np.abs(np.asarray(maps, dtype=np.float64)).reshape(len(maps), -1)

    def safe(limit: float, values: np.ndarray) -> float:
        if limit > 0:
            return float(limit)
        top = float(values.max()) if values.size else 0.0
        return top if top > 0 else 1.0

    shared = safe(float(np.percentile(a, percentile)) if a.size else 0.0, a)
    return shared, np.array([safe(float(np.percentile(row, percentile)), row) for row in a])


def folded_words(n: int) -> str:
    return f"{n} BatchNorm{'s' if n > 1 else ''} folded into the layer before {'each' if n > 1 else 'it'}"


def _key_parts(key: str) -> tuple[str, str, int, int]:
    """(scale, role, image, class) of a pipeline picture key ``{scale}-{role}-{image:05d}-{class}``."""
    head, role, image, cls = key.rsplit("-", 3)
    return head, role, int(image), int(cls)


@register
class LRP(AttributionAnalysis):
    name = "lrp"
    title = "Layer-wise relevance propagation"
    summary = "the class score redistributed layer by layer down to the pixels, for and against the class"
    paper = ("Bach, Binder, Montavon, Klauschen, Müller & Samek, On Pixel-Wise Explanations for Non-Linear "
             "Classifier Decisions by Layer-Wise Relevance Propagation, PLoS ONE 2015")
    paper_url = "https://doi.org/10.1371/journal.pone.0130140"
    order = 57
    Params = LRPParams
    # its relevance starts from a score linear in the outputs (`reportgen.methods.lrp.initial_relevance`)
    tasks = ("classify", "binary", "multilabel", "regress", "segment")
    task_reason = ("its relevance starts from a score linear in the model's outputs (a class logit, a label's or an "
                   "output's value, a mean logit over a region), and a detection's box score (IoU + score) or an "
                   "embedding's cosine similarity is not")
    # one forward pass (the traced graph), then a backward pass whose rules run their layer's modified forward
    # and its transpose (gamma on ReLU inputs: 2 convolutions and 2 transposed per convolution), plus tracing the
    # model: measured 8.8 forward passes of the batch (resnet18, 112 px, 4 images, one thread, CPU time)
    map_passes = 8.0
    blank_means = ("no relevance reached the pixels: the class's logit is 0, or the rules (z+ and gamma hand on only "
                   "one sign of contribution) discarded all of it")

    def _plan(self, facts: Any) -> tuple[str, str]:
        """(why LRP does not apply, "" when it does; what its plan does to this model's operations)."""
        from ..methods.lrp import LRPNotApplicable, lrp_plan

        # the model facts keep the model (ModelFacts._model, as their receptive_field does): the rules depend on
        # every operation of its graph, which the layer table alone does not show
        try:
            plan = lrp_plan(facts._model)
        except LRPNotApplicable as exc:
            return str(exc), ""
        kinds = list(plan.actions.values())
        words = [f"{len(plan.layers)} convolution and dense layers with their rule"]
        if plan.folded:
            words.append(folded_words(len(plan.folded)))
        if kinds.count("sum"):
            words.append(f"{kinds.count('sum')} additions split in proportion to their inputs")
        return "", "every operation on the image's path has its rule: " + ", ".join(words)

    def _reason(self, facts: Any) -> str:
        return self._plan(facts)[0]

    def check(self, ctx: Any, params: Any) -> None:
        super().check(ctx, params)
        ctx.facts.require_python(self.title)
        reason = self._reason(ctx.facts)
        if reason:
            raise NotApplicable(reason)

    def exactness(self, facts: Any) -> tuple[str, str]:
        if not facts.python:
            return "not applicable", "TorchScript: LRP traces the Python model"
        reason, words = self._plan(facts)
        if reason:
            return "not applicable", reason
        return "exact", words

    def options(self, ctx: Any, params: Any) -> dict:
        spec = ctx.loaded.input
        mean, std = np.asarray(spec.mean, dtype=np.float64), np.asarray(spec.std, dtype=np.float64)
        # pixels p in [0, 1] are fed as (p - mean) / std: the z^B rule's bounds per channel
        return {"composite": params.composite, "epsilon": params.epsilon, "gamma": params.gamma,
                "low": [float(v) for v in -mean / std], "high": [float(v) for v in (1 - mean) / std],
                "plan": self._plan_words(ctx.model, params)}

    def _plan_words(self, model: Any, params: Any) -> str:
        """Which rule this model's layers get, and what else the plan does (for the page's words)."""
        from ..methods.lrp import layer_rules, lrp_plan

        plan = lrp_plan(model)
        rules = list(layer_rules(plan, None, params.composite).values())
        words = []
        for rule in RULE_WORDS:
            if rules.count(rule):
                what = RULE_WORDS[rule].format(gamma=fmt(params.gamma), epsilon=fmt(params.epsilon))
                words.append(f"{what} on {rules.count(rule)} layer{'s' if rules.count(rule) > 1 else ''}")
        if plan.folded:
            words.append(folded_words(len(plan.folded)))
        sums = list(plan.actions.values()).count("sum")
        if sums:
            words.append(f"{sums} addition{'s' if sums > 1 else ''} split in proportion to the inputs")
        return ", ".join(words)

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.lrp import lrp

        # the channels' relevances add up: their sum keeps conservation and the sign (for / against)
        settings = {k: v for k, v in options.items() if k != "plan"}  # "plan" is words for the page
        return lrp(model, inputs, target, **settings).sum(dim=1)

    def words(self, options: dict) -> str:
        return (f"each pixel's relevance for the class logit summed over colour channels, LRP with the "
                f"{options['composite']} composite ({options['plan']})")

    def short(self, options: dict) -> str:
        return f"LRP ({options['composite']})"

    def run(self, ctx: Any, params: Any, reduced: dict, upstream: Upstream = NOTHING) -> Result:
        result = super().run(ctx, params, reduced, upstream)
        stored = result.shared.get("maps") or {}
        if not stored:
            return result
        keys = list(stored)
        raw = np.stack([np.nan_to_num(stored[k].numpy().astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
                        for k in keys])
        shared, per_image = signed_limits(raw, params.percentile)
        index = {k: p for p, k in enumerate(keys)}
        pct = "the maximum" if params.percentile >= 100 else f"the {params.percentile:g}th percentile"
        predictions, names = ctx.predictions, ctx.class_names
        options = self.options(ctx, params)
        targets = self.map_targets(ctx)
        tset = self.target_set(ctx, targets)  # another task's target scores (None: a classifier's logits)
        score_of = {(t.image, t.cls): float(v) for t, v in zip(targets, tset.scores)} if tset is not None else {}
        what = {(t.image, t.cls): target_name(ctx, t) for t in targets}
        negative = float(np.clip(-raw, 0, None).sum()) / max(float(np.abs(raw).sum()), 1e-300)
        masked = result.shared.get("mask scores") or {}
        # the pipeline drew the positive part over the image: the same figures, redrawn signed
        for item in result.items:
            if not (isinstance(item, Picture) and item.style == "heat"):
                continue
            scale, role, image, cls = _key_parts(item.key)
            p = index[(image, cls)]
            limit = shared if scale == "shared" else float(per_image[p])
            logit = score_of.get((image, cls), None)
            if logit is None:
                logit = float(predictions.logits[predictions.row(image), cls])
            total = float(raw[p].sum())
            where = (f"one scale shared by all {len(keys)} maps of this method" if scale == "shared"
                     else "this map's own scale")
            item.array, item.style, item.vmax, item.base = raw[p], "signed", limit, None
            score = "logit" if tset is None else "target's score"
            named = "class" if tset is None else "target"
            item.caption = (f"{self.short(options)} for {named} '{what[(image, cls)]}' ({role}) of "
                            f"{ctx.images.names[image]}. Red: relevance for the class, blue: against it, white: 0; "
                            f"{where}, the colours saturate at +-{fmt(limit)} ({pct} of |relevance|). The map sums to "
                            f"{fmt(total)}; the {score} is {fmt(logit)} (the difference is what biases, the "
                            "stabilizers and the rules' discarded parts took or gave).")
            score = masked.get(image)
            if role in ("predicted", "target") and score is not None and not np.isnan(score[0]):
                item.caption += (f" {score[0]:.0%} of the positive relevance lies on the object; its maximum is "
                                 f"{'on' if score[1] else 'off'} it.")
        result.metrics["shared colour limit"] = shared
        result.metrics["negative share of |relevance|"] = negative
        result.notes = [n.replace("drawn black", "drawn white") if "at every pixel" in n else n
                        for n in result.notes if not n.startswith("Each map shows")]
        result.notes.append(f"Each map shows {self.words(options)}. It is drawn on its own, red for and blue "
                            "against the class; the object-mask scores, where the data set has masks, count the "
                            "positive relevance only.")
        return result
