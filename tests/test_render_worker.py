"""The render worker (`reportgen.imaging.worker`): the build's files and manifest entries are byte for byte those of
drawing the figures in the build's process; the worker never imports torch; without it (cannot start, stops) the
build draws in-process; a figure's error is raised as in-process; an interrupted build leaves no worker behind."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass

import types

import numpy as np
import pytest
import torch

from reportgen import build
from reportgen.artifacts import ArtifactWriter, Grid, Picture, Plot, Result, Table
from reportgen.imaging import worker as render_worker
from reportgen.interactive import add_grid, tile_browser


@dataclass
class _Params:
    n: int = 1


class _Analysis:
    def __init__(self, name: str) -> None:
        self.name = name

    def describe(self) -> dict:
        return {"name": self.name, "title": self.name, "section": "s", "summary": "", "paper": "", "paper_url": ""}


class _Unreadable(Picture):
    """A picture whose class the worker cannot import (its module exists only in the test's process)."""


_Unreadable.__module__ = "reportgen_test_only"
sys.modules.setdefault("reportgen_test_only", types.ModuleType("reportgen_test_only")).__dict__["_Unreadable"] = \
    _Unreadable


def outcomes() -> list:
    """Four analyses' outcomes: every item kind (a picture of each style, with colour bars, a torch tensor among
    them; a labelled grid with its interactive tiles; a chart; a table with row pictures), a failed one, and one
    the worker cannot read (drawn in-process) next to one that cannot be sent (a function in a chart's data)."""
    import torch

    rng = np.random.default_rng(0)
    signed = rng.normal(size=(8, 8))
    grid = Grid("grid", tiles=rng.normal(size=(6, 7, 7)), cols=3, tile_labels=[f"c{i}" for i in range(6)])
    browse = tile_browser(["channel"])
    add_grid(browse, "grid", 6, 3, [(i,) for i in range(6)])
    first = Result(items=[
        Picture("rgb", caption="An RGB picture.", array=rng.uniform(size=(20, 24, 3)), image=np.int64(3)),
        Picture("signed", array=signed, style="signed", colorbar=True, layer="conv1"),
        Picture("heat", array=torch.rand(12, 12, generator=torch.Generator().manual_seed(0)), style="heat",
                base=rng.uniform(size=(12, 12, 3)), colorbar=True),
        grid], metrics={"m": np.float32(0.5)}, notes=["a note"], shared={"interactive": browse})
    third = Result(items=[
        Plot("chart", kind="lines", data={"x": [1, 2, 3], "series": {"a": [0.1, 0.5, 0.2], "b": [0.3, 0.2, 0.1]},
                                          "xlabel": "step"}),
        Table("table", columns=["name", "value"], rows=[["x", 1.0]],
              images=[[Picture("p", array=signed, style="signed"), Picture("q", array=-signed, style="signed")]])])
    return [build.Outcome(_Analysis("one"), _Params(), result=first, seconds=1.0),
            build.Outcome(_Analysis("two"), _Params(), "failed", "ValueError: no"),
            build.Outcome(_Analysis("three"), _Params(2), result=third, seconds=2.0),
            build.Outcome(_Analysis("four"), _Params(), result=Result(items=[
                _Unreadable("odd", array=signed, style="signed")])),
            build.Outcome(_Analysis("five"), _Params(), result=Result(items=[
                Plot("chart", kind="lines", data={"x": [0, 1], "series": {"a": [1, 2]}, "unused": lambda: 0})]))]


def written(tmp_path, name: str, outs: list, output=None) -> tuple:
    """What `build.write` made of ``outs``: the files (path, bytes, in the order written) and the entries."""
    writer = ArtifactWriter(tmp_path / name)
    entries = build.write(iter(outs), writer, output)
    files = [(rel, (writer.root / rel).read_bytes()) for rel in writer.hashes]
    return files, [dataclasses.asdict(e) for e in entries]


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warn(self, msg: str) -> None:
        self.lines.append(msg)

    detail = warn


@pytest.fixture
def in_process(tmp_path, monkeypatch):
    monkeypatch.setenv(render_worker.ENV, "0")
    files, entries = written(tmp_path, "here", outcomes())
    monkeypatch.setenv(render_worker.ENV, "1")
    return files, entries


def test_worker_writes_the_same_bytes_and_entries_and_imports_no_torch(tmp_path, monkeypatch, capfd, in_process):
    """The worker's files (same order, same bytes) and entries are those drawn in-process; its imports (listed by
    -X importtime on its stderr) hold matplotlib and no torch."""
    started = []
    start = render_worker.RenderWorker.start.__func__

    def recorded(cls):
        started.append(start(cls))
        return started[-1]

    monkeypatch.setattr(render_worker.RenderWorker, "start", classmethod(recorded))
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    said = Said()
    capfd.readouterr()
    files, entries = written(tmp_path, "worker", outcomes(), said)
    imported = {m.group(1) for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", capfd.readouterr().err, re.M)}
    assert len(started) == 1 and started[0].next_seq == 3 and started[0].proc.returncode == 0
    assert files == in_process[0] and len(files) == 12
    assert entries == in_process[1]
    assert said.lines == []
    assert "matplotlib" in imported and "reportgen.imaging.charts" in imported
    assert not [m for m in imported if m.split(".")[0] == "torch"]


def test_without_a_worker_the_build_draws_in_process(tmp_path, monkeypatch, in_process):
    """A worker that cannot start (no executable) or that stops at once: the same files and entries, one line."""
    said = Said()
    monkeypatch.setattr(sys, "executable", "")
    assert written(tmp_path, "none", outcomes(), said) == in_process
    assert len(said.lines) == 1 and "drawn in this process" in said.lines[0]
    if os.path.exists("/bin/true"):  # starts, reads nothing, exits: the first job or its answer finds it gone
        said = Said()
        monkeypatch.setattr(sys, "executable", "/bin/true")
        assert written(tmp_path, "gone", outcomes(), said) == in_process
        assert len(said.lines) == 1 and "render worker stopped" in said.lines[0]


def test_a_figure_that_fails_raises_as_in_process(tmp_path, monkeypatch):
    """An item that cannot be drawn raises the same exception in the build's process, with or without the worker,
    after the items before it were written."""
    bad = [build.Outcome(_Analysis("bad"), _Params(), result=Result(items=[
        Picture("ok", array=np.zeros((4, 4, 3))), Plot("chart", kind="no-such-kind", data={})]))]
    raised = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(render_worker.ENV, flag)
        writer = ArtifactWriter(tmp_path / flag)
        with pytest.raises(Exception) as info:
            build.write(iter(bad), writer)
        raised[flag] = (type(info.value), str(info.value), list(writer.hashes.items()))
    assert raised["0"] == raised["1"]
    assert raised["0"][0] is KeyError and "no plot kind 'no-such-kind'" in raised["0"][1]
    assert [rel for rel, _ in raised["0"][2]] == ["img/bad/ok.png"]


def test_an_interrupted_build_leaves_no_worker(tmp_path, monkeypatch):
    """Ctrl-C (a KeyboardInterrupt out of the analyses) while the worker runs: it is killed and reaped."""
    monkeypatch.setenv(render_worker.ENV, "1")
    started = []
    start = render_worker.RenderWorker.start.__func__
    monkeypatch.setattr(render_worker.RenderWorker, "start",
                        classmethod(lambda cls: started.append(start(cls)) or started[-1]))

    def interrupted():
        yield outcomes()[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build.write(interrupted(), ArtifactWriter(tmp_path / "site"))
    proc = started[0].proc
    assert proc.returncode is not None  # waited for: no zombie
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)


@pytest.mark.parametrize("enabled, during", [("1", 1), ("0", 2)])
def test_the_analyses_leave_the_worker_one_core_and_the_threads_are_restored(tmp_path, monkeypatch, enabled, during):
    """While the worker is enabled the analyses (run as `build.write` draws their outcomes) have one torch thread
    fewer; the count is restored afterwards, also when an analysis raises."""
    monkeypatch.setenv(render_worker.ENV, enabled)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []

    def analyses(fail: bool):
        seen.append(torch.get_num_threads())
        if fail:
            raise RuntimeError("an analysis failed")
        yield outcomes()[1]  # a failed outcome: nothing to draw

    try:
        build.write(analyses(False), ArtifactWriter(tmp_path / "a"))
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="an analysis failed"):
            build.write(analyses(True), ArtifactWriter(tmp_path / "b"))
        assert torch.get_num_threads() == 2
        assert seen == [during, during]
    finally:
        torch.set_num_threads(before)
