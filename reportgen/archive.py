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

from . import __version__
from .archive_index import render_archive
from .artifacts import slug
from .build import build_site, choose_analyses
from .config import BuildConfig, config_dict
from .console import Output
from .distributed import current_world, shared_build
from .errors import ConfigError, ModelError, OutputError, ReportgenError
from .manifest import MANIFEST, read_manifest
from .models import read_safetensors_metadata, sha256_file
from .staging import check_out_path, is_report_folder, staged_site

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass
class Checkpoint:
    path: Path
    step: Optional[int]  # epoch or step, from metadata or the file name
    label: str  # sub-folder name of its snapshot
    zoo: Optional[str]  # zoo model named in the metadata


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
        step = None
        for key in ("epoch", "step", "iteration"):
            if str(meta.get(key, "")).isdigit():
                step = int(meta[key])
                break
        if step is None:
            numbers = re.findall(r"\d+", f.stem)
            step = int(numbers[-1]) if numbers else None
        checkpoints.append(Checkpoint(f, step, "", meta.get("zoo")))
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
            snapshots.append({"label": c.label, "step": c.step, "checkpoint": c.path.name,
                              "path": f"snapshots/{c.label}/index.html", "manifest": manifest})
        render_archive(tmp, snapshots, cfg.seed)
    labels = [c.label for c in checkpoints]
    return {"built": [x for x in labels if done[x] == "built"], "reused": [x for x in labels if done[x] == "reused"],
            "seconds": time.perf_counter() - t0, "out": out}


def helper_folder(tmp: Path, rank: int) -> Path:
    """Where rank ``rank`` > 0 of a distributed archive builds its snapshots: beside rank 0's staged folder ``tmp``,
    so that rank 0 can move them in with a rename (on several machines: a file system they all share)."""
    return tmp.parent / f"{tmp.name}.rank{rank}"


def _build_snapshots(cfg: BuildConfig, chosen: Any, checkpoints: list[Checkpoint], root: Path, out: Path,
                     output: Output, group: Any = None) -> dict[str, str]:
    """Build or reuse the snapshot of each of ``checkpoints`` into ``root/<label>``; {label: "built" | "reused"}."""
    where = f" (rank {group.rank})" if group is not None else ""
    done = {}
    for c in checkpoints:
        model = cfg.model or c.zoo
        snap_cfg = dataclasses.replace(cfg, model=model, weights=str(c.path))
        ck_sha = sha256_file(c.path)
        fp = snapshot_fingerprint(ck_sha, image_set_fingerprint(cfg.images, cfg, model), snap_cfg)
        target = root / c.label
        previous = _find_previous(out, fp)
        if previous is not None:
            shutil.copytree(previous, target)
            done[c.label] = "reused"
            output.info(f"{c.label}: unchanged, reused{where}")
        else:
            target.mkdir(parents=True)
            output.info(f"{c.label}: building from {c.path.name}{where}")
            snapshot = {"fingerprint": fp, "checkpoint": str(c.path), "checkpoint_sha256": ck_sha,
                        "step": c.step, "label": c.label}
            build_site(snap_cfg, chosen, target, output, snapshot=snapshot)
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
        if (manifest.snapshot or {}).get("fingerprint") == fingerprint:
            return snap
    return None
