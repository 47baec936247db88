"""The manifest: one typed record of a built report, written as manifest.json and read back by every reader.

The build fills a `Manifest`; `write_manifest` writes it through the artifact writer; the site (`reportgen render`
included) and the archive index read it with `read_manifest`, which says in one line when a manifest is foreign or
of another schema. Words: a report has **sections** (`SECTIONS`: model card, parameters, ...); each **analysis**
has one `AnalysisEntry` (its status, items, metrics, notes) and belongs to one section.

This module imports neither torch nor the analyses, so a site re-renders from its manifest alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .artifacts import slug
from .errors import ReportgenError

GENERATOR = "reportgen"
MANIFEST = "manifest.json"
SCHEMA = 2  # 1: before the schema number (analyses under "sections"); 2: "analyses", "schema"

# The report's sections, in page order: key -> title.
SECTIONS = {
    "findings": "Findings",
    "model": "Model card",
    "data": "Data",
    "parameters": "Parameters",
    "activations": "Activations",
    "influence": "The input's influence",
    "trust": "Which maps to trust",
    "optimized": "Optimized inputs",
}


@dataclass
class AnalysisEntry:
    """One analysis in one report. ``status``: "ok", "not applicable" or "failed" (``reason`` says why);
    ``items``: the figures and tables as `reportgen.imaging.render_item` wrote them; ``metrics``: key numbers (also
    compared across checkpoints); ``params``: its resolved ``[analysis.NAME]`` table."""

    name: str
    title: str
    section: str  # key of SECTIONS
    summary: str = ""
    paper: str = ""
    paper_url: str = ""
    status: str = "ok"
    reason: Optional[str] = None
    seconds: float = 0.0
    items: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    params: dict = field(default_factory=dict)

    @property
    def over_budget(self) -> bool:
        """Not run because the compute budget refused it (`reportgen.budget.fit`): applicable, but over ``--budget``
        even at its smallest settings. Its status stays "not applicable" (what the manifest's readers count); the
        pages show "over budget" instead."""
        return self.status == "not applicable" and (self.reason or "").startswith(BUDGET_REFUSAL)

    @property
    def budget_reason(self) -> str:
        """A budget refusal's reason after its "not run: " ("" for any other entry)."""
        return (self.reason or "")[len(BUDGET_REFUSAL):] if self.over_budget else ""

    @property
    def shown_status(self) -> str:
        """The status as the navigation shows it: "over budget" for a budget refusal, else ``status``."""
        return "over budget" if self.over_budget else self.status


# how `reportgen.budget.fit` starts the reason of an analysis it refuses
BUDGET_REFUSAL = "not run: "


# A finding's severity, most severe first; "not checked" says that its inputs are missing (``reason``)
SEVERITIES = ("alert", "warning", "info", "not checked")


@dataclass
class Finding:
    """One conclusion of the report (`reportgen.analyses.findings`): ``id`` (stable across builds, e.g.
    "calibration"); ``severity`` one of `SEVERITIES`; ``title`` a few words; ``sentence`` one sentence with the
    numbers; ``threshold`` what decided the severity and ``source`` where that threshold comes from (a paper, or
    "convention of this report"); ``numbers`` the sentence's numbers as numbers (name -> value); ``links`` the
    evidence in this report, each {"page": site path, "anchor": figure id on that page or "", "label": words}."""

    id: str
    severity: str
    title: str
    sentence: str
    threshold: str = ""
    source: str = ""
    numbers: dict = field(default_factory=dict)
    links: list = field(default_factory=list)


def figure_anchor(key: str) -> str:
    """The id of an analysis's figure or table ``key`` (its `reportgen.artifacts.Item` key) on that analysis's page
    (analyses/NAME.html#fig-KEY): the anchor a finding links its evidence to."""
    return "fig-" + slug(key)


@dataclass
class Manifest:
    """Everything a report's pages are rendered from. ``model``: spec, form, weights and their sha256, parameters,
    input, classes, the layer table and the selected layers; ``images``: source, counts, classes, skipped files,
    samples; ``files``: the sha256 of every file of the site but manifest.json itself; ``snapshot``: set for a
    snapshot of a checkpoint archive."""

    version: str
    created_with: dict
    model: dict
    images: dict
    config: dict
    seed: int
    timings: dict
    build_seconds: float
    analyses: list[AnalysisEntry]
    files: dict = field(default_factory=dict)
    snapshot: Optional[dict] = None
    # the report's conclusions, most severe first (an older manifest without them reads as none)
    findings: list[Finding] = field(default_factory=list)
    generator: str = GENERATOR
    schema: int = SCHEMA

    def entry(self, name: str) -> Optional[AnalysisEntry]:
        """The entry of analysis ``name`` (None when the report does not have it)."""
        return next((a for a in self.analyses if a.name == name), None)

    def to_json(self) -> dict:
        """The manifest as plain JSON values (manifest.json's layout)."""
        data = dataclasses.asdict(self)
        if data["snapshot"] is None:
            del data["snapshot"]
        order = ["generator", "schema", "version"]
        return {**{k: data[k] for k in order}, **{k: v for k, v in data.items() if k not in order}}

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST) -> "Manifest":
        """Read a manifest.json's content; `ReportgenError` in one line for a foreign or other-schema manifest."""
        if not isinstance(data, dict) or data.get("generator") != GENERATOR:
            raise ReportgenError(f"'{where}' was not written by reportgen: give the folder of a reportgen site")
        schema = data.get("schema", 1)
        if schema != SCHEMA or data.get("kind") == "archive":
            what = "a checkpoint archive's index" if data.get("kind") == "archive" else (
                f"schema {schema} (reportgen {data.get('version', '?')})")
            raise ReportgenError(f"'{where}' is {what}, not a report of schema {SCHEMA} that this reportgen can "
                                 "read: build the report again with `reportgen build`")
        names = {f.name for f in dataclasses.fields(cls)}
        entry_names = {f.name for f in dataclasses.fields(AnalysisEntry)}
        try:
            values = {k: v for k, v in data.items() if k in names}
            values["analyses"] = [AnalysisEntry(**{k: v for k, v in a.items() if k in entry_names})
                                  for a in data["analyses"]]
            finding_names = {f.name for f in dataclasses.fields(Finding)}
            values["findings"] = [Finding(**{k: v for k, v in f.items() if k in finding_names})
                                  for f in data.get("findings", [])]
            return cls(**values)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ReportgenError(f"'{where}' is incomplete or damaged ({type(exc).__name__}: {exc}): build the "
                                 "report again with `reportgen build`") from None


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the site in ``folder``; `ReportgenError` in one line when there is none we can read."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportgenError(f"cannot read '{path}' ({type(exc).__name__}): give the folder of a reportgen "
                             "site") from None
    return Manifest.from_json(data, str(path))


def write_manifest(writer: Any, manifest: Manifest) -> None:
    """Write manifest.json through ``writer`` (`reportgen.artifacts.ArtifactWriter`) after recording in it the
    sha256 of every other file the writer wrote."""
    manifest.files = dict(sorted((k, v) for k, v in writer.hashes.items() if k != MANIFEST))
    writer.write_text(MANIFEST, json.dumps(manifest.to_json(), indent=1, sort_keys=False))
