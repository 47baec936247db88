"""The build, top to bottom: load -> plan -> forward pass -> analyse -> write -> render.

`build` checks the output folder, then `build_site` runs the recipe into a staged folder that
`reportgen.staging` swaps into place at the end (atomic; a failed or interrupted build leaves the previous site
as it was). `reportgen build`, `reportgen.build_report` (`reportgen.api`, which adds a model object and a Dataset
as `Given`), `reportgen archive` and `reportgen.Snapshots` all run it. Each stage is a public function with one job:

- `load`: the model and the image set, each read once;
- `plan`: one probe pass teaches the build the model's facts (`reportgen.plan.ModelFacts`); each chosen analysis
  says whether it applies and which reducers it wants on the one pass;
- `forward_pass`: the image set goes through the model once; every reducer sees every batch;
- `analyse`: each analysis runs on the shared context and returns arrays and numbers (no files, no HTML);
- `write`: each result's items become files through the artifact writer, and one manifest entry per analysis;
- `render`: pages from the manifest alone (`reportgen.site`), then manifest.json.
"""

from __future__ import annotations

import dataclasses
import platform
import time
import traceback
import warnings
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from . import __version__
from .artifacts import ArtifactWriter, NotApplicable, Result, Table, to_jsonable
from .config import BuildConfig, analysis_params, config_dict, raise_errors
from .console import Output
from .errors import ConfigError, ReportgenError
from .manifest import AnalysisEntry, Manifest
from .staging import check_out_path, check_replaceable, staged_site


@dataclass
class BuildReport:
    out: Path
    seconds: float
    failed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    manifest: Optional[Manifest] = None
    rank: int = 0  # a distributed build's helper ranks (> 0) write no site: their share of the work went to rank 0

    @property
    def findings(self) -> list:
        """The report's conclusions (`reportgen.manifest.Finding`: id, severity, title, sentence, threshold,
        source, numbers, links), most severe first; empty when the findings analysis did not run."""
        return list(self.manifest.findings) if self.manifest is not None else []


@dataclass
class Chosen:
    """The analyses a config asks for, in report order; the resolved parameters (by analysis name) of those and of
    every analysis they read (`Analysis.reads`, which may name analyses not chosen); and what each chosen one
    reads."""

    analyses: list
    params: dict
    reads: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Plan:
    """What the plan stage decides, once, for the whole build.

    `make_plan` (before the pass): ``skipped``, why the chosen and read analyses that do not apply to this model do
    not; ``reducers``, the one pass's reducers of the chosen ones that do (by analysis name, then the analysis's own
    key); ``params``, the settings of every chosen and read analysis; ``reads``, the applicable analyses each chosen
    one reads. `settle` (after the pass, when the sample images are known): ``params`` fitted to the compute budget,
    ``refused`` (over the budget: why not run), ``notes`` (what the budget changed, for the page) and ``order`` (the
    chosen analyses in run order: report order, each moved after the analyses it reads)."""

    skipped: dict[str, str]
    reducers: dict[str, dict]
    params: dict[str, Any] = field(default_factory=dict)
    reads: dict[str, list[str]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    order: list = field(default_factory=list)

    def upstream(self, name: str, results: Optional[dict] = None, failed: Optional[dict] = None) -> Any:
        """What analysis ``name`` is handed of the analyses it reads (`reportgen.analyses.Upstream`): their
        settings, which of them have a page in this build, the ``results`` of those that ran (by name) and why
        the others did not (over the budget, or ``failed``: {name: why})."""
        from .analyses import Upstream

        reads = self.reads.get(name, [])
        chosen = {a.name for a in self.order}
        missing = {n: "its page was not run, being over the build's compute budget (--budget)"
                   for n in reads if n in self.refused}
        missing.update((n, why) for n, why in (failed or {}).items() if n in reads)
        return Upstream(params={n: self.params[n] for n in reads},
                        pages=frozenset(n for n in reads if n in chosen and n not in self.refused),
                        results={n: r for n, r in (results or {}).items() if n in reads}, missing=missing)


@dataclass
class Given:
    """What a Python caller hands the build instead of names in the config (`reportgen.build_report`).

    ``model``: an ``nn.Module`` used as it is: never moved to another device, its train/eval flags,
    ``requires_grad`` flags and ``.grad`` tensors restored at the end (also after an error), no hook left.
    ``images``: a map-style ``Dataset`` of (image, label) pairs (`reportgen.api.dataset_image_set`).
    ``model_sha256``: the sha256 of the model's state dict, when the caller has it already."""

    model: Any = None
    images: Any = None
    model_sha256: Optional[str] = None


def build(cfg: BuildConfig, output: Optional[Output] = None, given: Optional[Given] = None,
          group: Any = None) -> BuildReport:
    """Build the report that ``cfg`` (and ``given``) describe into ``cfg.out`` (atomically); returns where and how
    long. The one path of `reportgen build` and `reportgen.build_report`.

    Under torchrun (several processes) every process runs it with its ``group`` (`reportgen.distributed`): all
    share the one pass and the per-item work of the analyses that split it (``splits``), rank 0 writes the site,
    the others return a report without one (``rank`` > 0)."""
    from .distributed import current_world

    world = current_world() if group is None else None
    if world is not None:
        from .distributed import shared_build

        return shared_build(world, cfg.device, lambda grp: build(cfg, output, given, grp))
    output = output or Output()
    t0 = time.perf_counter()
    if group is not None and group.rank != 0:
        report = build_site(cfg, choose_analyses(cfg), None, output, given=given, group=group)
        report.seconds = time.perf_counter() - t0
        return report
    out = check_out_path(Path(cfg.out))
    model_file = cfg.model if cfg.model and Path(cfg.model).expanduser().exists() else None
    check_replaceable(out, [model_file, cfg.weights, cfg.images, cfg.masks, cfg.labels])
    chosen = choose_analyses(cfg)
    with staged_site(out, []) as tmp:
        report = build_site(cfg, chosen, tmp, output, given=given, group=group)
    report.out = out
    report.seconds = time.perf_counter() - t0
    return report


def build_site(cfg: BuildConfig, chosen: Chosen, folder: Path, output: Output,
               snapshot: Optional[dict] = None, given: Optional[Given] = None, group: Any = None) -> BuildReport:
    """The recipe: one report into the existing, empty ``folder``; ``snapshot`` (a checkpoint archive's record of
    this snapshot) goes into its manifest. The global RNG states are restored afterwards (a training loop that
    builds a snapshot every epoch keeps its own random stream), and so is a ``given`` model. ``group``: the process
    group of a distributed build; its ranks other than 0 run only their share of the pass and of the analyses
    that split their work (``folder`` is not used)."""
    import torch

    from .capture import kept_as_is

    model = given.model if given is not None else None
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), kept_as_is(model):
        return _build_site(cfg, chosen, folder, output, snapshot, given, group)


