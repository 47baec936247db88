"""The command line. Each command is thin and imports its implementation lazily, so `--help` answers at once."""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Callable, Optional

import click

from . import __version__
from .console import Output, duration
from .errors import ReportgenError, first_line


def common(fn: Callable) -> Callable:
    """-v/--verbose and -q/--quiet on every command; user errors become one line, anything else one line too."""

    @click.option("-v", "--verbose", count=True, help="More detail; tracebacks on errors.")
    @click.option("-q", "--quiet", is_flag=True, help="Only errors and the final line.")
    @functools.wraps(fn)
    def wrapper(*args, verbose: int = 0, quiet: bool = False, **kwargs):
        out = Output(verbose, quiet)
        try:
            return fn(*args, output=out, **kwargs)
        except ReportgenError:
            if verbose:
                import traceback

                traceback.print_exc()
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except BrokenPipeError:
            if reader_gone():
                raise  # `reportgen analyses | head`: click's main ends quietly, and `Reportgen.main` quiets stdout
            raise click.ClickException("unexpected BrokenPipeError (a pipe other than the output's was closed): "
                                       "run again with -v for the traceback, and please report it") from None
        except Exception as exc:
            if verbose:
                raise
            first = first_line(exc, 300)
            raise click.ClickException(f"unexpected {type(exc).__name__}: {first} (run again with -v for the "
                                       "traceback, and please report it)") from None

    return wrapper


def reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (``reportgen analyses | head``): poll reports an error
    on such a pipe's write end (POLLERR on Linux, POLLHUP elsewhere). False when stdout is no file (a test runner's
    capture) or poll is missing (Windows)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


class Reportgen(click.Group):
    """The command group; its `main` (what the ``reportgen`` command runs) ends quietly when the reader of the
    output has gone."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        finally:
            if reader_gone():
                # what is still buffered has no one to read it: stdout goes to /dev/null, so that Python's flush at
                # exit does not print "Exception ignored ... BrokenPipeError"
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)


def split_names(values: tuple[str, ...]) -> Optional[list[str]]:
    """Names given as repeated options and/or comma-separated lists; None when none were given."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or None


def parse_size(value: Optional[str]) -> Optional[list[int]]:
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts if p]
    except ValueError:
        raise ReportgenError(f"--input-size '{value}' is not a size: write HxW, e.g. 64x64")
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) <= 0:
        raise ReportgenError(f"--input-size '{value}' is not a size: write HxW of positive integers, e.g. 64x64")
    return nums


def parse_floats(value: Optional[str], name: str) -> Optional[list[float]]:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ReportgenError(f"{name} '{value}' is not a comma-separated list of numbers: write e.g. 0.5,0.5,0.5")


# `reportgen.tasks.TASKS`, named here so that --help does not import the build's modules
TASK_NAMES = ("classify", "binary", "multilabel", "regress", "segment", "detect", "embed")


