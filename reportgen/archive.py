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
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import __version__
from .build import build_site, choose_analyses
from .config import BuildConfig, config_dict
from .console import Output
from .errors import ConfigError, ModelError, ReportgenError
from .manifest import read_manifest
from .staging import check_out_path, is_report_folder, staged_site

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass
class Checkpoint:
    path: Path
    step: Optional[int]  # epoch or step, from metadata or the file name
    label: str  # sub-folder name of its snapshot
    zoo: Optional[str]  # zoo model named in the metadata


def _metadata(path: Path) -> dict:
    from .models import read_safetensors_metadata

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
        from .artifacts import slug

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


def archive(cfg: BuildConfig, checkpoint_args: list[str], output: Optional[Output] = None) -> dict:
    """Build (or reuse) one snapshot per checkpoint and the comparison index into ``cfg.out``; returns a summary.

    Each snapshot is built by the same recipe as `reportgen build` (`reportgen.build.build_site`)."""
    from .models import sha256_file

    output = output or Output()
    t0 = time.perf_counter()
    out = check_out_path(Path(cfg.out))
    checkpoints = find_checkpoints(checkpoint_args)
    chosen = choose_analyses(cfg)
    summary = {"built": [], "reused": [], "seconds": 0.0}
    with staged_site(out, [cfg.images]) as tmp:
        snapshots = []
        for c in checkpoints:
            model = cfg.model or c.zoo
            if model is None:
                raise ConfigError(f"checkpoint '{c.path}' does not name its model: give MODEL "
                                  "(a zoo name, torchvision:ARCH or module:factory)")
            snap_cfg = dataclasses.replace(cfg, model=model, weights=str(c.path))
            ck_sha = sha256_file(c.path)
            fp = snapshot_fingerprint(ck_sha, image_set_fingerprint(cfg.images, cfg, model), snap_cfg)
            target = tmp / "snapshots" / c.label
            previous = _find_previous(out, fp)
            if previous is not None:
                shutil.copytree(previous, target)
                summary["reused"].append(c.label)
                output.info(f"{c.label}: unchanged, reused")
            else:
                target.mkdir(parents=True)
                output.info(f"{c.label}: building from {c.path.name}")
                snapshot = {"fingerprint": fp, "checkpoint": str(c.path), "checkpoint_sha256": ck_sha,
                            "step": c.step, "label": c.label}
                build_site(snap_cfg, chosen, target, output, snapshot=snapshot)
                summary["built"].append(c.label)
            manifest = read_manifest(target)
            snapshots.append({"label": c.label, "step": c.step, "checkpoint": c.path.name,
                              "path": f"snapshots/{c.label}/index.html", "manifest": manifest})
        from .archive_index import render_archive

        render_archive(tmp, snapshots, cfg)
    summary["seconds"] = time.perf_counter() - t0
    summary["out"] = out
    return summary


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