def _build_site(cfg: BuildConfig, chosen: Chosen, folder: Path, output: Output, snapshot: Optional[dict],
                given: Optional[Given], group: Any = None) -> BuildReport:
    from .budget import prefetch_counter

    t0 = time.perf_counter()
    prefetch_counter()  # the compute budget's counter, imported while the model loads and the pass runs
    ctx = load(cfg, output, given)
    problems = ctx.images.masks.problems if ctx.images.masks is not None else []
    if group is None or group.rank == 0:  # every rank found the same: rank 0 says it once
        for name, why in problems[:5]:
            output.warn(f"no mask for image '{name}': {why}")
        if len(problems) > 5:
            output.warn(f"... and {len(problems) - 5} more images without a mask (the data page lists them)")
    timings = {"load model and images": time.perf_counter() - t0}
    t_plan = time.perf_counter()
    plan = make_plan(ctx, chosen)
    timings["plan (one probe pass)"] = time.perf_counter() - t_plan
    t_pass = time.perf_counter()
    ctx.predictions = forward_pass(ctx, plan.reducers, group)
    if group is not None:
        share_pass(ctx, chosen, plan, group)
    # spread over the images' classes: a multi-label or regression model's labels are rows, not one class each
    classes = ctx.predictions.labels if ctx.predictions.labels.ndim == 1 else ctx.images.labels[ctx.predictions.indices]
    ctx.samples = pick_samples(ctx.predictions.indices, classes, cfg.samples, ctx.rng("samples"))
    timings["forward pass"] = time.perf_counter() - t_pass
    settle(ctx, chosen, plan)  # from here on the context is read-only
    if group is not None and group.rank != 0:
        # a helper rank computes its share of the chunks of the analyses that split their work, in rank 0's order
        # (so that the collectives line up), and writes nothing
        for _ in analyse(ctx, [a for a in plan.order if getattr(a, "splits", False)], plan):
            pass
        return BuildReport(out=folder, seconds=0.0, rank=group.rank)
    writer = ArtifactWriter(folder)
    report_order = {a.name: k for k, a in enumerate(chosen.analyses)}
    findings: list = []
    entries = sorted(write(kept_findings(analyse(ctx, plan.order, plan), findings), writer, ctx.output),
                     key=lambda e: report_order[e.name])
    timings.update((e.name, e.seconds) for e in entries if e.name not in plan.skipped)
    manifest = make_manifest(cfg, ctx, entries, timings, time.perf_counter() - t0, snapshot)
    manifest.findings = findings
    render(manifest, folder, writer)
    return BuildReport(out=folder, seconds=0.0, failed=[e.name for e in entries if e.status == "failed"],
                       manifest=manifest)


