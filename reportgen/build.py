"""The build, top to bottom: config -> model -> images -> plan -> one pass -> analyses -> files -> pages -> swap.

The site is written to a temporary folder beside ``--out`` and moved into place at the end, so a failed or
interrupted build leaves the previous site as it was. A lock file beside ``--out`` keeps two builds from writing the
same site at once.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import signal
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from . import __version__
from .artifacts import ArtifactWriter, NotApplicable, Result, to_jsonable
from .config import BuildConfig, analysis_params, config_dict, raise_errors
from .errors import ConfigError, OutputError, ReportgenError

MANIFEST = "manifest.json"
GENERATOR = "reportgen"


class BuildInterrupted(ReportgenError):
    """SIGINT or SIGTERM stopped the build; the exit status is 128 + the signal number, as a shell reports it."""

    exit_code = 130

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class _Signalled(KeyboardInterrupt):
    """Raised by the signal handler. A KeyboardInterrupt, so that no ``except Exception`` on the way (a model
    factory, a probe forward pass) can mistake it for an error of its own; `interrupts_as_errors` turns it into
    `BuildInterrupted` once every ``finally`` has cleaned up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Held:
    """Signals that arrive while a step that must not be cut in half runs (process-wide, as signal handlers are)."""

    depth = 0
    pending: Optional[int] = None


@contextmanager
def _held_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM (only under `interrupts_as_errors`) until the block ends; the caller checks
    ``_Held.pending`` afterwards."""
    _Held.depth += 1
    try:
        yield
    finally:
        _Held.depth -= 1


@dataclass
class BuildReport:
    out: Path
    seconds: float
    failed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)


def is_report_folder(path: Path) -> bool:
    """True when ``path`` holds a manifest.json written by reportgen."""
    import json

    manifest = path / MANIFEST
    try:
        return json.loads(manifest.read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def check_out_path(out: Path) -> Path:
    """Refuse output folders that must not be replaced: a file, /, the home folder, a folder that is not a report."""
    out = Path(out).expanduser()
    resolved = out.resolve()
    forbidden = {Path("/").resolve(), Path.home().resolve(), Path.cwd().resolve()}
    if resolved in forbidden or resolved == resolved.parent:
        raise OutputError(f"refusing to write the site to '{out}' ({resolved}): give a dedicated folder, e.g. --out site")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out '{out}' is a file, not a folder: give a folder for the site")
    if out.is_dir() and any(out.iterdir()) and not is_report_folder(out):
        raise OutputError(f"--out '{out}' exists and is not a reportgen site (no manifest.json of ours): "
                          "refusing to replace it; give a new or empty folder")
    parent = resolved.parent
    if not parent.exists():
        raise OutputError(f"the folder '{parent}' for --out does not exist: create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write beside '{out}': '{parent}' is read-only; give a writable --out")
    return resolved


def check_replaceable(out: Path, inputs: list[Optional[str]]) -> None:
    """Refuse to replace a report folder that holds the build's own inputs or files reportgen did not write there:
    replacing the site deletes everything in it."""
    import json

    for item in inputs:
        if item and not str(item).startswith(("zoo:", "torchvision:")):
            path = Path(item).expanduser().resolve()
            if path == out or out in path.parents:
                raise OutputError(f"'{item}' lies inside --out '{out}', which the build replaces: move it out of the "
                                  "site folder or give another --out")
    if not is_report_folder(out):
        return
    try:
        listed = json.loads((out / MANIFEST).read_text()).get("files")
    except (OSError, ValueError):
        return
    if not isinstance(listed, dict):
        return
    foreign = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if (p.is_file() or p.is_symlink()) and p.relative_to(out).as_posix() not in listed
                     and p.relative_to(out).as_posix() != MANIFEST)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
        raise OutputError(f"--out '{out}' holds files that reportgen did not write ({shown}), which a rebuild would "
                          "delete: move them out of the site folder or give another --out")


@contextmanager
def site_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on ``.<name>.lock`` beside the output folder; a second build fails at once, cleanly."""
    import fcntl

    lock_path = out.parent / f".{out.name}.lock"
    while True:
        try:
            fh = open(lock_path, "a+")
        except OSError as exc:
            raise OutputError(f"cannot create the lock file '{lock_path}' ({exc.strerror}): "
                              "give a writable --out") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise OutputError(f"another reportgen build is writing '{out}' right now: wait for it to finish") from None
        # the holder before us unlinks the file when it is done: a lock on that unlinked file guards nothing
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    try:
        yield
    finally:
        try:
            lock_path.unlink()  # while still holding the lock, so that no one locks a file about to vanish
        except OSError:
            pass
        fh.close()


