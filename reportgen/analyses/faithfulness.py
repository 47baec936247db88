"""Which maps to trust: the faithfulness and sanity checks of every attribution method, as two analyses.

Both read the attribution methods (`Analysis.reads`: every `AttributionAnalysis` of the registry not skipped with
--skip, or those named under ``methods``), so the build runs those methods' pages first and hands each check an
`Upstream`: every method's settings as the plan fixed them (budget-fitted, exactly those its page ran with) and the
maps its page drew (its result's ``shared["maps"]``). A check reads those maps of the sample images for their
predicted class and computes only the maps no page drew (`report_maps`: a method not chosen with --only, or named
although its page did not run), then checks them with `reportgen.methods.faithfulness`:

- `deletion-insertion`: the deletion and insertion curves (Petsiuk et al. 2018) and their areas per method, against
  a random pixel order, with the object-mask scores of the same maps where the data has masks;
- `randomization-test`: the cascading model-parameter randomization (Adebayo et al. 2018) on a deep copy of the
  model, with the cascade of maps, the similarity curves and a pass/fail verdict at a stated threshold. Its cost is
  bounded: a method whose one map sends more than ``max_passes`` images through the model is "not run (cost)",
  named in its table and notes, unless asked for.

The model card's "which maps to trust" table and each image's "at a glance" row lay out the tables these two
analyses return (joined by the method name in their first column).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..artifacts import Grid, NotApplicable, Plot, Result, Table
from ..config import doc
from ..errors import ConfigError
from . import EVERY_TASK, Analysis, NOTHING, Upstream, register

RANDOM_ROW = "random order"
EDGE_ROW = "edge detector (control)"
LEFT_OUT = "not run (cost)"


METHODS_DOC = ("Attribution methods to check (analysis names, e.g. grad-cam); empty = every attribution method that "
               "applies to the model and is not skipped with --skip.")


@dataclass
class DeletionParams:
    steps: int = field(default=16, metadata=doc(
        "Steps of each curve: after step j, j/steps of the pixels have been deleted (or inserted).", min=2, max=256))
    fill: float = field(default=0.0, metadata=doc(
        "Value of deleted pixels in normalized input units (0 = the normalization mean colour)."))
    images: int = field(default=8, metadata=doc(
        "Sample images used (the first of the build's samples); the cost grows with it.", min=1, max=200))
    blur: float = field(default=0.05, metadata=doc(
        "Standard deviation of the Gaussian blur of insertion's start image, as a fraction of the shorter image "
        "side (Petsiuk et al. blur 224-pixel images with sigma 5, about 0.02).", min=0.0, max=1.0))
    methods: list[str] = field(default_factory=list, metadata=doc(METHODS_DOC))


@dataclass
class RandomizationParams:
    threshold: float = field(default=0.5, metadata=doc(
        "A method passes when the mean Spearman rank correlation of |maps| between the trained model and the "
        "fully randomized one is at most this.", min=-1.0, max=1.0))
    steps: int = field(default=8, metadata=doc(
        "At most this many steps in the cascade: a model with more layers that own parameters has neighbouring "
        "layers re-initialized together (the cost is one map per step, method and image).", min=1, max=100))
    images: int = field(default=4, metadata=doc(
        "Sample images used (the first of the build's samples); the cost grows with it.", min=1, max=200))
    max_passes: int = field(default=16, metadata=doc(
        "A method whose one map sends more than this many images through the model (Score-CAM: one per channel of "
        "its layer; occlusion: one per patch position; SmoothGrad: one per noisy copy) is left out, with a note, "
        "unless named in `methods`: the cascade recomputes every map at every step, so a method costs at most "
        "max_passes x steps x images forward (and backward) passes of one image.", min=1))
    methods: list[str] = field(default_factory=list, metadata=doc(METHODS_DOC))


# ---------------------------------------------------------------------------------------------------------------
# The attribution methods, as the report enumerates them


def attribution_names() -> list[str]:
    """Every attribution method of the report (each `AttributionAnalysis` of the registry), in report order."""
    from . import all_analyses
    from .influence import AttributionAnalysis

    return [a.name for a in all_analyses() if isinstance(a, AttributionAnalysis)]


def checked_names(names: list[str], config: Any, key: str) -> list[str]:
    """The attribution methods a trust check reads (`Analysis.reads`), in report order: those named (``names``,
    checked against the registry; `ConfigError` naming ``key`` otherwise) or every one not skipped with --skip."""
    known = attribution_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"{key}: unknown attribution method {', '.join(repr(n) for n in unknown)}; known: "
                          + ", ".join(known))
    return [n for n in known if n in names] if names else [n for n in known if n not in config.skip]


def method_params(upstream: Any, params: Any) -> list[tuple[Any, Any]]:
    """``(analysis, settings)`` of each attribution method to check, in report order, with the settings the plan
    fixed for it (those its page ran with: `Upstream.params`); methods that do not apply to this model are not
    there, and neither are those whose page did not run (over the compute budget, failed) unless ``params.methods``
    names them."""
    from . import get

    return [(get(name), p) for name, p in upstream.params.items()
            if name not in upstream.missing or name in params.methods]


def attribution_methods(ctx: Any, upstream: Any, params: Any) -> list[tuple[Any, dict]]:
    """``(analysis, options)`` of each attribution method to check, in report order (`method_params`);
    `NotApplicable` when none is left (every page the check would read did not run)."""
    methods = [(a, a.options(ctx, p)) for a, p in method_params(upstream, params)]
    if not methods:
        raise NotApplicable("no attribution method to check: " + "; ".join(
            f"{name}: {why}" for name, why in upstream.missing.items()) if upstream.missing else
            DeletionInsertion.nothing_to_read)
    return methods


def unseen_passes(ctx: Any, upstream: Any, params: Any) -> float:
    """Forward-pass equivalents of one image of the maps a check computes itself, per image: those of the methods
    it checks that have no page in this build (not chosen, or their page did not run)."""
    return sum(a.passes(ctx, p) for a, p in method_params(upstream, params)
               if a.name not in upstream.pages or a.name in upstream.missing)


def method_maps(analysis: Any, ctx: Any, model: Any, inputs: Any, images: list[int], targets: Any,
                options: dict, target: Any = None) -> Any:
    """One method's maps (N, h, w) float32 on the CPU of ``inputs`` (N, C, H, W), the images ``images`` (indices),
    for ``targets`` (N,), through its analysis's `attribute` on ``model``, chunked as the report's own maps
    (`AttributionAnalysis.chunk_size`) and each chunk with its own options (`chunk_options`: SmoothGrad's noise
    generator named by the chunk's first map). A chunk that starts with the same map as one of the page's draws
    the same noise: at the defaults SmoothGrad's chunks hold one map each, so its maps equal the page's.
    ``target``: another task's target callable, row j for image j (`explained`), explained in place of the class
    logits ``targets`` (which then only name the maps)."""
    import torch

    from ..methods.targets import select_target
    from .influence import MapTarget

    size = analysis.chunk_size(ctx, options)
    maps = []
    for k in range(0, len(inputs), size):
        first = MapTarget(images[k], int(targets[k]), "predicted")
        opts = analysis.chunk_options(ctx, options, first)
        chunk = targets[k:k + size] if target is None else select_target(target, torch.arange(k, min(k + size,
                                                                                                    len(inputs))))
        maps.append(analysis.attribute(model, inputs[k:k + size], chunk, **opts).detach().float().cpu())
    return torch.cat(maps)


def report_maps(ctx: Any, analysis: Any, options: dict, images: list[int], targets: Any,
                upstream: Any, target: Any = None) -> tuple[Any, int]:
    """One method's maps (N, h, w) float32 on the CPU of ``images`` (image indices) for ``targets`` (N,): the very
    maps its own page drew in this build (its result's ``shared["maps"]``, `Upstream.results`), and those it did not
    draw (the method has no page, or another class) computed now with `method_maps`; and how many were computed."""
    import torch

    drawn = upstream.results.get(analysis.name)
    stored = drawn.shared.get("maps", {}) if drawn is not None else {}
    keys = [(i, int(t)) for i, t in zip(images, targets.tolist())]
    missing = [p for p, k in enumerate(keys) if k not in stored]
    fresh = {}
    if missing:
        inputs = ctx.images.load_inputs([images[p] for p in missing], ctx.device)
        from ..methods.targets import select_target

        computed = method_maps(analysis, ctx, ctx.model, inputs, [images[p] for p in missing],
                               targets[torch.tensor(missing, device=targets.device)], options,
                               None if target is None else select_target(target, torch.tensor(missing)))
        fresh = dict(zip(missing, computed))
    return torch.stack([fresh[p] if p in fresh else stored[k] for p, k in enumerate(keys)]), len(missing)


def predicted(ctx: Any, images: list[int]) -> Any:
    """The predicted classes of ``images`` as a LongTensor on the device."""
    import torch

    preds = ctx.predictions.preds
    return torch.tensor([int(preds[ctx.predictions.row(i)]) for i in images], device=ctx.device)


def _constant(maps: Any) -> Any:
    """Whether each map (N, ...) is the same value at every pixel: a boolean array (N,)."""
    flat = maps.reshape(maps.shape[0], -1)
    return (flat.amax(dim=1) == flat.amin(dim=1)).cpu().numpy()


def nothing_here(ctx: Any, images: list[int]) -> str:
    """Why the checks have nothing to test on ``images`` (every target 0 on every input, so every map is blank and
    every curve flat: `reportgen.task_targets.nothing_to_explain`), or ""."""
    from ..task_targets import choices, nothing_to_explain

    return nothing_to_explain(ctx.task, choices(ctx, images))


def explained(ctx: Any, images: list[int], inputs: Any) -> tuple[Any, Any, Any]:
    """What the checks explain on ``images`` (their ``inputs``): (classes (N,) LongTensor naming each image's map
    as the attribution pages do, the target the methods and the curves take, its `TargetSet` or None). A
    classifier: its predicted classes, or the --target class, both times; another task: the page's target of each
    image (`reportgen.task_targets`)."""
    import torch

    from ..task_targets import build_targets, choices

    picked = choices(ctx, images)
    if picked is None:
        classes = predicted(ctx, images)
        return classes, classes, None
    classes = torch.tensor([c.cls for c in picked], device=ctx.device)
    if ctx.task == "classify":
        return classes, classes, None
    tset = build_targets(ctx, picked, inputs)
    return classes, tset.target, tset


def target_words(ctx: Any, tset: Any) -> tuple[str, str, bool]:
    """(what each image's maps explain, what the curves record, whether it is a probability in [0, 1])."""
    if tset is None:
        given = getattr(ctx.config, "target", None) is not None
        return ("the --target class" if given else "their predicted class"), "the class's softmax probability", True
    return "their target: see an attribution page's 'What the maps explain'", tset.measure, tset.bounded


def too_costly(analysis: Any, ctx: Any, twin: Any, inputs: Any, images: list[int], targets: Any, options: dict,
               max_passes: int, target: Any = None) -> bool:
    """Whether one map of one image (``inputs`` (1, C, H, W), image index ``images[0]``) sends more than
    ``max_passes`` images through ``twin`` (a copy of the model: the counting hook goes on it). The probe stops
    before the pass that would go over, so it costs at most ``max_passes`` forward passes of one image."""
    from ..methods.faithfulness import TooManyPasses, counting_images

    try:
        with counting_images(twin, limit=max_passes):
            method_maps(analysis, ctx, twin, inputs, images, targets, options, target)
    except TooManyPasses:
        return True
    return False


def missing_note(upstream: Any, params: Any) -> list[str]:
    """The page's note on the attribution methods left out because their page did not run in this build (over
    the compute budget, failed)."""
    out = [f"{name} ({why})" for name, why in upstream.missing.items() if name not in params.methods]
    return [f"Not checked: {'; '.join(out)}. Name a method under methods to check it anyway."] if out else []


def maps_note(computed: dict[str, int], n: int) -> str:
    """Where the checked maps came from: the method pages of this build, or computed for the check."""
    fresh = ", ".join(f"{name} ({k} of {n})" for name, k in computed.items() if k)
    return ("The maps checked are those the method pages of this report show"
            + (f", except these, computed for this check with the same method and parameters because no page of "
               f"this build drew them: {fresh}." if fresh else f" ({n} per method)."))


HIGHER = {"deletion": False, "insertion": True, "mass": True, "hit": True}  # which way is better
WORDS = {"deletion": "deletion", "insertion": "insertion", "mass": "mass on object", "hit": "pointing game"}


def best_at(values: dict[str, dict[str, float]]) -> dict[str, str]:
    """For ``values[method][score]`` (scores of `HIGHER`; NaN = none), the scores each method is best at (ties
    all count), in words: ``{"gradient": "deletion, insertion", "cam": "–"}``. A score on which every method ties
    tells none apart (a target that is 0 on every input gives flat curves of AUC 0): nobody is best at it."""
    best: dict[str, set[str]] = {}
    for score, higher in HIGHER.items():
        kept = {m: v[score] for m, v in values.items() if not np.isnan(v.get(score, np.nan))}
        if kept and (len(kept) == 1 or len(set(kept.values())) > 1):
            top = max(kept.values()) if higher else min(kept.values())
            best[score] = {m for m, v in kept.items() if v == top}
    return {m: ", ".join(WORDS[k] for k in best if m in best[k]) or "–" for m in values}


# ---------------------------------------------------------------------------------------------------------------
# Deletion and insertion


@register
class DeletionInsertion(Analysis):
    name = "deletion-insertion"
    tasks = EVERY_TASK  # the curves record the task's target (`reportgen.task_targets`)
    task_reason = "it scores attribution maps by how one class probability per image changes"
    title = "Deletion and insertion"
    section = "trust"
    summary = ("how fast the class probability falls when each method's most important pixels are deleted, and "
               "rises when they are inserted into a blurred copy")
    paper = "Petsiuk, Das & Saenko, RISE: Randomized Input Sampling for Explanation of Black-box Models, BMVC 2018"
    paper_url = "https://arxiv.org/abs/1806.07421"
    order = 10
    Params = DeletionParams
    needs_logits = True  # both checks are about the class probability / the class's maps
    shrink = (("steps", 8), ("images", 2), ("images", 1))
    nothing_to_read = "no attribution method applies to this model (or all are skipped)"

    def cost(self, ctx: Any, params: Any, upstream: Upstream = NOTHING) -> float:
        # two curves of steps + 1 forward passes per image, for every method and the random order, and the maps
        # of the methods whose pages this build does not draw (not chosen with --only)
        methods = method_params(upstream, params)
        n = min(params.images, len(ctx.samples))
        if nothing_here(ctx, ctx.samples[:n]):
            return 0.0  # it computes nothing: its page says why
        return ((len(methods) + 1) * 2 * (params.steps + 1) + unseen_passes(ctx, upstream, params)) * n \
            * ctx.facts.macs

    def reads(self, params: Any, config: Any) -> list[str]:
        return checked_names(params.methods, config, f"analysis.{self.name}.methods")

    def run(self, ctx: Any, params: Any, reduced: dict, upstream: Upstream = NOTHING) -> Result:
        import torch

        from ..methods.faithfulness import curve_auc, deletion_insertion_many
        from .influence import mask_scores, nan_mean

        result = Result()
        result.notes.extend(missing_note(upstream, params))
        images = ctx.samples[: params.images]
        if why := nothing_here(ctx, images):
            raise NotApplicable(why)
        inputs = ctx.images.load_inputs(images, ctx.device)
        targets, target, tset = explained(ctx, images, inputs)
        whose, measure, bounded = target_words(ctx, tset)
        word = "probability" if bounded else "score"
        n = len(images)
        h, w = inputs.shape[-2:]
        masks = ctx.images.masks
        bs = ctx.batch_size(grad=False)
        options = {"steps": params.steps, "fill": params.fill, "blur_sigma": params.blur, "batch_size": bs}
        rows: dict[str, dict] = {}
        curves: dict[str, tuple] = {}
        computed: dict[str, int] = {}
        methods = attribution_methods(ctx, upstream, params)
        every = []
        for a, opts in ctx.iterate(methods, length=len(methods), label=self.name):
            maps, computed[a.name] = report_maps(ctx, a, opts, images, targets, upstream,
                                                 None if tset is None else target)
            every.append(maps)
        # all-equal maps + random tie-breaking = a random pixel order per image: the baseline every map must beat
        every.append(torch.zeros(n, h, w))
        # every method's curves and the baseline's in one stream of batches, sharing the copies all of them start or
        # end with (the image, its blurred copy, the filled image)
        pairs = deletion_insertion_many(
            ctx.model, inputs, target, every, **options,
            generators=[*(ctx.generator(f"{self.name}:{a.name}") for a, _ in methods),
                        ctx.generator(f"{self.name}:random")])
        for (a, _), maps, (dele, ins) in zip(methods, every, pairs):
            row = {"deletion": curve_auc(dele).numpy(), "insertion": curve_auc(ins).numpy()}
            if masks is not None and tuple(maps.shape[-2:]) == (h, w) == tuple(masks.size):
                mass, hit = mask_scores(np.clip(maps.numpy(), 0, None), [masks.get(i) for i in images])
                row.update(mass=mass, hit=hit)
            rows[a.name], curves[a.name] = row, (a, dele.numpy(), ins.numpy())
        dele, ins = pairs[-1]
        random = {"deletion": curve_auc(dele).numpy(), "insertion": curve_auc(ins).numpy()}
        random_curves = (dele.numpy().mean(axis=0), ins.numpy().mean(axis=0))
        has_masks = any("mass" in r for r in rows.values())

        means = {name: {k: nan_mean(v) for k, v in r.items()} for name, r in rows.items()}
        best = best_at(means)

        columns = ["method", "deletion AUC ↓", "sd", "insertion AUC ↑", "sd"]
        if has_masks:
            columns += ["mass on object ↑", "pointing game ↑"]
        columns.append("best at")
        table = []
        for name, r in rows.items():
            row = [name, means[name]["deletion"], float(np.std(r["deletion"])), means[name]["insertion"],
                   float(np.std(r["insertion"]))]
            if has_masks:
                row += [means[name].get("mass", float("nan")), means[name].get("hit", float("nan"))]
            table.append(row + [best[name]])
        base = [RANDOM_ROW, float(random["deletion"].mean()), float(np.std(random["deletion"])),
                float(random["insertion"].mean()), float(np.std(random["insertion"]))]
        table.append(base + ([float("nan"), float("nan")] if has_masks else []) + ["baseline"])
        result.items.append(Table(
            key="trust", label="Which maps to trust: deletion and insertion",
            caption=f"Mean over the {n} sample images ({whose}) of the area under each curve, and its "
                    "standard deviation (sd); ↓ = lower is better, ↑ = higher is better. Deletion: the most "
                    "important pixels first are set to the fill value; "
                    f"insertion: they are put into a blurred copy; the curve is {measure}. "
                    "'random order' deletes and inserts the pixels in a random order: a map that does not beat it "
                    "says nothing about this model's decision."
                    + (" Mask scores (of the same maps): the share of the map on the object, and how often its "
                       "maximum lies on it." if has_masks else ""),
            columns=columns, rows=table))

        x = [j / params.steps for j in range(params.steps + 1)]
        for name, (a, dele, ins) in curves.items():
            result.items.append(Plot(
                key=f"curves-{name}", kind="lines", label=a.title, group="Mean curves of each method",
                caption=f"{a.title}: {measure} (mean over the {n} sample images, {whose}) as the "
                        f"pixels are deleted (AUC {means[name]['deletion']:.3f}) or inserted (AUC "
                        f"{means[name]['insertion']:.3f}) in the order of the maps, and in a random order "
                        f"(AUC {base[1]:.3f} and {base[3]:.3f}).",
                data={"x": x, "series": {"deletion": dele.mean(axis=0).tolist(),
                                         "insertion": ins.mean(axis=0).tolist(),
                                         "deletion, random order": random_curves[0].tolist(),
                                         "insertion, random order": random_curves[1].tolist()},
                      "xlabel": "fraction of pixels deleted or inserted",
                      "ylabel": "probability of the class" if tset is None else measure,
                      **({"ylim": [0, 1.02]} if bounded else {}), "title": a.title}))

        for p, i in enumerate(images):
            per = []
            here = best_at({name: {k: float(v[p]) for k, v in r.items()} for name, r in rows.items()})
            for name, r in rows.items():
                row = [name, float(r["deletion"][p]), float(r["insertion"][p])]
                if has_masks:
                    hit = float(r["hit"][p]) if "hit" in r else float("nan")
                    row += [float(r["mass"][p]) if "mass" in r else float("nan"),
                            "–" if np.isnan(hit) else "yes" if hit == 1 else "no"]
                per.append(row + [here[name]])
            per.append([RANDOM_ROW, float(random["deletion"][p]), float(random["insertion"][p])]
                       + (["–", "–"] if has_masks else []) + ["baseline"])
            result.items.append(Table(
                key=f"image-{i:05d}", image=i, detail=True, group=ctx.images.names[i], label="Deletion and insertion",
                caption="Area under the deletion curve (lower is better) and the insertion curve (higher is "
                        f"better) of each method's map ({whose})"
                        + (", with the share of the map on the object and whether its maximum is on it." if has_masks
                           else "."),
                columns=["method", "deletion AUC ↓", "insertion AUC ↑"]
                + (["mass on object ↑", "maximum on object"] if has_masks else []) + ["best at"], rows=per))

        # for the findings: each method's mean areas and the random order's, as numbers
        result.shared["trust"] = {"methods": {name: {"deletion": v["deletion"], "insertion": v["insertion"]}
                                              for name, v in means.items()},
                                  "random": {"deletion": base[1], "insertion": base[3]}, "images": n}
        full = ins[:, -1].mean() if curves else float("nan")
        result.metrics.update({
            "methods": len(rows), "sample images": n, "steps": params.steps,
            "best deletion AUC": min((v["deletion"] for v in means.values()), default=float("nan")),
            "best insertion AUC": max((v["insertion"] for v in means.values()), default=float("nan")),
            "random-order deletion AUC": base[1], "random-order insertion AUC": base[3],
            f"{word} of the blurred image": float(random_curves[1][0]),
            f"{word} with every pixel deleted": float(random_curves[0][-1]),
            f"{word} of the image": float(full)})
        result.notes.append(
            f"Each curve has {params.steps + 1} points: after step j, the j/{params.steps} most important pixels "
            "(all channels of a pixel together, ties in a seeded random order) are deleted or inserted, and every "
            f"copy goes through the model in batches. The curves record {measure} ({whose}), as Petsiuk et al. "
            "record the class probability; deleted pixels take the value "
            f"{params.fill:g} in normalized units"
            + (" (the mean colour)" if params.fill == 0 else "")
            + f"; insertion starts from a Gaussian blur with sigma {params.blur:g} of the shorter side (Petsiuk "
            "et al.'s code: 5 pixels on 224-pixel images, about 0.022).")
        result.notes.append(maps_note(computed, n))
        return result


# ---------------------------------------------------------------------------------------------------------------
# Model-parameter randomization


@register
class RandomizationTest(Analysis):
    name = "randomization-test"
    tasks = EVERY_TASK  # the maps explain the task's target (`reportgen.task_targets`), fixed on the trained model
    task_reason = "it compares the attribution maps of one class logit per image"
    title = "Model-parameter randomization"
    section = "trust"
    summary = ("each method's maps recomputed while the model's layers are re-initialized from the logits down: "
               "maps that do not change do not explain the model")
    paper = "Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, Sanity Checks for Saliency Maps, NeurIPS 2018"
    paper_url = "https://arxiv.org/abs/1810.03292"
    order = 20
    Params = RandomizationParams
    needs_logits = True  # both checks are about the class probability / the class's maps
    shrink = (("images", 1), ("steps", 4))
    nothing_to_read = "no attribution method applies to this model (or all are skipped)"

    def cost(self, ctx: Any, params: Any, upstream: Upstream = NOTHING) -> float:
        # one map per method, image and step of the cascade (and the model's own); the methods left out for cost
        # (one map over max_passes images) are estimated from their declared passes, a backward counting 2
        n = min(params.images, len(ctx.samples))
        if nothing_here(ctx, ctx.samples[:n]):
            return 0.0  # it computes nothing: its page says why
        per_map = [a.passes(ctx, p) for a, p in method_params(upstream, params)
                   if a.name in params.methods or a.passes(ctx, p) <= 3 * params.max_passes]
        return (params.steps + 1) * n * sum(per_map) * ctx.facts.macs

    def check(self, ctx: Any, params: Any) -> None:
        ctx.facts.require_python(self.title)

    def reads(self, params: Any, config: Any) -> list[str]:
        return checked_names(params.methods, config, f"analysis.{self.name}.methods")

    def run(self, ctx: Any, params: Any, reduced: dict, upstream: Upstream = NOTHING) -> Result:
        import torch

        from ..methods.faithfulness import cascade_layers, edge_map, randomization_tests
        from ..methods.targets import select_target

        result = Result()
        result.notes.extend(missing_note(upstream, params))
        images = ctx.samples[: params.images]
        if why := nothing_here(ctx, images):
            raise NotApplicable(why)
        inputs = ctx.images.load_inputs(images, ctx.device)
        targets, target, tset = explained(ctx, images, inputs)
        whose = target_words(ctx, tset)[0]
        call = None if tset is None else target  # another task's callable, row j for image j
        # learned on a deep copy: the user's model is not run or changed
        layers = cascade_layers(ctx.model, inputs, params.steps)
        labels = [" + ".join(step) if len(step) <= 2 else f"{step[0]} … {step[-1]} ({len(step)} modules)"
                  for step in layers]
        seed = int(ctx.rng(self.name).integers(2**31))
        methods = attribution_methods(ctx, upstream, params)
        twin = copy.deepcopy(ctx.model)  # the cost probe's counting hook goes on a copy, never on the user's model
        left_out, computed, checked = [], {}, []
        for a, opts in ctx.iterate(methods, length=len(methods), label=self.name):
            first = None if call is None else select_target(call, torch.tensor([0]))
            if a.name not in params.methods and too_costly(a, ctx, twin, inputs[:1], images[:1], targets[:1], opts,
                                                            params.max_passes, first):
                left_out.append(a.name)
                continue

            def attribute(model: Any, x: Any, t: Any, _a: Any = a, _o: dict = opts) -> Any:
                # x, t: the images, in order (t: their classes, or the task's target callable)
                return method_maps(_a, ctx, model, x, images, targets if call is not None else t, _o, call)

            original, computed[a.name] = report_maps(ctx, a, opts, images, targets, upstream, call)
            checked.append((a, attribute, original))
        del twin
        # one cascade for every method and the control (each step's layers re-initialized once, every map after it)
        tests = randomization_tests(ctx.model, inputs, target,
                                    [*(f for _, f, _ in checked), lambda m, x, t: edge_map(x)], layers=layers,
                                    seed=seed, originals=[*(o for _, _, o in checked), None])
        runs = {a.name: (a, r) for (a, _, _), r in zip(checked, tests)}
        control = tests[-1]

        # a method whose trained maps are constant (blank: the target does not change with the input there) has no
        # pixel order for the cascade to destroy: its correlation with any map is 0 or 1 by convention, not evidence
        flat = {n: _constant(r.original) for n, (_, r) in runs.items()}  # (images,) per method
        blank = {n for n, f in flat.items() if f.all()}

        def verdict(rho: float, flat: bool = False) -> str:
            if flat or not np.isfinite(rho):
                return "none (blank maps)"
            return "pass" if rho <= params.threshold else "fail"

        rows = []
        for name, (a, r) in [*runs.items(), (EDGE_ROW, (None, control))]:
            rho = float(r.spearman[-1].mean())
            rows.append([name, float(r.spearman[0].mean()), rho, float(r.ssim[-1].mean()), verdict(rho, name in blank)])
        nan = float("nan")
        rows[-1:-1] = [[name, nan, nan, nan, LEFT_OUT] for name in left_out]  # stated in the table, not dropped
        top = labels[0]
        result.items.append(Table(
            key="trust", label="Which maps to trust: the randomization check",
            caption=f"Similarity of each method's maps of the {len(images)} sample images ({whose}) to the "
                    "trained model's maps, after re-initializing the top step of the cascade only "
                    f"('{top}') and after all {len(layers)} steps (every parameter re-initialized): "
                    "Spearman rank correlation of "
                    "|maps| (1 = the same order of pixels) and SSIM of the maps scaled to [0, 1], means over the "
                    f"images. A method passes when the last Spearman correlation is at most {params.threshold:g}. "
                    "The edge detector is a control that ignores the model and so must fail."
                    + (f" '{LEFT_OUT}': one map of the method sends more than {params.max_passes} images through "
                       "the model; see the notes." if left_out else ""),
            columns=["method", f"Spearman, '{top}' randomized" if len(top) <= 16 else  # a step of several: long
                     "Spearman, top step randomized", "Spearman, all layers randomized",
                     "SSIM, all layers randomized", "check"], rows=rows))

        steps = ["trained", *[f"+ {n}" for n in labels]]
        for name, (a, r) in [*runs.items(), (EDGE_ROW, (None, control))]:
            title = a.title if a is not None else "Edge detector (control)"
            tiles = np.concatenate([r.original[:, None].abs().numpy(), r.maps.abs().numpy().transpose(1, 0, 2, 3)],
                                   axis=1)
            result.items.append(Grid(
                key=f"cascade-{name}", tiles=tiles.reshape(-1, *tiles.shape[2:]), style="heat",
                per_tile_scale=True, cols=len(steps), label=f"{title}: the cascade", group=title,
                row_labels=[ctx.images.names[i] for i in images], col_labels=["trained", *labels],
                caption=f"{title}: |map| of each sample image (one row each) for the trained model (first column), "
                        "then after re-initializing the layers cumulatively from the logits down: "
                        + ", ".join(labels) + ". Each map on its own scale (0 black to its maximum yellow)."))
            result.items.append(Plot(
                key=f"similarity-{name}", kind="lines", label=f"{title}: similarity", group=title,
                caption=f"{title}: mean similarity to the trained model's maps after each step of the cascade, "
                        f"with the pass threshold {params.threshold:g} of the Spearman correlation. Verdict: "
                        f"{verdict(float(r.spearman[-1].mean()), name in blank)}.",
                data={"x": list(range(len(steps))), "xticklabels": steps, "marker": True, "ylim": [-0.2, 1.05],
                      "series": {"Spearman of |maps|": [1.0, *r.spearman.mean(dim=1).tolist()],
                                 "SSIM": [1.0, *r.ssim.mean(dim=1).tolist()],
                                 "threshold": [params.threshold] * len(steps)},
                      "xlabel": "layers re-initialized (cumulative, from the logits down)",
                      "ylabel": "similarity to the trained maps", "title": title}))

        for p, i in enumerate(images):
            result.items.append(Table(
                key=f"image-{i:05d}", image=i, detail=True, group=ctx.images.names[i], label="Randomization check",
                caption="Similarity of each method's map of this image to its map after all layers were "
                        f"re-initialized (the check passes at a Spearman correlation of at most "
                        f"{params.threshold:g}).",
                columns=["method", "Spearman, all layers randomized", "SSIM, all layers randomized", "check"],
                rows=[[name, float(r.spearman[-1, p]), float(r.ssim[-1, p]),
                       verdict(float(r.spearman[-1, p]), bool(flat[name][p]))]
                      for name, (_, r) in runs.items()] + [[name, nan, nan, LEFT_OUT] for name in left_out]))
        judged = {n: r for n, (_, r) in runs.items() if n not in blank}
        passed = [n for n, r in judged.items() if float(r.spearman[-1].mean()) <= params.threshold]
        # for the findings: each judged method's last Spearman correlation and the threshold that judged it
        result.shared["trust"] = {"methods": {n: float(r.spearman[-1].mean()) for n, r in judged.items()},
                                  "threshold": params.threshold, "left out": list(left_out), "blank": sorted(blank),
                                  "control": float(control.spearman[-1].mean()), "images": len(images)}
        if blank:
            result.notes.append(f"Not judged, as their maps of the trained model are blank (constant over the "
                                f"pixels), so that there is no pixel order to compare: {', '.join(sorted(blank))}.")
        result.metrics.update({"methods": len(runs), "passed": len(passed), "failed": len(judged) - len(passed),
                               **({"blank, not judged": len(blank)} if blank else {}),
                               "threshold": params.threshold, "steps in the cascade": len(layers),
                               "sample images": len(images)})
        result.notes.append(
            "The cascade re-initializes, on a deep copy of the model (the model itself is not changed), the "
            f"{sum(len(s) for s in layers)} modules that own parameters in {len(layers)} steps (a normalization "
            f"layer with the layer before it; at most {params.steps} steps), from the logits down, each as PyTorch "
            "initializes it (seeded; a parameter of a module without reset_parameters, such as a class token, "
            "from a normal distribution with its own mean and standard deviation; a batch norm becomes the "
            "identity in eval mode, a layer or group norm still normalizes, with weight 1 and bias 0). Each "
            "method's maps are recomputed after each step for the same targets ("
            + ("the trained model's predictions)." if tset is None and getattr(ctx.config, "target", None) is None
               else "the --target class)." if tset is None else
               f"{whose}, fixed on the trained model: its regions, boxes and reference embeddings)."))
        result.notes.append(maps_note(computed, len(images)))
        if left_out:
            result.notes.append(
                f"Left out of this check: {', '.join(left_out)}. One map of each sends more than "
                f"{params.max_passes} images through the model (max_passes), and the cascade would recompute it "
                f"{len(layers)} times for each of the {len(images)} images; name them in "
                "[analysis.randomization-test] methods to check them anyway.")
        result.metrics["left out (cost)"] = len(left_out)
        return result