def share_pass(ctx: Any, chosen: Chosen, plan: Plan, group: Any) -> None:
    """Rank 0's result of the one pass on every rank of a distributed build: the predictions, the unreadable images
    and the merged reducers of the analyses that split their work (``splits``: what they read), so that every rank
    picks the same sample images and runs those analyses on the same state. The helper ranks go quiet from here
    (rank 0 says everything once) and join the analyses' per-item work (`reportgen.context.Context.map_chunks`)."""
    split = [a.name for a in chosen.analyses if getattr(a, "splits", False) and a.name in plan.reducers]
    mine = (ctx.predictions, list(ctx.images.skipped), {n: plan.reducers[n] for n in split})
    predictions, skipped, reducers = group.share(mine if group.rank == 0 else None)
    if group.rank != 0:
        ctx.predictions = predictions
        ctx.images.skipped[:] = skipped
        plan.reducers.update(reducers)
        ctx.output = Output(verbose=ctx.output.verbose, silent=True)
    ctx.group = group


def choose_analyses(cfg: BuildConfig) -> Chosen:
    """The analyses ``cfg`` selects (--only/--skip), what each reads (`Analysis.reads`), and the parameters of
    both; every config error reported at once."""
    from .analyses import get

    analyses = select_analyses(cfg)
    params = resolve_params(analyses, cfg)
    reads, errors = {}, []
    for a in analyses:
        try:
            reads[a.name] = a.reads(params[a.name], cfg)
        except ConfigError as exc:
            errors.append(str(exc))
    raise_errors(errors, "config")
    unchosen = [get(n) for n in dict.fromkeys(n for names in reads.values() for n in names) if n not in params]
    params.update(resolve_params(unchosen, cfg))
    return Chosen(analyses, params, reads)


def load(cfg: BuildConfig, output: Output, given: Optional[Given] = None) -> Any:
    """Load the model (eval mode, on the configured device, not run yet) and open the image set; returns the build
    `Context` (``ctx.facts`` is None until `make_plan`).

    A folder of images is scanned once: its class folders may name the classes of a model that does not name them
    itself, and the same scan is then read with the model's input spec. A ``given`` model object stays on its own
    device; a ``given`` Dataset is read item by item (`reportgen.api.dataset_image_set`).
    """
    import torch

    from .context import Context
    from .data import load_image_set, scan_folder
    from .models import load_model, resolve_device

    torch.manual_seed(cfg.seed)
    given = given or Given()
    scanned = scan_folder(cfg.images) if cfg.images and not cfg.images.startswith("zoo:") and (
        given.images is None) else None
    dataset = None
    if given.images is not None:
        from .data import dataset_image_set

        dataset = dataset_image_set(given.images, cfg.max_images, cfg.seed)
    class_folders = scanned.class_names if scanned else dataset.class_names if dataset else None
    if given.model is not None:
        from .given import loaded_from_object, model_device

        loaded = loaded_from_object(given.model, cfg, given.model_sha256)
        device = model_device(given.model, cfg.device)
    else:
        loaded = load_model(cfg, class_folders, check=False)  # the plan's probe checks the output
        for line in loaded.warnings:  # what the model file does not say (a .pt2's mean and std)
            output.warn(line)
        device = resolve_device(cfg.device)
        loaded.model.to(device)
    if dataset is not None:
        images = dataset.bind(loaded.input, cfg.masks)
    else:
        images = load_image_set(cfg.images, loaded.input, loaded.zoo_name, cfg.seed, cfg.max_images,
                                scanned=scanned, masks=cfg.masks)
    return Context(config=cfg, loaded=loaded, images=images, device=device, facts=None, output=output,
                   class_folders=class_folders)


def make_plan(ctx: Any, chosen: Chosen) -> Plan:
    """Learn the model's facts from one probe pass (`reportgen.plan.learn_model`, which also checks its output and
    names its classes), then decide which chosen analyses, and which analyses they read, apply to this model and
    data (each analysis's `check`, which reads ``ctx.facts`` and never runs the model), and the reducers each chosen
    one wants on the one pass. An analysis none of whose reads applies does not apply either."""
    from .analyses import get
    from .data import map_labels
    from .plan import learn_model

    cfg = ctx.config
    ctx.facts = learn_model(ctx.loaded, list(cfg.layers), ctx.generator("plan"), ctx.device, ctx.class_folders)
    map_labels(ctx.images, ctx.loaded.class_names)
    read_task_labels(ctx)
    read = [get(n) for n in chosen.params if n not in {a.name for a in chosen.analyses}]
    plan = Plan(skipped={}, reducers={}, params=dict(chosen.params))
    # the analyses read first, and each chosen one after those it reads (a reader's own check may depend on them,
    # and what it reads that does not apply is known by then: the findings come first in report order)
    for a in [*read, *run_order(chosen.analyses, chosen.reads)]:
        why = not_applicable(ctx, a, chosen.params[a.name])
        reads = [n for n in chosen.reads.get(a.name, []) if n not in plan.skipped]
        if not why and chosen.reads.get(a.name) and not reads:
            why = a.nothing_to_read
        if why:
            plan.skipped[a.name] = why
        elif a in chosen.analyses:
            plan.reads[a.name] = reads
            plan.reducers[a.name] = a.reducers(ctx, chosen.params[a.name])
    return plan