def report_options(fn: Callable) -> Callable:
    """The options of a report build, shared by build and archive: what to analyse, where, and the input facts of
    models that do not describe their input. Collected by `report_config`."""
    for decorator in reversed([
        click.option("--images", help="Image folder (class sub-folders give labels) or zoo:NAME. Default: the zoo "
                                      "model's test split."),
        click.option("--masks", help="Folder of object masks, one per image at its relative path (any image "
                                     "format, non-zero = object); the maps are scored against them."),
        click.option("-o", "--out", help="Output folder (default: site)."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="TOML config with any build option."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to compute (default: auto)."),
        click.option("--seed", type=int, help="Seed of every random choice (default: 0)."),
        click.option("--only", multiple=True, help="Run only these analyses (comma-separated; see "
                                                   "`reportgen analyses`)."),
        click.option("--skip", multiple=True, help="Skip these analyses (comma-separated)."),
        click.option("--layers", multiple=True, help="Dotted layer names to analyse (see `reportgen layers MODEL`)."),
        click.option("--max-images", type=int, help="Use at most this many images."),
        click.option("--batch-size", type=int, help="Images per forward pass (default: 64)."),
        click.option("--memory", type=float, help="GiB one batch's activations may take; batches of a large model "
                                                  "shrink to fit (default: 2)."),
        click.option("--budget", type=float, help="GMAC (billions of multiply-adds) each costly analysis may "
                                                  "spend; over it, its defaults shrink and its page says so "
                                                  "(default: 2000; 0 = no limit)."),
        click.option("--samples", type=int, help="Number of sample images for per-image analyses (default: 8)."),
        click.option("--task", type=click.Choice(TASK_NAMES), help="What the model is for (default: what the "
                     "model says, else its output's form; embed and regress are never guessed): see docs/tasks.md."),
        click.option("--labels", help="Labels beyond class folders: a CSV (multilabel, regress), a folder of class "
                                      "masks (segment) or a COCO JSON of boxes (detect); see docs/tasks.md."),
        click.option("--target", help="What the attribution maps explain: a class, label or output name or index; "
                                      "class=NAME[,region=mask] (segment); box=x0,y0,x1,y1[:class] (detect); "
                                      "image=PATH (embed). Default: each task's own; see docs/targets.md."),
    ]):
        fn = decorator(fn)
    return input_options(fn)


def report_config(config_path: Optional[str], **options: Any) -> Any:
    """The BuildConfig from the config file and the options of `report_options` (plus model and weights)."""
    from .config import load_config

    for key in ("only", "skip", "layers"):
        options[key] = split_names(options[key])
    inputs = {key: options.pop(key) for key in ("input_size", "channels", "mean", "std", "class_names")}
    cfg = load_config(config_path, **options, **input_overrides(**inputs))
    check_early(cfg)
    return cfg


def check_early(cfg: Any) -> None:
    """What the build checks first, and the names and paths the loaders check later, all checked before torch is
    imported and the model loaded (10 s or more): a typo in a flag, an analysis name, an [analysis.NAME] table, a
    path or a zoo name is reported in about a second. The build checks the same again in its own order (the
    Python API goes there directly). Not in a job of several processes (torchrun): there the build checks them on
    every rank and rank 0 alone says what is wrong (`reportgen.distributed`), where a mistake here would be said
    once per rank."""
    from pathlib import Path

    from .build import choose_analyses
    from .config import check_paths
    from .distributed import current_world
    from .staging import check_out_path, check_replaceable

    if current_world() is not None:
        return
    out = check_out_path(Path(cfg.out))
    model_file = cfg.model if cfg.model and Path(cfg.model).expanduser().exists() else None
    check_replaceable(out, [model_file, cfg.weights, cfg.images, cfg.masks, cfg.labels])
    choose_analyses(cfg)
    check_paths(cfg)
    from .task_targets import check_syntax

    check_syntax(cfg.target)  # its form and a reference image's path; what fits the model is checked after loading


def input_options(fn: Callable) -> Callable:
    """The options that describe a non-zoo model's input; shared by build, archive and layers."""
    for decorator in reversed([
        click.option("--input-size", help="Model input size HxW, for models that do not say it (e.g. 224x224)."),
        click.option("--channels", type=int, help="Model input channels, 1 or 3."),
        click.option("--mean", help="Per-channel normalization mean, comma-separated (0..1 scale)."),
        click.option("--std", help="Per-channel normalization std, comma-separated."),
        click.option("--class-names", help="Class names in output order, comma-separated."),
    ]):
        fn = decorator(fn)
    return fn


def input_overrides(input_size, channels, mean, std, class_names) -> dict:
    return {"input_size": parse_size(input_size), "channels": channels, "mean": parse_floats(mean, "--mean"),
            "std": parse_floats(std, "--std"),
            "class_names": split_names((class_names,)) if class_names else None}


@click.group(cls=Reportgen, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reportgen")  # the distribution is reportgen-vision
def main() -> None:
    """reportgen: look inside a trained PyTorch image model and publish what you see as a static site."""


@main.command()
@click.argument("model", required=False)
@click.option("--weights", type=click.Path(dir_okay=False), help="Weights: .safetensors or a state dict (.pt).")
@report_options
@common
def build(model, weights, config_path, output: Output, **options):
    """Build the report of MODEL (default: the zoo's default model) into a static site."""
    cfg = report_config(config_path, model=model, weights=weights, **options)
    from .api import build_report  # after the checks, which need neither it nor torch

    report = build_report(config=cfg, output=output)
    if report.rank:  # a helper rank of a distributed build (torchrun): rank 0 wrote the site and says so
        return
    index = report.out / "index.html"
    for f in report.findings:  # the report's conclusions that need a look, most severe first
        if f.severity in ("alert", "warning"):
            output.info(f"{click.style(f.severity + ':', fg='red' if f.severity == 'alert' else 'yellow')} "
                        f"{f.title}. {f.sentence}")
    if report.failed:
        output.warn(f"{len(report.failed)} analysis(es) failed: {', '.join(report.failed)} (shown on their pages)")
    click.echo(f"Report written to {index} in {duration(report.seconds)}: open it in a browser, "
               f"or run `reportgen serve {report.out}`")
    if report.failed:
        sys.exit(1)


@main.command("layers")
@click.argument("model")
@click.option("--weights", type=click.Path(dir_okay=False), help="Weights file, as for build.")
@input_options
@common
def layers_cmd(model, weights, input_size, channels, mean, std, class_names, output: Output):
    """List MODEL's layers: dotted names, types, output shapes and parameter counts."""
    from .config import check_paths, load_config
    from .layers import default_layers, layer_table
    from .models import load_model

    cfg = load_config(None, model=model, weights=weights,
                      **input_overrides(input_size, channels, mean, std, class_names))
    check_paths(cfg)  # before torch is imported: a typo is reported in about a second
    loaded = load_model(cfg)
    for line in loaded.warnings:
        output.warn(line)
    rows = layer_table(loaded.model, loaded.input.shape)
    chosen = set(default_layers(rows))
    width = max([len(r.name) for r in rows] + [5])
    click.echo(f"{'layer'.ljust(width)}  {'type':<20} {'output shape':<18} {'params':>10}  calls")
    for r in rows:
        shape = " x ".join(map(str, r.out_shape)) if r.out_shape else "-"
        mark = " *" if r.name in chosen else ""
        view = f"  ({r.view})" if r.view else ""
        click.echo(f"{r.name.ljust(width)}  {r.type:<20} {shape:<18} {r.params:>10,}  {r.calls}{mark}{view}")
    total = sum(p.numel() for p in loaded.model.parameters())
    output.info(f"{len(rows)} layers, {total:,} parameters; * = analysed by default")


@main.command("analyses")
@common
def analyses_cmd(output: Output):
    """List the analyses, one line each, with their config keys."""
    from .analyses import all_analyses
    from .config import BuildConfig, describe_params

    config = BuildConfig()
    for a in all_analyses():
        click.echo(f"{a.name:<20} {a.section:<12} {a.summary}")
        if output.verbose:
            reads = a.reads(a.Params(), config)
            if reads:
                click.echo(f"    reads the results of: {', '.join(reads)}")
            for key, tp, default, doc in describe_params(a.Params):
                click.echo(f"    {key} = {default!r}  ({tp}) {doc}")


@main.group()
def zoo() -> None:
    """Reference models trained here on offline data."""


@zoo.command("list")
@common
def zoo_list(output: Output):
    """List the zoo's models."""
    import models_zoo

    for name, entry in models_zoo.ZOO.items():
        default = " (default)" if name == models_zoo.DEFAULT_MODEL else ""
        click.echo(f"{name:<16} {entry.summary}{default}")


@zoo.command("train")
@click.argument("name")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the per-epoch checkpoints (default: checkpoints/NAME).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=None, help="Override the recipe's number of epochs.")
@common
def zoo_train(name, out_dir, seed, epochs, output: Output):
    """Retrain zoo model NAME (seeded), saving a checkpoint after every epoch."""
    from pathlib import Path

    entry = _zoo_entry(name)
    target = Path(out_dir or f"checkpoints/{name}")
    if target.exists() and not target.is_dir():
        raise ReportgenError(f"--out '{target}' is a file: give a folder for the checkpoints")
    target.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = entry.train(target, seed=seed, epochs=epochs, log=output.info)
    if entry.task == "classify":
        score = f"test accuracy {report.test_accuracy:.2%}"
    else:  # a task entry's headline number (models_zoo.task_training.HEADLINE)
        from models_zoo.task_training import HEADLINE

        score = f"test {HEADLINE[entry.task]} {report.test_accuracy:.4f}"
    click.echo(f"trained {name}: {score} in {duration(time.perf_counter() - t0)}; "
               f"{len(report.checkpoints)} checkpoints in {target}")


@zoo.command("export")
@click.argument("name")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--limit", type=int, default=None, help="Write at most this many images.")
@common
def zoo_export(name, folder, split, limit, output: Output):
    """Write zoo data set NAME as an image folder: one sub-folder per class, or for a multi-label, regression,
    segmentation or detection entry the images in FOLDER/images with their --labels file beside them (labels.csv,
    labels/ or boxes.json)."""
    from pathlib import Path

    import models_zoo

    entry = _zoo_entry(name)
    if entry.kind != "image":
        raise ReportgenError(f"zoo model '{name}' is trained on 2-D points, not images: nothing to export")
    try:
        n = models_zoo.export_dataset(name, Path(folder), split=split, limit=limit)
    except ValueError as exc:
        raise ReportgenError(str(exc)) from None
    if entry.task in models_zoo.LABEL_FILES:
        labels = models_zoo.LABEL_FILES[entry.task]
        click.echo(f"wrote {n} images of {name} ({split}) to {folder}/images and their labels to "
                   f"{folder}/{labels}: reportgen build {name} --images {folder}/images --labels {folder}/{labels}")
    else:
        click.echo(f"wrote {n} images of {name} ({split}) to {folder}")


def _zoo_entry(name: str) -> Any:
    import models_zoo

    if name not in models_zoo.ZOO:
        raise ReportgenError(f"unknown zoo model '{name}': choose one of {', '.join(models_zoo.ZOO)}")
    return models_zoo.ZOO[name]


@main.command()
@click.argument("directory", default="site", type=click.Path(file_okay=False))
@click.option("--port", type=int, default=8000, show_default=True)
@common
def serve(directory, port, output: Output):
    """Serve a built site on http://127.0.0.1:PORT for viewing (Ctrl-C stops)."""
    import functools as ft
    import http.server
    from pathlib import Path

    from .staging import is_report_folder

    if not is_report_folder(Path(directory)):
        raise ReportgenError(f"'{directory}' is not a reportgen site: run `reportgen build` first or give its folder")
    handler = ft.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise ReportgenError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}): choose another --port") from None
    click.echo(f"serving {directory} at http://127.0.0.1:{port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@main.command()
@click.argument("directory", default="site", type=click.Path(file_okay=False))
@common
def render(directory, output: Output):
    """Render the pages of a built site, or of a checkpoint archive, again from its manifest.json (after a template
    change)."""
    from pathlib import Path

    from .staging import is_archive_folder, is_report_folder
    from .site import rerender

    if not is_report_folder(Path(directory)):
        raise ReportgenError(f"'{directory}' is not a reportgen site (no manifest.json of ours)")
    if is_archive_folder(Path(directory)):
        from .archive_index import rerender_archive  # matplotlib, for the index's charts: only for an archive

        pages = rerender_archive(Path(directory))
        click.echo(f"rendered {len(pages)} pages in {directory} (the archive's index and its snapshots)")
        return
    pages = rerender(Path(directory))
    click.echo(f"rendered {len(pages)} pages in {directory}")


@main.command("archive")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--model", help="Model spec of the checkpoints (default: the zoo model named in their metadata).")
@report_options
@common
def archive_cmd(checkpoints, model, config_path, output: Output, **options):
    """One report per checkpoint (files or folders of them, ordered by epoch) and an index comparing them.

    Snapshots whose checkpoint, image set and config are unchanged are reused, not recomputed.
    """
    from .archive import archive

    cfg = report_config(config_path, model=model, **options)
    summary = archive(cfg, list(checkpoints), output)
    if summary.get("rank"):  # a helper rank of a distributed archive (torchrun): rank 0 wrote it and says so
        return
    click.echo(f"Archive written to {summary['out'] / 'index.html'} in {duration(summary['seconds'])} "
               f"({len(summary['built'])} snapshots built, {len(summary['reused'])} reused)")
