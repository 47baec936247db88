"""Snapshots per checkpoint: one full report per checkpoint and a top index that compares them.

`reportgen archive CHECKPOINTS...` orders the checkpoints by the epoch/step in their metadata (or the number in
their file names), builds one report per checkpoint in ``snapshots/<label>/`` exactly as `reportgen build` does, and
writes an index comparing them. A snapshot whose checkpoint bytes, image set and config are unchanged is copied from
the previous archive instead of recomputed (a content hash in its manifest); the whole archive is written beside the
output folder and swapped into place, like a build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import __version__
from .archive_index import DYNAMICS, RECORD_VERSION, compare_snapshots, has_record, npz_bytes, render_archive
from .artifacts import slug
from .build import build_site, choose_analyses
from .config import BuildConfig, config_dict
from .console import Output, duration
from .distributed import current_world, shared_build
from .errors import ConfigError, ModelError, OutputError, ReportgenError
from .manifest import MANIFEST, read_manifest
from .models import read_safetensors_metadata, sha256_file
from .staging import check_out_path, is_report_folder, staged_site

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# What each snapshot stores for the comparisons across checkpoints (`record_dynamics`) is DYNAMICS beside its
# manifest: a snapshot reused from a previous archive brings it along, so the comparisons never run a reused
# checkpoint again.
# How many images of the set, drawn with the build seed, every checkpoint's features are compared on (linear CKA):
# the Gram matrices stored per layer are SUBSET x SUBSET float64 (80 KB each at 100). Their features are held in
# memory during the pass, so a model whose analysed layers output more than SUBSET_BYTES for SUBSET images (float32)
# is compared on fewer (at least MIN_SUBSET).
SUBSET = 100
MIN_SUBSET = 20
SUBSET_BYTES = 512 * 2 ** 20


@dataclass
class Checkpoint:
    path: Path
    step: Optional[int]  # epoch or step, from metadata or the file name
    label: str  # sub-folder name of its snapshot
    zoo: Optional[str]  # zoo model named in the metadata
    unit: Optional[str] = None  # what ``step`` counts, as the metadata names it: "epoch", "step" or "iteration"


def _metadata(path: Path) -> dict:
    return read_safetensors_metadata(path) if path.suffix == ".safetensors" else {}


def find_checkpoints(paths: list[str]) -> list[Checkpoint]:
    """Checkpoint files from files and folders, ordered by epoch/step (metadata first, then the file name)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in CHECKPOINT_SUFFIXES and f.is_file())
            if not found:
                raise ModelError(f"no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}) in folder '{p}'")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise ModelError(f"checkpoint '{p}' does not exist: give checkpoint files or a folder of them")
    checkpoints = []
    for f in files:
        meta = _metadata(f)
        step, unit = None, None
        for key in ("epoch", "step", "iteration"):
            if str(meta.get(key, "")).isdigit():
                step, unit = int(meta[key]), key
                break
        if step is None:
            numbers = re.findall(r"\d+", f.stem)
            step = int(numbers[-1]) if numbers else None
            words = re.findall(r"(epoch|step|iter(?:ation)?)", f.stem.lower())
            unit = ("iteration" if words[-1].startswith("iter") else words[-1]) if words and numbers else None
        checkpoints.append(Checkpoint(f, step, "", meta.get("zoo"), unit))
    checkpoints.sort(key=lambda c: (c.step is None, c.step if c.step is not None else 0, c.path.name))
    seen: set[str] = set()
    for c in checkpoints:
        base = f"step-{c.step:05d}" if c.step is not None else slug(c.path.stem)
        label, n = base, 2
        while label in seen:
            label, n = f"{base}-{n}", n + 1
        seen.add(label)
        c.label = label
    if len(set(c.path.resolve() for c in checkpoints)) != len(checkpoints):
        raise ModelError("the same checkpoint file is named twice: give each checkpoint once")
    return checkpoints


