"""The build's stages as docs/architecture.md draws them: what each analysis reads is declared (`Analysis.reads`),
the run order follows it, a reader is handed the results of what it reads, and the list in docs/architecture.md
agrees with the code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from reportgen.analyses import NOTHING, Analysis, Upstream
from reportgen.artifacts import Result, Table
from reportgen.build import Plan, analyse, choose_analyses, run_order
from reportgen.config import BuildConfig
from reportgen.console import Output
from reportgen.context import Context

ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def test_the_docs_list_what_each_analysis_reads():
    """docs/architecture.md's list between the `<!-- reads -->` markers is what the code declares."""
    block = re.search(r"<!-- reads -->.*?```\n(.*?)```.*?<!-- /reads -->", ARCHITECTURE.read_text(), re.S).group(1)
    listed: dict[str, list[str]] = {}
    for group in block.strip().split("\n\n"):  # "a, b, ...  ──(what)──► reader, reader"
        read, readers = re.split(r"──\(.*?\)──►", group.replace("\n", " "))
        for reader in (n.strip() for n in readers.split(",")):
            listed[reader] = [n.strip() for n in read.split(",")]
    reads = {name: names for name, names in choose_analyses(BuildConfig()).reads.items() if names}
    assert reads == listed, "update the reads list in docs/architecture.md"


@dataclass
class Say:
    """Say a word."""

    word: str = "x"


class Source(Analysis):
    """Returns a table and a shared value; counts its runs."""

    Params = Say

    def __init__(self, name: str, order: int, fail: bool = False) -> None:
        self.name, self.order, self.fail = name, order, fail

    def run(self, ctx, params, reduced, upstream=NOTHING):
        if self.fail:
            raise ValueError("broken")
        return Result(items=[Table(key="t", label="t", caption="", columns=["a"], rows=[[params.word]])],
                      metrics={"n": 1}, shared={"value": params.word})


class Reader(Analysis):
    """Reads the analyses named in ``names``; records what it was handed."""

    def __init__(self, name: str, names: list[str]) -> None:
        self.name, self.names, self.seen = name, names, []

    def reads(self, params, config):
        return list(self.names)

    def run(self, ctx, params, reduced, upstream=NOTHING):
        self.seen.append(upstream)
        return Result(metrics={"read": sorted(upstream.results)})


def test_run_order_puts_a_reader_after_what_it_reads_and_keeps_report_order_otherwise():
    a, b, c = Source("a", 1), Source("b", 2), Source("c", 3)
    first = Reader("first", ["c", "a"])  # first in report order, reads later ones
    order = run_order([first, a, b, c], {"first": ["c", "a"]})
    assert [x.name for x in order] == ["c", "a", "first", "b"]
    with pytest.raises(RuntimeError, match="cycle"):
        run_order([Reader("x", ["y"]), Reader("y", ["x"])], {"x": ["y"], "y": ["x"]})


def test_a_reader_gets_the_results_of_what_it_reads_and_why_the_others_did_not_run():
    a, b, broken = Source("a", 1), Source("b", 2), Source("broken", 3, fail=True)
    reader = Reader("reader", ["a", "b", "broken", "absent"])
    order = run_order([reader, a, b, broken], {"reader": ["a", "b", "broken", "absent"]})
    plan = Plan(skipped={}, reducers={n: {} for n in ("a", "b", "broken", "reader")},
                params={"a": Say("A"), "b": Say("B"), "broken": Say(), "absent": Say("Z"), "reader": Say()},
                reads={"reader": ["a", "b", "broken", "absent"]}, refused={"b": "not run: over budget"}, order=order)
    ctx = Context(config=BuildConfig(), loaded=None, images=None, device="cpu", facts=None,
                  output=Output(silent=True))
    ctx.freeze()
    outcomes = {o.analysis.name: o for o in analyse(ctx, order, plan)}
    assert outcomes["b"].status == "not applicable" and outcomes["broken"].status == "failed"
    (seen,) = reader.seen
    assert seen.params == {"a": Say("A"), "b": Say("B"), "broken": Say(), "absent": Say("Z")}
    assert seen.pages == {"a", "broken"}  # "absent" is read but not chosen; "b" is over the budget
    assert set(seen.results) == {"a"} and seen.results["a"].shared == {"value": "A"}
    assert [type(i) for i in seen.results["a"].items] == [Table]
    assert set(seen.missing) == {"b", "broken"} and "budget" in seen.missing["b"] and "broken" in seen.missing[
        "broken"]
    assert outcomes["reader"].result.metrics["read"] == ["a"]


def test_upstream_defaults_to_nothing():
    assert NOTHING == Upstream() and not NOTHING.params and not NOTHING.results and not NOTHING.pages
