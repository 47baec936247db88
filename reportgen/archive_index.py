"""The archive's top index: numbers and pictures of every snapshot side by side, read from their manifests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from . import imaging
from .artifacts import ArtifactWriter, Plot, to_jsonable
from .errors import ReportgenError
from .manifest import GENERATOR, MANIFEST, SCHEMA, AnalysisEntry, Manifest
from .site import copy_static, make_env, rerender

AGAIN = "build the archive again with `reportgen archive`"

# (title, analysis name, how many items per snapshot, which items): pictures already in each snapshot shown in one
# row per checkpoint. "image" picks items tagged with a sample image (the same images in every snapshot, since the
# sample pick depends only on the seed and the image set, never on the predictions: `reportgen.build.pick_samples`);
# "first" the first items of the analysis.
STRIPS = [
    ("Hidden units of the perceptron", "perceptron", 1, "first"),
    ("First-layer filters", "filters", 1, "first"),
    ("Grad-CAM on fixed images", "grad-cam", 6, "image"),
    ("Class-maximizing images", "class-max", 10, "first"),
]


def _ok_entry(manifest: Manifest, name: str) -> AnalysisEntry:
    """The snapshot's entry of analysis ``name`` when it ran; an empty one when it did not."""
    entry = manifest.entry(name)
    return entry if entry is not None and entry.status == "ok" else AnalysisEntry(name, "", "")


def strip_rows(snapshots: list[dict], analysis: str, count: int, mode: str) -> list[dict]:
    rows = []
    for snap in snapshots:
        entry = _ok_entry(snap["manifest"], analysis)
        items = [i for i in entry.items if i.get("file") and i.get("type") != "table"]
        if mode == "image":
            items = [i for i in items if i.get("image") is not None]
        items = items[:count]
        if items:
            prefix = f"snapshots/{snap['label']}/"
            rows.append({"label": snap["label"], "items": [
                {"file": prefix + (i.get("animation") or i["file"]), "thumb": prefix + i.get("thumb", i["file"]),
                 "alt": f"{snap['label']}: {i.get('alt', '')}", "caption": i.get("label") or i.get("caption", "")}
                for i in items]})
    return rows


def knn_series(snapshots: list[dict]) -> tuple[list[str], dict[str, list]]:
    """Per-layer k-NN accuracy of each snapshot from the embeddings analysis metrics ("k-NN <layer>")."""
    layers: list[str] = []
    series = {}
    for snap in snapshots:
        metrics = _ok_entry(snap["manifest"], "embeddings").metrics
        values = {k[len("k-NN "):]: v for k, v in metrics.items() if k.startswith("k-NN ")}
        for layer in values:
            if layer not in layers:
                layers.append(layer)
        if values:
            series[snap["label"]] = values
    return layers, {label: [vals.get(layer) for layer in layers] for label, vals in series.items()}