def image_set_fingerprint(images: Optional[str], cfg: BuildConfig, zoo: Optional[str]) -> str:
    """A content hash of the image set: every file's path and bytes for a folder; the name and seed for a zoo set."""
    h = hashlib.sha256()
    if images and not images.startswith("zoo:"):
        root = Path(images)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            h.update(f.relative_to(root if root.is_dir() else root.parent).as_posix().encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    else:
        h.update(f"{images or 'zoo:' + str(zoo)}|seed={cfg.seed}|max={cfg.max_images}".encode())
    return h.hexdigest()


def snapshot_fingerprint(checkpoint_sha: str, images_sha: str, cfg: BuildConfig) -> str:
    settings = {k: v for k, v in config_dict(cfg).items() if k not in ("out", "weights")}
    blob = json.dumps({"checkpoint": checkpoint_sha, "images": images_sha, "config": settings,
                       "reportgen": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def archive(cfg: BuildConfig, checkpoint_args: list[str], output: Optional[Output] = None,
            group: Any = None) -> dict:
    """Build (or reuse) one snapshot per checkpoint and the comparison index into ``cfg.out``; returns a summary
    (``built`` and ``reused`` labels, ``seconds``, ``out``; ``rank`` > 0 on a distributed job's helper ranks).

    Each snapshot is built by the same recipe as `reportgen build` (`reportgen.build.build_site`). Under torchrun
    (several processes) every process runs this with its ``group`` (`reportgen.distributed`): checkpoint k, in the
    order of `find_checkpoints`, is built (or reused) by rank k mod N with the plain one-process build (no sharded
    pass inside), rank r > 0 into a folder of its own beside rank 0's staged archive; once every rank is done rank 0
    moves those snapshots into its staged archive, writes the index and swaps it into place. A rank that fails
    leaves the previous archive as it was (`reportgen.distributed.Group.failures`)."""
    world = current_world() if group is None else None
    if world is not None:
        return shared_build(world, cfg.device, lambda grp: archive(cfg, checkpoint_args, output, grp))
    output = output or Output()
    t0 = time.perf_counter()
    out = check_out_path(Path(cfg.out))
    checkpoints = find_checkpoints(checkpoint_args)
    for c in checkpoints:  # before any snapshot is built (and on every rank: the same mistake, said once)
        if (cfg.model or c.zoo) is None:
            raise ConfigError(f"checkpoint '{c.path}' does not name its model: give MODEL "
                              "(a zoo name, torchvision:ARCH or module:factory)")
    chosen = choose_analyses(cfg)
    mine = [checkpoints[k] for k in (group.assigned(len(checkpoints)) if group else range(len(checkpoints)))]
    if group is not None:
        group.product = "archive"
        if group.rank != 0:
            return _helper_rank(cfg, chosen, mine, out, output, group)
    done: dict[str, str] = {}
    with staged_site(out, [cfg.images]) as tmp:
        if group is not None:
            group.share(str(tmp))  # the others start now: the output folder is checked and locked
            group.leftovers.update({r: helper_folder(tmp, r) for r in range(group.size)} | {0: tmp})
        done.update(_build_snapshots(cfg, chosen, mine, tmp / "snapshots", out, output, group))
        if group is not None:
            everyone = group.collect(done)
            assert everyone is not None
            (tmp / "snapshots").mkdir(exist_ok=True)  # rank 0 may have no checkpoint of its own (N > checkpoints)
            for r, theirs in enumerate(everyone[1:], start=1):
                _move_snapshots(helper_folder(tmp, r), tmp / "snapshots", theirs, r)
                done.update(theirs)
            group.share("moved")  # the helper ranks may remove their (now empty) folders and end
        snapshots = []
        for c in checkpoints:
            manifest = read_manifest(tmp / "snapshots" / c.label)
            snapshots.append({"label": c.label, "step": c.step, "unit": c.unit, "checkpoint": c.path.name,
                              "path": f"snapshots/{c.label}/index.html", "manifest": manifest})
        last = checkpoints[-1]
        pictures = forgotten_pictures(dataclasses.replace(cfg, model=cfg.model or last.zoo, weights=str(last.path)),
                                      tmp, snapshots)
        render_archive(tmp, snapshots, cfg.seed, weight_distances([c.path for c in checkpoints]), pictures)
    labels = [c.label for c in checkpoints]
    return {"built": [x for x in labels if done[x] == "built"], "reused": [x for x in labels if done[x] == "reused"],
            "seconds": time.perf_counter() - t0, "out": out}


def helper_folder(tmp: Path, rank: int) -> Path:
    """Where rank ``rank`` > 0 of a distributed archive builds its snapshots: beside rank 0's staged folder ``tmp``,
    so that rank 0 can move them in with a rename (on several machines: a file system they all share)."""
    return tmp.parent / f"{tmp.name}.rank{rank}"


def _build_snapshots(cfg: BuildConfig, chosen: Any, checkpoints: list[Checkpoint], root: Path, out: Path,
                     output: Output, group: Any = None) -> dict[str, str]:
    """Build or reuse the snapshot of each of ``checkpoints`` into ``root/<label>``; {label: "built" | "reused"}.

    Says "k of N" before each, and once one is built, about how long the rest take (the mean build time so far
    times the snapshots left to build: those whose previous snapshot is reused are known before the first)."""
    where = f" (rank {group.rank})" if group is not None else ""
    plans = []
    for c in checkpoints:
        model = cfg.model or c.zoo
        snap_cfg = dataclasses.replace(cfg, model=model, weights=str(c.path))
        ck_sha = sha256_file(c.path)
        fp = snapshot_fingerprint(ck_sha, image_set_fingerprint(cfg.images, cfg, model), snap_cfg)
        plans.append((c, snap_cfg, ck_sha, fp, _find_previous(out, fp)))
    to_build = sum(previous is None for *_, previous in plans)
    done: dict[str, str] = {}
    spent, built = 0.0, 0
    for k, (c, snap_cfg, ck_sha, fp, previous) in enumerate(plans, start=1):
        target = root / c.label
        count = f"{k} of {len(plans)}"
        if previous is not None:
            shutil.copytree(previous, target)
            done[c.label] = "reused"
            output.info(f"[{count}] {c.label}: unchanged, reused{where}")
            continue
        left = f"; about {duration(spent / built * (to_build - built))} left" if built else ""
        output.info(f"[{count}] {c.label}: building from {c.path.name}{where}{left}")
        t0 = time.perf_counter()
        target.mkdir(parents=True)
        snapshot = {"fingerprint": fp, "checkpoint": str(c.path), "checkpoint_sha256": ck_sha,
                    "step": c.step, "unit": c.unit, "label": c.label}
        build_site(snap_cfg, chosen, target, output, snapshot=snapshot)
        record_dynamics(snap_cfg, chosen, target)
        spent, built = spent + time.perf_counter() - t0, built + 1
        done[c.label] = "built"
    return done


def _helper_rank(cfg: BuildConfig, chosen: Any, mine: list[Checkpoint], out: Path, output: Output,
                 group: Any) -> dict:
    """Rank r > 0 of a distributed archive: its snapshots into its own folder beside rank 0's staged archive, handed
    to rank 0, the folder removed whatever happens (a killed rank's by the rank that finds it silent)."""
    t0 = time.perf_counter()
    tmp = Path(group.share())  # rank 0 has checked and locked the output folder
    group.leftovers.update({r: helper_folder(tmp, r) for r in range(group.size)} | {0: tmp})
    folder = helper_folder(tmp, group.rank)
    try:
        folder.mkdir()
        group.collect(_build_snapshots(cfg, chosen, mine, folder, out, output, group))
        group.share()  # rank 0 has moved the snapshots out of the folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    group.tell("passed", "")
    return {"built": [], "reused": [], "seconds": time.perf_counter() - t0, "out": out, "rank": group.rank}


def _move_snapshots(folder: Path, root: Path, labels: dict[str, str], rank: int) -> None:
    """Rank ``rank``'s snapshots from its ``folder`` into rank 0's staged ``root`` (renames in one file system)."""
    for label in labels:
        if not (folder / label / MANIFEST).is_file():
            raise OutputError(f"rank {rank} built snapshot '{label}' into '{folder}', where rank 0 does not see it: "
                              "on several machines the folder of --out must be on a file system they all share")
        os.rename(folder / label, root / label)


def _find_previous(out: Path, fingerprint: str) -> Optional[Path]:
    """The snapshot folder of the previous archive at ``out`` with this fingerprint, if any."""
    if not is_report_folder(out):
        return None
    root = out / "snapshots"
    if not root.is_dir():
        return None
    for snap in sorted(root.iterdir()):
        try:
            manifest = read_manifest(snap)
        except ReportgenError:  # damaged, or written by another version: built again
            continue
        if (manifest.snapshot or {}).get("fingerprint") == fingerprint and has_record(snap):
            return snap  # (one without the comparisons' record, from an older archive, is built again)
    return None


def subset_indices(n: int, seed: int, size: int = SUBSET) -> np.ndarray:
    """The fixed images (indices into a set of ``n``) whose features every checkpoint is compared on: ``size`` of
    them drawn without replacement by a generator seeded with the build seed, sorted; the same for every checkpoint
    of an archive built with one image set and seed."""
    pick = np.random.default_rng([int(seed), 32]).choice(n, size=min(size, n), replace=False)
    return np.sort(pick).astype(np.int64)


def record_dynamics(cfg: BuildConfig, chosen: Any, folder: Path, given: Any = None) -> None:
    """Write ``folder/dynamics.npz``: what the archive index compares across checkpoints, computed once per snapshot
    (one more pass over the image set with the snapshot's model and images, as the build loads them, and the maps
    of its sample images).

    Holds (numpy arrays only, read with ``allow_pickle=False``): ``subset`` the indices of the fixed images
    (`subset_indices`: `SUBSET`, or fewer for wide layers, see `SUBSET_BYTES`) that were read; ``layers`` the analysed layers and ``gram-K`` the centered Gram matrix
    (subset, subset) float64 of layer K's flattened outputs on them (`reportgen.methods.dynamics.centered_gram`,
    all linear CKA needs); ``indices``, ``predicted``, ``labels``, ``names`` (N,) the class predicted for each
    readable image, its label (-1: unknown) and its name; ``classes`` the model's class names; ``weights`` the
    weight matrices (state-dict entries ``*weight`` of 2 or more dimensions) and ``spectrum`` (W, 3) their norm,
    largest singular value and stable rank (`reportgen.methods.dynamics.spectrum_summary`); ``relus`` the ReLU
    modules that run once per pass and ``dead`` (R, 2) the units of each never positive on any image of the set,
    and its units (as the distributions analysis counts them); ``samples`` the build's sample images (the same for
    every checkpoint: `reportgen.build.pick_samples` depends on the seed and the labels only), ``targets`` the class
    of each one's maps (its label, or where unknown the class this checkpoint predicts), ``methods`` the
    attribution analyses of the snapshot that ran, and ``maps-K`` (samples, H, W) float32 method K's maps, computed
    with the snapshot's settings after the compute budget (`reportgen.build.settle`). A ``given`` model
    (`reportgen.Snapshots`) is left exactly as it came."""
    import torch

    from .analyses.activations import relu_outputs
    from .build import load, make_plan, pick_samples, settle
    from .capture import capture, kept_as_is
    from .context import Predictions
    from .methods.dynamics import centered_gram, spectrum_summary

    model = given.model if given is not None else None
    with torch.random.fork_rng(devices=[]), kept_as_is(model):
        ctx = load(cfg, Output(silent=True), given)
        plan = make_plan(ctx, chosen)
        rows_of = {r.name: r for r in ctx.facts.layers}
        # layers with one output row per image (not those that fold positions into the batch)
        layers = [n for n in ctx.facts.selected if n in rows_of and rows_of[n].per_image and rows_of[n].out_shape
                  ] if ctx.facts.python else []
        relus = relu_outputs(ctx)[0] if ctx.facts.python else []
        per_image = 4 * sum(int(np.prod(rows_of[n].out_shape)) for n in layers)
        size = SUBSET if per_image * SUBSET <= SUBSET_BYTES else max(MIN_SUBSET, SUBSET_BYTES // per_image)
        subset = subset_indices(len(ctx.images), cfg.seed, size)
        wanted = set(subset.tolist())
        kept: dict[str, list] = {name: [] for name in layers}
        ever: dict[str, Any] = {}
        read, indices, logits, labels = [], [], [], []
        with capture(ctx.model, sorted(set(layers) | set(relus))) as rec, torch.no_grad():
            for batch in ctx.images.batches(ctx.batch_size(grad=False), ctx.device):
                out = ctx.model(batch.inputs)
                idx = batch.indices.numpy()
                rows = [k for k, i in enumerate(idx) if int(i) in wanted]
                read.extend(int(idx[k]) for k in rows)
                for name in layers:
                    if name in rec.acts and rows:
                        kept[name].append(rec.acts[name][rows].reshape(len(rows), -1).float().cpu().numpy())
                for name in relus:
                    act = rec.acts.get(name)
                    if act is None or act.ndim < 2:
                        continue
                    fired = (act > 0).transpose(0, 1).reshape(act.shape[1], -1).any(dim=1).cpu().numpy()
                    ever[name] = fired | ever[name] if name in ever else fired
                indices.append(idx)
                # (a model whose output is not one score per class gives its logits as the build reads them: none)
                logits.append(out.detach().float().cpu().numpy().reshape(len(idx), -1))
                labels.append(batch.labels.numpy())
        ctx.predictions = Predictions(np.concatenate(indices), np.concatenate(logits), np.concatenate(labels))
        ctx.samples = pick_samples(ctx.predictions.indices, ctx.predictions.labels, cfg.samples, ctx.rng("samples"))
        # classes to predict and to explain only where the model's outputs are class scores (the plan says why not)
        scores = not ctx.facts.output_reason and ctx.predictions.logits.shape[1] == len(ctx.class_names)
        maps = sample_maps(ctx, chosen, plan, folder, settle) if scores else {"methods": np.asarray([], dtype=str)}
        state = ctx.model.state_dict()
    arrays: dict[str, Any] = {"version": np.asarray(RECORD_VERSION), "subset": np.asarray(read, dtype=np.int64)}
    names = [name for name in layers if kept[name]]
    arrays["layers"] = np.asarray(names, dtype=str)
    for k, name in enumerate(names):
        arrays[f"gram-{k}"] = centered_gram(np.concatenate(kept[name]))
    keep = slice(None) if scores else slice(0, 0)
    arrays["indices"] = ctx.predictions.indices[keep].astype(np.int64)
    arrays["predicted"] = ctx.predictions.logits[keep].argmax(axis=1).astype(np.int64)
    arrays["labels"] = ctx.predictions.labels[keep].astype(np.int64)
    arrays["names"] = np.asarray([ctx.images.names[int(i)] for i in arrays["indices"]], dtype=str)
    arrays["classes"] = np.asarray(list(ctx.class_names), dtype=str)
    matrices = [(k, v) for k, v in state.items() if k.endswith("weight") and v.ndim >= 2 and v.is_floating_point()]
    arrays["weights"] = np.asarray([k for k, _ in matrices], dtype=str)
    arrays["spectrum"] = np.asarray([[s["norm"], s["sigma max"], s["stable rank"]] for s in (
        spectrum_summary(v.detach().cpu().double().numpy()) for _, v in matrices)], dtype=np.float64).reshape(-1, 3)
    arrays["relus"] = np.asarray(list(ever), dtype=str)
    arrays["dead"] = np.asarray([[int((~f).sum()), len(f)] for f in ever.values()], dtype=np.int64).reshape(-1, 2)
    arrays.update(maps)
    (folder / DYNAMICS).write_bytes(npz_bytes(arrays))


def sample_maps(ctx: Any, chosen: Any, plan: Any, folder: Path, settle: Any) -> dict:
    """The record's ``samples``, ``targets``, ``methods`` and ``maps-K`` (`record_dynamics`): each attribution
    analysis that ran in the snapshot at ``folder`` (its manifest says so), called once on the sample images with
    the settings the build gave it. A method that raises here is left out of the comparison (its snapshot page
    says why it failed, when it did there)."""
    import torch

    from .analyses.influence import AttributionAnalysis, MapTarget

    ran = {e.name for e in read_manifest(folder).analyses if e.status == "ok"}
    methods = [a for a in chosen.analyses if isinstance(a, AttributionAnalysis) and a.name in ran]
    samples = [int(i) for i in ctx.samples]
    out: dict[str, Any] = {"samples": np.asarray(samples, dtype=np.int64), "methods": np.asarray([], dtype=str)}
    if not methods or not samples:
        return out
    settle(ctx, chosen, plan)
    preds = ctx.predictions.logits.argmax(axis=1)
    targets = [int(ctx.images.labels[i]) if ctx.images.labels[i] >= 0 else int(preds[ctx.predictions.row(i)])
               for i in samples]
    inputs = ctx.images.load_inputs(samples, ctx.device)
    classes = torch.tensor(targets, device=inputs.device)
    done = []
    for a in methods:
        if a.name in plan.skipped or a.name in plan.refused:
            continue
        params = plan.params[a.name]
        try:
            options = a.chunk_options(ctx, a.options(ctx, params), MapTarget(samples[0], targets[0], "true"))
            maps = a.attribute(ctx.model, inputs, classes, **options).detach().float().cpu().numpy()
        except Exception:  # noqa: BLE001 - a method failing on one checkpoint must not stop the archive
            continue
        out[f"maps-{len(done)}"] = maps
        done.append(a.name)
    out["targets"] = np.asarray(targets, dtype=np.int64)
    out["methods"] = np.asarray(done, dtype=str)
    return out


def weight_distances(paths: list[Optional[Path]]) -> list[Optional[dict[str, float]]]:
    """For each checkpoint file of ``paths`` (in archive order), {weight name: Frobenius norm of (its weight - the
    first checkpoint's)} over the weight matrices both hold with the same shape; None for a file that is missing
    (a `reportgen.Snapshots` checkpoint deleted since). Read from the files on every run: reading and subtracting
    costs little beside a snapshot's build, and stays right when an earlier checkpoint joins the archive."""
    from .loaders.weights import read_state_dict

    first = None
    out: list[Optional[dict[str, float]]] = []
    for path in paths:
        if path is None or not Path(path).is_file():
            out.append(None)
            continue
        state = {k: v.detach().double() for k, v in read_state_dict(path).items()
                 if k.endswith("weight") and v.ndim >= 2 and v.is_floating_point()}
        if first is None:
            first = state
        out.append({k: float((v - first[k]).norm()) for k, v in state.items()
                    if k in first and first[k].shape == v.shape})
    return out


def forgotten_pictures(cfg: BuildConfig, root: Path, snapshots: list[dict], given: Any = None) -> dict:
    """{image index: uint8 (H, W, C)} of the most forgotten images across ``snapshots`` (`compare_snapshots`), as
    the image set of ``cfg`` (or ``given``) shows them; {} when no image was forgotten."""
    wanted = [f["index"] for f in compare_snapshots(root, snapshots).get("predictions", {}).get("most forgotten", [])]
    if not wanted:
        return {}
    import torch

    from .build import load
    from .capture import kept_as_is

    with torch.random.fork_rng(devices=[]), kept_as_is(given.model if given is not None else None):
        images = load(cfg, Output(silent=True), given).images
        shown = {i: np.asarray(images.display(i)) for i in wanted}
    return {i: a for i, a in shown.items() if a.ndim == 3 and a.dtype == np.uint8}
