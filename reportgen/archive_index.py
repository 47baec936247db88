"""The archive's top index: numbers and pictures of every snapshot side by side, read from their manifests."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import imaging
from .imaging import plot_kind
from .artifacts import ArtifactWriter, Grid, Picture, Plot, to_jsonable
from .errors import ReportgenError
from .manifest import GENERATOR, MANIFEST, SCHEMA, SEVERITIES, AnalysisEntry, Manifest
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


def checkpoint_name(snap: dict) -> str:
    """A checkpoint as the page names it: "epoch 3" (its unit as its metadata or file name gives it), "3", or
    its label."""
    step, unit = snap.get("step"), snap.get("unit")
    if step is None:
        return str(snap["label"])
    return f"{unit} {step}" if unit else str(step)


def render_archive(root: Path, snapshots: list[dict], seed: int, distances: Optional[list] = None,
                   pictures: Optional[dict] = None) -> None:
    """Write the archive index (index.html, charts, manifest.json) into ``root`` beside ``snapshots/``; ``seed``: the
    build seed. Each of ``snapshots``: ``label``, ``step``, ``unit`` (what step counts: "epoch", "step", or None),
    ``checkpoint`` (file name), ``path`` (its index page) and its ``manifest``. ``distances``: per snapshot, each
    weight matrix's distance from the first checkpoint (`reportgen.archive.weight_distances`); ``pictures``: {image
    index: uint8 (H, W, C)} of the images the forgetting section shows (the most forgotten)."""
    writer = ArtifactWriter(root)
    rows = []
    seen: dict[str, str] = {}
    for snap in snapshots:
        manifest = snap["manifest"]
        pred = _ok_entry(manifest, "predictions").metrics
        weights = manifest.model.get("state_dict_sha256") or (manifest.snapshot or {}).get("checkpoint_sha256")
        rows.append({"label": snap["label"], "step": snap["step"], "unit": snap.get("unit"),
                     "name": checkpoint_name(snap), "checkpoint": snap["checkpoint"],
                     "path": snap["path"], "accuracy": pred.get("accuracy"), "loss": pred.get("loss"),
                     "metrics": dict((manifest.snapshot or {}).get("metrics") or {}),
                     "weights_sha256": weights, "same_as": seen.get(weights) if weights else None,
                     "build_seconds": manifest.build_seconds})
        if weights:
            seen.setdefault(weights, snap["label"])
    names = {r["label"]: r["name"] for r in rows}
    metric_names = []
    for r in rows:
        metric_names += [m for m in r["metrics"] if m not in metric_names]
    charts = []
    steps = [r["step"] if r["step"] is not None else i for i, r in enumerate(rows)]
    if any(r["accuracy"] is not None for r in rows):
        charts.append(imaging.render_item(Plot(
            key="accuracy", kind="lines", label="Accuracy and loss per checkpoint",
            caption="Accuracy and mean cross-entropy loss on the image set (same axis), per checkpoint"
                    + (", with the training metrics each snapshot was given." if metric_names else "."),
            data={"x": steps, "series": {"accuracy": [r["accuracy"] for r in rows],
                                         "loss": [r["loss"] for r in rows],
                                         **{m: [r["metrics"].get(m) for r in rows] for m in metric_names}},
                  "xlabel": _unit_axis(rows), "ylabel": "value", "marker": True}), writer, "img/archive"))
    layers, series = knn_series(snapshots)
    if series:
        charts.append(imaging.render_item(Plot(
            key="knn", kind="lines", label="Class separation per layer",
            caption="Held-out 5-nearest-neighbour accuracy in each layer's feature space, one line per checkpoint: "
                    "how well the classes separate as the input moves through the network.",
            data={"x": list(range(len(layers))), "xticklabels": layers,
                  "series": {names[k]: v for k, v in series.items()}, "ylabel": "k-NN accuracy",
                  "marker": True, "ylim": [0, 1.02]}), writer, "img/archive"))
    strips = []
    for title, analysis, count, mode in STRIPS:
        strip = strip_rows(snapshots, analysis, count, mode)
        if strip:
            strips.append({"title": title, "analysis": analysis, "rows": strip})
    dynamics = compare_snapshots(root, snapshots, distances)
    if distances is not None:
        dynamics["distances"] = distances
    pictures = pictures or {}
    if pictures:  # kept as they were read, so that `reportgen render` draws the same images without the image set
        writer.write_bytes(PICTURES, npz_bytes({str(i): a for i, a in sorted(pictures.items())}))
    sections = dynamics_sections(dynamics, names, writer, pictures, map_strips(root, dynamics))
    first = snapshots[0]["manifest"] if snapshots else None
    manifest = to_jsonable({
        "generator": GENERATOR, "kind": "archive", "version": first.version if first else None,
        "model": first.model.get("spec") if first else None, "images": first.images.get("source") if first else None,
        "config": first.config if first else None, "seed": seed,
        "snapshots": [{k: v for k, v in r.items()} | {"fingerprint": (s["manifest"].snapshot or {}).get(
            "fingerprint")} for r, s in zip(rows, snapshots)],
        "dynamics": dynamics,
    })
    env = make_env()

    def url(target: str) -> str:
        return target

    html = env.get_template("archive.html").render(rows=rows, charts=charts, strips=strips, manifest=manifest,
                                                   metric_names=metric_names, sections=sections,
                                                   findings=finding_rows(dynamics.get("findings", [])), names=names,
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


def finding_rows(findings: list[dict]) -> list[dict]:
    """The findings table's rows: each cell's numbers that are single numbers or words (lists of pairs, say, stay
    in the manifest and the snapshot's own page)."""
    def plain(v: Any) -> bool:
        return isinstance(v, (int, float, str)) and not isinstance(v, bool)

    return [{**f, "cells": [None if c is None else {**c, "numbers": {k: v for k, v in c["numbers"].items() if plain(v)}}
                            for c in f["cells"]]} for f in findings]


def _unit_axis(rows: list[dict]) -> str:
    units = {r["unit"] for r in rows if r["step"] is not None}
    return units.pop() if len(units) == 1 and None not in units else "epoch / step"


def rerender_archive(root: Path) -> list[str]:
    """Render an archive's pages again from the manifests alone (after a template change, as `reportgen.site.rerender`
    does for one report): every snapshot's pages, then the index (page, charts, manifest.json with the new files'
    hashes) from the archive's manifest.json and the snapshots' manifests. Returns the pages written, relative to
    ``root``. An archive or snapshot this reportgen cannot read is one `ReportgenError` that says to rebuild it."""
    try:
        data = json.loads((root / MANIFEST).read_text())
        rows = [(str(r["label"]), r.get("step"), r.get("unit"), str(r["checkpoint"]), r.get("path"))
                for r in data["snapshots"]]
        seed = int(data["seed"])
        distances = (data.get("dynamics") or {}).get("distances")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportgenError(f"the archive's {root / MANIFEST} is incomplete or damaged ({type(exc).__name__}): "
                             f"{AGAIN}") from None
    pages, snapshots = [], []
    for label, step, unit, checkpoint, path in rows:
        folder = root / "snapshots" / label
        manifest = _snapshot_manifest(folder, label)
        pages += [f"snapshots/{label}/{page}" for page in rerender(folder)]
        snapshots.append({"label": label, "step": step, "unit": unit, "checkpoint": checkpoint,
                          "path": path or f"snapshots/{label}/index.html", "manifest": manifest})
    render_archive(root, snapshots, seed, distances, read_pictures(root))
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


# ---------------------------------------------------------------------------------------------------------------
# Learning dynamics: what changed inside the network between checkpoints, from each snapshot's stored record
# (`reportgen.archive.record_dynamics`); numpy only, so `reportgen render` compares them again without torch.

DYNAMICS = "dynamics.npz"
# the layout of a snapshot's record (`reportgen.archive.record_dynamics`); a record of another layout is made again
RECORD_VERSION = 1


def has_record(folder: Path) -> bool:
    """Whether snapshot ``folder`` holds a comparisons record of this reportgen's layout (`RECORD_VERSION`)."""
    try:
        with np.load(folder / DYNAMICS, allow_pickle=False) as data:
            return "version" in data.files and int(data["version"]) == RECORD_VERSION
    except (OSError, ValueError):
        return False
MOST_FORGOTTEN = 12  # images shown in the most-forgotten strip


PICTURES = "img/archive/forgotten.npz"  # the most forgotten images' pixels, as the image set gave them


def npz_bytes(arrays: dict) -> bytes:
    """``arrays`` ({name: numpy array}, no object arrays) as the bytes of an .npz file that `np.load` reads with
    ``allow_pickle=False``, the same bytes for the same arrays (`np.savez` stamps each entry with the clock, which
    would make two builds of one archive differ)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            entry = io.BytesIO()
            np.lib.format.write_array(entry, np.asarray(array), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), entry.getvalue(),
                        compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def read_pictures(root: Path) -> dict:
    """{image index: uint8 (H, W, C)} kept by the last `render_archive` (`PICTURES`); {} when none."""
    path = root / PICTURES
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {int(k): data[k] for k in data.files}


def read_record(folder: Path) -> Optional[dict]:
    """A snapshot's comparisons record as {name: array}; None when it has none (an archive of an older reportgen)."""
    path = folder / DYNAMICS
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _finite(v: Any) -> Any:
    return float(v) if v is not None and np.isfinite(v) else None


def compare_snapshots(root: Path, snapshots: list[dict], distances: Optional[list] = None) -> dict:
    """The comparisons across ``snapshots`` (archive order) from their records in ``root/snapshots/<label>/``, as
    plain JSON values: ``cka`` (per layer, linear CKA of each checkpoint with the final one and with the previous
    one, on the fixed images of ``subset``), ``predictions`` (first-learned checkpoint and forgetting events per
    image, the most forgotten images, accuracy per class per checkpoint), ``weights`` (per weight matrix and
    checkpoint: norm, largest singular value, stable rank, and ``distances`` (from `reportgen.archive.weight_distances`)
    from the first checkpoint), ``dead`` (units of each ReLU never positive), ``findings`` (each finding's severity
    and numbers per checkpoint). A part no snapshot recorded is left out."""
    from .methods.dynamics import cka_from_grams, forgetting

    labels = [s["label"] for s in snapshots]
    records = [read_record(root / "snapshots" / s["label"]) for s in snapshots]
    have = [k for k, r in enumerate(records) if r is not None]
    out: dict[str, Any] = {"labels": labels, "recorded": [labels[k] for k in have]}
    if have:
        out.update(_cka(records, labels, have, cka_from_grams))
        out.update(_predictions(records, labels, have, forgetting))
        out.update(_weights(records, labels, have, distances))
        out.update(_maps(records, labels, have))
    findings = _findings(snapshots)
    if findings:
        out["findings"] = findings
    return out


def _cka(records: list, labels: list, have: list, cka_from_grams: Any) -> dict:
    # the layers and fixed images every recorded snapshot shares (one config and image set: all of them)
    ref = records[have[-1]]
    subset = ref["subset"]
    same = [k for k in have if np.array_equal(records[k]["subset"], subset)]
    layers = [str(x) for x in ref["layers"] if all(x in records[k]["layers"] for k in same)]
    if not layers or len(subset) < 2:
        return {}
    grams = {k: {str(n): records[k][f"gram-{j}"] for j, n in enumerate(records[k]["layers"])} for k in same}
    final, previous = [], []
    for layer in layers:
        final.append([_finite(cka_from_grams(grams[k][layer], grams[same[-1]][layer])) if k in grams else None
                      for k in range(len(labels))])
        previous.append([_finite(cka_from_grams(grams[k][layer], grams[k - 1][layer]))
                         if k in grams and k - 1 in grams else None for k in range(len(labels))])
    names = dict(zip(ref["indices"].tolist(), ref["names"].tolist()))
    return {"subset": {"indices": subset.tolist(), "names": [names.get(i, str(i)) for i in subset.tolist()]},
            "cka": {"layers": layers, "final": final, "previous": previous, "reference": labels[same[-1]]}}


def _predictions(records: list, labels: list, have: list, forgetting: Any) -> dict:
    # the images every recorded snapshot read, with a known label
    common = set(records[have[0]]["indices"].tolist())
    for k in have[1:]:
        common &= set(records[k]["indices"].tolist())
    ref = records[have[-1]]
    keep = np.array(sorted(i for i, lab in zip(ref["indices"].tolist(), ref["labels"].tolist())
                           if i in common and lab >= 0), dtype=np.int64)
    if not len(keep):
        return {}
    rows = []
    for k in have:
        pos = {i: j for j, i in enumerate(records[k]["indices"].tolist())}
        at = np.array([pos[i] for i in keep])
        rows.append(records[k]["predicted"][at] == records[k]["labels"][at])
    correct = np.stack(rows)
    first, events = forgetting(correct)
    pos = {i: j for j, i in enumerate(ref["indices"].tolist())}
    truth = np.array([ref["labels"][pos[i]] for i in keep])
    classes = [str(c) for c in ref["classes"]]
    by_class = [[_finite(correct[t][truth == c].mean()) if (truth == c).any() else None for t in range(len(have))]
                for c in range(len(classes))]
    order = sorted(range(len(keep)), key=lambda j: (-events[j], j))[:MOST_FORGOTTEN]
    recorded = [labels[k] for k in have]
    worst = [{"index": int(keep[j]), "name": str(ref["names"][pos[int(keep[j])]]), "label": classes[truth[j]],
              "events": int(events[j]), "first": recorded[first[j]] if first[j] >= 0 else None,
              "correct": [bool(c) for c in correct[:, j]]} for j in order if events[j] > 0]
    return {"predictions": {
        "images": int(len(keep)), "checkpoints": recorded,
        "first learned": [int((first == t).sum()) for t in range(len(have))],
        "never learned": int((first < 0).sum()), "never forgotten": int(((first >= 0) & (events == 0)).sum()),
        "events": [int((correct[t - 1] & ~correct[t]).sum()) if t else 0 for t in range(len(have))],
        "forgotten": int((events > 0).sum()), "most forgotten": worst,
        "classes": classes, "class accuracy": by_class}}


def _weights(records: list, labels: list, have: list, distances: Optional[list]) -> dict:
    out: dict[str, Any] = {}
    names = [str(n) for n in records[have[-1]]["weights"]]
    if names:
        stats = {}
        for k in have:
            row = {str(n): v for n, v in zip(records[k]["weights"], records[k]["spectrum"])}
            stats[k] = row
        table = {}
        for col, key in enumerate(("norm", "sigma max", "stable rank")):
            table[key] = [[_finite(stats[k][n][col]) if k in stats and n in stats[k] else None
                           for k in range(len(labels))] for n in names]
        if distances is not None and any(d is not None for d in distances):
            table["distance"] = [[_finite(d.get(n)) if d is not None and n in d else None for d in distances]
                                 for n in names]
        out["weights"] = {"names": [n[: -len(".weight")] if n.endswith(".weight") else n for n in names], **table}
    relus = [str(n) for n in records[have[-1]]["relus"]]
    if relus:
        dead = []
        for n in relus:
            row = []
            for k in range(len(labels)):
                r = records[k]
                at = [j for j, x in enumerate(r["relus"]) if str(x) == n] if r is not None else []
                row.append(float(r["dead"][at[0]][0] / r["dead"][at[0]][1]) if at and r["dead"][at[0]][1] else None)
            dead.append(row)
        out["dead"] = {"relus": relus, "fraction": dead}
    return out


def _maps(records: list, labels: list, have: list) -> dict:
    """Per attribution method and sample image: Spearman's rank correlation of its map at each checkpoint with its
    map at the previous one (None at the first, and where either checkpoint lacks the method)."""
    from .methods.dynamics import rank_correlation

    ref = records[have[-1]]
    if "methods" not in ref or not len(ref["methods"]):
        return {}
    samples = ref["samples"].tolist()
    names = dict(zip(ref["indices"].tolist(), ref["names"].tolist()))

    def maps_of(k: int, method: str) -> Any:
        r = records[k]
        if r is None or "methods" not in r or r["samples"].tolist() != samples:
            return None
        found = [j for j, m in enumerate(r["methods"]) if str(m) == method]
        return r[f"maps-{found[0]}"] if found else None

    methods = [str(m) for m in ref["methods"]]
    correlation = {}
    for method in methods:
        series = [maps_of(k, method) for k in range(len(labels))]
        correlation[method] = [[_finite(rank_correlation(series[k][j], series[k - 1][j]))
                                if k and series[k] is not None and series[k - 1] is not None else None
                                for k in range(len(labels))] for j in range(len(samples))]
    return {"maps": {"methods": methods, "images": samples, "names": [names.get(i, str(i)) for i in samples],
                     "targets": [str(ref["classes"][c]) for c in ref["targets"].tolist()],
                     "correlation": correlation}}


def map_strips(root: Path, dyn: dict) -> dict:
    """{method: (images, checkpoints, H, W) float32} of the maps the records hold, zeros where a checkpoint has
    none (for the strips of maps over training)."""
    m = dyn.get("maps")
    if not m:
        return {}
    records = [read_record(root / "snapshots" / label) for label in dyn["labels"]]
    out = {}
    for method in m["methods"]:
        rows = []
        for r in records:
            found = [j for j, x in enumerate(r["methods"]) if str(x) == method] if r is not None and (
                "methods" in r and r["samples"].tolist() == m["images"]) else []
            rows.append(r[f"maps-{found[0]}"] if found else None)
        shape = next(x.shape for x in rows if x is not None)
        out[method] = np.stack([x if x is not None else np.zeros(shape, np.float32) for x in rows], axis=1)
    return out


SEVERITY_ORDER = {name: k for k, name in enumerate(SEVERITIES)}


def _findings(snapshots: list[dict]) -> list[dict]:
    """Each finding id that some snapshot checked: its title and, per checkpoint, its severity, numbers and
    sentence (None where that snapshot does not have it); most severe first."""
    rows: dict[str, dict] = {}
    for k, snap in enumerate(snapshots):
        for f in getattr(snap["manifest"], "findings", []) or []:
            row = rows.setdefault(f.id, {"id": f.id, "title": f.title, "cells": [None] * len(snapshots)})
            row["cells"][k] = {"severity": f.severity, "numbers": dict(f.numbers), "sentence": f.sentence}
    # a finding no snapshot could check (its analyses were not chosen) says nothing about training
    kept = [r for r in rows.values() if any(c and c["severity"] != "not checked" for c in r["cells"])]
    return sorted(kept, key=lambda r: min(SEVERITY_ORDER.get(c["severity"], 9) for c in r["cells"] if c))


@plot_kind("checkpoint-heatmap")
def checkpoint_heatmap(data: dict):
    """data: matrix (rows, checkpoints) with None where there is no value; rows and cols (labels); vmin, vmax;
    cmap; colorbar (its label); values written in the cells when the matrix is small (at most 12 checkpoints)."""
    from .imaging.charts import new_figure

    m = np.array([[np.nan if v is None else v for v in row] for row in data["matrix"]], dtype=np.float64)
    rows, cols = data["rows"], data["cols"]
    fig, ax = new_figure(min(12.0, 2.6 + 0.42 * len(cols)), min(10.0, 1.4 + 0.32 * len(rows)))
    im = ax.imshow(np.ma.masked_invalid(m), cmap=data.get("cmap", "viridis"), vmin=data.get("vmin"),
                   vmax=data.get("vmax"), aspect="auto")
    if m.shape[1] <= 12 and m.size <= 240:  # more cells: the numbers would overlap (manifest.json has them)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    # dark text on light cells, light on dark, by the cell colour's luminance
                    r, g, b, _ = im.cmap(im.norm(m[i, j]))
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=7)
    ax.set_xlabel(data.get("xlabel", "checkpoint"))
    fig.colorbar(im, ax=ax, shrink=0.8, label=data.get("colorbar", ""))
    return fig