def read_task_labels(ctx: Any) -> None:
    """The image set's labels beyond class folders (``--labels``, read once the model's task and class names are
    known: `reportgen.labels.read_labels`) into ``ctx.images.truth``, and one warning for the images left without
    labels (a zoo task data set brings its own truths)."""
    from .labels import read_labels

    cfg = ctx.config
    if cfg.labels:
        folder = cfg.images and not cfg.images.startswith("zoo:") and Path(cfg.images).is_dir()
        every = None
        if folder and cfg.max_images is not None:  # an entry for an image the pick left out is no mistake
            from .data import scan_folder

            every = scan_folder(cfg.images).names
        ctx.images.truth = read_labels(cfg.labels, ctx.task, ctx.images, ctx.class_names, every)
    truth = ctx.images.truth
    if truth is not None and truth.unlabelled:
        shown = ", ".join(f"'{n}'" for n in truth.unlabelled[:3]) + (", ..." if len(truth.unlabelled) > 3 else "")
        ctx.output.warn(f"{len(truth.unlabelled)} of {len(ctx.images)} images have no labels in '{truth.source}' and "
                        f"are left unscored: {shown}")


def not_applicable(ctx: Any, analysis: Any, params: Any) -> str:
    """Why ``analysis`` does not apply to this model and data, or "" when it does (its `check`, the model kinds
    it needs, and the tasks it is written for: `Analysis.tasks`)."""
    if analysis.needs_images and not ctx.is_image_model:
        return "applies to image models only"
    if ctx.task not in analysis.tasks:
        return analysis.not_for_task(ctx.task)
    if analysis.needs_logits and ctx.facts.output_reason:
        return f"{ctx.facts.output_reason}: there is no class score to work with"
    try:
        analysis.check(ctx, params)
    except NotApplicable as exc:
        return str(exc)
    return ""


def settle(ctx: Any, chosen: Chosen, plan: Plan) -> None:
    """After the pass, when the sample images are known: fix every chosen analysis's settings within the compute
    budget (`reportgen.budget.fit`; an analysis that reads others is fitted after them, so that its cost counts
    the settings they run with) and the run order (``plan.order``: report order, each analysis after those it
    reads). Says on the console what the analyses will spend at most, with the time that takes at the measured
    speed of a forward and backward pass (`reportgen.budget.measured_speed`), when that is a minute or more. Then
    the context is made read-only: what the analyses share goes through their results (`Plan.upstream`)."""
    from .budget import count_macs, estimate_line, fit, measured_speed

    facts = ctx.facts
    if facts.python and not facts.macs and ctx.samples:
        facts.macs, facts.macs_until = count_macs(ctx.model, ctx.images.load_inputs(ctx.samples[:1], ctx.device))
    plan.order = run_order(chosen.analyses, plan.reads)
    fitted = {}
    for a in plan.order:
        if a.name in plan.skipped:
            continue
        f = fitted[a.name] = fit(a, ctx, plan.params[a.name], plan.upstream(a.name))
        if f.refused:
            plan.refused[a.name] = f.refused
        else:
            plan.params[a.name] = f.params
            if f.note:
                plan.notes[a.name] = f.note
    total = sum(f.cost for f in fitted.values() if not f.refused)
    # worth a line only when the analyses cost more than a few hundred passes of one image (and someone reads it)
    if not ctx.output.quiet and facts.macs and total > 300 * facts.macs and ctx.samples:
        # a batch as the analyses run them (a pass of one or two images measures mostly per-call overhead)
        n = min(ctx.batch_size(grad=True), 8)
        x = ctx.images.load_inputs([ctx.samples[k % len(ctx.samples)] for k in range(n)], ctx.device)
        speed = measured_speed(ctx.model, x, facts.macs)
        if total / speed >= 60:
            ctx.output.info(estimate_line(fitted, speed))
    for name, f in fitted.items():
        if f.refused or f.note:
            ctx.output.detail(f"{name}: {f.refused or f.note}")
    ctx.freeze()