@contextmanager
def interrupts_as_errors() -> Iterator[None]:
    """SIGTERM (and SIGINT) raise `BuildInterrupted`, so ``finally`` blocks remove the temporary folder."""

    def handler(signum, _frame):
        if _Held.depth:
            _Held.pending = signum
            return
        raise _Signalled(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield
    except _Signalled as exc:
        raise BuildInterrupted(f"build interrupted by {signal.Signals(exc.signum).name}: the previous site is "
                               "unchanged", exc.signum) from None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def swap_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with two renames; the old site is deleted only after the new one is in place.

    SIGINT/SIGTERM are held until both renames are done: a signal between them would leave no site at ``out``.
    """
    old = None
    _Held.pending = None
    with _held_signals():
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            if old is not None:
                os.rename(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    if _Held.pending is not None:
        signum, _Held.pending = _Held.pending, None
        raise BuildInterrupted(f"build interrupted by {signal.Signals(signum).name} while the new site was moved "
                               f"into place: the new site is complete in '{out}'", signum)


def select_analyses(cfg: BuildConfig) -> list:
    from .analyses import all_analyses

    analyses = all_analyses()
    names = [a.name for a in analyses]
    errors = []
    for key in ("only", "skip"):
        for n in getattr(cfg, key):
            if n not in names:
                errors.append(f"--{key}: unknown analysis '{n}'; known: {', '.join(names)}")
    for n in cfg.analysis:
        if n not in names:
            errors.append(f"analysis.{n}: unknown analysis; known: {', '.join(names)}")
    raise_errors(errors, "options")
    chosen = [a for a in analyses if (not cfg.only or a.name in cfg.only) and a.name not in cfg.skip]
    if not chosen:
        raise ConfigError("--only/--skip leave no analysis to run: check the names with `reportgen analyses`")
    return chosen


def resolve_params(analyses: list, cfg: BuildConfig) -> dict:
    errors: list[str] = []
    params = {}
    for a in analyses:
        values = cfg.analysis.get(a.name, {})
        if not isinstance(values, dict):
            errors.append(f"analysis.{a.name}: expected a table of parameters")
            continue
        params[a.name] = analysis_params(a.Params, a.name, values, errors)
    raise_errors(errors, "config")
    return params


def pick_samples(passed: Any, n: int, rng: np.random.Generator) -> list[int]:
    """A seeded pick of ``n`` image indices, spread over the true classes (or predicted ones when unlabelled)."""
    keys = passed.labels if (passed.labels >= 0).any() else passed.preds
    by_class: dict[int, list[int]] = {}
    for idx, key in zip(passed.indices.tolist(), keys.tolist()):
        by_class.setdefault(int(key), []).append(idx)
    for members in by_class.values():
        rng.shuffle(members)
    picks: list[int] = []
    order = sorted(by_class)
    depth = 0
    while len(picks) < min(n, len(passed.indices)):
        for c in order:
            if depth < len(by_class[c]) and len(picks) < n:
                picks.append(by_class[c][depth])
        depth += 1
    return sorted(picks)


def run_pass(ctx: Any, reducers: dict, batch_size: int, warn: Callable[[str], None]) -> Any:
    """Push the image set through the model once; every reducer sees every batch; logits are kept for all images."""
    import torch

    from .capture import capture
    from .context import PassResult

    layers = sorted({layer for r in reducers.values() for layer in r.layers})
    indices, logits, labels = [], [], []
    n = len(ctx.images)
    batches = ctx.images.batches(batch_size, ctx.device, on_bad=lambda name, why: warn(f"skipped image '{name}': {why}"))
    with capture(ctx.model, layers) as rec, torch.no_grad():
        for batch in ctx.iterate(batches, length=(n + batch_size - 1) // batch_size, label="forward pass"):
            try:
                out = ctx.model(batch.inputs)
            except Exception as exc:  # the user's model failing on real data is a model problem, said in one line
                from .errors import ModelError, first_line

                raise ModelError(f"model '{ctx.loaded.spec}' failed on a batch of the image set "
                                 f"({type(exc).__name__}: {first_line(exc)}): check that it runs on inputs of shape "
                                 f"{tuple(batch.inputs.shape)}") from None
            for reducer in reducers.values():
                reducer.update(batch, {name: rec.acts[name] for name in reducer.layers}, out)
            indices.append(batch.indices.numpy())
            logits.append(out.detach().float().cpu().numpy())
            labels.append(batch.labels.numpy())
    if not indices:
        from .errors import DataError

        raise DataError(f"none of the {n} images in '{ctx.images.source}' could be read: see the warnings above")
    return PassResult(np.concatenate(indices), np.concatenate(logits), np.concatenate(labels))


def build(cfg: BuildConfig, *, log: Callable[[str], None] = print, warn: Callable[[str], None] = print,
          progress: Optional[Callable] = None, verbose: bool = False) -> BuildReport:
    """Build the report that ``cfg`` describes into ``cfg.out`` (atomically); returns where and how long."""
    t0 = time.perf_counter()
    out = check_out_path(Path(cfg.out))
    model_file = cfg.model if cfg.model and Path(cfg.model).expanduser().exists() else None
    check_replaceable(out, [model_file, cfg.weights, cfg.images])
    analyses = select_analyses(cfg)
    params = resolve_params(analyses, cfg)
    with staged_site(out, []) as tmp:
        report = _build_into(cfg, analyses, params, tmp, log, warn, progress, verbose, t0)
    report.out = out
    report.seconds = time.perf_counter() - t0
    return report


@contextmanager
def staged_site(out: Path, inputs: list[Optional[str]]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; when the block succeeds, swap it into place as ``out``.

    Signals are handled first, so that the lock file and the temporary folder are removed whatever stops the
    build; on any error the previous site stays as it was and the temporary folder is deleted.
    """
    check_replaceable(out, inputs)
    with interrupts_as_errors(), site_lock(out):
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        try:
            tmp.mkdir()
            yield tmp
            # a report folder replaced meanwhile by something else must not be deleted
            if out.exists() and any(out.iterdir()) and not is_report_folder(out):
                raise OutputError(f"--out '{out}' changed during the build and is no longer a reportgen site: "
                                  f"the new site was not moved into place")
            check_replaceable(out, [])  # files dropped into the old site meanwhile
            swap_into_place(tmp, out)
        finally:
            with _held_signals():  # a second Ctrl-C must not cut the clean-up short; the build is ending anyway
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)


