"""Shared fixtures: tiny seeded models and image folders; everything CPU-only, offline and fast."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # so that "tiny_models:NAME" works as a module:factory spec

# One intra-op thread per test process, and for the builds it starts (CLI subprocesses, torchrun's ranks, which set
# this anyway): the tensors here are tiny, so a second OpenMP thread only spins, and on a busy 2-core machine it waits
# for a core: seeded training of the 102-parameter MLP took 58.6 s with 2 threads and 2.3 s with 1 (load 12). The
# suite's parallelism is its worker processes (pytest -n 2). Set before torch is imported; tests of the thread
# count (test_tsne) set it themselves.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The figures of the suite's many small builds are drawn in-process: a render worker (`reportgen.imaging.worker`)
# would cost each build a process start (~1.5 s of CPU: matplotlib); test_render_worker compares both paths.
os.environ.setdefault("REPORTGEN_RENDER_WORKER", "0")


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


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (`--dist loadgroup`)
def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n 2 --dist loadgroup`` each built site is built once: the tests of a module with a
    module-scoped fixture run on one worker (as with ``--dist loadfile``; a test may also reach a fixture through
    ``request.getfixturevalue``), unless the module splits them into groups of its own (``xdist_group`` marks:
    test_distributed); the tests of every module that use a session-scoped fixture of this file (`lenet_site`) run
    on one worker too; the other tests go wherever a worker is free. Without xdist the marks do nothing."""
    for item in items:
        if any(True for _ in item.iter_markers("xdist_group")):
            continue
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        scopes = {name: fixturedefs[-1].scope for name, fixturedefs in defs.items() if fixturedefs}
        shared = sorted(name for name, scope in scopes.items() if scope == "session" and name in SHARED_SITES)
        if shared:
            item.add_marker(pytest.mark.xdist_group(f"site-{'-'.join(shared)}"))
        elif "module" in scopes.values():
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


# The end-to-end site of a zoo model that several test modules read (the browser tests, the reproducibility test):
# every analysis (the default set), with small step counts so that it builds in seconds, 60 images, 2 samples.
LENET = "lenet-digits"
LENET_FAST_CONFIG = """
[analysis.embeddings]
max_points = 60
perplexity = 10.0
[analysis.smoothgrad]
n = 4
[analysis.class-max]
steps = 10
[analysis.unit-max]
steps = 5
[analysis.adversarial]
steps = 10
sphere_points = 50
"""


def lenet_build_args(tmp: Path) -> list[str]:
    """The `reportgen build` arguments of `lenet_site` (with its config and, before the zoo is trained, seeded
    random weights written into ``tmp``), minus ``--out``."""
    import models_zoo

    (tmp / "fast.toml").write_text(LENET_FAST_CONFIG)
    args = ["build", LENET, "--max-images", "60", "--samples", "2", "--config", str(tmp / "fast.toml"), "-q"]
    entry = models_zoo.ZOO[LENET]
    if not entry.weights_path().is_file():
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        save_file({k: v.contiguous() for k, v in entry.build_model().state_dict().items()}, str(tmp / "w.safetensors"))
        args += ["--weights", str(tmp / "w.safetensors")]
    return args


@pytest.fixture(scope="session")
def lenet_site(tmp_path_factory) -> Path:
    """The default site of the zoo's lenet-digits, small (`lenet_build_args`), built once for the session; no
    analysis failed (a failed one exits 1 and its page would only show the error). Read it, never write into it."""
    tmp = tmp_path_factory.mktemp("lenet-site")
    result = run(*lenet_build_args(tmp), "--out", tmp / "site")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp / "site" / "manifest.json").read_text())
    failed = {a["name"]: a["reason"] for a in manifest["analyses"] if a["status"] == "failed"}
    assert not failed, failed
    return tmp / "site"


SHARED_SITES = {"lenet_site"}


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