def run_order(analyses: list, reads: dict[str, list[str]]) -> list:
    """``analyses`` (in report order) with each one moved after the analyses it reads (``reads``: name -> names);
    otherwise in report order. A cycle is a bug in the analyses' declarations."""
    by_name = {a.name: a for a in analyses}
    done: dict[str, Any] = {}

    def visit(a: Any, path: tuple) -> None:
        if a.name in done:
            return
        if a.name in path:
            raise RuntimeError(f"analyses read each other in a cycle: {' -> '.join(path + (a.name,))}")
        for n in reads.get(a.name, []):
            if n in by_name:
                visit(by_name[n], path + (a.name,))
        done[a.name] = a

    for a in analyses:
        visit(a, ())
    return list(done.values())


def forward_pass(ctx: Any, reducers: dict[str, dict], group: Any = None) -> Any:
    """Push the image set through the model once, ``batch_size`` images at a time; every reducer sees every batch;
    the logits of every readable image are kept (`reportgen.context.Predictions`).

    With the ``group`` of a distributed build each rank reads and runs only its batches (`Group.batches`), the
    reducers agree on their histograms' ranges round by round (`Reducer.span`/`cover`), and rank 0 receives every
    rank's share merged (`Group.gather`); the other ranks return None."""
    import torch

    from .analyses import Reducer
    from .capture import capture
    from .context import Predictions
    from .tasks import TaskPass, task_labels

    task = ctx.task
    if group is not None and task != "classify":
        raise ConfigError(f"a build on several processes (torchrun) handles classifiers only, and this model's task "
                          f"is {task}: run it as one process")
    # what the pass keeps of each batch's output for the task; a classifier's logits are kept as they come
    kept = TaskPass(task, len(ctx.class_names) if task in ("segment", "detect") else 0,
                    size=tuple(ctx.loaded.input.size or ()), offset=ctx.loaded.label_offset,
                    truth=ctx.images.truth, spec=ctx.loaded.spec)
    batch_size = ctx.batch_size(grad=False)
    flat = [r for mine in reducers.values() for r in mine.values()]
    layers = sorted({layer for r in flat for layer in r.layers})
    indices, logits, labels = [], [], []
    n = len(ctx.images)
    warn = ctx.output.warn

    def on_bad(name: str, why: str) -> None:
        warn(f"skipped image '{name}': {why}")

    if group is None:
        batches, length = ctx.images.batches(batch_size, ctx.device, on_bad=on_bad), (n + batch_size - 1) // batch_size
    else:
        batches, length = group.batches(ctx.images, batch_size, ctx.device, on_bad), group.rounds(n, batch_size)
    # the same decision on every rank: whether any reducer holds state that the ranks must agree on
    agree = group is not None and any(type(r).span is not Reducer.span for r in flat)
    with capture(ctx.model, layers, as_maps=True) as rec, torch.no_grad():
        for batch in ctx.iterate(batches, length=length, label="forward pass"):
            if batch is None:  # a round without a batch for this rank: it still takes part in the agreement
                if agree:
                    group.cover(flat, None)
                continue
            try:
                out = ctx.model(batch.inputs)
            except Exception as exc:  # the user's model failing on real data is a model problem, said in one line
                from .errors import ModelError, first_line

                raise ModelError(f"model '{ctx.loaded.spec}' failed on a batch of the image set "
                                 f"({type(exc).__name__}: {first_line(exc)}): check that it runs on inputs of shape "
                                 f"{tuple(batch.inputs.shape)}") from None
            if agree:
                group.cover(flat, [r.span({name: rec.acts[name] for name in r.layers}) for r in flat])
            if task == "classify":
                scores = out
                logits.append(out.detach().float().cpu().numpy())
            else:  # the reducers see the task's per-image scores (B, K), as Predictions.logits holds them
                scores = kept.batch_scores(out, batch.indices.numpy())
            for reducer in flat:
                reducer.update(batch, {name: rec.acts[name] for name in reducer.layers}, scores)
            indices.append(batch.indices.numpy())
            labels.append(batch.labels.numpy())
    if group is not None:
        shared = group.gather(reducers, indices, logits, labels, ctx.images.skipped, ctx.images.names)
        if shared is None:
            return None
        idx, all_logits, lab, bad = shared
        ctx.images.skipped[:] = bad
        indices, logits, labels = ([idx], [all_logits], [lab]) if len(idx) else ([], [], [])
    if not indices:
        from .errors import DataError

        raise DataError(f"none of the {n} images in '{ctx.images.source}' could be read: see the warnings above")
    top = max(int(np.concatenate(labels).max()), -1)
    if task in ("classify", "binary") and top >= len(ctx.class_names):  # only a Dataset can give labels beyond them
        from .errors import DataError

        raise DataError(f"the image set has label {top} but the model has {len(ctx.class_names)} outputs: labels "
                        f"must be indices of the model's outputs (0 to {len(ctx.class_names) - 1}, -1 = unknown)")
    if task != "classify":
        idx, scores = np.concatenate(indices), np.concatenate(kept.scores)
        return Predictions(idx, scores, task_labels(task, idx, np.concatenate(labels), scores.shape[1],
                                                    ctx.images.truth), **kept.fields(idx))
    return Predictions(np.concatenate(indices), np.concatenate(logits), np.concatenate(labels))


