"""What the attribution pages and the trust checks explain, per task: ``--target`` parsed, the default target of
each task, and the `reportgen.methods.targets` callable built for the sample images.

``--target`` (config ``target``, Python ``target=``; docs/targets.md, "What the maps explain, per task"):

- classify, multilabel: a class or label name, or its index: ``--target cat``, ``--target 3``;
- binary: one of the two class names ("not X", "X") or 0 / 1 (0 explains the negated logit, the log-odds of
  class 0);
- regress: an output name or index;
- segment: ``class=NAME`` (or a bare name / index), the mean logit of the class over the pixels predicted as it,
  with ``,region=mask`` over the pixels the image set's label masks (``--labels``) give it instead; ``region=mask``
  alone keeps the default class;
- detect: ``box=x0,y0,x1,y1[:class]`` in input pixels, scored as pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``
  (the detection of best IoU with the box, IoU + its score when IoU > 0.5 and its class is the box's); without a
  class, each image's best-matching detection's class;
- embed: ``image=PATH``, the cosine similarity of each image's embedding to that image's.

Without ``--target`` (`default_choices`): classify explains each image's predicted class (as always); binary its
one logit; multilabel each image's highest-scoring label; regress output 0; segment the class with the most
predicted pixels besides the background (class 0 when the class names call it background) over those pixels;
detect each image's top-scoring detection (its box and class); embed the cosine similarity to the image's nearest
other image of the set in the embedding.

Each mistake is one `ConfigError` line (`parse_target`, `check_syntax`) raised before any work. This module
imports torch only inside the functions that build callables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .errors import ConfigError

# the role of the maps of a given --target on the attribution pages (beside "predicted", "true", "requested")
GIVEN = "target"
BACKGROUND = ("background", "__background__", "_background_", "bg")
KEYS = ("class", "region", "box", "image")

FORMS = {
    "classify": "a class name or index",
    "binary": "one of the two class names or 0 / 1",
    "multilabel": "a label name or index",
    "regress": "an output name or index",
    "segment": "class=NAME (or a class index), optionally with ,region=mask; or region=mask",
    "detect": "box=x0,y0,x1,y1 or box=x0,y0,x1,y1:CLASS (input pixels)",
    "embed": "image=PATH (a reference image)",
}

# what the trust checks' curves record for each task (`TargetSet.measure`), and whether it lies in [0, 1]
MEASURES = {
    "classify": ("the class's softmax probability", True),
    "binary": ("the class's sigmoid probability", True),
    "multilabel": ("the label's sigmoid probability", True),
    "regress": ("the output's value", False),
    "segment": ("the class's softmax probability averaged over the region", True),
    "detect": ("the matched detection's IoU + score (0 when no detection matches the box)", False),
    "embed": ("the cosine similarity to the reference embedding", False),
}

# the group title of the default maps on an attribution page, per task
DEFAULT_TITLES = {
    "binary": "The model's one logit",
    "multilabel": "Highest-scoring label",
    "regress": "Output 0 (the default target)",
    "segment": "Largest predicted class over its pixels",
    "detect": "Top-scoring detection",
    "embed": "Similarity to the nearest other image",
}


@dataclass(frozen=True)
class TargetSpec:
    """A parsed ``--target``: ``index`` a class / label / output index (None: the task's default choice), ``box``
    (x0, y0, x1, y1) in input pixels (detect), ``region`` "predicted" or "mask" (segment), ``image`` a reference
    image path (embed); ``text`` as given."""

    text: str
    index: Optional[int] = None
    box: Optional[tuple[float, float, float, float]] = None
    region: str = "predicted"
    image: Optional[str] = None


@dataclass
class Choice:
    """What one map explains: image ``image`` (index into the image set), keyed by class / label / output index
    ``cls`` (embed: 0), ``role`` on the page, ``words`` for the page ("explains: ..."); detect: ``box`` (4,) and
    ``label`` (a class index; None = no detection to explain); binary ``negate``; embed ``reference`` (the
    reference image's index, None for an image file); ``nothing``: the target is 0 on every input (no detection
    and no class to score, no other image to be similar to), so every map of it is blank by construction."""

    image: int
    cls: int
    role: str
    words: str
    box: Optional[np.ndarray] = None
    label: Optional[int] = None
    negate: bool = False
    reference: Optional[int] = None
    nothing: bool = False


def nothing_to_explain(task: str, picked: Optional[Sequence[Optional[Choice]]]) -> str:
    """Why no map of these choices can show anything (each one's target is 0 on every input: `Choice.nothing`),
    or "" when one of them can (a None choice: a classifier's class, which always can): one sentence for a page
    that would otherwise draw only blank maps."""
    if not picked or not all(c is not None and c.nothing for c in picked):
        return ""
    n = len(picked)
    if task == "detect":
        images = "the sample image" if n == 1 else f"any of the {n} sample images"
        return (f"the model returns no detection on {images}, so the target (the box score of a detection: IoU + "
                "score, 0 with no detection of a class to match) is 0 on every input and every map would be blank; "
                "give --target box=x0,y0,x1,y1:CLASS to explain a class's score in a box")
    subject = "the sample image has nothing" if n == 1 else f"none of the {n} sample images has anything"
    return (f"{subject} to explain (" + "; ".join(dict.fromkeys(c.words for c in picked))
            + ") and every map would be blank")


@dataclass
class TargetSet:
    """The target of every map of a page: ``target`` is class indices (a LongTensor (T,): classify) or a callable
    whose row j is map j's (`reportgen.methods.targets.select_target` takes a chunk's rows); ``scores`` (T,) the
    target's score on each clean image; ``measure`` what the trust checks' curves record and ``bounded`` whether
    it lies in [0, 1]."""

    target: Any
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    measure: str = "the class's softmax probability"
    bounded: bool = True


# ---------------------------------------------------------------------------------------------------------------
# Parsing


def _split(text: str) -> dict[str, str]:
    """``key=value`` parts of a target (``box=`` keeps its commas), or {"": text} for a bare name."""
    text = text.strip()
    head = text.split("=", 1)[0].strip().lower() if "=" in text else ""
    if not head:
        return {"": text}
    if head in ("box", "image"):
        return {head: text.split("=", 1)[1].strip()}
    parts = {}
    for part in text.split(","):
        if "=" not in part:
            raise ConfigError(f"target '{text}': '{part.strip()}' is not key=value: write e.g. class=car,region=mask")
        key, value = (s.strip() for s in part.split("=", 1))
        if key.lower() not in KEYS:
            from .errors import did_you_mean

            raise ConfigError(f"target '{text}': unknown key '{key}'{did_you_mean(key.lower(), KEYS)}: use "
                              "class=, region=, box= or image=")
        parts[key.lower()] = value
    return parts


def _box(text: str, value: str) -> tuple[tuple[float, float, float, float], Optional[str]]:
    coords, _, name = value.partition(":")
    try:
        nums = [float(v) for v in coords.split(",")]
    except ValueError:
        nums = []
    if len(nums) != 4 or not all(math.isfinite(v) for v in nums):
        raise ConfigError(f"target '{text}': the box must be four numbers x0,y0,x1,y1 in input pixels, e.g. "
                          "box=10,20,60,80 or box=10,20,60,80:car")
    x0, y0, x1, y1 = nums
    if x1 <= x0 or y1 <= y0:
        raise ConfigError(f"target '{text}': the box's x1, y1 must be larger than x0, y0 (corners top-left, "
                          "bottom-right)")
    return (x0, y0, x1, y1), (name.strip() or None)


def check_syntax(text: Optional[str]) -> None:
    """The checks a ``target`` needs no model for (the CLI runs them before torch is imported): its form, a box's
    four numbers, a reference image that exists. `ConfigError` (one line) otherwise."""
    if text is None:
        return
    if not str(text).strip():
        raise ConfigError("target is empty: give a class name or index, class=NAME, box=x0,y0,x1,y1 or image=PATH, "
                          "or leave it out for each task's default")
    parts = _split(str(text))
    if "box" in parts:
        _box(text, parts["box"])
    if "image" in parts and not Path(parts["image"]).expanduser().is_file():
        raise ConfigError(f"target '{text}': the reference image '{parts['image']}' does not exist")
    if "region" in parts and parts["region"].lower() not in ("mask", "predicted"):
        raise ConfigError(f"target '{text}': region must be 'mask' (the label masks' pixels of the class) or "
                          "'predicted' (its predicted pixels)")


def plural(word: str) -> str:
    return word + ("es" if word.endswith("s") else "s")


def _index(text: str, value: str, names: Sequence[str], what: str) -> int:
    """The index of ``value`` among ``names`` (a name first, then an integer index)."""
    if value in names:
        return list(names).index(value)
    try:
        k = int(value)
    except ValueError:
        from .errors import did_you_mean

        shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        raise ConfigError(f"target '{text}': unknown {what} '{value}'{did_you_mean(value, names)}; the model's "
                          f"{plural(what)}: {shown or 'none named'}") from None
    if not 0 <= k < len(names):
        raise ConfigError(f"target '{text}': {what} index {k} is out of range: the model has {len(names)} "
                          f"{plural(what)} (0 to {len(names) - 1})")
    return k


def parse_target(text: Optional[str], task: str, names: Sequence[str], *, size: Optional[tuple[int, int]] = None,
                 label_masks: bool = False) -> Optional[TargetSpec]:
    """``--target`` for a model of ``task`` whose class / label / output names are ``names`` (binary: the two class
    names), as a `TargetSpec`; None when not given (the task's default). ``size``: the input (H, W), which a box
    must overlap; ``label_masks``: whether the image set has label masks (segment's ``region=mask``). Each
    mistake is one `ConfigError` line: an unknown name, an index out of range, a box on a model that is not a
    detector, a form that does not fit the task."""
    if text is None:
        return None
    check_syntax(text)
    parts = _split(str(text))
    what = {"multilabel": "label", "regress": "output"}.get(task, "class")
    task_is = f"this model's task is {task}: give {FORMS[task]}"
    if "box" in parts and task != "detect":
        raise ConfigError(f"target '{text}': a box explains a detector's detection, and {task_is}")
    if "image" in parts and task != "embed":
        raise ConfigError(f"target '{text}': a reference image explains an embedding's similarity, and {task_is}")
    if "region" in parts and task != "segment":
        raise ConfigError(f"target '{text}': a region is a segmentation's, and {task_is}")
    if task == "detect":
        if "box" not in parts:
            raise ConfigError(f"target '{text}': a detector's target is a box: give {FORMS['detect']}")
        box, name = _box(text, parts["box"])
        if size is not None:
            h, w = size
            if box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h:
                raise ConfigError(f"target '{text}': the box lies outside the {h}x{w} input: give it in the input's "
                                  "pixels (x from 0 to width, y from 0 to height)")
        return TargetSpec(str(text), None if name is None else _index(text, name, names, "class"), box=box)
    if task == "embed":
        if "image" not in parts:
            raise ConfigError(f"target '{text}': an embedding's target is a reference image: give image=PATH")
        return TargetSpec(str(text), image=str(Path(parts["image"]).expanduser()))
    value = parts.get("class", parts.get(""))
    region = parts.get("region", "predicted").lower()
    if region == "mask" and not label_masks:
        raise ConfigError(f"target '{text}': region=mask uses the image set's label masks, and it has none: give "
                          "--labels FOLDER of class masks, or drop region=mask")
    if value is None:
        if task != "segment":
            raise ConfigError(f"target '{text}': give {FORMS[task]}")
        return TargetSpec(str(text), region=region)
    return TargetSpec(str(text), _index(text, value, names, what), region=region)


# ---------------------------------------------------------------------------------------------------------------
# The default choice per task, from the one pass's Predictions (numpy only)


def background_index(names: Sequence[str]) -> Optional[int]:
    """0 when the class names say class 0 is the background, else None."""
    return 0 if names and str(names[0]).strip().lower() in BACKGROUND else None


def nearest_other(embeddings: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """For each row in ``rows``, the row of ``embeddings`` (M, D) of highest cosine similarity other than itself
    (-1 when the set has one image). Zero vectors count as similarity 0."""
    e = np.asarray(embeddings, dtype=np.float64)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    u = e / np.where(norm > 0, norm, 1.0)
    out = []
    for r in rows:
        sims = u @ u[r]
        sims[r] = -np.inf
        out.append(int(np.argmax(sims)) if len(sims) > 1 else -1)
    return np.asarray(out, dtype=np.int64)


def _fmt_box(box: Any) -> str:
    return ",".join(f"{float(v):.0f}" for v in box)


def default_choices(task: str, predictions: Any, images: Sequence[int], names: Sequence[str],
                    image_names: Sequence[str]) -> list[Choice]:
    """The task's default target of each image in ``images`` (image indices) from ``predictions`` (the one pass's
    `reportgen.context.Predictions`), as the module docstring says; role "predicted". Classify: the predicted
    class (the attribution pages do not call this for a classifier without --target: they keep class indices)."""
    out = []
    for i in images:
        row = predictions.row(i)
        name = image_names[i]
        if task == "classify":
            c = int(predictions.logits[row].argmax())
            out.append(Choice(i, c, "predicted", f"explains: class {names[c]} of {name} (the predicted class)"))
        elif task == "binary":
            z = float(predictions.logits[row, 0])
            out.append(Choice(i, 1, "predicted", f"explains: the one logit of {name} ({z:.3g}, the log-odds of class "
                                                 f"{names[1]})"))
        elif task == "multilabel":
            c = int(predictions.logits[row].argmax())
            p = 1.0 / (1.0 + math.exp(-float(predictions.logits[row, c])))
            out.append(Choice(i, c, "predicted", f"explains: label {names[c]} of {name}, its highest-scoring label "
                                                 f"(probability {p:.2f})"))
        elif task == "regress":
            v = float(predictions.logits[row, 0])
            out.append(Choice(i, 0, "predicted", f"explains: {names[0] if names else 'output 0'} of {name} (value "
                                                 f"{v:.3g}; output 0, the default without --target)"))
        elif task == "segment":
            pixels = np.asarray(predictions.seg_pixels[row], dtype=np.int64).copy()
            bg = background_index(names)
            pool = pixels.copy()
            if bg is not None and pool.sum() > pool[bg]:
                pool[bg] = -1
            c = int(np.argmax(pool))
            share = pixels[c] / max(int(pixels.sum()), 1)
            but = " besides the background" if bg is not None and c != bg else ""
            out.append(Choice(i, c, "predicted", f"explains: class {names[c]} of {name} over its predicted pixels "
                                                 f"({share:.0%} of the image, the class with the most pixels{but}), "
                                                 "as the mean logit"))
        elif task == "detect":
            d = predictions.detections[row]
            if not len(d["scores"]):
                out.append(Choice(i, 0, "predicted", f"explains: nothing: {name} has no detection, so its score is "
                                                     "0 and its maps are blank", box=np.zeros(4, np.float32),
                                  nothing=True))
                continue
            c = int(d["labels"][0])
            out.append(Choice(i, c, "predicted",
                              f"explains: box 1 of {len(d['scores'])} of {name}, the top-scoring detection, class "
                              f"{names[c]}, score {float(d['scores'][0]):.2f}, at {_fmt_box(d['boxes'][0])}",
                              box=np.asarray(d["boxes"][0], np.float32), label=c))
        elif task == "embed":
            ref = int(nearest_other(predictions.logits, [row])[0])
            if ref < 0:
                out.append(Choice(i, 0, "predicted", f"explains: nothing: {name} is the only image, with no other "
                                                     "image to be similar to", nothing=True))
                continue
            e, r = predictions.logits[row].astype(np.float64), predictions.logits[ref].astype(np.float64)
            cos = float(e @ r / max(np.linalg.norm(e) * np.linalg.norm(r), 1e-12))
            ref_image = int(predictions.indices[ref])
            out.append(Choice(i, 0, "predicted", f"explains: the cosine similarity of {name}'s embedding to that of "
                                                 f"{image_names[ref_image]}, its nearest other image in the "
                                                 f"embedding ({cos:.2f}; the default without --target image=PATH)",
                              reference=ref_image))
        else:
            raise ValueError(f"unknown task {task!r}")
    return out


def given_choices(spec: TargetSpec, task: str, predictions: Any, images: Sequence[int], names: Sequence[str],
                  image_names: Sequence[str]) -> list[Choice]:
    """The target ``spec`` (a parsed --target) for each image in ``images``, role `GIVEN`."""
    if task == "segment" and spec.index is None:  # region=mask alone: the default class over its labelled pixels
        base = default_choices(task, predictions, images, names, image_names)
        return [Choice(c.image, c.cls, GIVEN, f"explains: class {names[c.cls]} of {image_names[c.image]} over the "
                                              "pixels its label mask gives the class, as the mean logit (the class "
                                              "with the most predicted pixels)") for c in base]
    out = []
    for i in images:
        name = image_names[i]
        if task in ("classify", "multilabel", "regress"):
            what = {"classify": "class", "multilabel": "label", "regress": "output"}[task]
            out.append(Choice(i, spec.index, GIVEN, f"explains: {what} {names[spec.index]} of {name} (--target)"))
        elif task == "binary":
            words = ("the negated logit (the log-odds of class " if spec.index == 0 else "the one logit (the "
                     "log-odds of class ") + f"{names[spec.index]}) of {name} (--target)"
            out.append(Choice(i, spec.index, GIVEN, f"explains: {words}", negate=spec.index == 0))
        elif task == "segment":
            where = "the pixels its label mask gives the class" if spec.region == "mask" else "its predicted pixels"
            out.append(Choice(i, spec.index, GIVEN, f"explains: class {names[spec.index]} of {name} over {where}, as "
                                                    "the mean logit (--target)"))
        elif task == "detect":
            box = np.asarray(spec.box, np.float32)
            d = predictions.detections[predictions.row(i)]
            iou = _ious(box, d["boxes"]) if len(d["scores"]) else np.zeros(0)
            best = int(np.argmax(iou)) if len(iou) else -1
            label = spec.index if spec.index is not None else (int(d["labels"][best]) if best >= 0 else None)
            if label is None:
                out.append(Choice(i, 0, GIVEN, f"explains: box {_fmt_box(box)} of {name}: the image has no detection,"
                                               " so its score is 0 and its maps are blank (--target)", box=box,
                                  nothing=True))
                continue
            match = (f"best-matching detection: class {names[int(d['labels'][best])]}, IoU {iou[best]:.2f}, score "
                     f"{float(d['scores'][best]):.2f}" if best >= 0 else "no detection")
            out.append(Choice(i, label, GIVEN, f"explains: box {_fmt_box(box)} of {name} as class {names[label]} "
                                               f"({match}; scored when IoU > 0.5 and the class agrees) (--target)",
                              box=box, label=label))
        elif task == "embed":
            out.append(Choice(i, 0, GIVEN, f"explains: the cosine similarity of {name}'s embedding to that of the "
                                           f"reference image {Path(spec.image).name} (--target)"))
    return out


def _ious(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU (j,) of one box (4,) with boxes (j, 4), xyxy."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0 = np.maximum(box[0], b[:, 0]), np.maximum(box[1], b[:, 1])
    x1, y1 = np.minimum(box[2], b[:, 2]), np.minimum(box[3], b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.where(area > 0, area, 1.0)


def choices(ctx: Any, images: Sequence[int]) -> Optional[list[Choice]]:
    """What the maps of ``images`` explain in this build (``ctx``: the build context after the pass): None for a
    classifier without --target (the pages keep their class indices: predicted, true and requested classes),
    else one `Choice` per image, the given --target's or the task's default."""
    spec = parse_context(ctx)
    if ctx.task == "classify" and spec is None:
        return None
    names, image_names = list(ctx.class_names), list(ctx.images.names)
    if spec is None:
        return default_choices(ctx.task, ctx.predictions, images, names, image_names)
    return given_choices(spec, ctx.task, ctx.predictions, images, names, image_names)


def parse_context(ctx: Any) -> Optional[TargetSpec]:
    """The build's ``target`` parsed for its model (`parse_target`)."""
    truth = getattr(ctx.images, "truth", None)
    masks = truth is not None and getattr(truth, "masks", None) is not None
    return parse_target(getattr(ctx.config, "target", None), ctx.task, list(ctx.class_names),
                        size=tuple(ctx.loaded.input.size), label_masks=masks)


# ---------------------------------------------------------------------------------------------------------------
# The callables


class RowTargets:
    """One target per row of a batch, for targets whose per-image data the methods' classes cannot hold in one
    object (a segmentation class that differs per image): row ``j`` of the output is scored by ``targets[j]``
    (a callable for a batch of one image), the scores stacked (B,). ``select`` takes rows as the methods do."""

    def __init__(self, targets: Sequence[Any]):
        self.targets = list(targets)

    @staticmethod
    def _row(output: Any, j: int) -> Any:
        import torch

        if isinstance(output, torch.Tensor):
            return output[j:j + 1]
        if isinstance(output, dict):
            return {k: (v[j:j + 1] if isinstance(v, torch.Tensor) and v.dim() else v) for k, v in output.items()}
        return [output[j]]

    def _each(self, output: Any, how: str) -> Any:
        import torch

        from .methods.targets import output_rows

        rows = output_rows(output)
        if rows != len(self.targets):
            raise ValueError(f"{len(self.targets)} targets for a batch of {rows} images")
        scored = [(getattr(t, "probability", t) if how == "probability" else t)(self._row(output, j)).reshape(1)
                  for j, t in enumerate(self.targets)]
        return torch.cat(scored)

    def __call__(self, output: Any) -> Any:
        return self._each(output, "__call__")

    def probability(self, output: Any) -> Any:
        return self._each(output, "probability")

    def select(self, index: Any) -> "RowTargets":
        return RowTargets([self.targets[int(i)] for i in index.reshape(-1)])


def _forward(model: Any, inputs: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(inputs)


def reference_embedding(ctx: Any, path: str) -> Any:
    """The embedding (D,) of the image at ``path``, read and normalized as the image set's images are."""
    from .data import BadImage, read_image
    from .methods.targets import output_tensor

    try:
        arr = read_image(Path(path), ctx.images.spec, {})
    except BadImage as exc:
        raise ConfigError(f"target 'image={path}': the reference image cannot be read ({exc})") from None
    x = ctx.images.normalize(arr[None]).to(ctx.device)
    return output_tensor(_forward(ctx.model, x)).detach().flatten(1)[0]


def build_targets(ctx: Any, picked: Sequence[Choice], inputs: Any) -> TargetSet:
    """The `TargetSet` of the maps ``picked`` (one `Choice` each, in page order) whose images are ``inputs``
    (T, C, H, W), row j being choice j's image. One forward pass of ``inputs`` without gradients where the target
    needs the clean output (segment's predicted region; the scores); the model is not changed."""
    import torch

    from .methods.targets import (BoxScoreTarget, ClassTarget, RegionTarget, SimilarityTarget, output_tensor,
                                  target_scores)

    task = ctx.task
    measure, bounded = MEASURES[task]
    spec = parse_context(ctx)
    index = torch.tensor([c.cls for c in picked], dtype=torch.long, device=inputs.device)
    output = _forward(ctx.model, inputs)
    if task == "classify":
        target: Any = index
    elif task == "binary":
        negate = bool(picked and picked[0].negate)
        target = ClassTarget(0, activation="sigmoid", negate=negate)
    elif task == "multilabel":
        target = ClassTarget(index, activation="sigmoid")
    elif task == "regress":
        target = ClassTarget(index, activation="identity")
    elif task == "segment":
        y = output_tensor(output, "out").detach()
        h, w = y.shape[-2:]
        use_mask = spec is not None and spec.region == "mask"
        rows = []
        for j, c in enumerate(picked):
            if use_mask:
                label = ctx.images.truth.masks.get(c.image)
                if label is None:
                    region = torch.zeros(h, w, dtype=torch.bool, device=y.device)
                else:
                    m = torch.as_tensor(np.asarray(label) == c.cls, device=y.device)
                    if tuple(m.shape) != (h, w):  # the output is coarser than the input: nearest, as the labels are
                        m = torch.nn.functional.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0]
                    region = m.bool()
            else:
                region = y[j].argmax(dim=0) == c.cls if y.shape[1] > 1 else y[j, 0] > 0
            rows.append(RegionTarget(c.cls, region[None]))
        target = RowTargets(rows)
    elif task == "detect":
        offset = int(getattr(ctx.loaded, "label_offset", 0))
        pairs = []
        for c in picked:
            if c.label is None:
                pairs.append((torch.zeros(0, dtype=torch.long), torch.zeros(0, 4)))
            else:
                pairs.append((torch.tensor([c.label + offset]), torch.as_tensor(c.box, dtype=torch.float32)[None]))
        target = BoxScoreTarget.per_image(pairs)
    elif task == "embed":
        if spec is not None:
            ref = reference_embedding(ctx, spec.image)[None].expand(len(picked), -1)
        else:
            preds = ctx.predictions
            ref = torch.stack([torch.as_tensor(preds.logits[preds.row(c.reference)] if c.reference is not None else
                                               np.zeros(preds.logits.shape[1], np.float32)) for c in picked])
        target = SimilarityTarget(ref.to(inputs.device))
    else:
        raise ValueError(f"unknown task {task!r}")
    scores = target_scores(output, target).detach().float().cpu().numpy() if len(picked) else np.zeros(0)
    return TargetSet(target, scores, measure, bounded)


def title(task: str, role: str) -> Optional[str]:
    """The group title of an attribution page's maps of ``role`` for a model of ``task`` (None: the page's own)."""
    if role == GIVEN:
        return "The given target (--target)"
    if role == "predicted" and task in DEFAULT_TITLES:
        return DEFAULT_TITLES[task]
    return None
