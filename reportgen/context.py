"""The build context: everything an analysis may use, passed explicitly (no hidden globals)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .config import BuildConfig
from .console import Output
from .data import ImageSet
from .models import LoadedModel
from .plan import ModelFacts


@dataclass
class Predictions:
    """What the one pass of the image set through the model always yields, for every readable image (M of them),
    per task (`reportgen.tasks`; docs/tasks.md).

    ``indices`` (M,) int64 positions in the image set. ``logits`` (M, K) float32, the task's per-image scores:
    classify / multilabel the logits; binary the one logit (M, 1); regress the outputs (M, D); embed the embeddings
    (M, D); segment each class's mean logit over the image's pixels (M, K); detect each class's highest detection
    score in the image, 0 where none (M, K). ``labels``: classify, binary, segment, detect, embed (M,) int64, the
    image's class (class folders or the zoo), -1 unknown; multilabel (M, K) int8, 1 / 0 / -1 unknown; regress
    (M, D) float32, NaN unknown. ``task``: the model's task. ``detections`` (detect, else None): M dicts {'boxes'
    float32 (j, 4) xyxy in input pixels, 'labels' int64 (j,) class indices into the class names, 'scores' float32
    (j,)}, at most 100 per image, highest scores first. ``truth_boxes`` (detect with given boxes, else None): M
    entries, each {'boxes' float32 (j, 4) xyxy in input pixels, 'labels' int64 (j,)} or None for an image without
    labels (left unscored). ``seg_confusion`` (segment with label masks, else None): int64 (K, K) pixel counts, rows
    = true class, columns = predicted class (the argmax), label 255 left out, summed during the pass.
    ``seg_pixels`` (segment, else None): int64 (M, K) pixels predicted as each class per image.
    """

    indices: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    task: str = "classify"
    detections: Optional[list] = None
    truth_boxes: Optional[list] = None
    seg_confusion: Optional[np.ndarray] = None
    seg_pixels: Optional[np.ndarray] = None

    @property
    def probs(self) -> np.ndarray:
        """classify: softmax (M, K); binary: (M, 2) [1 - p, p] with p the sigmoid of the logit; multilabel: the
        sigmoids (M, K). Other tasks have no class probabilities (ValueError)."""
        if self.task == "classify":
            z = self.logits - self.logits.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        if self.task == "binary":
            p = _sigmoid(self.logits[:, :1])
            return np.concatenate([1.0 - p, p], axis=1)
        if self.task == "multilabel":
            return _sigmoid(self.logits)
        raise ValueError(f"no class probabilities for task {self.task}")

    @property
    def preds(self) -> np.ndarray:
        """classify: the top class (M,); binary: (M,) 1 where the logit is > 0 (p > 0.5), else 0; multilabel:
        (M, K) int64 1 where a label's logit is > 0 (p > 0.5). Other tasks: ValueError."""
        if self.task == "classify":
            return self.logits.argmax(axis=1)
        if self.task == "binary":
            return (self.logits[:, 0] > 0).astype(np.int64)
        if self.task == "multilabel":
            return (self.logits > 0).astype(np.int64)
        raise ValueError(f"no class probabilities for task {self.task}")

    def row(self, image_index: int) -> int:
        """The row of image ``image_index`` in these arrays."""
        pos = int(np.searchsorted(self.indices, image_index))
        if pos >= len(self.indices) or self.indices[pos] != image_index:
            raise KeyError(image_index)
        return pos


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # the two branches keep exp's argument <= 0: no overflow for large logits of either sign
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


