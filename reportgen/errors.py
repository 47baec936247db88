"""User-facing errors: one clear line, a non-zero exit, no traceback unless -v."""

from __future__ import annotations

import difflib
from typing import Iterable

import click


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none), cut to ``limit`` characters:
    what a one-line error message quotes of an error raised by someone else's code."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` with the known name closest to a mistyped ``name`` (difflib's similarity ratio at
    least 0.6), else ''. One wording for every unknown name the user types: config keys, analysis names."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class ReportgenError(click.ClickException):
    """A mistake the user can fix: the message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(ReportgenError):
    """A config file or option holds an unknown key, a wrong type or a value out of range."""


class ModelError(ReportgenError):
    """A model spec, weights file or model output that cannot be used."""


class DataError(ReportgenError):
    """An image set that cannot be read."""


class LayerError(ReportgenError):
    """A layer name that the model does not have."""


class OutputError(ReportgenError):
    """An output folder that cannot be written safely."""
