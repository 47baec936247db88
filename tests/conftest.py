"""Shared fixtures: tiny seeded models and image folders; everything CPU-only, offline and fast."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # so that "tiny_models:NAME" works as a module:factory spec


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def missing_peer(excinfo) -> str:
    """The module a `pytest.importorskip` could not import ("" when the skip is of another kind)."""
    if excinfo is None or not excinfo.errisinstance(pytest.skip.Exception):
        return ""
    message = str(excinfo.value)
    return message if message.startswith("could not import") else ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a comparison with a peer library (pytorch-grad-cam, timm, transformers...) never skips silently:
    a test skipped by `pytest.importorskip` fails instead, saying what to install (the README's test command)."""
    outcome = yield
    report = outcome.get_result()
    peer = missing_peer(call.excinfo) if report.skipped and os.environ.get("CI") == "true" else ""
    if peer:
        report.outcome = "failed"
        report.longrepr = (f"CI=true: this test needs a peer library that is not installed ({peer}): install it in "
                           "the README's test command instead of skipping")


def write_image_folder(root: Path, classes=("cat", "dog", "bird"), per_class=6, size=(40, 48), seed=0) -> Path:
    """Class sub-folders of random RGB PNGs whose mean colour depends on the class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 80, (*size, 3)).astype(np.uint8)
            arr[..., c % 3] += 150
            Image.fromarray(arr).save(folder / f"img {i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "images")


TINY_ARGS = ["tiny_models:tiny_cnn", "--input-size", "32x32", "--channels", "3"]


def run(*args):
    """The CLI with ``args`` (converted to str), in-process; exceptions propagate."""
    from click.testing import CliRunner

    from reportgen.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def fails_in_one_line(result, *fragments, code=None):
    """A failed command: non-zero exit (``code`` when given), one line of output, no traceback, the fragments."""
    text = result.output.strip()
    assert result.exit_code != 0, text
    if code is not None:
        assert result.exit_code == code, text
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    for f in fragments:
        assert f in text, text
    return text
