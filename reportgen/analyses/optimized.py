"""Optimized inputs: class images, unit images, DeepDream and adversarial examples (section "optimized").

Each analysis calls the plain tensor functions of `reportgen.methods.optimize` and `reportgen.methods.adversarial`
and turns their tensors into pictures, tables and numbers. Every optimized image is kept inside the valid pixel
range (``clamp=pixel_bounds(mean, std)``) and shown as pixels, i.e. denormalized to [0, 1]. Randomness comes only from
``ctx.generator(name)``; the methods leave the model as they found it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..artifacts import NotApplicable, Picture, Plot, Result, Table
from ..capture import capture, resolve_layer
from ..config import doc
from ..errors import ConfigError, ReportgenError, first_line
from . import EVERY_TASK, Analysis, NOTHING, Reducer, register

# torch and the methods modules that import it at their top (methods.optimize, methods.adversarial) are imported
# inside functions: `reportgen analyses` and the config checks load every analysis module without torch.

MAX_CLASSES = 20  # class-max draws every class up to this many; beyond, a configured list or the most predicted


# --------------------------------------------------------------------------------------------------------------------
# Shared helpers


def _clamp(ctx) -> tuple[list[float], list[float]]:
    from ..methods.optimize import pixel_bounds

    return pixel_bounds(ctx.loaded.input.mean, ctx.loaded.input.std)


def _pixels(ctx, inputs) -> np.ndarray:
    """Normalized inputs (N, C, H, W) -> display floats (N, H, W, C) in [0, 1]."""
    return ctx.images.denormalize(inputs).astype(np.float64)


def _map_layers(ctx) -> list[str]:
    """The selected layers whose output is a feature map (C, H, W) (from the plan's model facts)."""
    return ctx.facts.map_layers()


@dataclass
class RealismParams:
    """Settings of `reportgen.methods.optimize.maximize` shared by class-max and unit-max."""

    steps: int = field(default=200, metadata=doc("Adam steps from small noise.", min=1, max=5000))
    lr: float = field(default=0.05, metadata=doc("Adam learning rate, in normalized input units.", min=0.0, max=10.0))
    # 1e-3 keeps the class evidence (p(class) as without it) and pulls the unused background to the data mean grey
    l2_weight: float = field(default=1e-3, metadata=doc(
        "Weight of the L2 penalty ||x||^2 (pulls pixels toward the data mean); 0 = off.", min=0.0))
    edge_weight: float = field(default=0.0, metadata=doc(
        "Weight of the multi-scale edge-energy penalty (suppresses high frequencies); 0 = off.", min=0.0))
    blur_every: int = field(default=4, metadata=doc("Blur the image every this many steps; 0 = never.", min=0))
    blur_sigma: float = field(default=0.5, metadata=doc("Sigma of that Gaussian blur, in pixels.", min=0.0, max=10.0))
    jitter: int = field(default=2, metadata=doc(
        "Random shift of up to this many pixels before each step (robustness to translation); 0 = none.",
        min=0, max=32))
    zero_small: float = field(default=0.0, metadata=doc(
        "After each step, set to the data mean the pixels whose norm is below this percentile (0-100); 0 = off.",
        min=0.0, max=100.0))


def _batches(ctx, items: list) -> list[list]:
    """``items`` in batches of `Context.batch_size` (all at once unless a large model's activations would not fit)."""
    size = ctx.batch_size(grad=True)
    return [items[k:k + size] for k in range(0, len(items), size)]


def _maximize(ctx, make_objective, batches: list[list], params: RealismParams, name: str,
              truncate: bool = False) -> list:
    """`maximize` with the report's recipe, one `MaxResult` (on the CPU) per batch of items: the config keys of
    ``params`` mapped onto an objective with penalties, a parameterization, random transforms and pixel edits.

    One image per item (class, channel), ``make_objective(batch)`` the objective of a batch of them. Each batch is
    optimized on its own, with every random draw (start noise first) from its own generator,
    ``ctx.generator(f"{name}/{first item}")``: a batch's images do not depend on the batches before it, so a
    distributed build deals the batches to its ranks (`reportgen.context.Context.map_chunks`)."""
    def one(batch: list) -> Any:
        res = _maximize_batch(ctx, make_objective(batch), len(batch), params,
                              ctx.generator(f"{name}/{_item_name(batch[0])}"), truncate)
        return dataclasses.replace(res, **{f.name: _cpu(getattr(res, f.name)) for f in dataclasses.fields(res)})

    return ctx.map_chunks(one, batches, name)


def _item_name(item) -> str:
    return "/".join(map(str, item)) if isinstance(item, tuple) else str(item)


def _joined(parts: list) -> Any:
    """`MaxResult` s of consecutive batches as one, in item order (images on the first dimension, curves on the
    second)."""
    import torch

    from ..methods import optimize as opt

    if len(parts) == 1:
        return parts[0]
    return opt.MaxResult(torch.cat([p.images for p in parts]), torch.cat([p.curve for p in parts], dim=1),
                         torch.cat([p.final_scores for p in parts]))


def _adversarial(ctx, x, target, common: dict, label: str = "adversarial", flip=None) -> Any:
    """`reportgen.methods.adversarial.adversarial` of the images ``x`` (N, C, H, W), in batches of
    `Context.batch_size` (each image's steps depend on that image alone, so batching does not change them), which
    a distributed build deals to its ranks; the result on the CPU. ``flip``: the task's `Flip` (None: a
    classifier's label)."""
    import torch

    from ..methods.adversarial import AdvResult, adversarial

    def one(k: int) -> Any:
        res = adversarial(ctx.model, x[k:k + size], target=None if target is None else target[k:k + size],
                          **common, **({} if flip is None else
                                       {"flip": flip.select(torch.arange(k, min(k + size, len(x))))}))
        return AdvResult(**{f.name: _cpu(getattr(res, f.name)) for f in dataclasses.fields(AdvResult)})

    size = ctx.batch_size(grad=True)
    parts = ctx.map_chunks(one, list(range(0, len(x), size)), label)
    per_step = {"labels", "probs"}  # (S + 1, N): the images are the second dimension
    res = parts[0] if len(parts) == 1 else AdvResult(**{
        f.name: torch.cat([getattr(p, f.name) for p in parts], dim=1 if f.name in per_step else 0)
        for f in dataclasses.fields(AdvResult)})
    return dataclasses.replace(res, adv=res.adv.to(x.device))  # the model reads them again


def _cpu(value) -> Any:
    return value.detach().cpu() if hasattr(value, "detach") else value


def _maximize_batch(ctx, objective, n: int, params: RealismParams, generator, truncate: bool) -> Any:
    from ..methods import optimize as opt

    clamp = _clamp(ctx)
    # the anti-tiling priors are keys of class-max only; unit-max gets the method's defaults (all off)
    fourier = getattr(params, "fourier", opt.DEFAULTS.fourier)
    device, dtype = opt.device_dtype(ctx.model)
    init = opt.noise((n, *ctx.loaded.input.shape), generator, device=device, dtype=dtype)
    param = opt.standard_param(
        init, clamp=clamp, fourier=fourier, fourier_decay=getattr(params, "fourier_decay", opt.DEFAULTS.fourier_decay),
        grey=getattr(params, "grey", opt.DEFAULTS.grey), window=getattr(params, "window", opt.DEFAULTS.window))
    transforms = opt.standard_transforms(
        generator, jitter=params.jitter, scale_jitter=getattr(params, "scale_jitter", opt.DEFAULTS.scale_jitter),
        rotate=getattr(params, "rotate", opt.DEFAULTS.rotate))
    edits = opt.standard_edits(clamp=clamp, blur_every=params.blur_every, blur_sigma=params.blur_sigma,
                               zero_small=params.zero_small or None, fourier=fourier)
    objective = opt.penalized(objective, l2_weight=params.l2_weight, edge_weight=params.edge_weight)
    return opt.maximize(ctx.model, objective, param, transforms, edits=edits, steps=params.steps, lr=params.lr,
                        truncate=truncate)


def _objective_plot(res: Any, series: list[str], ylabel: str, caption: str) -> Plot:
    """The class images' objective before each step, one line per image (named ``series``)."""
    curve = res.curve.cpu().numpy()
    return Plot(key="objective", kind="lines", label="Objective during optimization", group="Optimization",
                caption=caption,
                data={"x": list(range(1, curve.shape[0] + 1)),
                      "series": {name: curve[:, i].tolist() for i, name in enumerate(series)},
                      "xlabel": "step", "ylabel": ylabel, "width": 6.0, "height": 3.6})


def _settings_note(params: RealismParams) -> str:
    fourier = getattr(params, "fourier", False)
    start = (f"the spectrum of a Fourier parameterization (1/f^{params.fourier_decay:g} weights, so low "
             "frequencies move most)" if fourier else "the pixels")
    parts = [f"{params.steps} Adam steps (learning rate {params.lr:g}) on {start}, from small Gaussian noise"]
    if getattr(params, "grey", False):
        parts.append("one grey channel shared by all colour channels")
    if getattr(params, "window", 0):
        parts.append(f"a centred soft round window (radius {params.window:g} of half the image side) outside "
                     "which the image fades to the data mean")
    if params.jitter:
        parts.append(f"a random shift of up to {params.jitter} px before each step")
    if getattr(params, "scale_jitter", 0):
        parts.append(f"a random zoom by up to {100 * params.scale_jitter:g}% before each step")
    if getattr(params, "rotate", 0):
        parts.append(f"a random rotation by up to {params.rotate:g} degrees before each step")
    if params.blur_every and params.blur_sigma > 0 and not fourier:
        parts.append(f"a Gaussian blur (sigma {params.blur_sigma:g} px) every {params.blur_every} steps")
    if params.l2_weight:
        parts.append(f"an L2 penalty of weight {params.l2_weight:g}")
    if params.edge_weight:
        parts.append(f"an edge-energy penalty of weight {params.edge_weight:g}")
    if params.zero_small:
        parts.append(f"pixels below the {params.zero_small:g}th percentile of norms reset to the data mean")
    return ("Each image was optimized with " + ", ".join(parts) + ", and kept inside the valid pixel range. "
            "Images are shown as pixels (the model's normalization undone), values in [0, 1].")


def _probs(ctx, inputs) -> Any:
    import torch

    with torch.no_grad():
        return ctx.model(inputs).flatten(1).softmax(1).cpu()


# --------------------------------------------------------------------------------------------------------------------
# class-max


# the share of class images the model gives to their class, per task (a metric of the class-max page)
HIT_METRIC = {"binary": "classified as their class", "multilabel": "present as their label",
              "regress": "above every image of the set", "segment": "centre mostly predicted as their class",
              "embed": "nearest prototype is their class"}


def class_counts(ctx) -> np.ndarray:
    """(K,) the number of images of each class in the set (an embedding model's image classes)."""
    labels = np.asarray(ctx.predictions.labels)
    return np.bincount(labels[labels >= 0], minlength=len(ctx.class_names))


def prototypes(ctx) -> np.ndarray:
    """(K, D) float32: each class's prototype, the mean of its images' unit-normalized embeddings over the image
    set (zeros for a class without images). Cosine similarity ignores an embedding's length, so each image counts
    once whatever its norm."""
    e = np.asarray(ctx.predictions.logits, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(ctx.predictions.labels)
    out = np.zeros((len(ctx.class_names), e.shape[1]))
    for k in range(len(ctx.class_names)):
        if (labels == k).any():
            out[k] = e[labels == k].mean(0)
    return out.astype(np.float32)


def own_similarity(ctx, c: int) -> np.ndarray:
    """The cosine similarity of each image of class ``c`` to the class's prototype."""
    e = np.asarray(ctx.predictions.logits, dtype=np.float64)
    e = e[np.asarray(ctx.predictions.labels) == c]
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    proto = prototypes(ctx)[c].astype(np.float64)
    return e @ proto / max(float(np.linalg.norm(proto)), 1e-12)


@dataclass
class ClassMaxParams(RealismParams):
    # Defaults chosen by looking at the class images of shapes-cnn (a global-average-pooled CNN) and lenet-digits.
    # Plain pixel ascent tiles shapes-cnn's 64x64 image with stripes and dots (GAP adds evidence up over the image);
    # the window confines it to one centred object, the Fourier spectrum and the grey channel give smooth filled
    # regions instead of colour noise, and random rotations of up to 45 degrees break the oriented stripes (180
    # breaks them better but turns lenet's digits into rotation-invariant blobs). The window's flat top (0.7 of its
    # radius) leaves a 28x28 digit whole.
    l2_weight: float = field(default=0.0, metadata=doc(
        "Weight of the L2 penalty ||x||^2 (pulls pixels toward the data mean); 0 = off.", min=0.0))
    blur_every: int = field(default=0, metadata=doc(
        "Blur the image every this many steps; 0 = never. Pixel parameterization only (fourier = false).", min=0))
    window: float = field(default=0.8, metadata=doc(
        "Radius of a centred soft round window, as a fraction of half the shorter image side: outside it the "
        "image fades to the data mean, so the model draws one object instead of tiling its evidence; 0 = off.",
        min=0.0, max=2.0))
    scale_jitter: float = field(default=0.2, metadata=doc(
        "Random zoom by a factor in [1 - s, 1 + s] before each step (robustness to scale); 0 = none.",
        min=0.0, max=0.9))
    rotate: float = field(default=45.0, metadata=doc(
        "Random rotation by up to this many degrees before each step (robustness to rotation); 0 = none.",
        min=0.0, max=180.0))
    fourier: bool = field(default=True, metadata=doc(
        "Optimize a 1/f-weighted Fourier spectrum instead of the pixels (smoother images, Olah et al. 2017)."))
    fourier_decay: float = field(default=1.5, metadata=doc(
        "Exponent of the 1/f weighting of that spectrum; higher = smoother.", min=0.0, max=4.0))
    grey: bool = field(default=True, metadata=doc(
        "Optimize one grey channel shared by all colour channels, so the image shows form, not colour."))
    classes: list[str] = field(default_factory=list, metadata=doc(
        "Class names to draw; empty = every class when the model has at most max_classes, else the max_classes "
        "most predicted over the image set."))
    max_classes: int = field(default=MAX_CLASSES, metadata=doc(
        "At most this many classes are drawn when classes is empty.", min=1, max=1000))
    target: str = field(default="logit", metadata=doc(
        "What is maximized: the class's logit (pre-softmax score) or its softmax probability.",
        choices=("logit", "prob")))


@register
class ClassMax(Analysis):
    needs_logits = True
    name = "class-max"
    # every task with a score per class, label or output to ascend (`objective`); a detector's has none
    tasks = ("classify", "binary", "multilabel", "regress", "segment", "embed")
    task_reason = ("a detector reports a class's score only for the boxes that pass its own score threshold and "
                   "non-maximum suppression, so it is no smooth function of the input to ascend: it is absent (no "
                   "gradient) wherever no box of the class passes, and which boxes pass changes from step to step")
    title = "Class images"
    section = "optimized"
    summary = "one input per class optimized to maximize that class's score, with realism priors"
    paper = "Simonyan, Vedaldi & Zisserman, Deep Inside Convolutional Networks, ICLR workshop 2014"
    paper_url = "https://arxiv.org/abs/1312.6034"
    order = 10
    Params = ClassMaxParams
    shrink = (("max_classes", 4), ("steps", 50), ("max_classes", 1))
    splits = True  # a distributed build deals its batches of classes to the ranks (`_maximize`)

    def check(self, ctx, params):
        if params.fourier and params.zero_small:
            raise ConfigError("analysis.class-max.zero_small: resetting small pixels needs fourier = false "
                              "(the Fourier parameterization has no pixels to reset)")
        task = getattr(ctx, "task", "classify")
        if params.target == "prob" and task in ("regress", "embed"):
            raise ConfigError(f"analysis.class-max.target: 'prob' needs probabilities, and a {task} model's outputs "
                              "have none: use target = \"logit\" (the output's value)")
        if task == "embed" and ctx.predictions is not None:  # after the pass (`run_task` checks it again)
            self.embed_classes(ctx)
        unknown = [c for c in params.classes if c not in ctx.class_names]
        if unknown:
            shown = ", ".join(ctx.class_names[:30]) + (", ..." if len(ctx.class_names) > 30 else "")
            raise ConfigError(f"analysis.class-max.classes: {', '.join(map(repr, unknown))} "
                              f"{'is not a class' if len(unknown) == 1 else 'are not classes'} of this model; "
                              f"classes: {shown}")

    def pick_classes(self, ctx, params) -> tuple[list[int], str | None]:
        names = ctx.class_names
        if params.classes:
            return list(dict.fromkeys(names.index(c) for c in params.classes)), None
        task = getattr(ctx, "task", "classify")
        if task == "embed":  # the classes with images in the set (a prototype needs at least one)
            counts = np.bincount(np.maximum(ctx.predictions.labels, 0), weights=ctx.predictions.labels >= 0,
                                 minlength=len(names))
            names_with = [k for k in range(len(names)) if counts[k] > 0]
            if len(names_with) <= params.max_classes:
                return names_with, None
        elif len(names) <= params.max_classes:
            return list(range(len(names))), None
        if task == "regress":
            return list(range(params.max_classes)), (
                f"The model has {len(names)} outputs: these are the first {params.max_classes}. Name others under "
                "[analysis.class-max] classes.")
        pred = ctx.predictions
        counts, how = {
            "multilabel": lambda: (np.asarray(pred.preds).sum(0), "most often predicted present"),
            "segment": lambda: (np.asarray(pred.seg_pixels).sum(0), "with the most predicted pixels"),
            "embed": lambda: (counts, "with the most images"),
        }.get(task, lambda: (np.bincount(pred.preds, minlength=len(names)), "most often predicted"))()
        top = sorted(np.argsort(-counts, kind="stable")[:params.max_classes].tolist())
        what = "labels" if task == "multilabel" else "classes"
        return top, (f"The model has {len(names)} {what}: these are the {params.max_classes} {how} over the image "
                     "set. Name others under [analysis.class-max] classes.")

    def cost(self, ctx, params, upstream=NOTHING):
        return len(self.pick_classes(ctx, params)[0]) * params.steps * 3 * ctx.facts.macs  # a forward + a backward

    def run(self, ctx, params, reduced, upstream=NOTHING):
        from ..methods.optimize import class_logit, class_prob

        if getattr(ctx, "task", "classify") != "classify":
            return self.run_task(ctx, params)
        classes, note = self.pick_classes(ctx, params)
        names = ctx.class_names
        make = class_logit if params.target == "logit" else class_prob
        res = _joined(_maximize(ctx, make, _batches(ctx, classes), params, self.name))
        pix = _pixels(ctx, res.images)
        probs = _probs(ctx, res.images.to(ctx.device)).numpy()
        what = "logit" if params.target == "logit" else "probability"
        result = Result()
        hits = 0
        for i, c in enumerate(classes):
            top = int(probs[i].argmax())
            hits += top == c
            verdict = ("classified as this class" if top == c
                       else f"classified as '{names[top]}' (p={probs[i, top]:.2f})")
            result.items.append(Picture(
                key=f"class-{c:04d}", array=pix[i], style="rgb", label=names[c], group="Class images",
                caption=f"Maximizes the {what} of '{names[c]}' (objective {res.final_scores[i]:.3g} at the end); "
                        f"p('{names[c]}') = {probs[i, c]:.2f}, {verdict}."))
        result.items.append(_objective_plot(
            res, [names[c] for c in classes], f"class {what} - penalties",
            f"The objective (the class's {what} minus the weighted penalties) of each class image before each step, "
            "measured on the randomly transformed image the model saw; one line per class."))
        result.metrics["classified as their class"] = hits / len(classes)
        result.metrics["mean p(class)"] = float(np.mean([probs[i, c] for i, c in enumerate(classes)]))
        result.notes.append(_settings_note(params))
        if note:
            result.notes.append(note)
        return result

    def objective(self, ctx, params) -> tuple[Any, str]:
        """``make(batch) -> Objective`` of the model's task for a batch of class (label, output) indices, and what
        it maximizes in words, with ``{name}`` for the class."""
        import torch

        from ..methods import optimize as opt

        task, prob = ctx.task, params.target == "prob"
        if task == "binary":
            return ((opt.binary_prob if prob else opt.binary_logit),
                    "the probability of '{name}' (the sigmoid of its log-odds)" if prob else
                    "the log-odds of '{name}' (the logit z for the positive class, -z for the negative one)")
        if task == "multilabel":
            return ((opt.label_prob if prob else opt.class_logit),
                    "the sigmoid probability of the label '{name}'" if prob else "the logit of the label '{name}'")
        if task == "regress":
            return opt.class_logit, "the output '{name}' (its value)"
        if task == "segment":
            where = (f"the centre of the output map (the centred disk of diameter {opt.CENTRE:g} times its shorter "
                     "side)")
            return ((lambda batch: opt.region_logit(batch, prob=prob)),
                    (f"the mean softmax probability of '{{name}}' over {where}" if prob else
                     f"the mean logit of '{{name}}' over {where}"))
        if task == "embed":
            protos = torch.as_tensor(prototypes(ctx))
            return ((lambda batch: opt.cosine_to(protos[torch.as_tensor(batch)])),
                    "the cosine similarity of the embedding to the prototype of '{name}' (the mean of the class's "
                    "unit-normalized embeddings over the image set)")
        raise ValueError(f"no class images for task {task!r}")

    @staticmethod
    def embed_classes(ctx) -> None:
        """`NotApplicable` when an embedding model's image set gives no class per image (no prototype to draw)."""
        labels = np.asarray(ctx.predictions.labels)
        if not ctx.class_names or not (labels >= 0).any():
            raise NotApplicable("its class images maximize the cosine similarity to each class's mean embedding, "
                                "and the image set gives no class per image (class sub-folders)")

    def run_task(self, ctx, params) -> Result:
        import torch

        task = ctx.task
        if task == "embed":
            self.embed_classes(ctx)
        classes, note = self.pick_classes(ctx, params)
        names = ctx.class_names
        make, what = self.objective(ctx, params)
        res = _joined(_maximize(ctx, make, _batches(ctx, classes), params, self.name))
        pix = _pixels(ctx, res.images)
        with torch.no_grad():
            out = ctx.model(res.images.to(ctx.device))
        result = Result()
        hits, ps = [], []
        for i, c in enumerate(classes):
            verdict, hit, p = self.verdict(ctx, task, out, i, c)
            hits.append(hit)
            if p is not None:
                ps.append(p)
            result.items.append(Picture(
                key=f"class-{c:04d}", array=pix[i], style="rgb", label=names[c], group="Class images",
                caption=f"Maximizes {what.format(name=names[c])} (objective {res.final_scores[i]:.3g} at the end); "
                        f"{verdict}."))
        result.items.append(_objective_plot(
            res, [names[c] for c in classes], "objective - penalties",
            f"The objective ({what.format(name='the class')} minus the weighted penalties) of each image before each "
            "step, measured on the randomly transformed image the model saw; one line per "
            f"{'output' if task == 'regress' else 'label' if task == 'multilabel' else 'class'}."))
        result.metrics[HIT_METRIC[task]] = float(np.mean(hits))
        if ps:
            result.metrics["mean p(class)" if task == "binary" else "mean p(label)" if task == "multilabel"
                           else "mean p(class) over the centre"] = float(np.mean(ps))
        result.notes.append(_settings_note(params))
        if note:
            result.notes.append(note)
        return result

    @staticmethod
    def verdict(ctx, task, out, i, c) -> tuple[str, bool, float | None]:
        """What the model makes of class image ``i`` (drawn for class ``c``): a sentence, whether it counts as a
        hit (`HIT_METRIC`) and its probability of the class (None where there is none)."""
        import torch

        names = ctx.class_names
        if task == "binary":
            p1 = float(torch.sigmoid(out.flatten(1)[i, 0]))
            p = p1 if c == 1 else 1 - p1
            hit = p > 0.5
            return (f"p('{names[c]}') = {p:.2f}, " + ("classified as this class" if hit else
                                                     f"classified as '{names[1 - c]}'"), hit, p)
        if task == "multilabel":
            probs = torch.sigmoid(out.flatten(1)[i]).cpu().numpy()
            others = [names[k] for k in np.flatnonzero(probs > 0.5) if k != c]
            hit = bool(probs[c] > 0.5)
            return (f"p('{names[c]}') = {probs[c]:.2f} ({'present' if hit else 'absent'} at 0.5); other labels "
                    f"present: {', '.join(others) if others else 'none'}", hit, float(probs[c]))
        if task == "regress":
            value = float(out.flatten(1)[i, c])
            top = float(np.max(ctx.predictions.logits[:, c]))
            hit = value > top
            return (f"the output is {value:.3g}, " + ("above" if hit else "not above")
                    + f" the largest over the image set ({top:.3g})", hit, None)
        if task == "segment":
            from ..methods.optimize import _seg_logits, centre_mask

            y = _seg_logits(out)[i]
            m = centre_mask(*y.shape[-2:], device=y.device)
            pred = y.argmax(0)[m]
            share = float((pred == c).float().mean())
            p = float(y.softmax(0)[c][m].mean())
            counts = torch.bincount(pred, minlength=y.shape[0])
            top = int(counts.argmax())
            return (f"{100 * share:.0f}% of the centre's pixels predicted as '{names[c]}' (mean p = {p:.2f}); the "
                    f"centre's most predicted class: '{names[top]}'", share > 0.5, p)
        protos = torch.as_tensor(prototypes(ctx))
        e = torch.nn.functional.normalize(out.flatten(1)[i].float().cpu(), dim=0)
        sims = torch.nn.functional.normalize(protos.float(), dim=1) @ e
        valid = torch.as_tensor(class_counts(ctx) > 0)
        sims = torch.where(valid, sims, torch.tensor(float("-inf")))
        near = int(sims.argmax())
        best = float(np.max(own_similarity(ctx, c)))
        return (f"cosine {float(sims[c]):.3f} to its prototype (the set's images of the class: at most {best:.3f}); "
                f"nearest prototype: '{names[near]}'", near == c, None)


# --------------------------------------------------------------------------------------------------------------------
# unit-max


class ChannelStats(Reducer):
    """Reducer: per selected conv layer, the running mean and max over the image set of each channel's spatial mean.

    Bounded state: two vectors of length C per layer, whatever the size of the image set.
    """

    def __init__(self, layers: list[str]) -> None:
        self.layers = list(layers)
        self.total: dict[str, Any] = {}
        self.peak: dict[str, Any] = {}
        self.count = 0

    def update(self, batch, acts, logits) -> None:
        import torch

        for name in self.layers:
            a = acts[name]
            if a.dim() != 4:
                continue
            m = a.flatten(2).mean(2).double().cpu()  # (B, C)
            self.total[name] = self.total.get(name, 0) + m.sum(0)
            peak = m.max(0).values
            self.peak[name] = peak if name not in self.peak else torch.maximum(self.peak[name], peak)
        self.count += int(batch.indices.numel())

    def merge(self, other) -> None:
        """Add another share of the same stream: peaks exactly, totals in float64 (up to rounding)."""
        import torch

        for name in other.total:
            self.total[name] = self.total.get(name, 0) + other.total[name]
            peak = other.peak[name]
            self.peak[name] = peak if name not in self.peak else torch.maximum(self.peak[name], peak)
        self.count += other.count


@dataclass
class UnitMaxParams(RealismParams):
    steps: int = field(default=100, metadata=doc("Adam steps from small noise.", min=1, max=5000))
    # a channel's spatial mean has a tiny gradient per pixel: any L2 weight that matters for class logits greys it out
    l2_weight: float = field(default=0.0, metadata=doc(
        "Weight of the L2 penalty ||x||^2 (pulls pixels toward the data mean); 0 = off.", min=0.0))
    channels: int = field(default=8, metadata=doc("Channels drawn per selected conv layer.", min=1, max=256))
    which: str = field(default="first", metadata=doc(
        "Which channels: the first ones, or a seeded random pick.", choices=("first", "seeded")))


@register
class UnitMax(Analysis):
    name = "unit-max"
    tasks = EVERY_TASK  # reads activations or weights only, never the output
    title = "Channel images"
    section = "optimized"
    summary = "for channels of each selected conv layer, an input optimized to maximize the channel's mean activation"
    paper = "Erhan, Bengio, Courville & Vincent, Visualizing Higher-Layer Features of a Deep Network, 2009"
    paper_url = "https://www.researchgate.net/publication/265022827"
    order = 20
    Params = UnitMaxParams
    splits = True  # a distributed build deals its batches of channels (of every layer) to the ranks
    shrink = (("channels", 4), ("steps", 50), ("channels", 1))

    def cost(self, ctx, params, upstream=NOTHING):
        # forward passes truncated after the channel's layer, and their backward passes
        facts = ctx.facts
        return sum(min(params.channels, facts.channels(layer)) * params.steps * 3
                   * facts.macs_until.get(layer, facts.macs) for layer in _map_layers(ctx))

    def check(self, ctx, params):
        if not _map_layers(ctx):
            raise NotApplicable("none of the selected layers outputs a feature map (N, C, H, W)")

    def reducers(self, ctx, params):
        return {"channels": ChannelStats(_map_layers(ctx))}

    def run(self, ctx, params, reduced, upstream=NOTHING):
        import torch

        from ..methods.optimize import channel

        stats: ChannelStats = reduced["channels"]
        gen = ctx.generator(self.name)  # the seeded pick of channels only; each batch has its own (`_maximize`)
        result = Result()
        beat, total = 0, 0
        picked = {}
        for layer in stats.layers:
            n_ch = int(stats.peak[layer].numel())
            k = min(params.channels, n_ch)
            if params.which == "first":
                picked[layer] = list(range(k))
            else:
                picked[layer] = sorted(torch.randperm(n_ch, generator=gen)[:k].tolist())
        # the batches of every layer in one list, so that a distributed build deals all of them to its ranks;
        # truncated: the layers after the batch's layer do not change its output, so they need not run
        batches = [b for layer in stats.layers for b in _batches(ctx, [(layer, c) for c in picked[layer]])]
        parts = _maximize(ctx, lambda batch: channel(batch[0][0], [c for _, c in batch]), batches, params, self.name,
                          truncate=True)
        for layer in stats.layers:
            chans = picked[layer]
            res = _joined([p for b, p in zip(batches, parts) if b[0][0] == layer])
            pix = _pixels(ctx, res.images)
            mean = (stats.total[layer] / max(stats.count, 1)).numpy()
            peak = stats.peak[layer].numpy()
            for i, c in enumerate(chans):
                score = float(res.final_scores[i])
                beat += score > peak[c]
                total += 1
                result.items.append(Picture(
                    key=f"{layer}-ch{c:04d}", array=pix[i], style="rgb", label=f"channel {c}", layer=layer,
                    group=f"Layer {layer}",
                    caption=f"Channel {c} of {layer} reaches a mean of {score:.3g} (objective); over the "
                            f"{stats.count} images of the set: {mean[c]:.3g} on average, {peak[c]:.3g} at most."))
        result.metrics["channels"] = total
        result.metrics["above every real image"] = beat / max(total, 1)
        result.notes.append(_settings_note(params) + " The objective is the channel's spatial mean (the penalties "
                                                      "are subtracted); 'at most over the set' is the largest "
                                                      "spatial mean any image of the set gives that channel.")
        if params.which == "seeded":
            result.notes.append("Channels are a seeded random pick, listed in increasing order.")
        return result


# --------------------------------------------------------------------------------------------------------------------
# deepdream


@dataclass
class DeepDreamParams:
    images: int = field(default=3, metadata=doc("How many of the sample images to dream from.", min=1, max=200))
    layer: str = field(default="", metadata=doc(
        "Dotted name of the layer whose energy is amplified; empty = the middle selected conv layer."))
    octaves: int = field(default=3, metadata=doc("Scales, coarse to fine.", min=1, max=6))
    octave_scale: float = field(default=1.4, metadata=doc("Size ratio between two octaves.", min=1.0, max=4.0))
    steps_per_octave: int = field(default=10, metadata=doc("Gradient steps at each octave.", min=1, max=500))
    lr: float = field(default=0.03, metadata=doc(
        "Step size: mean absolute change per step in normalized units.", min=0.0, max=10.0))
    jitter: int = field(default=4, metadata=doc("Random shift of up to this many pixels per step.", min=0, max=32))


@register
class DeepDream(Analysis):
    name = "deepdream"
    tasks = EVERY_TASK  # reads activations or weights only, never the output
    title = "DeepDream"
    section = "optimized"
    summary = "sample images changed, coarse to fine, to amplify whatever one layer already sees in them"
    paper = "Mordvintsev, Olah & Tyka, Inceptionism: Going Deeper into Neural Networks, Google Research blog 2015"
    paper_url = "https://research.google/blog/inceptionism-going-deeper-into-neural-networks/"
    order = 30
    Params = DeepDreamParams
    splits = True  # a distributed build deals its images to the ranks
    shrink = (("images", 1), ("steps_per_octave", 3))

    def cost(self, ctx, params, upstream=NOTHING):
        # each octave's steps (forward + backward) at its size, the largest last; the before/after passes
        per_image = sum(params.steps_per_octave * 3 / params.octave_scale ** (2 * o) for o in range(params.octaves))
        return min(params.images, len(ctx.samples)) * (per_image + 2) * ctx.facts.macs

    MIN_SIDE = 8  # the smallest octave must still be an image a conv stack can read

    def layer(self, ctx, params) -> str:
        if params.layer:
            return params.layer
        maps = _map_layers(ctx)
        if not maps:
            raise NotApplicable("none of the selected layers outputs a feature map (N, C, H, W): "
                                "name one under [analysis.deepdream] layer")
        return maps[len(maps) // 2]

    def check(self, ctx, params):
        if params.layer:
            try:
                resolve_layer(ctx.model, params.layer)
            except ReportgenError as exc:
                raise ConfigError(f"analysis.deepdream.layer: {exc.message}") from None
        else:
            self.layer(ctx, params)
        h, w = ctx.loaded.input.size
        small = min(h, w) / params.octave_scale ** (params.octaves - 1)
        if small < self.MIN_SIDE:
            raise ConfigError(f"analysis.deepdream.octaves: {params.octaves} octaves of scale "
                              f"{params.octave_scale:g} shrink the {h}x{w} input to {small:.0f} px, below "
                              f"{self.MIN_SIDE}: use fewer octaves or a smaller octave_scale")

    def run(self, ctx, params, reduced, upstream=NOTHING):
        import torch

        from ..methods.optimize import deepdream, layer_energy

        layer = self.layer(ctx, params)
        idx = ctx.samples[: params.images]
        x = ctx.images.load_inputs(idx, ctx.device)

        def dream_at(j: int, octaves: int) -> Any:
            # each image alone, with a generator of its own (named by its index): a distributed build deals the
            # images to its ranks
            return deepdream(ctx.model, x[j:j + 1], layer, octaves=octaves, octave_scale=params.octave_scale,
                             steps_per_octave=params.steps_per_octave, lr=params.lr, jitter=params.jitter,
                             clamp=_clamp(ctx), generator=ctx.generator(f"{self.name}/{idx[j]}"),
                             truncate=True).detach().cpu()

        def dream_one(j: int) -> tuple[Any, int, str]:
            """Image j's dream (1, C, H, W) on the CPU, the octaves it ran at and why not all of them ("")."""
            try:
                return dream_at(j, params.octaves), params.octaves, ""
            except Exception as exc:
                if params.octaves == 1:
                    raise
                # a model with a fixed input size (a ViT's position embeddings) cannot read the smaller octaves
                h, w = ctx.loaded.input.size
                return dream_at(j, 1), 1, (
                    f" The model does not run on images smaller than {h}x{w} ({type(exc).__name__}: "
                    f"{first_line(exc)[:160]}), so DeepDream ran at that one scale instead of {params.octaves} "
                    "octaves.")

        dreams = ctx.map_chunks(dream_one, list(range(len(idx))), self.name)
        dream = torch.cat([d for d, _, _ in dreams]).to(x.device)
        _, octaves, single = dreams[0]
        with capture(ctx.model, [layer], keep_live=True, as_maps=True) as rec, torch.no_grad():
            ctx.model(x)
            before = layer_energy(layer)(None, rec).cpu().numpy()
            ctx.model(dream)
            after = layer_energy(layer)(None, rec).cpu().numpy()
        orig, dreamt = _pixels(ctx, x), _pixels(ctx, dream)
        result = Result()
        for j, i in enumerate(idx):
            name = ctx.images.names[i]
            group = f"Image {name}"
            result.items.append(Picture(
                key=f"{j:03d}-original", array=orig[j], style="rgb", label="original", image=i, group=group,
                caption=f"Sample image '{name}'; energy of {layer}: {before[j]:.3g}. Pixels in [0, 1]."))
            result.items.append(Picture(
                key=f"{j:03d}-dream", array=dreamt[j], style="rgb", label=f"dream at {layer}", image=i, group=group,
                caption=f"After DeepDream: energy of {layer} {after[j]:.3g} "
                        f"({after[j] / max(before[j], 1e-12):.2g}x the original). Pixels in [0, 1]."))
        gains = after / np.maximum(before, 1e-12)
        result.metrics["median energy gain"] = float(np.median(gains))
        result.notes.append(
            f"Layer {layer}: {octaves} octave(s) of scale {params.octave_scale:g}, {params.steps_per_octave} "
            f"steps each of mean size {params.lr:g} (normalized units), random shifts of up to {params.jitter} px. "
            "Energy is the mean square of the layer's output." + single)
        return result


# --------------------------------------------------------------------------------------------------------------------
# adversarial


@dataclass
class AdversarialParams:
    steps: int = field(default=100, metadata=doc("Gradient steps at most.", min=1, max=2000))
    step_size: float = field(default=0.0, metadata=doc(
        "Step length in normalized input units; 0 = automatic: 0.5% of each image's norm (l2) or 0.4% (about "
        "1/255) of its value range (linf).", min=0.0))
    norm: str = field(default="l2", metadata=doc(
        "Step shape: l2 (along the normalized gradient) or linf (the gradient's sign, FGSM-style).",
        choices=("l2", "linf")))
    stop_at_change: bool = field(default=True, metadata=doc("Stop each image at its first success."))
    target_class: str = field(default="", metadata=doc(
        "Class name for the targeted variant; empty = each image's second most likely class."))
    targeted: bool = field(default=True, metadata=doc("Also run the targeted variant."))
    sphere_points: int = field(default=1000, metadata=doc(
        "Random points per image on the sphere of radius sphere_scale x ||x - x~|| around it (the control), at most; "
        "0 = skip.", min=0, max=100000))
    sphere_scale: float = field(default=1.0, metadata=doc(
        "Radius of the control's sphere as a multiple of each image's adversarial change ||x - x~||: 1 = the same "
        "norm (like with like: what the findings compare), 2 = random changes twice as large.", min=0.01, max=100.0))
    sphere_tolerance: float = field(default=0.02, metadata=doc(
        "Stop drawing sphere points for an image once the 95% Wilson interval of its flip fraction is within "
        "+/- this (checked every 50 points); 0 = always draw sphere_points.", min=0.0, max=0.5))


SPHERE_BLOCK = 50  # sphere points drawn per check of the stopping rule


def _step_rows(labels, probs, names, stop: int, limit: int = 20) -> list[list]:
    """Table rows (step, class, probability) for one image: all if few, else those up to ``stop`` plus the last."""
    last = len(labels) - 1
    keep = list(range(last + 1)) if last < limit else sorted(set(range(min(stop, last) + 1)) | {last})
    return [[s, names[int(labels[s])], float(probs[s])] for s in keep]


EMBED_ONE = ("its flip is a change of an image's nearest neighbour among the other images of the set, and the set "
             "has one image")
# The flips' thresholds are fixed, not settings, so that a classifier's page and settings stay as they were:
LABEL_THRESHOLD = 0.5  # multilabel: a label is present above this sigmoid (Predictions.preds, the predictions page)
FLIP_SHARE = 0.5  # segment: the flip is more than this share of the main class's first predicted pixels changing
SCORE_THRESHOLD = 0.5  # detect: the top detection counts, and is found, at this score (the predictions page's boxes)
DETECT_IOU = 0.5  # a detection finds the top one at IoU >= this (PASCAL VOC's and COCO AP50's match)

# what an adversarial change does to the image, per task, for the findings (`robustness_findings`)
FLIP_WORDS = {"binary": "flips the predicted class", "multilabel": "changes the predicted label set",
              "segment": "changes the class of more than {share:g}% of the main class's pixels",
              "detect": "loses the top detection", "embed": "changes the nearest neighbour"}


def _background(names: list[str]) -> int | None:
    """The index of a class named background ('background', '__background__', any case), else None."""
    for k, n in enumerate(names):
        if str(n).strip("_ ").lower() == "background":
            return k
    return None


def _state_rows(codes, values, describe, stop: int, limit: int = 20) -> list[list]:
    """Table rows (step, state, number) for one image and any flip: all if few, else those up to ``stop`` plus the
    last (as `_step_rows`)."""
    last = len(codes) - 1
    keep = list(range(last + 1)) if last < limit else sorted(set(range(min(stop, last) + 1)) | {last})
    return [[s, *describe(codes[s], values[s])] for s in keep]


@register
class Adversarial(Analysis):
    needs_logits = True
    name = "adversarial"
    # every task with a decision to flip (`ADV_FLIP`); regression has none
    tasks = ("classify", "binary", "multilabel", "segment", "detect", "embed")
    task_reason = ("its flip is a change of the model's decision, and real outputs have none: how large a change of "
                   "a real output matters depends on what it measures, which the report does not know")
    title = "Adversarial examples"
    section = "optimized"
    summary = ("the smallest gradient steps that change each sample's label, and random changes of the same norm "
               "(the control)")
    paper = "Szegedy et al., Intriguing properties of neural networks, ICLR 2014"
    paper_url = "https://arxiv.org/abs/1312.6199"
    order = 40
    Params = AdversarialParams
    splits = True  # a distributed build deals its batches of images and its sphere images to the ranks
    shrink = (("sphere_points", 50), ("steps", 50))

    @staticmethod
    def nothing_to_lose(ctx) -> str:
        """Why a detector's attack has nothing to flip on the sample images (none of them has a top detection of
        score `SCORE_THRESHOLD` or more: every row of its table would be "n/a"), or ""."""
        if getattr(ctx, "task", "classify") != "detect" or ctx.predictions is None or not ctx.samples:
            return ""
        pred = ctx.predictions
        tops = [pred.detections[pred.row(i)]["scores"] for i in ctx.samples]
        if any(len(s) and float(s[0]) >= SCORE_THRESHOLD for s in tops):
            return ""
        best = [float(s[0]) for s in tops if len(s)]
        which = (f"detection of score {SCORE_THRESHOLD:g} or more (the highest scores {max(best):.3g})" if best
                 else "detection")
        who = "the sample image has no" if len(tops) == 1 else f"none of the {len(tops)} sample images has a"
        return (f"{who} {which}, so there is no top detection for the attack to lose and every row of its table "
                "would be n/a")

    def cost(self, ctx, params, upstream=NOTHING):
        if self.nothing_to_lose(ctx):
            return 0.0  # it computes nothing: its page says why
        # at most: every step of the untargeted and targeted runs (forward + backward), and every sphere point
        runs = 2 if params.targeted and getattr(ctx, "task", "classify") == "classify" else 1
        return len(ctx.samples) * (runs * params.steps * 3 + params.sphere_points) * ctx.facts.macs

    def check(self, ctx, params):
        if params.target_class and params.target_class not in ctx.class_names:
            shown = ", ".join(ctx.class_names[:30]) + (", ..." if len(ctx.class_names) > 30 else "")
            raise ConfigError(f"analysis.adversarial.target_class: '{params.target_class}' is not a class of this "
                              f"model; classes: {shown}")
        task = getattr(ctx, "task", "classify")
        if task == "embed" and ctx.predictions is not None and len(ctx.predictions.indices) < 2:
            raise NotApplicable(EMBED_ONE)
        if task in ("classify", "binary") and len(ctx.class_names) < 2:
            raise NotApplicable("the model has a single output class")

    def run(self, ctx, params, reduced, upstream=NOTHING):
        if getattr(ctx, "task", "classify") != "classify":
            return self.run_task(ctx, params)
        names = ctx.class_names
        idx = list(ctx.samples)
        x = ctx.images.load_inputs(idx, ctx.device)
        clamp = _clamp(ctx)
        common = dict(steps=params.steps, step_size=params.step_size or None, norm=params.norm,
                      stop_at_change=params.stop_at_change, clamp=clamp)
        res = _adversarial(ctx, x, None, common, self.name)
        labels, probs = res.labels.cpu().numpy(), res.probs.cpu().numpy()
        orig_pix, adv_pix = _pixels(ctx, x), _pixels(ctx, res.adv)
        rel = res.rel_norm.cpu().numpy()
        ok = res.success.cpu().numpy()
        taken = res.steps_taken.cpu().numpy()
        # the page keeps the adversarial image as an 8-bit PNG: rounding may undo a change made just past the boundary
        saved = np.clip(np.round(adv_pix * 255.0), 0, 255).astype(np.uint8)
        saved_pred = _probs(ctx, ctx.images.normalize(saved).to(ctx.device)).argmax(1).numpy()
        result = Result()
        mono = ctx.loaded.input.channels == 1
        summary_rows = []
        per_image = []
        for j, i in enumerate(idx):
            name = ctx.images.names[i]
            o, f = int(res.original[j]), int(res.final[j])
            summary_rows.append([name, names[o], float(probs[0, j]), names[f], float(probs[-1, j]),
                                 int(taken[j]), float(rel[j]), "yes" if ok[j] else "no",
                                 "yes" if saved_pred[j] != o else "no"])
            group = f"Image {name}"
            diff, vmax, diff_caption = self.difference(adv_pix[j], orig_pix[j], mono)
            per_image += [
                Picture(key=f"{j:03d}-original", array=orig_pix[j], style="rgb", image=i, group=group,
                        label=f"original: {names[o]} ({probs[0, j]:.2f})",
                        caption=f"Sample image '{name}', predicted '{names[o]}' with p={probs[0, j]:.2f}. "
                                "Pixels in [0, 1]."),
                Picture(key=f"{j:03d}-adversarial", array=adv_pix[j], style="rgb", image=i, group=group,
                        label=f"adversarial: {names[f]} ({probs[-1, j]:.2f})",
                        caption=f"After {taken[j]} step(s): predicted '{names[f]}' with p={probs[-1, j]:.2f}; "
                                f"||x - x~|| / ||x|| = {rel[j]:.2f}% (normalized inputs). Pixels in [0, 1]."),
                Picture(key=f"{j:03d}-difference", array=diff, style="signed", vmax=vmax, image=i, group=group,
                        label="difference, magnified", colorbar=True, caption=diff_caption),
                Table(key=f"{j:03d}-steps", image=i, group=group, label="Prediction at each step",
                      columns=["step", "predicted class", "probability"],
                      rows=_step_rows(labels[:, j], probs[:, j], names, int(taken[j])),
                      caption="Step 0 is the original image. "
                              + ("Long runs show the steps up to the change and the last one." if params.steps >= 20
                                 else "")),
            ]
        result.items.append(Table(
            key="summary", group="Summary", label="Untargeted: the predicted label pushed away",
            columns=["image", "predicted", "p", "after", "p after", "steps", "change %", "label changed",
                     "8-bit image changed"],
            rows=summary_rows,
            caption="Gradient ascent on the cross-entropy of each image's predicted label. change % = "
                    "100 ||x - x~|| / ||x|| in the model's normalized input space. The last column classifies the "
                    "adversarial image as saved on this page (rounded to 8-bit pixels): 'yes' when its label still "
                    "differs from the original's."))
        result.metrics["8-bit images changed"] = float((saved_pred != res.original.cpu().numpy()).mean())
        success = float(ok.mean()) if len(ok) else float("nan")
        result.metrics["success rate"] = success
        result.metrics["mean change % (successes)"] = float(rel[ok].mean()) if ok.any() else float("nan")
        # for the findings: each sample's change (% of ||x||) and whether its label changed, in sample order
        result.shared["robustness"] = {"images": [int(i) for i in idx], "change %": rel.astype(float).tolist(),
                                       "changed": ok.astype(bool).tolist(), "steps": params.steps}

        if params.targeted:
            result.items.append(self.targeted(ctx, params, x, common, result))

        self.sphere(ctx, params, x, res, idx, ok, rel, result, lambda code: names[int(code)])
        result.items += per_image
        how = (f"{params.norm} steps of {params.step_size:g} (normalized units)" if params.step_size
               else "l2 steps of 0.5% of each image's norm" if params.norm == "l2"
               else "linf (sign) steps of 0.4% of each image's value range")
        result.notes.append(f"At most {params.steps} {how}, clipped to the valid pixel range"
                            + (", each image stopping at its first success." if params.stop_at_change else "."))
        return result

    # ----------------------------------------------------------------------------------------------------------------
    # tasks other than classify: the attack and its control with the task's flip (`reportgen.methods.adversarial`)

    def flip_of(self, ctx, params, idx: list[int]) -> tuple[Any, str, str]:
        """The task's `Flip` for the sample images ``idx``, what it counts as a flip (for captions and the findings)
        and the loss the attack ascends."""
        import torch

        from ..methods import adversarial as adv

        task = ctx.task
        if task == "binary":
            return (adv.ClassFlip(binary=True), "a change of the predicted class: the logit crossing 0",
                    "the binary cross-entropy of each image's predicted class")
        if task == "multilabel":
            return (adv.LabelSetFlip(LABEL_THRESHOLD),
                    f"a change of the predicted label set: any label's sigmoid crossing {LABEL_THRESHOLD:g}",
                    "the binary cross-entropy of each image's predicted label set, summed over the labels")
        if task == "segment":
            back = _background(ctx.class_names)
            return (adv.RegionFlip(FLIP_SHARE, background=back),
                    f"more than {100 * FLIP_SHARE:g}% of the pixels first predicted as the image's main class "
                    "changing class",
                    "the cross-entropy of the main class averaged over the pixels first predicted as it")
        if task == "detect":
            return (adv.DetectionFlip(SCORE_THRESHOLD, DETECT_IOU),
                    f"the top detection lost: no detection of its class with IoU >= {DETECT_IOU:g} with its box "
                    f"scores at least {SCORE_THRESHOLD:g}",
                    "minus the summed scores of the detections that still find the top detection")
        if task == "embed":
            pred = ctx.predictions
            rows = set(pred.indices.tolist())
            own = [pred.row(i) if i in rows else -1 for i in idx]
            return (adv.NeighbourFlip(torch.as_tensor(pred.logits), own),
                    "a change of the image's nearest neighbour among the other images of the set, by cosine "
                    "similarity",
                    "the margin between the nearest other image's cosine similarity and the first neighbour's")
        raise ValueError(f"no flip for task {task!r}")

    def describer(self, ctx) -> Any:
        """``describe(code, value) -> (state, number)`` of a flip's state for the tables, per task."""
        names, task = ctx.class_names, ctx.task
        if task == "binary":
            return lambda code, value: (names[int(code)], float(value))
        if task == "multilabel":
            return lambda code, value: (", ".join(names[k] for k in np.flatnonzero(np.asarray(code))) or "none",
                                        int(value))
        if task == "segment":
            return lambda code, value: (names[int(code)], float(value))
        if task == "detect":
            return lambda code, value: ("lost" if int(code) == 0 else f"found by {int(code)}", float(value))
        pred = ctx.predictions
        return lambda code, value: (ctx.images.names[int(pred.indices[int(code)])], float(value))

    STATE_COLUMNS = {"binary": ("predicted class", "probability"),
                     "multilabel": ("predicted labels", "labels changed"),
                     "segment": ("main class over the region", "share of the region changed"),
                     "detect": ("top detection", "best score finding it"),
                     "embed": ("nearest neighbour", "cosine similarity")}

    def run_task(self, ctx, params) -> Result:
        import torch

        task = ctx.task
        if task == "embed" and len(ctx.predictions.indices) < 2:
            raise NotApplicable(EMBED_ONE)
        if why := self.nothing_to_lose(ctx):
            raise NotApplicable(why)
        idx = list(ctx.samples)
        x = ctx.images.load_inputs(idx, ctx.device)
        flip, measure, loss = self.flip_of(ctx, params, idx)
        common = dict(steps=params.steps, step_size=params.step_size or None, norm=params.norm,
                      stop_at_change=params.stop_at_change, clamp=_clamp(ctx))
        res = _adversarial(ctx, x, None, common, self.name, flip=flip)
        describe = self.describer(ctx)
        codes, values = res.labels.cpu().numpy(), res.probs.cpu().numpy()
        rel, taken = res.rel_norm.cpu().numpy(), res.steps_taken.cpu().numpy()
        ok = res.success.cpu().numpy()
        orig_pix, adv_pix = _pixels(ctx, x), _pixels(ctx, res.adv)
        with torch.no_grad():
            bound = flip.start(ctx.model(x))
            applies = (np.ones(len(idx), bool) if bound.applies is None else bound.applies.cpu().numpy())
            # the adversarial image as this page keeps it (8-bit pixels): does the flip survive the rounding?
            saved = np.clip(np.round(adv_pix * 255.0), 0, 255).astype(np.uint8)
            kept = bound.flipped(ctx.model(ctx.images.normalize(saved).to(ctx.device))).cpu().numpy()
        head, number = self.STATE_COLUMNS[task]
        mono = ctx.loaded.input.channels == 1
        result = Result()
        rows, per_image = [], []
        offset = getattr(ctx.loaded, "label_offset", 0)
        for j, i in enumerate(idx):
            name = ctx.images.names[i]
            before, b_num = describe(codes[0, j], values[0, j])
            after, a_num = describe(codes[-1, j], values[-1, j])
            what = self.what_flipped(ctx, task, codes[:, j], values[:, j], bound, j, offset)
            rows.append([name, before, after, what, int(taken[j]), float(rel[j]),
                         "n/a" if not applies[j] else "yes" if ok[j] else "no",
                         "n/a" if not applies[j] else "yes" if kept[j] else "no"])
            group = f"Image {name}"
            diff, vmax, diff_caption = self.difference(adv_pix[j], orig_pix[j], mono)
            per_image += [
                Picture(key=f"{j:03d}-original", array=orig_pix[j], style="rgb", image=i, group=group,
                        label=f"original: {before}", caption=f"Sample image '{name}': {head} {before} "
                                                            f"({number} {b_num:.3g}). Pixels in [0, 1]."),
                Picture(key=f"{j:03d}-adversarial", array=adv_pix[j], style="rgb", image=i, group=group,
                        label=f"adversarial: {after}",
                        caption=f"After {taken[j]} step(s): {head} {after} ({number} {a_num:.3g}); "
                                f"||x - x~|| / ||x|| = {rel[j]:.2f}% (normalized inputs). Pixels in [0, 1]."),
                Picture(key=f"{j:03d}-difference", array=diff, style="signed", vmax=vmax, image=i, group=group,
                        label="difference, magnified", colorbar=True, caption=diff_caption),
                Table(key=f"{j:03d}-steps", image=i, group=group, label="Prediction at each step",
                      columns=["step", head, number],
                      rows=_state_rows(codes[:, j], values[:, j], describe, int(taken[j])),
                      caption="Step 0 is the original image. "
                              + ("Long runs show the steps up to the flip and the last one." if params.steps >= 20
                                 else "")),
            ]
        result.items.append(Table(
            key="summary", group="Summary", label="Untargeted: the decision pushed to flip",
            columns=["image", "before", "after", "what changed", "steps", "change %", "flipped",
                     "8-bit image flipped"],
            rows=rows,
            caption=f"Gradient ascent on {loss}; the flip is {measure}. before / after: {head}. change % = "
                    "100 ||x - x~|| / ||x|| in the model's normalized input space. The last column runs the "
                    "adversarial image as saved on this page (rounded to 8-bit pixels): 'yes' when it still flips."
                    + (" n/a: an image whose top detection scores below the threshold has none to lose."
                       if not applies.all() else "")))
        on = applies.astype(bool)
        result.metrics["8-bit images changed"] = float(kept[on].mean()) if on.any() else float("nan")
        result.metrics["success rate"] = float(ok[on].mean()) if on.any() else float("nan")
        result.metrics["mean change % (successes)"] = float(rel[ok].mean()) if ok.any() else float("nan")
        # for the findings: each sample's change and whether it flipped, the images the measure applies to only
        result.shared["robustness"] = {"images": [int(i) for i, a in zip(idx, on) if a],
                                       "change %": rel[on].astype(float).tolist(),
                                       "changed": ok[on].astype(bool).tolist(), "steps": params.steps,
                                       "flips": FLIP_WORDS[task].format(share=100 * FLIP_SHARE)}
        if params.targeted:
            result.notes.append(
                "With one logit, the targeted attack toward the other class takes the untargeted attack's steps, so "
                "it is not repeated." if task == "binary" else
                "The targeted variant pushes toward a chosen class of a classifier; this model's flip is "
                f"{measure}, so it does not run.")
        self.sphere(ctx, params, x, res, idx, ok, rel, result, lambda code: describe(code, 0.0)[0], flip=flip,
                    measure=measure)
        result.items += per_image
        how = (f"{params.norm} steps of {params.step_size:g} (normalized units)" if params.step_size
               else "l2 steps of 0.5% of each image's norm" if params.norm == "l2"
               else "linf (sign) steps of 0.4% of each image's value range")
        result.notes.append(f"At most {params.steps} {how}, clipped to the valid pixel range"
                            + (", each image stopping at its first flip." if params.stop_at_change else "."))
        return result

    @staticmethod
    def what_flipped(ctx, task, codes, values, bound, j, offset) -> str:
        """What changed between the first and last step of image ``j``, in words."""
        names = ctx.class_names
        if task == "multilabel":
            first, last = np.asarray(codes[0]), np.asarray(codes[-1])
            gone = [names[k] for k in np.flatnonzero((first == 1) & (last == 0))]
            new = [names[k] for k in np.flatnonzero((first == 0) & (last == 1))]
            return ", ".join([f"-{n}" for n in gone] + [f"+{n}" for n in new]) or "none"
        if task == "segment":
            cat = names[int(bound.category[j])]
            return f"{100 * float(values[-1]):.0f}% of '{cat}' ({int(bound.region[j].sum())} px)"
        if task == "detect":
            if not bool(bound.applies[j]):
                return "no detection to lose"
            label = int(bound.label[j]) - offset
            cls = names[label] if 0 <= label < len(names) else f"label {int(bound.label[j])}"
            return f"top '{cls}' {'lost' if int(codes[-1]) == 0 else 'kept'}"
        if task == "embed":
            pred = ctx.predictions
            a, b = (ctx.images.names[int(pred.indices[int(c)])] for c in (codes[0], codes[-1]))
            return "none" if a == b else f"{a} -> {b}"
        return "none" if int(codes[0]) == int(codes[-1]) else f"{names[int(codes[0])]} -> {names[int(codes[-1])]}"

    def sphere(self, ctx, params, x, res, idx, ok, rel, result, describe, flip=None, measure: str = "") -> None:
        """The random-sphere control around the images the attack flipped (``ok``), counted with the attack's own
        ``flip`` (None: a classifier's label); ``describe(code)`` names an image's original state for the table."""
        import torch

        from ..methods.adversarial import random_sphere

        if params.sphere_points and ok.any():
            sel = np.flatnonzero(ok)
            scale = params.sphere_scale
            # the control at the adversarial change's own norm (scale 1): a random change as large as the one found
            radius = scale * (res.adv - x.to(res.adv.dtype)).flatten(1).norm(dim=1)[torch.as_tensor(sel)]

            def sphere(r: int) -> Any:  # one image's points, from a generator of its own (named by its index)
                j = int(sel[r])
                one = random_sphere(ctx.model, x[j:j + 1], radius[r:r + 1], m=params.sphere_points,
                                    batch_size=ctx.batch_size(grad=False), tolerance=params.sphere_tolerance,
                                    generator=ctx.generator(f"{self.name}/sphere/{idx[j]}"), block=SPHERE_BLOCK,
                                    flip=None if flip is None else flip.select(torch.tensor([j])))
                return dataclasses.replace(one, **{f.name: _cpu(getattr(one, f.name))
                                                   for f in dataclasses.fields(one)})

            spheres = ctx.map_chunks(sphere, list(range(len(sel))), self.name + "/sphere")
            sph = type(spheres[0])(**{f.name: torch.cat([getattr(one, f.name) for one in spheres])
                                      for f in dataclasses.fields(spheres[0])})
            frac = sph.fraction.cpu().numpy()
            stop = (f"{SPHERE_BLOCK} points at a time, until the interval was within +/-"
                    f"{params.sphere_tolerance:g} (checked after each {SPHERE_BLOCK}, so its coverage is "
                    f"approximate) or {params.sphere_points} points were drawn." if params.sphere_tolerance > 0
                    else f"{params.sphere_points} points per image.")
            xnorm = x.flatten(1).norm(dim=1).cpu().numpy()
            rows = []
            for r, j in enumerate(sel):
                rows.append([ctx.images.names[idx[j]], describe(sph.original[r]), float(rel[j]),
                             float(100 * float(sph.radius[r]) / xnorm[j]), int(sph.drawn[r]),
                             int(sph.changed[r]), float(frac[r]),
                             f"{float(sph.low[r]):.3f} to {float(sph.high[r]):.3f}"])
            size = "of the same norm" if scale == 1 else f"{scale:g} times as large"
            result.items.append(Table(
                key="sphere", group="Summary", label=f"Control: random changes {size}",
                columns=["image", "predicted" if flip is None else "before", "adversarial change %",
                         "sphere radius %", "points",
                         "label changes" if flip is None else "flips", "fraction", "95% interval"],
                rows=rows,
                caption=f"Points drawn uniformly on the sphere of radius {'' if scale == 1 else f'{scale:g} '}"
                        + ("||x - x~|| around each image whose label "
                           "the attack changed (radius as % of ||x||, normalized inputs, not clipped to the pixel "
                           "range), classified by the model; label changes = points classified differently from the "
                           if flip is None else
                           f"||x - x~|| around each image the attack flipped (radius as % of ||x||, normalized "
                           f"inputs, not clipped to the pixel range), run through the model; flips = points that "
                           f"flip as the attack counts it ({measure}) against the ")
                        + f"image. {stop} The interval is the 95% Wilson score interval of the fraction."))
            result.metrics["sphere: mean fraction flipped"] = float(frac.mean())
            result.shared["robustness"].update({"sphere images": [int(idx[j]) for j in sel],
                                                "sphere fraction": frac.astype(float).tolist(),
                                                "sphere changed": [int(v) for v in sph.changed],
                                                "sphere drawn": [int(v) for v in sph.drawn],
                                                "sphere scale": float(scale),
                                                "sphere radius %": [float(r[3]) for r in rows]})
        elif params.sphere_points:
            result.notes.append("No label changed, so the random-sphere control has no radius to test." if flip is None
                                else "No image flipped, so the random-sphere control has no radius to test.")

    @staticmethod
    def difference(adv: np.ndarray, orig: np.ndarray, mono: bool) -> tuple[np.ndarray, float, str]:
        """(H, W) signed pixel difference (mean over channels), its colour limit and a caption."""
        diff = (adv - orig).mean(axis=-1)
        vmax = float(np.abs(diff).max())
        where = "in pixel units" if mono else "in pixel units, mean over the colour channels"
        if vmax == 0:
            return diff, 1.0, f"adversarial - original {where}: no change."
        return diff, vmax, (f"adversarial - original {where}, magnified {1 / vmax:.0f}x: full red / blue = "
                            f"+/-{vmax:.3g} of the [0, 1] pixel range (this image's largest change); white = 0.")

    def targeted(self, ctx, params, x, common, result) -> Table:
        import torch

        names = ctx.class_names
        idx = list(ctx.samples)
        if params.target_class:
            goal = torch.full((len(idx),), names.index(params.target_class), dtype=torch.long)
            chosen = f"'{params.target_class}'"
        else:
            goal = _probs(ctx, x).topk(2, dim=1).indices[:, 1]
            chosen = "each image's second most likely class"
        res = _adversarial(ctx, x, goal.to(ctx.device), common, self.name + "/targeted")
        probs_all = _probs(ctx, res.adv).numpy()
        orig_pix, adv_pix = _pixels(ctx, x), _pixels(ctx, res.adv)
        mono = ctx.loaded.input.channels == 1
        rows, images = [], []
        for j, i in enumerate(idx):
            t = int(goal[j])
            diff, vmax, cap = self.difference(adv_pix[j], orig_pix[j], mono)
            rows.append([ctx.images.names[i], names[int(res.original[j])], names[t], float(probs_all[j, t]),
                         int(res.steps_taken[j]), float(res.rel_norm[j]), "yes" if bool(res.success[j]) else "no"])
            images.append([
                Picture(key="adversarial", array=adv_pix[j], style="rgb", label="targeted adversarial",
                        caption=f"Predicted '{names[int(res.final[j])]}' after {int(res.steps_taken[j])} step(s). "
                                "Pixels in [0, 1]."),
                Picture(key="difference", array=diff, style="signed", vmax=vmax, label="difference", caption=cap)])
        reached = res.success.cpu().numpy()
        result.metrics["targeted success rate"] = float(reached.mean())
        return Table(
            key="targeted", group="Summary", label="Targeted: pushed toward a chosen class",
            columns=["image", "predicted", "target", "p(target) after", "steps", "change %", "reached"],
            rows=rows, images=images,
            caption=f"Gradient descent on the cross-entropy of the target ({chosen}). Images: the targeted "
                    "adversarial and its magnified difference (click to enlarge).")
