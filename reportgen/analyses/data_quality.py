"""Data quality: the likely label errors of the image set (confident learning on the model's predicted
probabilities) and its near-duplicate images (small thumbnails kept during the one pass), as pictures first.

Label errors read the logits of the one pass (``ctx.predictions``, which the build holds for every image anyway):
every labelled image with finite logits is checked, and no more memory is taken. Near-duplicates compare thumbnails
of a seeded uniform sample of at most ``max_images`` images (`ThumbnailSample`: bounded memory whatever the size of
the set); the page says which images were checked. The methods are `reportgen.methods.data_quality`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..artifacts import Picture, Result, Table
from ..config import doc
from ..methods.calibration import softmax
from ..methods.data_quality import (MIN_PSNR, THUMB, confident_learning, duplicate_groups, near_duplicates, psnr,
                                    thumbnails)
from . import NOTHING, Analysis, Reducer, register
from .activations import FeatureSample


class ThumbnailSample(Reducer):
    """A seeded uniform sample of at most ``max_images`` images (chosen as `FeatureSample` chooses: by a seeded hash
    of the image index, so the same images whatever the batches, their order or the number of ranks): each image's
    thumbnail (`reportgen.methods.data_quality.thumbnails`, pixel values in [0, 1]) and a 64-bit digest of its
    8-bit pixels at the model's input size (equal digests: identical model inputs). Memory: max_images x (C x 16 x
    16 float32 + 16 bytes), whatever the size of the image set."""

    def __init__(self, max_images: int, mean: Any, std: Any, rng: np.random.Generator, side: int = THUMB) -> None:
        self.layers = []
        self.max_images = max_images
        self.side = side
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.sampler = FeatureSample([], max_images, 1 << 62, rng)
        self.thumbs: np.ndarray | None = None
        self.digests = np.zeros(max_images, dtype=np.uint64)
        self.indices = np.full(max_images, -1, dtype=np.int64)

    @property
    def seen(self) -> int:
        return self.sampler.seen

    def update(self, batch, acts, logits):
        import torch

        n = int(batch.inputs.shape[0])
        rows, slots = self.sampler.take(batch.indices.numpy())
        self.sampler.seen += n
        if not len(rows):
            return
        x = batch.inputs[torch.as_tensor(rows).to(batch.inputs.device)].detach().float().cpu()
        c = x.shape[1]
        # back to the 8-bit pixels the image set decoded (normalize divided them by 255, then took mean and std)
        pix = (x * torch.from_numpy(self.std).view(1, c, 1, 1) + torch.from_numpy(self.mean).view(1, c, 1, 1))
        pix8 = (pix * 255.0).round().clamp(0, 255).to(torch.uint8)
        thumbs = thumbnails(pix8.float() / 255.0, self.side)
        if self.thumbs is None:
            self.thumbs = np.zeros((self.max_images, thumbs.shape[1]), dtype=np.float32)
        self.thumbs[slots] = thumbs
        arr = pix8.numpy()
        self.digests[slots] = [int.from_bytes(hashlib.blake2b(a.tobytes(), digest_size=8).digest(), "little")
                               for a in arr]
        self.indices[slots] = batch.indices.numpy()[rows]

    def merge(self, other: "ThumbnailSample") -> None:
        """Add the sample of ``other`` (another share of the same stream): exactly the sample of one stream of both."""
        self.sampler.seen += other.sampler.seen
        if other.thumbs is None:
            return
        m = other.sampler.filled
        rows, slots = self.sampler.take(other.indices[:m])
        if self.thumbs is None:
            self.thumbs = np.zeros((self.max_images, other.thumbs.shape[1]), dtype=np.float32)
        self.thumbs[slots] = other.thumbs[:m][rows]
        self.digests[slots] = other.digests[:m][rows]
        self.indices[slots] = other.indices[:m][rows]

    def kept(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(thumbnails (M, D), digests (M,), image indices (M,)) of the kept images, sorted by image index."""
        m = self.sampler.filled
        if self.thumbs is None:
            return np.zeros((0, 0), dtype=np.float32), self.digests[:0], self.indices[:0]
        order = np.argsort(self.indices[:m], kind="stable")
        return self.thumbs[:m][order], self.digests[:m][order], self.indices[:m][order]