def render_archive(root: Path, snapshots: list[dict], seed: int) -> None:
    """Write the archive index (index.html, charts, manifest.json) into ``root`` beside ``snapshots/``; ``seed``: the
    build seed. Each of ``snapshots``: ``label``, ``step``, ``checkpoint`` (file name), ``path`` (its index page)
    and its ``manifest``."""
    writer = ArtifactWriter(root)
    rows = []
    for snap in snapshots:
        pred = _ok_entry(snap["manifest"], "predictions").metrics
        rows.append({"label": snap["label"], "step": snap["step"], "checkpoint": snap["checkpoint"],
                     "path": snap["path"], "accuracy": pred.get("accuracy"), "loss": pred.get("loss"),
                     "build_seconds": snap["manifest"].build_seconds})
    charts = []
    steps = [r["step"] if r["step"] is not None else i for i, r in enumerate(rows)]
    if any(r["accuracy"] is not None for r in rows):
        charts.append(imaging.render_item(Plot(
            key="accuracy", kind="lines", label="Accuracy and loss per checkpoint",
            caption="Accuracy and mean cross-entropy loss on the image set (same axis), per checkpoint.",
            data={"x": steps, "series": {"accuracy": [r["accuracy"] for r in rows],
                                         "loss": [r["loss"] for r in rows]},
                  "xlabel": "epoch / step", "ylabel": "value", "marker": True}), writer, "img/archive"))
    layers, series = knn_series(snapshots)
    if series:
        charts.append(imaging.render_item(Plot(
            key="knn", kind="lines", label="Class separation per layer",
            caption="Held-out 5-nearest-neighbour accuracy in each layer's feature space, one line per checkpoint: "
                    "how well the classes separate as the input moves through the network.",
            data={"x": list(range(len(layers))), "xticklabels": layers, "series": series, "ylabel": "k-NN accuracy",
                  "marker": True, "ylim": [0, 1.02]}), writer, "img/archive"))
    strips = []
    for title, analysis, count, mode in STRIPS:
        strip = strip_rows(snapshots, analysis, count, mode)
        if strip:
            strips.append({"title": title, "analysis": analysis, "rows": strip})
    first = snapshots[0]["manifest"] if snapshots else None
    manifest = to_jsonable({
        "generator": GENERATOR, "kind": "archive", "version": first.version if first else None,
        "model": first.model.get("spec") if first else None, "images": first.images.get("source") if first else None,
        "config": first.config if first else None, "seed": seed,
        "snapshots": [{k: v for k, v in r.items()} | {"fingerprint": (s["manifest"].snapshot or {}).get(
            "fingerprint")} for r, s in zip(rows, snapshots)],
    })
    env = make_env()

    def url(target: str) -> str:
        return target

    html = env.get_template("archive.html").render(rows=rows, charts=charts, strips=strips, manifest=manifest,
                                                   url=url)
    writer.write_text("index.html", html)
    copy_static(writer)
    # every file of the archive, the snapshots' included, so a rebuild can tell them from files a user dropped in
    files = dict(writer.hashes)
    for path in sorted((root / "snapshots").rglob("*")) if (root / "snapshots").is_dir() else []:
        if path.is_file():
            files[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["files"] = dict(sorted(files.items()))
    writer.write_text(MANIFEST, json.dumps(manifest, indent=1))


def rerender_archive(root: Path) -> list[str]:
    """Render an archive's pages again from the manifests alone (after a template change, as `reportgen.site.rerender`
    does for one report): every snapshot's pages, then the index (page, charts, manifest.json with the new files'
    hashes) from the archive's manifest.json and the snapshots' manifests. Returns the pages written, relative to
    ``root``. An archive or snapshot this reportgen cannot read is one `ReportgenError` that says to rebuild it."""
    try:
        data = json.loads((root / MANIFEST).read_text())
        rows = [(str(r["label"]), r.get("step"), str(r["checkpoint"]), r.get("path")) for r in data["snapshots"]]
        seed = int(data["seed"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportgenError(f"the archive's {root / MANIFEST} is incomplete or damaged ({type(exc).__name__}): "
                             f"{AGAIN}") from None
    pages, snapshots = [], []
    for label, step, checkpoint, path in rows:
        folder = root / "snapshots" / label
        manifest = _snapshot_manifest(folder, label)
        pages += [f"snapshots/{label}/{page}" for page in rerender(folder)]
        snapshots.append({"label": label, "step": step, "checkpoint": checkpoint,
                          "path": path or f"snapshots/{label}/index.html", "manifest": manifest})
    render_archive(root, snapshots, seed)
    return [*pages, "index.html"]


def _snapshot_manifest(folder: Path, label: str) -> Manifest:
    """The manifest of snapshot ``label``; a `ReportgenError` saying why it cannot be rendered, with the archive's
    own remedy (a snapshot is rebuilt by `reportgen archive`, not `reportgen build`)."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportgenError(f"snapshot '{label}' has no readable {path} ({type(exc).__name__}): {AGAIN}") from None
    schema = data.get("schema", 1) if isinstance(data, dict) else None
    if schema != SCHEMA:
        raise ReportgenError(f"snapshot '{label}' is a report of schema {schema} (reportgen "
                             f"{data.get('version', '?') if isinstance(data, dict) else '?'}); this reportgen renders "
                             f"schema {SCHEMA}: {AGAIN}")
    try:
        return Manifest.from_json(data, str(path))
    except ReportgenError:
        raise ReportgenError(f"snapshot '{label}': {path} is incomplete or damaged: {AGAIN}") from None