def _mean(values: list) -> Optional[float]:
    got = [v for v in values if v is not None]
    return float(np.mean(got)) if got else None


def dynamics_sections(dyn: dict, names: dict, writer: ArtifactWriter, pictures: dict,
                      strips: Optional[dict] = None) -> list[dict]:
    """The index's learning-dynamics sections (figures first, then what they show) from `compare_snapshots`'s
    values; ``names``: {label: the checkpoint's name on the page ("epoch 3")}; ``pictures``: {image index: uint8
    (H, W, C)} of the most forgotten images."""
    labels = dyn["labels"]
    cols = [names[x] for x in labels]
    sections = []
    strips = strips or {}

    def chart(key: str, kind: str, label: str, caption: str, data: dict) -> dict:
        return imaging.render_item(Plot(key=key, kind=kind, label=label, caption=caption, data=data), writer,
                                   "img/archive")

    if "cka" in dyn:
        c = dyn["cka"]
        n = len(dyn["subset"]["indices"])
        figs = [chart("cka-final", "checkpoint-heatmap", "Similarity of each layer to its final form",
                      f"Linear CKA between each layer's outputs at each checkpoint and at the last one "
                      f"({names[c['reference']]}), on the same {n} images: 1 = the same representation up to a "
                      "rotation and a scale. A row that reaches 1 early is a layer that settled early.",
                      {"matrix": c["final"], "rows": c["layers"], "cols": cols, "vmin": 0, "vmax": 1,
                       "colorbar": "linear CKA"}),
                chart("cka-previous", "checkpoint-heatmap", "Similarity of each layer to the previous checkpoint",
                      f"Linear CKA between each layer's outputs at each checkpoint and at the one before it, on the "
                      f"same {n} images: where a layer's representation still changes.",
                      {"matrix": c["previous"], "rows": c["layers"], "cols": cols, "vmin": 0, "vmax": 1,
                       "colorbar": "linear CKA"})]
        sections.append({"id": "cka", "title": "Which layers settle first", "figures": figs, "forgotten": [], "text": [
            f"Linear centered kernel alignment (CKA) compares two representations of the same images through their "
            f"Gram matrices; it does not change under a rotation or an isotropic scaling of the features, which "
            f"makes it a comparison of what a layer encodes rather than of its coordinates (Kornblith et al., "
            f"Similarity of Neural Network Representations Revisited, ICML 2019). The {n} images were drawn once "
            f"from the image set with the build seed; the archive's manifest.json lists them and every value."],
            "paper": "https://arxiv.org/abs/1905.00414"})
    if "predictions" in dyn:
        p = dyn["predictions"]
        got = [names[x] for x in p["checkpoints"]]
        figs = [chart("first-learned", "bars", "When each image was first classified correctly",
                      f"Of {p['images']:,} images with a label: how many each checkpoint classifies correctly for the "
                      f"first time ({p['never learned']:,} never), and how many it gets wrong after the checkpoint "
                      f"before got them right (forgetting events).",
                      {"names": got, "values": p["first learned"], "ylabel": "images first learned"}),
                chart("forgetting", "bars", "Forgetting events per checkpoint",
                      "Images classified correctly at the previous checkpoint and wrongly at this one.",
                      {"names": got, "values": p["events"], "ylabel": "images forgotten"}),
                chart("class-accuracy", "checkpoint-heatmap", "Accuracy per class over checkpoints",
                      "The fraction of each class's images classified correctly at each checkpoint.",
                      {"matrix": p["class accuracy"], "rows": p["classes"], "cols": got, "vmin": 0, "vmax": 1,
                       "colorbar": "accuracy", "cmap": "Blues"})]
        strip = []
        for f in p["most forgotten"]:
            entry = None
            pic = pictures.get(f["index"])
            if pic is not None and pic.ndim == 3:  # an image (a points model's inputs are not)
                entry = imaging.render_item(Picture(key=f"forgotten-{f['index']}", array=pic / 255.0,
                                                    style="rgb", label=f["name"]), writer, "img/archive")
            strip.append({**f, "picture": entry, "first": names.get(f["first"], f["first"]),
                          "marks": "".join("●" if c else "○" for c in f["correct"])})
        sections.append({"id": "forgetting", "title": "Which images are learned, and forgotten", "figures": figs,
                         "forgotten": strip, "text": [
            f"{p['forgotten']:,} of {p['images']:,} images were forgotten at least once; {p['never forgotten']:,} "
            f"were learned and never forgotten; {p['never learned']:,} are wrong at every checkpoint. A forgetting "
            f"event is an image that goes from correct to wrong between two checkpoints (Toneva et al., An "
            f"Empirical Study of Example Forgetting during Deep Neural Network Learning, ICLR 2019, counted there "
            f"between mini-batch presentations, here between checkpoints: events between two checkpoints that "
            f"undo each other are not seen)."], "paper": "https://arxiv.org/abs/1812.05159"})
    if "maps" in dyn:
        m = dyn["maps"]
        mean = [[_mean([row[k] for row in m["correlation"][method]]) for k in range(len(cols))]
                for method in m["methods"]]
        figs = [chart("maps-stability", "checkpoint-heatmap", "How much each method's maps change",
                      f"Spearman's rank correlation of each sample image's map at each checkpoint with its map at "
                      f"the previous checkpoint, the mean over the {len(m['images'])} sample images: 1 = the same "
                      "ranking of the pixels.",
                      {"matrix": mean, "rows": m["methods"], "cols": cols, "vmin": -1, "vmax": 1,
                       "colorbar": "rank correlation", "cmap": "RdBu"})]
        for method, stack in strips.items():
            n_img, n_ck = stack.shape[:2]
            figs.append(imaging.render_item(Grid(
                key=f"maps-{method}", tiles=np.clip(stack.reshape(n_img * n_ck, *stack.shape[2:]), 0, None),
                style="heat", cols=n_ck, per_tile_scale=True, label=f"{method} over training",
                caption=f"{method} maps of the sample images ({', '.join(m['names'])}; one row each, for the class "
                        f"{', '.join(m['targets'])} in that order) at each checkpoint, left to right "
                        f"({cols[0]} to {cols[-1]}); each map scaled to its own maximum, its positive part."),
                writer, "img/archive"))
        sections.append({"id": "maps", "title": "How the maps change over training", "figures": figs,
                         "forgotten": [], "text": [
            "Each attribution method's maps of the build's sample images, recomputed for each checkpoint with the "
            "snapshot's settings, for the same class at every checkpoint (the image's label; where it has none, the "
            "class that checkpoint predicts). A rank correlation near 1 says the method ranks the pixels as it did "
            "one checkpoint before; maps of an untrained network can look alike for reasons unrelated to training "
            "(Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018)."],
            "paper": "https://arxiv.org/abs/1810.03292"})
    if "weights" in dyn:
        w = dyn["weights"]
        x = list(range(len(cols)))
        figs = []
        for key, what, caption in (
                ("norm", "Frobenius norm", "The Frobenius norm of each weight matrix (a convolution's kernel read "
                                           "as a matrix (output channels, inputs x kernel))."),
                ("distance", "distance from the first checkpoint",
                 "The Frobenius norm of each weight matrix's change since the first checkpoint."),
                ("sigma max", "largest singular value", "The largest singular value of each weight matrix."),
                ("stable rank", "stable rank", "||W||_F^2 / sigma_max^2: how many directions carry the matrix's "
                                               "energy (1: one direction dominates; at most its rank).")):
            if key in w:
                figs.append(chart(f"weights-{key.replace(' ', '-')}", "lines", what.capitalize() + " per layer",
                                  caption, {"x": x, "xticklabels": cols, "series": dict(zip(w["names"], w[key])),
                                            "ylabel": what, "marker": True}))
        if "dead" in dyn:
            d = dyn["dead"]
            figs.append(chart("dead-units", "lines", "Dead units per ReLU",
                              "The fraction of each ReLU module's units (channels of a map, features of a vector) "
                              "that are 0 on every image and position of the set, per checkpoint.",
                              {"x": x, "xticklabels": cols, "series": dict(zip(d["relus"], d["fraction"])),
                               "ylabel": "fraction never positive", "marker": True, "ylim": [-0.02, 1.02]}))
        sections.append({"id": "weights", "title": "How the weights move", "figures": figs, "forgotten": [], "text": [
            "The stable rank (Rudelson & Vershynin, J. ACM 2007) is a continuous count of a matrix's significant "
            "directions; the spectra of trained layers are read this way by Martin & Mahoney (JMLR 2021). A ReLU "
            "unit that is 0 on every image passes no gradient back for these images (Glorot et al., AISTATS "
            "2011)."], "paper": "https://arxiv.org/abs/math/0503442"})
    return sections