@dataclass
class DataQualityParams:
    max_images: int = field(default=2000, metadata=doc(
        "Check at most this many images for near-duplicates (a seeded uniform sample kept during the one pass; "
        "memory grows with it, 16 x 16 numbers per channel and image, not with the image set; all pairs are "
        "compared). Label errors are checked on every labelled image.", min=2, max=50000))
    min_psnr: float = field(default=MIN_PSNR, metadata=doc(
        "Two images are near-duplicates when the peak signal-to-noise ratio of their 16 x 16 thumbnails (pixel "
        "values in [0, 1]) is at least this many dB (30 dB: a root-mean-square difference of 0.032, the low end of "
        "lossy 8-bit compression's usual range).", min=10.0, max=100.0))
    show: int = field(default=12, metadata=doc("Likely label errors shown as pictures (lowest self-confidence "
                                               "first); the table lists up to 200.", min=0, max=100))
    show_pairs: int = field(default=12, metadata=doc("Near-duplicate pairs shown side by side (pairs with two "
                                                     "different labels first); the table lists up to 200.",
                                                     min=0, max=100))


TABLE_ROWS = 200  # rows of the tables under the pictures


def as_rgb(img: np.ndarray) -> np.ndarray:
    """A display copy uint8 (H, W, C) -> floats (H, W, 3) in [0, 1]."""
    arr = img.astype(np.float64) / 255.0
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def side_by_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two (H, W, 3) pictures of one size next to each other, a white gap between them."""
    gap = np.ones((a.shape[0], max(2, a.shape[1] // 16), 3))
    return np.concatenate([a, gap, b], axis=1)


@register
class DataQuality(Analysis):
    name = "data-quality"
    task_reason = "its label-error check compares each image's one class label with the softmax of its class scores"
    title = "Label errors and near-duplicates"
    section = "data"
    summary = ("likely label errors (confident learning on the predicted probabilities) and near-duplicate images "
               "(16x16 thumbnails, PSNR >= 30 dB), shown as pictures")
    paper = "Northcutt, Jiang & Chuang, Confident Learning: Estimating Uncertainty in Dataset Labels, JAIR 2021"
    paper_url = "https://arxiv.org/abs/1911.00068"
    order = 10
    Params = DataQualityParams

    def reducers(self, ctx, params):
        spec = ctx.images.spec
        return {"thumbs": ThumbnailSample(params.max_images, spec.mean, spec.std, ctx.rng("data-quality"))}

    def run(self, ctx, params, reduced, upstream=NOTHING):
        result = Result()
        pictures, tables = [], []
        issues = self.label_errors(ctx, params, pictures, tables, result)
        dups = self.duplicates(ctx, params, reduced["thumbs"], pictures, tables, result)
        result.items = pictures + tables + result.items
        result.shared["label issues"] = issues
        result.shared["duplicates"] = dups
        return result

    # --- likely label errors ----------------------------------------------------------------------------------------

    def label_errors(self, ctx, params, pictures: list, tables: list, result: Result) -> dict:
        pred = ctx.predictions
        names = list(ctx.class_names)
        logits = np.asarray(pred.logits, dtype=np.float64)
        labels = np.asarray(pred.labels)
        keep = (labels >= 0) & np.isfinite(logits).all(axis=1)
        if not (labels >= 0).any():
            why = "the image set has no labels"
        elif not keep.any():
            why = "the logits of every labelled image are NaN or infinite"
        else:
            why = ""
        if why:
            result.notes.append(f"Label errors are not checked: {why}.")
            return {"why": why}
        probs = softmax(logits[keep])
        given = labels[keep]
        index = pred.indices[keep]
        found = confident_learning(probs, given)
        predicted = probs.argmax(axis=1)
        m, flagged = len(given), found.flagged
        accuracy = float((predicted == given).mean())
        result.metrics.update({"labelled images checked": m, "likely label errors": int(len(flagged)),
                               "likely label errors, share": float(len(flagged) / m)})
        if (~keep & (labels >= 0)).any():
            result.notes.append(f"{int((~keep & (labels >= 0)).sum())} labelled images have NaN or infinite logits: "
                                "they are not checked for label errors.")

        def describe(r: int) -> tuple[str, str, str]:
            g, s, p = int(given[r]), int(found.suspected[r]), int(predicted[r])
            return names[g], names[s], names[p]

        keys = []
        for rank, r in enumerate(flagged[: params.show]):
            i = int(index[r])
            g, s, p = describe(r)
            key = f"label-error-{rank:02d}"
            keys.append(key)
            pictures.append(Picture(
                key=key, array=as_rgb(ctx.images.display(i)), style="rgb", group="Likely label errors",
                label=f"#{rank + 1} {ctx.images.names[i]}",
                caption=f"given '{g}' (p={probs[r, given[r]]:.2f}), predicted '{p}' (p={probs[r, predicted[r]]:.2f})"
                        + (f", suspected '{s}' (p={probs[r, found.suspected[r]]:.2f})" if s != p else "")))
        if len(flagged):
            tables.append(Table(
                key="label-errors", label="Every likely label error",
                caption=f"The {len(flagged)} of the {m} labelled images that confident learning counts off the "
                        "diagonal of the confident joint (their given label is confidently contradicted), lowest "
                        "self-confidence p(given) first"
                        + (f"; the first {TABLE_ROWS}" if len(flagged) > TABLE_ROWS else "") + ".",
                columns=["image", "given", "p(given)", "suspected", "p(suspected)", "predicted"],
                rows=[[ctx.images.names[int(index[r])], describe(r)[0], float(probs[r, given[r]]), describe(r)[1],
                       float(probs[r, found.suspected[r]]), describe(r)[2]] for r in flagged[:TABLE_ROWS]]))
        else:
            result.notes.append(f"Confident learning flags none of the {m} labelled images: no given label is "
                                "confidently contradicted by the model's predicted probabilities.")
        off = found.joint.copy()
        np.fill_diagonal(off, 0)
        cells = np.argsort(-off, axis=None, kind="stable")[: int((off > 0).sum())][:TABLE_ROWS]
        if len(cells):
            k = len(names)
            rows_given = found.joint.sum(axis=1)
            uncounted = int((found.suspected < 0).sum())
            tables.append(Table(
                key="confident-joint", label="Where the suspected errors lie",
                caption="The cells off the diagonal of the confident joint, largest first: images with the given "
                        "label that confidently belong to another class (their most probable class among those "
                        "whose probability reaches the class's threshold t_j, the mean p_j of the images labelled "
                        f"j). {int(np.trace(found.joint))} images are counted on the diagonal"
                        + (f"; {uncounted} reach no class's threshold and are not counted" if uncounted else "")
                        + ".",
                columns=["given", "confidently", "images", "share of the given label's counted images"],
                rows=[[names[int(c // k)], names[int(c % k)], int(off.flat[c]),
                       float(off.flat[c] / rows_given[int(c // k)])] for c in cells]))
        top = [{"image": ctx.images.names[int(index[r])], "given": describe(r)[0], "suspected": describe(r)[1],
                "self-confidence": float(probs[r, given[r]])} for r in flagged[:5]]
        return {"checked": m, "flagged": int(len(flagged)), "share": float(len(flagged) / m), "accuracy": accuracy,
                "top": top, "keys": keys}

    # --- near-duplicates --------------------------------------------------------------------------------------------

    def duplicates(self, ctx, params, sample: ThumbnailSample, pictures: list, tables: list, result: Result) -> dict:
        thumbs, digests, index = sample.kept()
        n = len(index)
        if n < 2:
            result.notes.append(f"Near-duplicates are not checked: only {n} image was seen.")
            return {"why": f"only {n} image was seen"}
        pairs, rms = near_duplicates(thumbs, params.min_psnr)
        names = list(ctx.class_names)
        labels = ctx.images.labels
        img = index[pairs] if len(pairs) else np.zeros((0, 2), dtype=np.int64)
        la, lb = labels[img[:, 0]], labels[img[:, 1]]
        different = (la >= 0) & (lb >= 0) & (la != lb)
        identical = digests[pairs[:, 0]] == digests[pairs[:, 1]] if len(pairs) else np.zeros(0, dtype=bool)
        groups = duplicate_groups(pairs, n)
        in_groups = sum(len(g) for g in groups)
        extra = in_groups - len(groups)
        checked = (f"all {n} images" if sample.seen <= sample.max_images else
                   f"a seeded uniform sample of {n} of the {sample.seen} images (max_images)")
        result.metrics.update({"images checked for duplicates": n, "near-duplicate pairs": int(len(pairs)),
                               "images with a near-duplicate": in_groups,
                               "pairs with different labels": int(different.sum())})

        def lab(c: int) -> str:
            return f"'{names[c]}'" if c >= 0 else "no label"

        # pairs with two labels first: one of the two labels is wrong for what is the same picture
        order = np.lexsort((np.arange(len(pairs)), ~different))
        for rank, p in enumerate(order[: params.show_pairs]):
            a, b = int(img[p, 0]), int(img[p, 1])
            pictures.append(Picture(
                key=f"pair-{rank:02d}", style="rgb", group="Near-duplicate pairs",
                array=side_by_side(as_rgb(ctx.images.display(a)), as_rgb(ctx.images.display(b))),
                label=f"{ctx.images.names[a]} | {ctx.images.names[b]}",
                caption=("identical inputs" if identical[p] else f"thumbnail PSNR {psnr(rms[p]):.1f} dB")
                + f"; labels {lab(int(la[p]))} and {lab(int(lb[p]))}"
                + (" (two different labels)" if different[p] else "")))
        if len(pairs):
            tables.append(Table(
                key="duplicate-pairs", label="Every near-duplicate pair",
                caption=f"Pairs of images whose {THUMB}x{THUMB} thumbnails have a PSNR of at least "
                        f"{params.min_psnr:g} dB, among {checked}; pairs with two different labels first, then "
                        "the nearest" + (f"; the first {TABLE_ROWS}" if len(pairs) > TABLE_ROWS else "") + ".",
                columns=["image a", "image b", "label a", "label b", "RMS difference", "PSNR (dB)", "identical"],
                rows=[[ctx.images.names[int(img[p, 0])], ctx.images.names[int(img[p, 1])],
                       names[int(la[p])] if la[p] >= 0 else "?", names[int(lb[p])] if lb[p] >= 0 else "?",
                       float(rms[p]), "inf" if rms[p] == 0 else float(psnr(rms[p])), "yes" if identical[p] else "no"]
                      for p in order[:TABLE_ROWS]]))
        else:
            result.notes.append(f"No two of the {n} images checked are near-duplicates: no pair of {THUMB}x{THUMB} "
                                f"thumbnails reaches {params.min_psnr:g} dB.")
        result.notes.append(f"Near-duplicates are searched among {checked}: every pair is compared.")
        examples = [{"a": ctx.images.names[int(img[p, 0])], "b": ctx.images.names[int(img[p, 1])],
                     "label a": names[int(la[p])] if la[p] >= 0 else None,
                     "label b": names[int(lb[p])] if lb[p] >= 0 else None, "identical": bool(identical[p])}
                    for p in order[:3]]
        return {"checked": n, "seen": int(sample.seen), "pairs": int(len(pairs)), "identical": int(identical.sum()),
                "different labels": int(different.sum()), "groups": len(groups), "images": in_groups,
                "extra copies": extra, "min psnr": float(params.min_psnr), "examples": examples}
