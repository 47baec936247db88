"""The data of the pages' interactive views, written once per site as ``data/NAME.js``.

An analysis whose page can be explored puts a description in ``Result.shared["interactive"]`` (plain numbers and
strings, and for the embeddings an array of thumbnails: `tile_browser`, `add_grid`, `point_thumbs` help to make
them); the build hands it to `write_data` when it writes the
analysis's items, and the page loads the file with ``<script src>`` (a browser refuses fetch() and XHR of JSON from
file://, a script it runs). Each file assigns one entry of the global ``REPORTGEN_DATA``, which
``static/interactive.js`` reads; nothing is computed there or in the templates, the script only lays out what the
file says. The pages stay complete without JavaScript: the figures are the analyses' PNGs as before.

Kinds of data:

- ``"embedding"``: ``classes`` (K names), ``points`` {``index``, ``name``, ``label`` (-1 unknown), ``pred``} (M
  each), ``layers`` [{``key``, ``views`` {title: (M, 2) coordinates}, ``knn``}], ``thumbs`` uint8 (M, h, w, 3) or
  None. The thumbnails are written as one sprite sheet, ``data/NAME-thumbs.png`` (`reportgen.imaging`), in
  ``cols`` columns without separators; the file says ``{"file", "tile": [h, w], "cols"}``.
- ``"tiles"``: ``axes`` (what tells the browsed units apart: image, layer, head, channel), ``grids`` [{``item``:
  a Grid item's key, ``rows``, ``cols``}] and ``tiles`` [[grid, row, col, span, value per axis...]]. The file gives
  each grid its PNG (``file``, ``width``, ``height``) and where its tiles lie: ``origin`` [x, y] of the first,
  ``pitch`` [dy, dx] to the next row and column, ``tile`` [h, w] (the grid item's own ``tiles`` where
  `reportgen.imaging` labelled it; else separators of ``PAD`` px, as `reportgen.imaging.tile_grid` draws them).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .artifacts import ArtifactWriter, slug, to_jsonable

PAD = 1  # the separator between the tiles of a grid, in pixels (`reportgen.imaging.tile_grid`'s default)
GLOBAL = "REPORTGEN_DATA"


def tile_browser(axes: list[str]) -> dict:
    """An empty ``"tiles"`` description for an analysis's ``Result.shared["interactive"]``: ``axes`` names what
    tells the browsed units apart (e.g. image, layer, channel); `add_grid` adds each grid item and its units."""
    return {"kind": "tiles", "axes": list(axes), "grids": [], "tiles": []}


def add_grid(browse: dict, key: str, n: int, cols: int, values: list, span: int = 1) -> None:
    """Add the Grid item ``key`` of ``n`` tiles in ``cols`` columns (reading order, as `reportgen.imaging` lays them
    out) to ``browse``; ``values``: per browsed unit, a tuple of its value on each axis, or None for a unit not to
    browse (a grey tile). A unit is one tile, or with ``span`` > 1 a run of ``span`` tiles of one row."""
    g = len(browse["grids"])
    browse["grids"].append({"item": key, "rows": -(-n // cols), "cols": cols})
    for k, vals in enumerate(values):
        if vals is None:
            continue
        r, c = divmod(k * span, cols)
        browse["tiles"].append([g, r, c, span, *[str(v) for v in vals]])


def point_thumbs(ctx: Any, indices: Any, side: int = 32) -> Any:
    """The display copies of images ``indices`` (M,) shrunk to at most ``side`` pixels (box filter: the mean of the
    pixels each covers; never enlarged):
    uint8 (M, h, w, 3), one size for all (the model's input size); None where the inputs are not images (2-D
    points)."""
    from PIL import Image

    thumbs = []
    for i in indices:
        img = np.asarray(ctx.images.display(int(i)))
        if img.ndim != 3:
            return None
        img = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]
        h, w = img.shape[:2]
        scale = min(1.0, side / max(h, w))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BOX))
        thumbs.append(img)
    return np.stack(thumbs) if thumbs else None


def data_path(name: str) -> str:
    """The site path of analysis ``name``'s data file."""
    return f"data/{slug(name)}.js"


def _rounded(value: Any, digits: int = 5) -> Any:
    """Floats to ``digits`` significant digits (the coordinates of a scatter need no more), recursively."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return value


def write_data(writer: ArtifactWriter, name: str, data: dict, items: list[dict]) -> str:
    """Write analysis ``name``'s interactive ``data`` (module docstring) as ``data/NAME.js``; ``items``: the
    analysis's manifest items (as `reportgen.imaging.render_item` returned them), whose files the data points to.
    Returns the file's site path."""
    from . import imaging

    data = dict(data)
    if data.get("kind") == "embedding":
        thumbs = data.pop("thumbs", None)
        if thumbs is not None and len(thumbs):
            thumbs = np.asarray(thumbs, dtype=np.uint8)
            cols = int(np.ceil(np.sqrt(len(thumbs))))
            sheet = imaging.tile_grid(thumbs.astype(np.float64), cols, pad=0)
            rel = writer.write_bytes(f"data/{slug(name)}-thumbs.png", imaging.png_bytes(sheet.astype(np.uint8)))
            data["sprite"] = {"file": rel, "tile": [int(thumbs.shape[1]), int(thumbs.shape[2])], "cols": cols}
    elif data.get("kind") == "tiles":
        by_key = {it["key"]: it for it in items}
        grids = []
        for g in data["grids"]:
            it = by_key[g["item"]]
            w, h, rows, cols = int(it["width"]), int(it["height"]), int(g["rows"]), int(g["cols"])
            if it.get("tiles"):  # a labelled grid says where its tiles lie
                at = it["tiles"]
                origin, pitch, size = list(at["origin"]), list(at["pitch"]), list(at["size"])
            else:  # a bare grid: tiles from the top left corner, PAD pixels apart
                size = [(h - (rows - 1) * PAD) // rows, (w - (cols - 1) * PAD) // cols]
                origin, pitch = [0, 0], [size[0] + PAD, size[1] + PAD]
            grids.append({**g, "file": it["file"], "width": w, "height": h, "origin": origin, "pitch": pitch,
                          "tile": size})
        data["grids"] = grids
    payload = json.dumps(_rounded(to_jsonable(data)), separators=(",", ":"), allow_nan=False)
    # "</" cannot end a script element here (names and classes are data)
    payload = payload.replace("</", "<\\/")
    text = (f"// {name}: the data of its page's interactive view, written by reportgen (see reportgen/interactive.py)\n"
            f"(window.{GLOBAL} = window.{GLOBAL} || {{}})[{json.dumps(name)}] = {payload};\n")
    return writer.write_text(data_path(name), text)
