"""Where a command's messages go: one `Output` carries logging, warnings, progress bars and the verbosity.

The build, the archive and every CLI command take one `Output` instead of separate callables, so a stage that
needs to say something has one place to say it.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import click


def duration(seconds: Optional[float]) -> str:
    """A time span for people, on the console and the pages alike: "< 1 ms", "420 ms", "4.2 s", "42 s",
    "25 min 40 s", "2 h 5 min" ("–" for None or NaN)."""
    if seconds is None or seconds != seconds:
        return "–"
    if seconds <= 0:
        return "0 s"
    if seconds < 0.001:
        return "< 1 ms"
    if seconds < 0.9995:  # what rounds to 1000 ms is "1.0 s"
        return f"{seconds * 1000:.0f} ms"
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class Output:
    """Where messages go, by verbosity: -q shows only errors and the last line, -v adds details and tracebacks."""

    def __init__(self, verbose: int = 0, quiet: bool = False, silent: bool = False) -> None:
        self.verbose = verbose
        self.quiet = quiet or silent
        self.silent = silent  # nothing at all, warnings included (tests, library use)

    def info(self, msg: str) -> None:
        if not self.quiet:
            click.echo(msg)

    def detail(self, msg: str) -> None:
        if self.verbose and not self.quiet:
            click.echo(msg)

    def warn(self, msg: str) -> None:
        if self.silent:
            return
        click.echo(click.style("warning: ", fg="yellow") + msg, err=True)

    def progress(self, iterable: Any, length: Optional[int] = None, label: str = "") -> Any:
        if self.quiet or not sys.stdout.isatty():
            return iterable
        return _ProgressIter(iterable, length, label)


class _ProgressIter:
    def __init__(self, iterable: Any, length: Optional[int], label: str) -> None:
        self.iterable, self.length, self.label = iterable, length, label

    def __iter__(self):
        with click.progressbar(self.iterable, length=self.length, label=self.label.ljust(22), width=30) as bar:
            yield from bar
