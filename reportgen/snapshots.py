"""Snapshots during training: a checkpoint and a snapshot report every few epochs, and one index comparing them.

    snap = reportgen.Snapshots("runs/exp1", images=val_set, every=1)
    for epoch in range(epochs):
        train_one_epoch(model)
        snap(model, epoch=epoch, metrics={"train loss": loss})

writes ``runs/exp1/checkpoints/epoch-00001.safetensors`` and the checkpoint archive ``runs/exp1/report/`` (the
layout of `reportgen archive`: ``snapshots/epoch-00001/`` per epoch and an ``index.html`` that compares them, by
`reportgen.archive_index.render_archive`). Each call builds one snapshot with the reduced `SNAPSHOT_CONFIG` (or
the caller's config) through `reportgen.build.build_site`, the path of every build; the archive is updated
atomically, like a build: the new archive is staged beside it with the other snapshots hard-linked (no copy), then
swapped into place. A snapshot whose weights, metrics, image set and config are unchanged (a rerun of a seeded
training) is reused, not rebuilt. Snapshots built with another config or image set leave the index.

`lightning_callback` adapts this to PyTorch Lightning's ``Callback`` interface when Lightning is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .api import Report, prepare
from .archive import (forgotten_pictures, image_set_fingerprint, record_dynamics, snapshot_fingerprint,
                      weight_distances)
from .archive_index import has_record, render_archive
from .build import Given, build_site, choose_analyses
from .console import Output
from .data import BadImage, dataset_image_set, item_picture, read_item
from .errors import ConfigError, ModelError, ReportgenError
from .given import state_dict_sha256
from .manifest import read_manifest
from .models import sha256_file
from .staging import check_out_path, staged_site

# torch and safetensors are imported inside the functions that handle a model (as in reportgen.api), so that
# `reportgen.Snapshots` is there without torch's start-up; Lightning (an optional package) inside lightning_callback.

# What a snapshot shows by default, cheap enough for every epoch: the numbers and pictures the archive index
# compares (accuracy and loss, the first-layer filters, Grad-CAM on fixed images, per-layer k-NN accuracy).
SNAPSHOT_CONFIG = {
    "only": ["predictions", "filters", "embeddings", "grad-cam"],
    "samples": 4,
    "max_images": 500,
    # one t-SNE process: at a few hundred points, starting worker processes costs more than it saves
    "analysis": {"embeddings": {"max_points": 300, "jobs": 1}, "grad-cam": {"scale": "shared"}},
}


class Snapshots:
    """Call it with the model after an epoch; it writes the checkpoint and the snapshot report, and updates the
    archive index.

    Args:
        root: the run's folder; holds ``checkpoints/`` and the archive ``report/``.
        images: as for `reportgen.build_report` (an image folder, a Dataset of (image, label) pairs, a
            DataLoader); read once per snapshot, item by item.
        every: take a snapshot when ``epoch % every == 0`` (default 1: every epoch).
        config: the build config of every snapshot (a TOML path, a dict or a BuildConfig); default
            `SNAPSHOT_CONFIG` (4 analyses, 4 sample images, at most 500 images).
        class_names, mean, std, input_size, output, **options: as for `reportgen.build_report`; options override
            the config (e.g. ``max_images=200``, ``only=[...]``).
    """

    def __init__(self, root: str | os.PathLike, images: Any, *, every: int = 1, config: Any = None,
                 class_names: Optional[list[str]] = None, mean: Optional[list[float]] = None,
                 std: Optional[list[float]] = None, input_size: Any = None, output: Any = None,
                 **options: Any) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ConfigError(f"Snapshots: every={every!r}; give a whole number of epochs >= 1")
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.out = self.root / "report"
        self.images = images
        self.every = every
        self.output = output or Output(quiet=True)
        self._args = {"class_names": class_names, "mean": mean, "std": std, "input_size": input_size,
                      "config": SNAPSHOT_CONFIG if config is None else config, "options": options}
        # every config mistake now, before the first epoch is trained (the model comes with the first call)
        cfg, _ = prepare(None, images if isinstance(images, (str, os.PathLike)) else None, **self._args)
        choose_analyses(cfg)
        self._cfg: Any = None
        self._images_sha: Optional[str] = None

    def index(self) -> Path:
        """The archive index page, ``root/report/index.html``."""
        return self.out / "index.html"

    def __call__(self, model: Any, epoch: int, metrics: Optional[dict] = None) -> Any:
        """Snapshot ``model`` (an ``nn.Module``, left exactly as it came) after epoch ``epoch``, with the
        training ``metrics`` (numbers by name; recorded in the checkpoint and the snapshot's manifest).

        Returns the snapshot's `reportgen.api.Report` (built or reused), or None when ``epoch % every != 0``.
        """
        from torch import nn

        if not isinstance(model, nn.Module):
            raise ModelError(f"Snapshots: model is a {type(model).__name__}; give the nn.Module being trained")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ConfigError(f"Snapshots: epoch={epoch!r}; give the epoch as a whole number >= 0")
        if epoch % self.every:
            return None
        metrics = _plain_metrics(metrics)
        t0 = time.perf_counter()
        if self._cfg is None:
            self._cfg, given = prepare(model, self.images, out=self.out, **self._args)
            self._images_sha = images_fingerprint(self.images, self._cfg)
        else:
            given = Given(model, prepare_images(self.images), state_dict_sha256(model))
        cfg = self._cfg
        label = epoch_label(epoch)  # the archive's label for a checkpoint of this epoch
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        checkpoint = write_checkpoint(model, self.checkpoints / f"epoch-{epoch:05d}.safetensors", epoch, metrics)
        setting = snapshot_fingerprint("", self._images_sha, cfg)  # the config and image set, not the weights
        fingerprint = hashlib.sha256(json.dumps({"setting": setting, "state": given.model_sha256,
                                                 "metrics": metrics}, sort_keys=True).encode()).hexdigest()
        self.root.mkdir(parents=True, exist_ok=True)
        out = check_out_path(self.out)
        kept = _kept_snapshots(out, setting)
        chosen = choose_analyses(cfg)
        built = False
        with staged_site(out, []) as tmp:
            for name, _ in kept:
                if name != label:
                    # hard links: the snapshot files are never written again, and linking copies no bytes
                    shutil.copytree(out / "snapshots" / name, tmp / "snapshots" / name, copy_function=_link_or_copy)
            target = tmp / "snapshots" / label
            previous = dict(kept).get(label)
            if previous is not None and (previous.snapshot or {}).get("fingerprint") == fingerprint:
                shutil.copytree(out / "snapshots" / label, target, copy_function=_link_or_copy)
                self.output.info(f"{label}: unchanged, reused")
            else:
                target.mkdir(parents=True)
                record = {"fingerprint": fingerprint, "setting": setting, "checkpoint": str(checkpoint),
                          "checkpoint_sha256": _sha256_file(checkpoint), "step": epoch, "unit": "epoch",
                          "label": label, "metrics": metrics}
                self.output.info(f"{label}: building the snapshot of epoch {epoch}")
                build_site(cfg, chosen, target, self.output, snapshot=record, given=given)
                record_dynamics(cfg, chosen, target, given)
                built = True
            snapshots = []
            for folder in sorted((tmp / "snapshots").iterdir()):
                manifest = read_manifest(folder)
                snap = manifest.snapshot or {}
                snapshots.append({"label": folder.name, "step": snap.get("step"), "unit": "epoch",
                                  "checkpoint": Path(snap.get("checkpoint", "")).name,
                                  "path": f"snapshots/{folder.name}/index.html", "manifest": manifest,
                                  "file": snap.get("checkpoint")})
            snapshots.sort(key=lambda s: (s["step"] is None, s["step"] or 0, s["label"]))
            pictures = forgotten_pictures(cfg, tmp, snapshots, given)
            render_archive(tmp, snapshots, cfg.seed, weight_distances([s.pop("file") for s in snapshots]), pictures)
        manifest = read_manifest(out / "snapshots" / label)
        return Report(out=out / "snapshots" / label, seconds=time.perf_counter() - t0, manifest=manifest,
                      failed=[a.name for a in manifest.analyses if a.status == "failed"] if built else [])


def epoch_label(epoch: int) -> str:
    """The archive's folder name of epoch ``epoch``'s snapshot: "epoch-00003"."""
    return f"epoch-{epoch:05d}"


def prepare_images(images: Any) -> Any:
    """The `reportgen.build.Given` ``images`` of a snapshot: the Dataset or DataLoader itself, None for a folder
    (named in the config instead)."""
    return None if images is None or isinstance(images, (str, os.PathLike)) else images


def images_fingerprint(images: Any, cfg: Any) -> str:
    """A content hash of the image set: a folder's files (`reportgen.archive.image_set_fingerprint`); for a
    Dataset, each item's pixels, size, mode and label (read once, item by item)."""
    if images is None or isinstance(images, (str, os.PathLike)):
        return image_set_fingerprint(cfg.images, cfg, None)
    source = dataset_image_set(images, cfg.max_images, cfg.seed)
    h = hashlib.sha256()
    for i in range(len(source.names)):
        try:
            image, label = read_item(source.dataset, source.item(i))
        except BadImage as exc:
            h.update(f"{i}:unreadable:{exc}".encode())
            continue
        pic = item_picture(image, i)
        h.update(f"{i}:{label}:{pic.mode}:{pic.size}".encode())
        h.update(pic.tobytes())
    return h.hexdigest()


def write_checkpoint(model: Any, path: Path, epoch: int, metrics: dict) -> Path:
    """``model``'s state dict as safetensors at ``path`` (written beside, then renamed into place), with the epoch
    and the metrics in its metadata (what `reportgen archive` reads to order checkpoints)."""
    from safetensors.torch import save_file

    # clones: safetensors refuses tensors that share memory (tied weights), and a checkpoint must not alias the model
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(state, str(tmp), metadata={"epoch": str(epoch), "metrics": json.dumps(metrics, sort_keys=True),
                                             "reportgen": __version__})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _plain_metrics(metrics: Optional[dict]) -> dict:
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise ConfigError(f"Snapshots: metrics is a {type(metrics).__name__}; give a dict of numbers by name")
    clean = {}
    for key, value in metrics.items():
        try:
            clean[str(key)] = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(f"Snapshots: metric '{key}' is {value!r}, not a number") from None
    return clean


def _kept_snapshots(out: Path, setting: str) -> list[tuple[str, Any]]:
    """(label, manifest) of the archive's snapshots built with this config and image set; others leave the index."""
    folder = out / "snapshots"
    kept = []
    for snap in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            manifest = read_manifest(snap)
        except ReportgenError:  # damaged, or written by another version: not kept
            continue
        record = manifest.snapshot or {}
        # one of this config and image set, with the comparisons' record, and named as this reportgen names an
        # epoch (an older archive's "step-00001" folders leave the index; their epochs are built again when called)
        if record.get("setting") == setting and has_record(snap) and isinstance(
                record.get("step"), int) and snap.name == epoch_label(record["step"]):
            kept.append((snap.name, manifest))
    return kept


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def _sha256_file(path: Path) -> str:
    return sha256_file(path)


# ---------------------------------------------------------------------------------------------------------------
# PyTorch Lightning


def on_epoch_end(snapshots: Snapshots, trainer: Any, pl_module: Any) -> Any:
    """What the Lightning callback does at the end of an epoch: nothing during the sanity check or on a process
    other than rank zero; else ``snapshots(pl_module, epoch=trainer.current_epoch, metrics=...)`` with the
    trainer's numeric scalar ``callback_metrics``."""
    if getattr(trainer, "sanity_checking", False) or not getattr(trainer, "is_global_zero", True):
        return None
    metrics = {}
    for key, value in dict(getattr(trainer, "callback_metrics", {}) or {}).items():
        if hasattr(value, "numel") and value.numel() != 1:
            continue
        try:
            metrics[str(key)] = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError):
            continue
    return snapshots(pl_module, epoch=int(trainer.current_epoch), metrics=metrics)


def lightning_callback(snapshots: Snapshots, when: str = "validation") -> Any:
    """A PyTorch Lightning ``Callback`` that calls ``snapshots`` at the end of every validation epoch
    (``when="validation"``, ``on_validation_epoch_end``) or training epoch (``when="train"``,
    ``on_train_epoch_end``). Needs ``lightning`` (or ``pytorch_lightning``); reportgen does not depend on it."""
    if when not in ("validation", "train"):
        raise ConfigError(f"lightning_callback: when='{when}'; give 'validation' or 'train'")
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:
            raise ReportgenError("lightning_callback needs PyTorch Lightning, which is not installed: pip install "
                                 "lightning, or call snapshots(model, epoch=...) in your own loop") from None

    def hook(self: Any, trainer: Any, pl_module: Any) -> None:
        on_epoch_end(snapshots, trainer, pl_module)

    name = "on_validation_epoch_end" if when == "validation" else "on_train_epoch_end"
    return type("ReportgenSnapshots", (Callback,), {name: hook})()
