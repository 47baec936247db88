"""Labels per task (issue 30 item 4): ``--labels`` read into a `reportgen.tasks.Truth` aligned with the image set.

A CSV for multilabel and regress models, a folder of label masks for segment, a COCO JSON for detect (docs/tasks.md);
each mistake is one `DataError` line. Apart from `reportgen.tasks` (which says what a model is for) because the
readers use the image set's own helpers (`reportgen.data`), which read `reportgen.tasks.Truth`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .data import BadImage, folder_masks, mask_key, oriented_size
from .errors import DataError, did_you_mean
from .tasks import Truth


LABELS_HELP = {
    "multilabel": "a CSV with header image,<label names...> and a row per image: its relative path, then 0, 1 or "
                  "empty (unknown)",
    "regress": "a CSV with header image,<output names...> and a row per image: its relative path, then numbers or "
               "empty (unknown)",
    "segment": "a folder of label masks at the images' relative paths (greyscale or palette PNG, pixel = class "
               "index, 255 = ignore)",
    "detect": "a COCO JSON {images: [{id, file_name, width, height}], annotations: [{id, image_id, bbox: [x, y, w, "
              "h], category_id, iscrowd}], categories: [{id, name}]}",
}


def read_labels(path: str, task: str, image_set: Any, names: list[str], every: Optional[list[str]] = None) -> Truth:
    """The labels in ``path`` (``--labels``) for a model of ``task`` whose class / output names are ``names``,
    aligned with ``image_set``'s images (docs/tasks.md). ``every``: the names of every image of the set before a
    --max-images pick (a row or an entry for an image left out is not a mistake). Each mistake is one `DataError`
    line (missing file, a file of the wrong kind, an unknown column or category name, a row or entry that names
    no image, a bad value, a mask or image size that is not its image's); images without labels are listed in
    ``Truth.unlabelled`` (the build warns)."""
    p = Path(path)
    if task not in LABELS_HELP:
        raise DataError(f"--labels is for multilabel, regress, segment and detect models, and this model's task is "
                        f"{task}: its labels are the image folder's class sub-folders; drop --labels")
    if not p.exists():
        raise DataError(f"labels '{path}' do not exist: give {LABELS_HELP[task]}")
    if task == "segment":
        return _read_masks(p, image_set)
    if task == "detect":
        return _read_coco(p, image_set, names, every)
    return _read_csv(p, task, image_set, names, every)


def _keys(names: list[str]) -> dict[str, int]:

    return {mask_key(n): i for i, n in enumerate(names)}


def _read_csv(path: Path, task: str, image_set: Any, names: list[str], every: Optional[list[str]]) -> Truth:

    if path.is_dir() or path.suffix.lower() != ".csv":
        raise DataError(f"labels '{path}' is not a .csv file: a {task} model's labels are {LABELS_HELP[task]}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"labels '{path}' cannot be read as CSV ({exc}): give {LABELS_HELP[task]}") from None
    if not rows or not rows[0] or rows[0][0].strip().lower() != "image":
        raise DataError(f"labels '{path}': the first column's header must be 'image': give {LABELS_HELP[task]}")
    header = [h.strip() for h in rows[0][1:]]
    lookup = {n: j for j, n in enumerate(names)}
    for h in header:
        if h not in lookup:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise DataError(f"labels '{path}': column '{h}' is not one of the model's "
                            f"{'labels' if task == 'multilabel' else 'outputs'}{did_you_mean(h, names)} ({shown}): "
                            "name the columns as --class-names (or the model) names them")
    columns = [lookup[h] for h in header]
    here, known = _keys(image_set.names), set(_keys(every or image_set.names))
    n, k = len(image_set.names), len(names)
    table = np.full((n, k), -1 if task == "multilabel" else np.nan, dtype=np.int8 if task == "multilabel"
                    else np.float32)
    seen = np.zeros(n, dtype=bool)
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        key = mask_key(row[0].strip())
        if key not in known:
            raise DataError(f"labels '{path}' line {line}: image '{row[0]}' is not in the image set: give each image's "
                            "path relative to the --images folder")
        if len(row) - 1 != len(header):
            raise DataError(f"labels '{path}' line {line}: {len(row) - 1} values for {len(header)} columns")
        i = here.get(key)
        if i is None:
            continue  # an image the --max-images pick left out
        if seen[i]:
            raise DataError(f"labels '{path}' line {line}: a second row for image '{row[0]}': keep one row per image")
        seen[i] = True
        for col, value in zip(columns, row[1:]):
            value = value.strip()
            if not value:
                continue
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if task == "multilabel":
                if number not in (0.0, 1.0):
                    raise DataError(f"labels '{path}' line {line}: value '{value}' for '{names[col]}' is not 0, 1 "
                                    "or empty (unknown)")
                table[i, col] = int(number)
            else:
                if not np.isfinite(number):
                    raise DataError(f"labels '{path}' line {line}: value '{value}' for '{names[col]}' is not a "
                                    "finite number (leave the cell empty when it is unknown)")
                table[i, col] = number
    unlabelled = [image_set.names[i] for i in np.flatnonzero(~seen)]
    truth = Truth(str(path), unlabelled=unlabelled)
    if task == "multilabel":
        truth.labels = table
    else:
        truth.values = table
    return truth


def _read_masks(path: Path, image_set: Any) -> Truth:

    masks = folder_masks(path, image_set.names, image_set.spec)
    masks.classes = True
    masks.check_sizes(image_set.files)
    return Truth(str(path), masks=masks, unlabelled=[n for n, _ in masks.problems])


def fit_box(box: np.ndarray, image_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Boxes (j, 4) xyxy in the pixels of an image of ``image_size`` (width, height) moved to the model's input
    ``size`` (H, W) exactly as the image is (`reportgen.data.fit_image`: PIL's ``ImageOps.fit``, centre crop of
    the output's aspect ratio, then resize), clipped to the input."""
    w0, h0 = image_size
    h, w = size
    if w0 / h0 == w / h:
        crop_w, crop_h = float(w0), float(h0)
    elif w0 / h0 >= w / h:
        crop_w, crop_h = w / h * h0, float(h0)
    else:
        crop_w, crop_h = float(w0), w0 / (w / h)
    left, top = (w0 - crop_w) * 0.5, (h0 - crop_h) * 0.5
    out = np.asarray(box, dtype=np.float64).reshape(-1, 4).copy()
    out[:, [0, 2]] = np.clip((out[:, [0, 2]] - left) * (w / crop_w), 0, w)
    out[:, [1, 3]] = np.clip((out[:, [1, 3]] - top) * (h / crop_h), 0, h)
    return out.astype(np.float32)


def _read_coco(path: Path, image_set: Any, names: list[str], every: Optional[list[str]]) -> Truth:

    if path.is_dir() or path.suffix.lower() != ".json":
        raise DataError(f"labels '{path}' is not a .json file: a detect model's labels are {LABELS_HELP['detect']}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"labels '{path}' is not valid JSON ({exc}): give {LABELS_HELP['detect']}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("images", "categories")):
        raise DataError(f"labels '{path}' has no 'images' and 'categories' lists: give {LABELS_HELP['detect']}")
    lookup = {n: j for j, n in enumerate(names)}
    category: dict = {}
    for c in data["categories"]:
        name = str(c.get("name")) if isinstance(c, dict) else None
        if name not in lookup:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise DataError(f"labels '{path}': category '{name}' is not one of the model's classes"
                            f"{did_you_mean(str(name), names)} ({shown}): name the categories as the model's "
                            "classes (--class-names)")
        category[c.get("id")] = lookup[name]
    here, known = _keys(image_set.names), set(_keys(every or image_set.names))
    by_id: dict = {}
    n = len(image_set.names)
    boxes: list = [None] * n
    labels: list = [None] * n
    size = tuple(image_set.spec.size)
    for entry in data["images"]:
        file = str(entry.get("file_name", "")) if isinstance(entry, dict) else ""
        key = mask_key(file)
        if key not in known:
            raise DataError(f"labels '{path}': image '{file}' is not in the image set: give each file_name as the "
                            "image's path relative to the --images folder")
        i = here.get(key)
        if i is None:
            continue  # an image the --max-images pick left out
        if boxes[i] is not None:
            raise DataError(f"labels '{path}': image '{file}' is listed twice in 'images'")
        stated = (entry.get("width"), entry.get("height"))
        real = None
        if image_set.files is not None:
            try:
                real = oriented_size(image_set.files[i])
            except BadImage:
                real = None
        if real is not None and all(isinstance(v, int) for v in stated) and tuple(stated) != real:
            raise DataError(f"labels '{path}': image '{file}' is {stated[0]}x{stated[1]} in the JSON but "
                            f"{real[0]}x{real[1]} px on disk: give each image's width and height as its file's")
        if real is None and not all(isinstance(v, (int, float)) and v > 0 for v in stated):
            raise DataError(f"labels '{path}': image '{file}' has no positive width and height")
        by_id[entry.get("id")] = (i, real or (float(stated[0]), float(stated[1])))
        boxes[i], labels[i] = [], []
    listed = {e.get("id") for e in data["images"] if isinstance(e, dict)}
    for a in data.get("annotations", []) or []:
        if not isinstance(a, dict) or a.get("image_id") not in by_id:
            if isinstance(a, dict) and a.get("image_id") in listed:
                continue  # its image was left out by the --max-images pick
            raise DataError(f"labels '{path}': annotation {a.get('id') if isinstance(a, dict) else a!r} names "
                            f"image_id {a.get('image_id') if isinstance(a, dict) else None!r}, which is not in "
                            "'images'")
        if a.get("category_id") not in category:
            raise DataError(f"labels '{path}': annotation {a.get('id')} has category_id {a.get('category_id')!r}, "
                            "which is not in 'categories'")
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
                and bbox[2] >= 0 and bbox[3] >= 0):
            raise DataError(f"labels '{path}': annotation {a.get('id')} has bbox {bbox!r}: give [x, y, width, "
                            "height] in pixels, width and height >= 0")
        if a.get("iscrowd"):
            continue  # a crowd region is not one object (COCO's evaluation ignores it too)
        i, image_size = by_id[a["image_id"]]
        x, y, bw, bh = (float(v) for v in bbox)
        box = fit_box(np.array([[x, y, x + bw, y + bh]]), image_size, size)[0]
        if box[2] > box[0] and box[3] > box[1]:  # a box the centre crop cut away entirely is left out
            boxes[i].append(box)
            labels[i].append(category[a["category_id"]])
    unlabelled = [image_set.names[i] for i in range(n) if boxes[i] is None]
    return Truth(str(path), boxes=[None if b is None else np.asarray(b, np.float32).reshape(-1, 4) for b in boxes],
                 box_labels=[None if b is None else np.asarray(b, np.int64) for b in labels], unlabelled=unlabelled)