def _build_into(cfg, analyses, params, tmp: Path, log, warn, progress, verbose, t0,
                extra: Optional[dict] = None) -> BuildReport:
    """Build one report into the existing, empty folder ``tmp``; ``extra`` is merged into its manifest."""
    import torch

    from .capture import resolve_layer
    from .context import Context
    from .data import load_image_set, map_labels
    from .layers import default_layers, layer_table
    from .models import load_model, resolve_device

    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    image_class_names = None
    if cfg.images and not cfg.images.startswith("zoo:"):
        from .data import folder_image_set
        from .models import InputSpec

        # the class folders may name the classes of a model that does not name them itself
        image_class_names = folder_image_set(cfg.images, InputSpec("image", (1, 1), 3, (0,) * 3, (1,) * 3)).class_names
    t_load = time.perf_counter()
    loaded = load_model(cfg, image_class_names)
    images = load_image_set(cfg.images, loaded.input, loaded.zoo_name, cfg.seed, cfg.max_images)
    map_labels(images, loaded.class_names)
    rows = layer_table(loaded.model, loaded.input.shape)
    for name in cfg.layers:
        resolve_layer(loaded.model, name)
    layers = list(cfg.layers) or default_layers(rows)
    loaded.model.to(device)
    ctx = Context(config=cfg, loaded=loaded, images=images, device=device, layers=layers, log=log, progress=progress)
    timings: dict[str, float] = {"load model and images": time.perf_counter() - t_load}

    applicable, skipped = [], {}
    for a in analyses:
        if a.needs_images and not ctx.is_image_model:
            skipped[a.name] = "applies to image models only"
            continue
        try:
            a.check(ctx, params[a.name])
            applicable.append(a)
        except NotApplicable as exc:
            skipped[a.name] = str(exc)

    t_pass = time.perf_counter()
    reducers = {}
    for a in applicable:
        for key, r in a.reducers(ctx, params[a.name]).items():
            reducers[f"{a.name}/{key}"] = r
    ctx.passed = run_pass(ctx, reducers, cfg.batch_size, warn)
    ctx.samples = pick_samples(ctx.passed, cfg.samples, ctx.rng("samples"))
    timings["forward pass"] = time.perf_counter() - t_pass

    from . import imaging

    writer = ArtifactWriter(tmp)
    sections = []
    failed = []
    for a in ctx.iterate(analyses, length=len(analyses), label="analyses"):
        entry = {**a.describe(), "status": "ok", "reason": None, "seconds": 0.0, "items": [], "metrics": {},
                 "notes": [], "params": to_jsonable(dataclasses.asdict(params[a.name]))}
        if a.name in skipped:
            entry.update(status="not applicable", reason=skipped[a.name])
            sections.append(entry)
            continue
        mine = {k.split("/", 1)[1]: r for k, r in reducers.items() if k.split("/", 1)[0] == a.name}
        t = time.perf_counter()
        log(f"running {a.name}")
        try:
            result: Result = a.run(ctx, params[a.name], mine)
            entry["items"] = [imaging.render_item(item, writer, f"img/{a.name}") for item in result.items]
            entry["metrics"] = to_jsonable(result.metrics)
            entry["notes"] = list(result.notes)
        except NotApplicable as exc:
            entry.update(status="not applicable", reason=str(exc))
        except (ReportgenError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if verbose:
                traceback.print_exc()
            failed.append(a.name)
            entry.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            warn(f"analysis '{a.name}' failed: {type(exc).__name__}: {exc} (run with -v for the traceback)")
        entry["seconds"] = time.perf_counter() - t
        timings[a.name] = entry["seconds"]
        sections.append(entry)

    manifest = make_manifest(cfg, ctx, rows, sections, timings, writer, time.perf_counter() - t0)
    manifest.update(extra or {})
    from .site import render_site

    render_site(manifest, tmp, writer)
    return BuildReport(out=tmp, seconds=0.0, failed=failed, manifest=manifest)


def make_manifest(cfg, ctx, rows, sections, timings, writer, seconds) -> dict:
    import torch
    import torchvision

    images = ctx.images
    passed = ctx.passed
    display_samples = []
    for i in ctx.samples:
        row = passed.row(i)
        pred = int(passed.preds[row])
        label = int(images.labels[i])
        display_samples.append({"index": int(i), "name": images.names[i],
                                "label": ctx.class_names[label] if label >= 0 else None,
                                "pred": ctx.class_names[pred], "prob": float(passed.probs[row, pred])})
    return to_jsonable({
        "generator": GENERATOR,
        "version": __version__,
        "created_with": {"reportgen": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                         "python": platform.python_version(), "device": str(ctx.device)},
        "model": {"spec": ctx.loaded.spec, "form": ctx.loaded.form, "weights": ctx.loaded.weights_path,
                  "weights_sha256": ctx.loaded.weights_sha256, "zoo": ctx.loaded.zoo_name,
                  "parameters": int(sum(p.numel() for p in ctx.model.parameters())),
                  "input": dataclasses.asdict(ctx.loaded.input), "classes": ctx.class_names,
                  "notes": ctx.loaded.notes,
                  "layers": [dataclasses.asdict(r) for r in rows], "selected_layers": ctx.layers},
        "images": {"source": images.source, "count": len(images), "used": int(len(passed.indices)),
                   "labelled": bool(images.has_labels), "classes": images.class_names,
                   "class_counts": (np.bincount(images.labels[images.labels >= 0],
                                                minlength=len(ctx.class_names)).tolist()
                                    if images.has_labels else None),
                   "skipped": [{"name": n, "reason": r} for n, r in images.skipped],
                   "conversions": images.conversions, "notes": images.notes, "samples": display_samples},
        "config": config_dict(cfg),
        "seed": cfg.seed,
        "timings": timings,
        "build_seconds": seconds,
        "sections": sections,
        "files": dict(sorted(writer.hashes.items())),
    })