@dataclass
class Outcome:
    """One analysis's run: its result, or why there is none (status "not applicable" or "failed")."""

    analysis: Any
    params: Any
    status: str = "ok"
    reason: Optional[str] = None
    result: Optional[Result] = None
    seconds: float = 0.0


def analyse(ctx: Any, order: list, plan: Plan) -> Iterator[Outcome]:
    """Run the analyses of ``order`` (run order, `settle`) on the read-only context with the settings the plan
    fixed, yielding one `Outcome` at a time (so that its arrays can be written and dropped before the next analysis
    runs). Each analysis is handed the results of those it reads (`Plan.upstream`); those results (without their
    pictures) are kept only until their last reader has run. A failing analysis becomes a "failed" outcome with the
    reason (the rest of the report goes on); user errors and interrupts stop the build."""
    from .methods.relu_rules import NonReluWarning

    output = ctx.output
    readers = Counter(n for a in order for n in plan.reads.get(a.name, []))
    kept: dict[str, Result] = {}
    failed: dict[str, str] = {}
    for a in ctx.iterate(order, length=len(order), label="analyses"):
        params = plan.params[a.name]
        if a.name in plan.skipped or a.name in plan.refused:
            yield Outcome(a, params, "not applicable", plan.skipped.get(a.name) or plan.refused[a.name])
            continue
        t = time.perf_counter()
        output.detail(f"running {a.name}")
        outcome = Outcome(a, params)
        try:
            with warnings.catch_warnings():
                # the page says where a ReLU rule is approximate (the non-linearities check): no console warning
                warnings.simplefilter("ignore", NonReluWarning)
                outcome.result = a.run(ctx.running(a), params, plan.reducers[a.name],
                                       plan.upstream(a.name, kept, failed))
        except NotApplicable as exc:
            outcome.status, outcome.reason = "not applicable", str(exc)
        except (ReportgenError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if output.verbose:
                traceback.print_exc()
            outcome.status, outcome.reason = "failed", f"{type(exc).__name__}: {exc}"
            output.warn(f"analysis '{a.name}' failed: {type(exc).__name__}: {exc} (run with -v for the traceback)")
        if outcome.result is None:
            failed[a.name] = f"its page did not run: {outcome.status}, {outcome.reason}"
        elif readers[a.name]:
            kept[a.name] = dataclasses.replace(outcome.result, items=[
                i for i in outcome.result.items if isinstance(i, Table)])
        for n in plan.reads.get(a.name, []):
            readers[n] -= 1
            if not readers[n]:
                kept.pop(n, None)
        if a.name in plan.notes and outcome.result is not None:
            outcome.result.notes.insert(0, plan.notes[a.name])
        outcome.seconds = time.perf_counter() - t
        yield outcome


def kept_findings(outcomes: Iterator[Outcome], findings: list) -> Iterator[Outcome]:
    """The outcomes as they come, with the findings analysis's conclusions (its result's ``shared["findings"]``,
    `reportgen.analyses.findings`) appended to ``findings`` for the manifest."""
    for o in outcomes:
        if o.result is not None:
            findings.extend(o.result.shared.get("findings", []))
        yield o


def write(outcomes: Iterator[Outcome], writer: ArtifactWriter, output: Optional[Output] = None) -> list[AnalysisEntry]:
    """Write each outcome's items as files (`reportgen.imaging`) and return one manifest entry per analysis.

    The figures are drawn in a render worker (`reportgen.imaging.worker`), a child process, while the next analyses
    run; their bytes are written here, in the order of the outcomes and items, so the files and entries are those
    of drawing them here. At most `MAX_IN_FLIGHT <reportgen.imaging.worker.MAX_IN_FLIGHT>` analyses' items wait for
    their figures (then the build waits for the oldest). Without the worker (``REPORTGEN_RENDER_WORKER=0``, or it
    could not start, or it stopped: ``output`` says so in one line) the figures are drawn here, as each analysis
    ends. An item the worker failed to draw is drawn here, so its error is raised here, as without the worker.

    While the worker is enabled, the analyses leave it one core: torch's intra-op threads are one fewer (at least
    one) until the last figure is written. On 2 idle cores the default build took 67 s so, against 74 s with both
    threads fighting the worker for the cores and 68 s without the worker (one run each, 2026-12-07). The count
    follows the setting, not whether the worker started, so that the analyses' float rounding (which a thread
    count can change) does not depend on that."""
    import torch

    from .imaging import worker as render_worker

    entries: list[AnalysisEntry] = []
    pending: deque = deque()  # (entry, result, prefix, the worker's job number or None: draw it here), in order
    worker = None
    threads = torch.get_num_threads()
    if render_worker.enabled():
        torch.set_num_threads(max(1, threads - 1))
        try:
            worker = render_worker.RenderWorker.start()
        except render_worker.WorkerGone as exc:
            _say(output, f"no render worker ({exc}): the figures are drawn in this process")
    done = False
    try:
        for o in outcomes:
            a = o.analysis
            entry = AnalysisEntry(**a.describe(), status=o.status, reason=o.reason, seconds=o.seconds,
                                  params=to_jsonable(dataclasses.asdict(o.params)))
            entries.append(entry)
            if o.result is None:
                continue
            prefix, job = f"img/{a.name}", None
            if worker is not None and o.result.items:
                try:
                    job = worker.send(o.result.items, prefix)
                except render_worker.WorkerGone as exc:
                    worker = _worker_stopped(worker, exc, output)
                except Exception:  # items that cannot be pickled (a lambda in a plot's data): drawn here
                    job = None
            pending.append((entry, o.result, prefix, job))
            worker = _write_ready(pending, writer, worker, output, render_worker.MAX_IN_FLIGHT)
        worker = _write_ready(pending, writer, worker, output, 0)
        done = True
    finally:
        if worker is not None:
            worker.close(kill=not done)  # an error or an interrupt: killed and reaped, nothing left behind
        torch.set_num_threads(threads)
    return entries


def _write_ready(pending: deque, writer: ArtifactWriter, worker: Any, output: Optional[Output], backlog: int) -> Any:
    """Write the oldest ``pending`` outcomes whose figures are ready, waiting for them while more than ``backlog``
    are pending; returns the worker, or None once it has stopped."""
    from .imaging.worker import WorkerGone

    while pending:
        entry, result, prefix, job = pending[0]
        rendered = None
        if job is not None and worker is not None:
            if len(pending) <= backlog and not worker.ready():
                break  # not drawn yet: the next analysis runs meanwhile
            try:
                rendered = worker.take(job)  # None: the worker could not read the job; it is drawn here
            except WorkerGone as exc:
                worker = _worker_stopped(worker, exc, output)
        pending.popleft()
        _write_outcome(entry, result, prefix, writer, rendered)
    return worker


def _write_outcome(entry: AnalysisEntry, result: Result, prefix: str, writer: ArtifactWriter,
                   rendered: Optional[list]) -> None:
    """Write one analysis's files and fill its ``entry``: each item's files as the worker ``rendered`` them
    (`reportgen.imaging.worker.render_job`), or drawn here (no answer, or the worker failed on it)."""
    from . import imaging
    from .interactive import write_data

    if rendered is not None and len(rendered) != len(result.items):
        rendered = None
    items = []
    for k, item in enumerate(result.items):
        got = rendered[k] if rendered is not None else None
        if isinstance(got, tuple):
            files, item_entry = got
            for rel, data in files:
                writer.write_bytes(rel, data)
            items.append(item_entry)
        else:
            items.append(imaging.render_item(item, writer, prefix))
    entry.items = to_jsonable(items)
    if result.shared.get("interactive"):  # what the page's interactive view reads, once per site
        write_data(writer, entry.name, result.shared["interactive"], entry.items)
    entry.metrics = to_jsonable(result.metrics)
    entry.notes = list(result.notes)


def _worker_stopped(worker: Any, why: Exception, output: Optional[Output]) -> None:
    worker.close(kill=True)
    _say(output, f"the render worker stopped ({why}): the remaining figures are drawn in this process")
    return None


def _say(output: Optional[Output], message: str) -> None:
    if output is not None:
        output.warn(message)


def render(manifest: Manifest, folder: Path, writer: ArtifactWriter) -> None:
    """The pages, from the manifest alone, and manifest.json (`reportgen.site`)."""
    from .site import render_site

    # the files written so far (the figures, data/*.js): a page loads a data file only where it was written, as a
    # re-render reads them from manifest.json
    manifest.files = dict(sorted(writer.hashes.items()))
    render_site(manifest, folder, writer)


def select_analyses(cfg: BuildConfig) -> list:
    from .analyses import all_analyses
    from .errors import did_you_mean

    analyses = all_analyses()
    names = [a.name for a in analyses]
    errors = []
    for key in ("only", "skip"):
        for n in getattr(cfg, key):
            if n not in names:
                errors.append(f"--{key}: unknown analysis '{n}'{did_you_mean(n, names)}; known: {', '.join(names)}")
    for n in cfg.analysis:
        if n not in names:
            errors.append(f"analysis.{n}: unknown analysis{did_you_mean(n, names)}; known: {', '.join(names)}")
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


def pick_samples(indices: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> list[int]:
    """A seeded pick of ``n`` of the readable image ``indices`` (M,), spread over their ``labels`` (M,), -1 unknown.

    The pick depends only on the seed and the image set, never on the model's predictions: an archive shows the same
    sample images at every checkpoint (unlabelled images form one group of their own)."""
    by_class: dict[int, list[int]] = {}
    for idx, key in zip(np.asarray(indices).tolist(), np.asarray(labels).tolist()):
        by_class.setdefault(int(key), []).append(idx)
    for members in by_class.values():
        rng.shuffle(members)
    picks: list[int] = []
    order = sorted(by_class)
    depth = 0
    while len(picks) < min(n, len(indices)):
        for c in order:
            if depth < len(by_class[c]) and len(picks) < n:
                picks.append(by_class[c][depth])
        depth += 1
    return sorted(picks)


def torchvision_version() -> str:
    """torchvision's ``__version__`` (local tag included, e.g. '0.29.1+cu130'), read from its version.py when it is
    not imported yet: importing torchvision costs about 2 s (it imports torch._dynamo), for one string."""
    import importlib.util
    import re
    import sys

    if "torchvision" in sys.modules:
        return sys.modules["torchvision"].__version__
    spec = importlib.util.find_spec("torchvision")
    found = None
    if spec is not None and spec.submodule_search_locations:
        text = Path(list(spec.submodule_search_locations)[0], "version.py").read_text(encoding="utf-8")
        found = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", text, re.M)
    if found is None:  # an unusual install: ask torchvision itself
        import torchvision

        return torchvision.__version__
    return found.group(1)


def make_manifest(cfg: BuildConfig, ctx: Any, entries: list[AnalysisEntry], timings: dict, seconds: float,
                  snapshot: Optional[dict] = None) -> Manifest:
    """The manifest of one report: versions, model, image set, config, seed, timings, one entry per analysis."""
    import torch

    from .given import state_dict_sha256

    images = ctx.images
    predictions = ctx.predictions
    display_samples = []
    for i in ctx.samples:
        row = predictions.row(i)
        label = int(images.labels[i])
        if predictions.task == "classify":
            pred = int(predictions.preds[row])
            said, prob = ctx.class_names[pred], float(predictions.probs[row, pred])
        else:
            from .tasks import sample_prediction

            said, prob = sample_prediction(predictions, row, ctx.class_names)
        display_samples.append({"index": int(i), "name": images.names[i],
                                "label": ctx.class_names[label] if 0 <= label < len(ctx.class_names) else None,
                                "pred": said, "prob": prob})
    return Manifest(
        version=__version__,
        created_with={"reportgen": __version__, "torch": torch.__version__, "torchvision": torchvision_version(),
                      "python": platform.python_version(), "device": str(ctx.device)},
        model=to_jsonable({
            "spec": ctx.loaded.spec, "form": ctx.loaded.form, "weights": ctx.loaded.weights_path,
            "weights_sha256": ctx.loaded.weights_sha256, "zoo": ctx.loaded.zoo_name,
            # the weights as the report saw them, whatever form they came in (a file, a factory, an object)
            "state_dict_sha256": (ctx.loaded.weights_sha256 if ctx.loaded.form == "object"
                                  else state_dict_sha256(ctx.model)),
            "parameters": int(sum(p.numel() for p in ctx.model.parameters())),
            "input": dataclasses.asdict(ctx.loaded.input), "classes": ctx.class_names, "notes": ctx.loaded.notes,
            "task": ctx.task, "task_source": ctx.loaded.task_source,
            "layers": [dataclasses.asdict(r) for r in ctx.facts.layers], "selected_layers": ctx.layers}),
        images=to_jsonable({
            "source": images.source, "count": len(images), "used": int(len(predictions.indices)),
            "labelled": bool(images.has_labels), "classes": images.class_names,
            "class_counts": (np.bincount(images.labels[images.labels >= 0], minlength=len(ctx.class_names)).tolist()
                             if images.has_labels else None),
            "skipped": [{"name": n, "reason": r} for n, r in images.skipped],
            "masks": None if images.masks is None else {
                "source": images.masks.source, "problems": [{"name": n, "reason": r}
                                                            for n, r in images.masks.problems]},
            "conversions": images.conversions, "notes": images.notes, "samples": display_samples}),
        config=to_jsonable(config_dict(cfg)),
        seed=cfg.seed,
        timings=to_jsonable(timings),
        build_seconds=seconds,
        analyses=entries,
        snapshot=snapshot,
    )
