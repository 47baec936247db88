"""The built wheel carries the templates and the zoo's weights, so `pip install .` works away from the repo."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file(), reason="needs the source checkout")
def test_wheel_holds_templates_and_weights(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # The distribution is reportgen-vision ("reportgen" on PyPI is an unrelated package); import name and command stay.
    wheel = next(tmp_path.glob("reportgen_vision-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(info).decode()
    assert "\nName: reportgen-vision\n" in metadata
    entry_points = zipfile.ZipFile(wheel).read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "reportgen = reportgen.cli:main" in entry_points
    templates = {p.relative_to(ROOT / "templates").as_posix() for p in (ROOT / "templates").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    for rel in templates:
        assert f"reportgen/_templates/{rel}" in names, rel
    weights = {p.name for p in (ROOT / "models_zoo" / "weights").glob("*.safetensors")}
    assert weights, "the zoo ships no weights"
    for name in weights:
        assert f"models_zoo/weights/{name}" in names
    assert "reportgen/imaging/__init__.py" in names and "reportgen/methods/__init__.py" in names
    assert "reportgen/loaders/exported.py" in names



def test_version_without_the_distribution_metadata(monkeypatch):
    """`reportgen --version` reads the package, not the metadata of a distribution called "reportgen" (which is
    the unrelated PyPI package's name; this one is reportgen-vision)."""
    import importlib.metadata

    from click.testing import CliRunner

    def no_metadata(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", no_metadata)  # as where no "reportgen" is installed

    import reportgen
    from reportgen.cli import main

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == f"reportgen, version {reportgen.__version__}\n"
