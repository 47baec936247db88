"""A .pt2 or TorchScript file says nothing about the normalization it was trained with: without --mean/--std the
report warns once on the console and notes it on the model card, with the flags to give."""

from __future__ import annotations

import json

import torch

from conftest import run
from reportgen.config import load_config
from reportgen.models import load_model

SAYS = "runs un-normalized: no mean/std was given, so it sees pixels scaled to [0, 1]"


def test_pt2_without_mean_and_std_warns_once_and_notes_it(tmp_path, image_folder):
    import tiny_models
    from test_export import export

    pt2 = export(tiny_models.tiny_cnn(), tmp_path / "tiny.pt2")
    out = tmp_path / "site"
    result = run("build", pt2, "--images", image_folder, "--only", "predictions", "--out", out)
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if SAYS in line]
    assert len(warned) == 1 and warned[0].startswith(f"warning: '{pt2}' runs un-normalized")
    assert "--mean and --std" in warned[0] and "--class-names" not in warned[0]  # the class folders name them
    notes = json.loads((out / "manifest.json").read_text())["model"]["notes"]
    assert [n for n in notes if SAYS in n] == [warned[0][len("warning: "):]]
    assert SAYS in (out / "index.html").read_text()
    # given: no warning, no note
    result = run("layers", pt2, "--mean", "0.5", "--std", "0.25")
    assert result.exit_code == 0 and SAYS not in result.output


def test_torchscript_without_mean_and_std(tmp_path):
    import tiny_models

    script = tmp_path / "net.ts"
    torch.jit.script(tiny_models.tiny_cnn().eval()).save(str(script))
    loaded = load_model(load_config(None, model=str(script), input_size=[32, 32], channels=3))
    assert len(loaded.warnings) == 1 and SAYS in loaded.warnings[0] and loaded.warnings[0] in loaded.notes
    assert "--class-names" in loaded.warnings[0] and loaded.class_names == ["class 0", "class 1", "class 2"]
    result = run("layers", script, "--input-size", "32x32", "--channels", "3")
    assert sum(SAYS in line for line in result.output.splitlines()) == 1
    (tmp_path / "model.json").write_text(json.dumps({"mean": [0.5], "std": [0.25], "class_names": ["a", "b", "c"]}))
    loaded = load_model(load_config(None, model=str(script), input_size=[32, 32], channels=3))
    assert not loaded.warnings and not any(SAYS in n for n in loaded.notes)
