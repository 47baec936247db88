"""Report units and their registry.

An analysis is a class with a ``name``, a ``title``, the ``section`` it belongs to, a ``Params`` dataclass (its
``[analysis.NAME]`` config table, a docstring per field) and one entry point ``run(ctx, params, reduced) ->
Result``. It may ask for a share of the build's single pass over the image set by returning reducers from
``reducers(ctx, params)``: each reducer names the layers it needs and sees every batch once (``update(batch, acts,
logits)``), keeping only bounded state (running top-N, histograms, a capped sample of features). It never writes
files or HTML: it returns arrays and numbers (see `reportgen.artifacts`).

Modules in this package register their analyses with `@register` and are imported by `all_analyses()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

from ..manifest import SECTIONS
from ..tasks import OUTPUT_OF, TASKS

# the ``tasks`` of an analysis that never reads the model's output (activations, parameters): it applies to all
EVERY_TASK: tuple[str, ...] = TASKS

REGISTRY: dict[str, "Analysis"] = {}


@dataclass
class NoParams:
    """This analysis has no parameters."""


class Reducer:
    """Sees every batch of the one pass. ``layers``: dotted names whose outputs it needs (captured once for all).
    ``update``'s ``logits`` are the batch's per-image scores of the model's task (B, K): a classifier's logits as
    they come, another task's rows of `reportgen.context.Predictions.logits` (docs/tasks.md)."""

    layers: list[str] = []

    def update(self, batch: Any, acts: dict, logits: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def merge(self, other: "Reducer") -> None:  # pragma: no cover - interface
        """Add the state of ``other``, the same reducer fed another share of the image set (a distributed pass,
        `reportgen.distributed`): afterwards this holds what one reducer fed both shares would hold."""
        raise NotImplementedError(f"{type(self).__name__} cannot merge: it cannot run on several processes")

    def span(self, acts: dict) -> Any:
        """What the state of every rank must be made to cover before a batch is counted (a histogram's range), as a
        small picklable value; None when nothing (the default). See `cover`."""
        return None

    def cover(self, span: Any) -> None:
        """Grow the state to cover another batch's ``span``: a distributed pass calls it on every rank with every
        batch's span in the global batch order, so that state fixed by the first batches (histogram edges) is the
        same on every rank and the same as in one process."""


@dataclass(frozen=True)
class Upstream:
    """What the build hands an analysis about the analyses it reads (`Analysis.reads`), all of which ran before it.

    ``params``: the settings of every read analysis that applies to the model, as the plan fixed them once (fitted
    to the compute budget where that analysis has a page in this report): an analysis that recomputes what another
    one shows uses exactly these. ``results``: the `reportgen.artifacts.Result` of each read analysis that ran in
    this build (its tables, metrics, notes and ``shared`` values; pictures are not kept). ``pages``: the read
    analyses that are planned to run with a page in this report; one of ``params`` that is not among them was not
    chosen (--only/--skip): a reader that needs its values computes them with its ``params``. ``missing``: why a
    read analysis did not run although chosen (over the compute budget, failed). ``cost`` sees ``params``,
    ``pages`` and the budget refusals only (nothing has run yet)."""

    params: Mapping[str, Any] = field(default_factory=dict)
    pages: frozenset = frozenset()
    results: Mapping[str, Any] = field(default_factory=dict)
    missing: Mapping[str, str] = field(default_factory=dict)


NOTHING = Upstream()


class Analysis:
    """Base class; subclasses set the class attributes and implement `run` (and optionally `reducers`, `reads`)."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    section: ClassVar[str] = "model"
    summary: ClassVar[str] = ""  # one line for `reportgen analyses`
    paper: ClassVar[str] = ""  # "Authors, Title, Venue Year" of the method's source
    paper_url: ClassVar[str] = ""
    order: ClassVar[int] = 50  # position within its section
    needs_images: ClassVar[bool] = True  # False for analyses that also apply to 2-D point models
    needs_logits: ClassVar[bool] = False  # True when the result is about the class scores (not applicable to NaN)
    Params: ClassVar[type] = NoParams
    # (config key, floor) pairs the compute budget may lower, in order (`reportgen.budget.fit`)
    shrink: ClassVar[tuple[tuple[str, int], ...]] = ()
    # the model tasks (`reportgen.tasks.TASKS`) it is written for; on another it is "not applicable" and says why:
    # ``task_reason``, one true sentence on what it reads of the output (`not_for_task`)
    tasks: ClassVar[tuple[str, ...]] = ("classify",)
    task_reason: ClassVar[str] = "it reads the model's output as the class scores of one label per image (softmax)"

    # why it does not apply when none of the analyses it reads (`reads`) applies or runs
    nothing_to_read: ClassVar[str] = "none of the analyses it reads applies to this model"

    def reads(self, params: Any, config: Any) -> list[str]:
        """Names of the analyses whose results (or settings) this one reads with ``params`` under the build's
        ``config``: the build plans their settings, runs them first and hands their results to `run` and `cost` as
        an `Upstream`. None by default."""
        return []

    def cost(self, ctx: Any, params: Any, upstream: Upstream = NOTHING) -> float:
        """Multiply-adds this analysis spends at most with ``params`` (after the one pass: ``ctx.predictions`` and
        ``ctx.samples`` are known), from ``ctx.facts.macs`` per forward pass of one image (a backward pass counts
        twice that); 0 for an analysis whose cost does not grow with the model's (the default). ``upstream``: the
        settings of the analyses it reads (no results yet)."""
        return 0.0

    def reducers(self, ctx: Any, params: Any) -> dict[str, Reducer]:
        return {}

    def run(self, ctx: Any, params: Any, reduced: dict[str, Reducer],
            upstream: Upstream = NOTHING) -> Any:  # pragma: no cover - interface
        """The analysis: ``reduced`` its reducers after the one pass, ``upstream`` what it reads (`reads`)."""
        raise NotImplementedError

    def check(self, ctx: Any, params: Any) -> None:
        """Raise `NotApplicable` (with the reason) or `ConfigError` before any work when this cannot run."""

    def not_for_task(self, task: str) -> str:
        """Why this analysis does not apply to a model of ``task`` (not among `tasks`), in one line."""
        return f"{self.task_reason}; this model's task is {task}: {OUTPUT_OF[task]}"

    def describe(self) -> dict:
        return {"name": self.name, "title": self.title, "section": self.section, "summary": self.summary,
                "paper": self.paper, "paper_url": self.paper_url}


def python_name(name: str) -> str:
    """The one naming rule between the report and Python: an analysis that shows a method function is named like
    that function with '-' for '_' (``grad-cam`` <-> `reportgen.methods.cams.grad_cam`), the same name in the CLI
    (--only), the config ([analysis.grad-cam]), the manifest and the page (analyses/grad-cam.html)."""
    return name.replace("-", "_")


def register(cls: type) -> type:
    """Class decorator: add an analysis to the registry (names must be unique)."""
    if cls.name in REGISTRY and type(REGISTRY[cls.name]) is not cls:
        raise RuntimeError(f"two analyses are called '{cls.name}'")
    REGISTRY[cls.name] = cls()
    return cls


def all_analyses() -> list["Analysis"]:
    """Every registered analysis in report order (section, then ``order``, then name)."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    section_rank = {s: i for i, s in enumerate(SECTIONS)}
    return sorted(REGISTRY.values(), key=lambda a: (section_rank.get(a.section, 99), a.order, a.name))


def param_fields(analysis: "Analysis") -> list[str]:
    return [f.name for f in dataclasses.fields(analysis.Params)]


def get(name: str) -> Optional["Analysis"]:
    all_analyses()
    return REGISTRY.get(name)
