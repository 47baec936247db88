"""Checkpoint archives: ordering, incremental rebuilds, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from conftest import lenet_build_args
from reportgen.cli import main

TINY = ["--model", "tiny_models:tiny_cnn", "--input-size", "32x32", "--channels", "3"]


def save_checkpoints(folder: Path, epochs_and_names: list[tuple[int, str]]) -> list[Path]:
    """Seeded variants of tiny_cnn (different weights for different epochs), with the epoch in the safetensors
    metadata (not always in the name)."""
    from safetensors.torch import save_file

    import tiny_models

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for epoch, name in epochs_and_names:
        model = tiny_models.tiny_cnn()  # (it seeds the global generator itself)
        torch.manual_seed(epoch)
        for p in model.parameters():
            p.data.normal_(0, 0.3)
        path = folder / name
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
                  metadata={"epoch": str(epoch)})
        paths.append(path)
    return paths


def archive(*args, ok=True):
    result = CliRunner().invoke(main, ["archive", *map(str, args)], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_archive_orders_by_metadata_and_rebuilds_only_what_changed(tmp_path, image_folder):
    ckpts = tmp_path / "ckpts"
    # file names sort b, c, a; the metadata says a=1, b=2, c=10
    save_checkpoints(ckpts, [(2, "b.safetensors"), (10, "c.safetensors"), (1, "a.safetensors")])
    out = tmp_path / "archive"
    common = [*TINY, "--images", image_folder, "--out", out, "--only", "predictions", "-q"]
    result = archive(ckpts, *common)
    assert "3 snapshots built, 0 reused" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "archive"
    assert [s["checkpoint"] for s in manifest["snapshots"]] == ["a.safetensors", "b.safetensors", "c.safetensors"]
    assert [s["label"] for s in manifest["snapshots"]] == ["step-00001", "step-00002", "step-00010"]
    html = (out / "index.html").read_text()
    for label in ("step-00001", "step-00002", "step-00010"):
        assert f"snapshots/{label}/index.html" in html
        assert (out / "snapshots" / label / "manifest.json").is_file()
    before = (out / "snapshots" / "step-00002" / "manifest.json").read_text()

    # one more checkpoint: only it is built, the others are reused unchanged
    save_checkpoints(ckpts, [(5, "d.safetensors")])
    result = archive(ckpts, *common)
    assert "1 snapshots built, 3 reused" in result.output
    assert (out / "snapshots" / "step-00002" / "manifest.json").read_text() == before
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["step"] for s in manifest["snapshots"]] == [1, 2, 5, 10]

    # a changed checkpoint is rebuilt
    save_checkpoints(ckpts, [(3, "b.safetensors")])
    result = archive(ckpts, *common)
    assert "1 snapshots built, 3 reused" in result.output


def test_archive_errors_are_one_line(tmp_path, image_folder):
    result = archive(tmp_path / "nothing-here", *TINY, "--out", tmp_path / "a", ok=False)
    assert result.exit_code != 0 and "does not exist" in result.output and "Traceback" not in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = archive(empty, *TINY, "--out", tmp_path / "a", ok=False)
    assert result.exit_code != 0 and "no checkpoint files" in result.output


def image_hashes(site: Path) -> dict:
    files = json.loads((site / "manifest.json").read_text())["files"]
    return {k: v for k, v in files.items() if not k.endswith(".html")}


def test_same_inputs_give_the_same_files(tmp_path, lenet_site):
    """Reproducible: the same checkpoint, image set, config and seed give byte-identical figures (every analysis,
    small step counts: a second build of the session's `lenet_site`, with the same arguments)."""
    result = CliRunner().invoke(main, [*lenet_build_args(tmp_path), "--out", str(tmp_path / "again")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    first, second = image_hashes(lenet_site), image_hashes(tmp_path / "again")
    assert len(first) > 10
    assert first == second
