"""Reference models trained offline on CPU, shipped with their weights, so that ``reportgen build`` never trains.

    >>> from models_zoo import get
    >>> entry = get("shapes-cnn")
    >>> model = entry.load_pretrained()             # eval mode
    >>> data = entry.load_dataset("test")           # uint8 (N, 64, 64, 3), labels, masks
    >>> logits = model(entry.preprocess(data.inputs[:8]))

Four classifiers (``task`` "classify"): ``mlp2d-disk`` (points in a disk, with its training history),
``lenet-digits`` (scikit-learn's digits at 28x28), ``shapes-cnn`` and ``shapes-resnet`` (generated shapes with
ground-truth masks). Six models of other tasks (issue 30), on generated multi-object scenes (`scenes`: 1 to 4 shapes
per image) unless said otherwise: ``shapes-multilabel`` (which of the 8 classes are present), ``shapes-segment``
(background + 8 classes per pixel), ``shapes-detect`` (a box, class and score per shape), ``shapes-count`` (how many
shapes of each class), ``shapes-binary`` (does the scene hold a triangle?) and ``shapes-embed`` (32-d embeddings of
the single-shape images). Their truths are in `ZooData.truth`; `export_dataset` writes them as label files.
Retrain them all with ``python -m models_zoo train-all``; measured numbers are in ``models_zoo/RESULTS.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import datasets, scenes, shapes

if TYPE_CHECKING:
    import torch
    from torch import nn

# nets and training import torch: they are imported inside functions, so that importing the zoo (`reportgen zoo
# list`, the config checks) loads no torch.

__all__ = ["ZooData", "TrainReport", "ZooEntry", "ZOO", "DEFAULT_MODEL", "get", "export_dataset", "WEIGHTS_DIR"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


# normalization of the shapes data sets, from their train split: python -m models_zoo stats shapes-cnn
SHAPES_MEAN = (0.5017, 0.5002, 0.4955)
SHAPES_STD = (0.2791, 0.2771, 0.2780)


@dataclass(frozen=True)
class ZooData:
    """One split of an entry's data set.

    inputs: images uint8 (N, H, W, C) at the model's input size (C = 1 or 3); points float32 (N, 2).
    labels: int64 (N,), filled for every entry: indices into the entry's ``class_names`` (classify), 0/1 (binary:
        the answer, index into its two class names), the shape class (embed: for retrieval, not an output); for
        the other tasks on multi-object scenes, the class of the shape with the most visible pixels.
    masks: bool (N, H, W) ground-truth object masks (shapes and scenes: True on any shape), else None.
    truth: the task's truths, None for classify, binary and embed; keys by ``ZooEntry.task``:
        multilabel: "labels" uint8 (N, K) 0/1, K = len(class_names);
        regress: "values" float32 (N, D), D = len(class_names) (one name per output);
        segment: "class_masks" uint8 (N, H, W), pixel = class index into class_names (0 = background; 255 would be
            "ignore", never used by the zoo's scenes);
        detect: "boxes" list of N float32 (j, 4) xyxy in input pixels (pixel (r, c) covers [c, c+1) x [r, r+1),
            tight around each shape's visible pixels) and "box_labels" list of N int64 (j,), class indices into
            class_names (no background id).
    """

    inputs: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    truth: dict | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TrainReport:
    """What `ZooEntry.train` returns. ``history`` (extra) holds the MLP's kept snapshots, else [].

    For a task entry, ``test_accuracy`` is the task's headline number (`task_training.HEADLINE`: mAP, mean R^2,
    accuracy, mIoU, mAP@0.5, recall@1) and ``metrics`` all its numbers on the test split; {} for classifiers.
    """

    model: "nn.Module"
    test_accuracy: float
    seconds: float
    checkpoints: list[Path]
    history: list[tuple[int, dict[str, "torch.Tensor"]]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """How an entry trains (see `training.train_entry`). For the MLP an epoch is ``iterations_per_epoch`` steps."""

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0
    flips: bool = False  # random horizontal flips: every zoo image class is mirror-invariant as a class
    iterations_per_epoch: int = 0  # > 0: full-batch Adam (the MLP) instead of minibatch AdamW + one-cycle
    # A zoo entry whose shipped weights initialize every parameter of the same name and shape (task models only):
    # shapes-cnn's features already tell the 8 shapes apart, so its heads of other tasks train in a few epochs.
    init: str = ""


def _net(factory: str) -> Callable[[], "nn.Module"]:
    def build() -> "nn.Module":
        from . import nets

        return getattr(nets, factory)()

    build.__name__ = factory
    return build


@dataclass(frozen=True)
class ZooEntry:
    """A reference model: its architecture, its data set, its normalization and its shipped weights.

    Images are normalized as ``(x / 255 - mean) / std`` per channel; points are used as they are (mean 0, std 1).

    ``task`` and the model's output (eval mode) for (N, 3, 64, 64) inputs, and what ``class_names`` names:
    classify: logits (N, K), the classes. binary: one logit (N, 1); class_names the two answers, index 1 = the
    logit's positive side ("no triangle", "triangle"). multilabel: logits (N, 8), independent sigmoids; the 8
    shape classes. regress: (N, 8) real outputs (the number of shapes of each class); the 8 shape classes.
    segment: logits (N, 9, 64, 64); ("background", the 8 shape classes). detect: torchvision's detection output, a
    list of N dicts {'boxes' float32 (j, 4) xyxy in input pixels, 'labels' int64 (j,), 'scores' float32 (j,)},
    whose labels are class indices into class_names, the 8 shape classes (0 = disk: no background id, unlike
    torchvision's detectors). embed: unit-norm embeddings (N, 32); class_names the 8 shape classes of the labels.
    """

    name: str
    summary: str
    kind: str  # "image" or "points"
    input_size: tuple[int, int] | None
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    builder: Callable[[], "nn.Module"] = field(repr=False, compare=False)
    loader: Callable[..., tuple] = field(repr=False, compare=False)
    recipe: Recipe = field(repr=False, compare=False)
    task: str = "classify"

    def build_model(self) -> "nn.Module":
        """A fresh, untrained model (random init from torch's global generator), in train mode."""
        return self.builder()

    def load_dataset(self, split: str = "test", seed: int = 0, n: int | None = None) -> ZooData:
        """The ``split`` ("train" | "test") of this entry's data set; deterministic for ``seed``.

        ``n`` (extra) draws a smaller set: the first ``n`` samples for digits, ``n`` fresh samples from the same
        seed for the generated sets (not a prefix of the full split, but disjoint from the other split all the same).
        """
        # Task loaders return the truths as a fourth item.
        return ZooData(*self.loader(split, seed, n))

    def preprocess(self, inputs: np.ndarray) -> "torch.Tensor":
        """Raw inputs as the model takes them: uint8 (N, H, W, C) -> normalized float32 (N, C, H, W); points as is."""
        import torch

        if self.kind == "points":
            return torch.as_tensor(np.asarray(inputs, dtype=np.float32))
        x = torch.from_numpy(np.ascontiguousarray(inputs)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()

    def weights_path(self) -> Path:
        """The shipped weights: ``models_zoo/weights/{name}.safetensors``."""
        return WEIGHTS_DIR / f"{self.name}.safetensors"

    def history_path(self) -> Path | None:
        """The shipped training snapshots (mlp2d-disk only), else None."""
        return WEIGHTS_DIR / f"{self.name}-history.safetensors" if self.recipe.iterations_per_epoch else None

    def load_pretrained(self) -> "nn.Module":
        """`build_model` with the shipped weights loaded, in eval mode."""
        from safetensors.torch import load_file

        path = self.weights_path()
        if not path.is_file():
            raise FileNotFoundError(f"no shipped weights for '{self.name}' at {path}: run `python -m models_zoo train-all`")
        model = self.build_model()
        model.load_state_dict(load_file(str(path)))
        return model.eval()

    def train(
        self,
        out_dir: Path | None = None,
        *,
        seed: int = 0,
        epochs: int | None = None,
        max_train: int | None = None,
        log: Callable[[str], None] = lambda s: None,
    ) -> TrainReport:
        """Train from scratch on CPU, seeded; a checkpoint after every epoch in ``out_dir`` (None: none written).

        Checkpoints are ``out_dir / f"{name}-epoch{e:03d}.safetensors"`` with safetensors metadata
        ``{"zoo": name, "epoch": str(e), "test_accuracy": f"{acc:.4f}"}``. ``seed`` drives the initialization,
        shuffling and flips; the data are always the seed-0 splits that `load_dataset` returns. ``max_train`` trains
        on a subset (for fast tests); ``epochs`` None uses the recipe's; for mlp2d-disk one epoch is 1,000 full-batch
        Adam iterations, and ``TrainReport.history`` keeps the log-spaced snapshots.
        """
        if self.task != "classify":
            from .task_training import train_task

            return TrainReport(**train_task(self, out_dir, seed=seed, epochs=epochs, max_train=max_train, log=log))
        from .training import train_entry

        return TrainReport(**train_entry(self, out_dir, seed=seed, epochs=epochs, max_train=max_train, log=log))

    def history(self) -> list[tuple[int, dict[str, "torch.Tensor"]]]:
        """The shipped parameter snapshots ``[(iteration, state_dict), ...]`` ascending (mlp2d-disk), else []."""
        path = self.history_path()
        if path is None:
            return []
        from safetensors.torch import load_file

        flat = load_file(str(path))
        snapshots: dict[int, dict[str, "torch.Tensor"]] = {}
        for key, tensor in flat.items():
            it, param = key.split(".", 1)
            snapshots.setdefault(int(it), {})[param] = tensor
        return sorted(snapshots.items())


def _shapes_entry(name: str, what: str, net: str, recipe: Recipe) -> ZooEntry:
    """An entry on the generated 64x64 shapes data (8 classes, with object masks)."""
    return ZooEntry(
        name=name,
        summary=f"{what} on 64x64 generated shapes (8 classes, with masks)",
        kind="image",
        input_size=(shapes.SIZE, shapes.SIZE),
        channels=3,
        mean=SHAPES_MEAN,
        std=SHAPES_STD,
        class_names=shapes.CLASS_NAMES,
        builder=_net(net),
        loader=datasets.shapes_data,
        recipe=recipe,
    )


def _scenes_entry(name: str, task: str, what: str, net: str, class_names: tuple[str, ...], recipe: Recipe) -> ZooEntry:
    """A task entry on the generated multi-object scenes (`scenes`), normalized like the single shapes."""
    return ZooEntry(
        name=name,
        summary=f"{what} on 64x64 generated scenes of 1 to 4 shapes (8 classes)",
        kind="image",
        input_size=(scenes.SIZE, scenes.SIZE),
        channels=3,
        mean=SHAPES_MEAN,
        std=SHAPES_STD,
        class_names=class_names,
        builder=_net(net),
        loader=partial(datasets.scenes_data, task),
        recipe=recipe,
        task=task,
    )


def _registry() -> dict[str, ZooEntry]:
    entries = [
        ZooEntry(
            name="mlp2d-disk",
            summary="2-20-2 ReLU MLP: is a point of [-1.5, 1.5]^2 inside the disk of radius 1.2? (with training history)",
            kind="points",
            input_size=None,
            channels=2,
            mean=(0.0, 0.0),
            std=(1.0, 1.0),
            class_names=("outside", "inside"),
            builder=_net("MLP2d"),
            loader=datasets.disk_points,
            recipe=Recipe(epochs=10, lr=0.01, iterations_per_epoch=1000),
        ),
        ZooEntry(
            name="lenet-digits",
            summary="LeNet-style CNN on scikit-learn's 8x8 digits upsampled to 28x28 greyscale",
            kind="image",
            input_size=(28, 28),
            channels=1,
            # Measured on the seed-0 train split (python -m models_zoo stats lenet-digits).
            mean=(0.3052,),
            std=(0.3246,),
            class_names=tuple(str(d) for d in range(10)),
            builder=_net("lenet"),
            loader=datasets.digits,
            recipe=Recipe(epochs=20, lr=3e-3, batch_size=32, weight_decay=1e-4),
        ),
        _shapes_entry("shapes-cnn", "VGG-style CNN + global average pooling", "ShapesCNN",
                      Recipe(epochs=10, lr=2e-3, batch_size=32, weight_decay=1e-4, flips=True)),
        _shapes_entry("shapes-resnet", "small ResNet (torchvision BasicBlocks)", "ShapesResNet",
                      Recipe(epochs=10, lr=3e-3, batch_size=64, weight_decay=1e-4, flips=True)),
        _scenes_entry("shapes-multilabel", "multilabel", "multi-label CNN (which classes are present)", "ShapesCNN",
                      shapes.CLASS_NAMES,
                      Recipe(epochs=2, lr=2e-3, batch_size=64, weight_decay=1e-4, flips=True, init="shapes-cnn")),
        _scenes_entry("shapes-segment", "segment", "U-Net-style segmenter (background + 8 classes)", "ShapesSegNet",
                      ("background",) + shapes.CLASS_NAMES,
                      Recipe(epochs=4, lr=5e-3, batch_size=64, weight_decay=1e-4, flips=True)),
        _scenes_entry("shapes-detect", "detect", "CenterNet-style detector (boxes, classes, scores)", "ShapesCenterNet",
                      shapes.CLASS_NAMES, Recipe(epochs=6, lr=3e-3, batch_size=64, weight_decay=1e-4, flips=True)),
        _scenes_entry("shapes-count", "regress", "counting CNN (shapes of each class)", "ShapesCounter",
                      shapes.CLASS_NAMES,
                      Recipe(epochs=3, lr=3e-3, batch_size=64, weight_decay=1e-4, flips=True, init="shapes-cnn")),
        _scenes_entry("shapes-binary", "binary", "binary CNN (does the scene hold a triangle?)", "shapes_binary",
                      datasets.BINARY_NAMES,
                      Recipe(epochs=2, lr=2e-3, batch_size=64, weight_decay=1e-4, flips=True, init="shapes-cnn")),
        ZooEntry(
            name="shapes-embed",
            summary="CNN embedding (32-d, unit norm, supervised contrastive) of the 64x64 single-shape images",
            kind="image",
            input_size=(shapes.SIZE, shapes.SIZE),
            channels=3,
            mean=SHAPES_MEAN,
            std=SHAPES_STD,
            class_names=shapes.CLASS_NAMES,
            builder=_net("ShapesEmbedNet"),
            loader=datasets.shapes_data,
            recipe=Recipe(epochs=2, lr=2e-3, batch_size=128, weight_decay=1e-4, flips=True, init="shapes-cnn"),
            task="embed",
        ),
    ]
    return {entry.name: entry for entry in entries}


ZOO: dict[str, ZooEntry] = _registry()
DEFAULT_MODEL = "shapes-cnn"


def get(name: str) -> ZooEntry:
    """The entry called ``name``; a KeyError listing the known names otherwise."""
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model '{name}': known models are {', '.join(ZOO)}") from None


# where `export_dataset` writes the labels of a task whose images hold several objects (beside out_dir/images)
LABEL_FILES = {"multilabel": "labels.csv", "regress": "labels.csv", "segment": "labels", "detect": "boxes.json"}


def export_dataset(name: str, out_dir: Path, split: str = "test", limit: int | None = None) -> int:
    """Write the first ``limit`` samples of a split of an image entry's data set, with its task's label files.

    classify, binary, embed: an ImageFolder, ``out_dir/<class name>/<index:05d>.png``.
    multilabel, regress, segment, detect (multi-object scenes, no class per image): the images in
    ``out_dir/images/<index:05d>.png``, and beside them (paths relative to ``images/``, i.e. the image names that
    ``--images out_dir/images`` lists):
        multilabel, regress: ``out_dir/labels.csv``, header ``image,<class_names...>``, a row per image: its path
            and its values (0/1 for multilabel; the counts as floats, ``1.0``, for regress);
        segment: ``out_dir/labels/<index:05d>.png``, greyscale ("L") PNGs, pixel = class index into class_names
            (0 = background);
        detect: ``out_dir/boxes.json``, COCO style: {"images": [{"id": index, "file_name", "width", "height"}],
            "annotations": [{"id" (1, 2, ...), "image_id", "bbox": [x, y, w, h] in pixels, "category_id",
            "area": w * h, "iscrowd": 0}], "categories": [{"id", "name"}]}, category ids 1..K in class_names
            order (category_id = box label + 1).
    PNGs are greyscale ("L") or RGB at the model's input size; ``index`` is the sample's index in the split.
    Returns the number of images written. Raises ValueError when ``out_dir`` exists and is not empty, or when the
    entry's data are points rather than images.
    """
    from PIL import Image

    entry = get(name)
    if entry.kind != "image":
        raise ValueError(f"zoo model '{name}' has {entry.kind} data, not images: nothing to export")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"refusing to export into '{out_dir}': it exists and is not an empty folder")
    data = entry.load_dataset(split)
    count = len(data) if limit is None else min(max(limit, 0), len(data))
    if entry.task in LABEL_FILES:
        _export_scenes(entry, data, out_dir, count)
        return count
    for cls in sorted(set(data.labels[:count].tolist())):
        (out_dir / entry.class_names[cls]).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = data.inputs[i]
        # A 2-D uint8 array becomes an "L" image, (H, W, 3) an "RGB" one.
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(out_dir / entry.class_names[int(data.labels[i])] / f"{i:05d}.png")
    return count


def _export_scenes(entry: ZooEntry, data: ZooData, out_dir: Path, count: int) -> None:
    """`export_dataset`'s images/ folder and label files for the scene tasks."""
    import csv
    import json

    from PIL import Image

    (out_dir / "images").mkdir(parents=True)
    labels = out_dir / LABEL_FILES[entry.task]
    names = [f"{i:05d}.png" for i in range(count)]
    for i, file in enumerate(names):
        Image.fromarray(data.inputs[i]).save(out_dir / "images" / file)
    if entry.task in ("multilabel", "regress"):
        values = data.truth["labels"] if entry.task == "multilabel" else data.truth["values"]
        with open(labels, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", *entry.class_names])
            for file, row in zip(names, values[:count]):
                writer.writerow([file, *(int(v) if entry.task == "multilabel" else float(v) for v in row)])
    elif entry.task == "segment":
        labels.mkdir()
        for i, file in enumerate(names):
            Image.fromarray(data.truth["class_masks"][i]).save(labels / file)
    else:  # detect
        height, width = entry.input_size
        images, annotations = [], []
        for i, file in enumerate(names):
            images.append({"id": i, "file_name": file, "width": width, "height": height})
            for box, label in zip(data.truth["boxes"][i].tolist(), data.truth["box_labels"][i].tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append({"id": len(annotations) + 1, "image_id": i, "bbox": [box[0], box[1], w, h],
                                    "category_id": label + 1, "area": w * h, "iscrowd": 0})
        categories = [{"id": k + 1, "name": n} for k, n in enumerate(entry.class_names)]
        labels.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