@dataclass
class Context:
    """Shared by every analysis of one build; read-only once the build has settled the plan after the one pass
    (`freeze`): analyses hand each other values through their results (`reportgen.build.Plan.upstream`), never
    through the context.

    ``model`` is in eval mode on ``device``; ``facts`` is what the plan learned about it (layer table, CAM layers,
    non-linearities...); ``layers`` are the selected dotted layer names; ``predictions`` holds the logits of the one
    pass (None before it); ``samples`` are the seeded pick of image indices for per-image analyses; ``output``
    takes messages and progress bars; ``group`` is the process group of a distributed build; ``splitting`` says
    that the analysis this context was handed to shares its chunks between the ranks (`running`, `map_chunks`).
    """

    config: BuildConfig
    loaded: LoadedModel
    images: ImageSet
    device: Any
    facts: ModelFacts
    predictions: Optional[Predictions] = None
    samples: list[int] = field(default_factory=list)
    output: Output = field(default_factory=lambda: Output(silent=True))
    class_folders: Optional[list[str]] = None  # an image folder's class sub-folders (they may name the classes)
    group: Any = None  # the process group of a distributed build (`reportgen.distributed.Group`); see `map_chunks`
    splitting: bool = False  # the running analysis shares its chunks between the ranks (`Analysis.splits`)
    frozen: bool = False  # read-only (`freeze`)

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("frozen"):
            raise AttributeError(f"the build context is read-only after the pass: cannot set '{name}' (an analysis "
                                 "hands values to another through its result: `Analysis.reads`)")
        super().__setattr__(name, value)

    def freeze(self) -> None:
        """Make this context read-only (the build calls it once the plan is settled after the one pass)."""
        self.frozen = True

    def running(self, analysis: Any) -> "Context":
        """The context handed to ``analysis``: this one, marked as ``splitting`` when the analysis deals its
        chunks to the ranks of a distributed build (`Analysis.splits`); a copy, so this one stays as it is."""
        return dataclasses.replace(self, splitting=bool(getattr(analysis, "splits", False)))

    @property
    def layers(self) -> list[str]:
        return self.facts.selected

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def class_names(self) -> list[str]:
        return self.loaded.class_names

    @property
    def task(self) -> str:
        """The model's task (`reportgen.tasks.TASKS`), decided by the plan's probe (`reportgen.models.check_output`)."""
        return self.loaded.task or "classify"

    @property
    def is_image_model(self) -> bool:
        return self.loaded.input.kind == "image"

    def _sub_seed(self, name: str) -> int:
        # a seed per analysis, so adding or skipping one analysis does not change the others' random draws
        digest = hashlib.sha256(f"{self.config.seed}:{name}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF

    def generator(self, name: str) -> Any:
        """A torch.Generator (on the CPU) seeded by the build seed and ``name``."""
        import torch

        return torch.Generator().manual_seed(self._sub_seed(name))

    def rng(self, name: str) -> np.random.Generator:
        """A numpy Generator seeded by the build seed and ``name``."""
        return np.random.default_rng(self._sub_seed(name))

    def sample_inputs(self) -> Any:
        """The sample images as normalized inputs (S, C, H, W) on the device."""
        return self.images.load_inputs(self.samples, self.device)

    def sample_display(self) -> np.ndarray:
        """The sample images' display copies as floats (S, H, W, 3) in [0, 1]."""
        arr = np.stack([self.images.display(i) for i in self.samples]).astype(np.float64) / 255.0
        return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr

    def batch_size(self, grad: bool) -> int:
        """Images per forward pass: ``config.batch_size``, or fewer where one batch's activations would exceed
        ``config.memory`` GiB (at least 1). ``grad``: the pass keeps activations for a backward pass (about 1.5x the
        leaf outputs' bytes per image, `reportgen.plan.activation_bytes`); without it a forward pass holds a few
        layers at a time (0.25x is taken, with margin over the 0.10 measured on resnet50)."""
        per_image = self.facts.image_bytes * (1.5 if grad else 0.25)
        if per_image <= 0:
            return self.config.batch_size
        return max(1, min(self.config.batch_size, int(self.config.memory * 2**30 // per_image)))

    def iterate(self, iterable: Any, length: int, label: str) -> Any:
        return self.output.progress(iterable, length=length, label=label)

    def map_chunks(self, fn: Any, chunks: list, label: str) -> list:
        """``[fn(chunk) for chunk in chunks]``, in order, with a progress bar: the per-item work of an analysis.

        In a distributed build, and while an analysis that `splits` runs, chunk k is computed by rank k mod N and
        every rank receives every result (`reportgen.distributed.Group.map_chunks`); an error in ``fn`` is raised
        on every rank. So that the numbers are the same bits for any number of processes, the chunks must be those
        one process computes (the same items batched together), ``fn`` must return CPU values (they travel between
        processes), and each chunk must draw its random numbers from its own generator (e.g.
        ``ctx.generator(f"{name}/{first item}")``), never from one shared by the chunks."""
        chunks = list(chunks)
        if self.group is None or not self.splitting:
            return [fn(c) for c in self.iterate(chunks, length=len(chunks), label=label)]
        return self.group.map_chunks(fn, chunks, label, lambda it, n: self.iterate(it, length=n, label=label))
