"""What analyses return, and the writer that turns it into files and a manifest.

Analyses return a `Result`: pictures, grids, plots and tables as arrays and numbers, never files or HTML. The build
hands each item to `reportgen.imaging`, which writes PNGs through an `ArtifactWriter`; the writer refuses a second
write to the same path and records the sha256 of every file for ``manifest.json``. Templates lay out the manifest.

Every item may carry tags that decide on which pages it also appears: ``layer`` (dotted name) -> that layer's page,
``image`` (index into the image set) -> that image's page; ``group`` is a sub-heading within a section.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np


@dataclass
class Item:
    key: str
    caption: str = ""
    label: str = ""  # a short title shown above or under the figure
    layer: Optional[str] = None
    image: Optional[int] = None
    group: Optional[str] = None
    # supporting detail (one table per sample image, say): the page folds a group made only of such items under its
    # heading, so that it leads with its summary figures
    detail: bool = False


@dataclass
class Picture(Item):
    """One image. ``array`` (H, W), (H, W, 1) or (H, W, 3).

    styles: "rgb" (values in [0, 1]), "signed" (diverging map, zero = white, symmetric limit ``vmax`` or max |x|),
    "heat" (non-negative, one sequential colour map up to ``vmax`` or the map's max; drawn over ``base`` (H, W, 3)
    in [0, 1] when given). ``colorbar`` adds a colour bar in a second small file.
    """

    array: Any = None
    style: str = "rgb"
    vmax: Optional[float] = None
    base: Any = None
    colorbar: bool = False


@dataclass
class Grid(Item):
    """Many small images as one picture: ``tiles`` (n, h, w) or (n, h, w, 3) in ``cols`` columns, one shared style
    and scale (styles as in `Picture`; "signed" uses ``vmax`` or the max |x| over all tiles)."""

    tiles: Any = None
    style: str = "signed"
    cols: int = 8
    vmax: Optional[float] = None
    per_tile_scale: bool = False
    # what tells the tiles apart, drawn in the picture: one per row (left: a layer), per column (above: a head), or
    # per tile (above it: a channel)
    row_labels: Optional[list] = None
    col_labels: Optional[list] = None
    tile_labels: Optional[list] = None


@dataclass
class Plot(Item):
    """A chart drawn by the plot kind ``kind`` registered in `reportgen.imaging` from ``data``."""

    kind: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Table(Item):
    """Rows of plain values (str, int, float); ``images`` optionally holds, per row, a list of `Picture`s shown in
    an extra last column (e.g. the nearest neighbours of a reference image)."""

    columns: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    images: Optional[list] = None


@dataclass
class Result:
    """What an analysis returns: items to show, key numbers (also compared across checkpoints) and notes.

    ``shared``: values that other analyses of the same build read (an attribution method's raw maps, for the trust
    checks); never written to the site. The build hands them, with the tables, metrics and notes, to the analyses
    that declare they read this one (`reportgen.analyses.Analysis.reads`, `reportgen.analyses.Upstream`)."""

    items: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    shared: dict = field(default_factory=dict)


class NotApplicable(Exception):
    """Raised by an analysis that does not apply to this model or data; the message says why (shown on the page)."""


def slug(text: str, max_len: int = 60) -> str:
    """A file-name-safe slug of a layer name, class name or key (ASCII letters, digits, '-', '_', '.')."""
    text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"
    if len(text) > max_len:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        text = text[: max_len - 9] + "-" + digest
    return text


class DuplicateArtifact(RuntimeError):
    """Two items were written to the same output path: a bug in an analysis's keys."""


class ArtifactWriter:
    """Writes files below ``root``, once each, and remembers their sha256 for the manifest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hashes: dict[str, str] = {}

    def write_bytes(self, rel: str, data: bytes) -> str:
        if rel in self.hashes:
            raise DuplicateArtifact(f"'{rel}' was written twice")
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.hashes[rel] = hashlib.sha256(data).hexdigest()
        return rel

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """Numbers from numpy/torch as plain Python values for JSON."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        return value.tolist()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value
