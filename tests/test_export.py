"""torch.export programs (.pt2) as model files (issue 19): loaded without unpickling, unflattened to the original
dotted names with standard layers restored, so the report of a dynamic-batch export equals the report of the
module it was exported from; a static-batch export and a damaged or pickle-carrying .pt2 end in one line."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import fails_in_one_line, run

FAST = ("[analysis.class-max]\nsteps = 1\n[analysis.unit-max]\nsteps = 1\n"
        "[analysis.deepdream]\nimages = 1\noctaves = 1\nsteps_per_octave = 1\n"
        "[analysis.adversarial]\nsteps = 1\nsphere_points = 0\n[analysis.smoothgrad]\nn = 2\n"
        "[analysis.embeddings]\nperplexity = 5\n")



def export(model, path: Path, batch: int = 4, dynamic: bool = True) -> Path:
    x = torch.randn(batch, 3, 32, 32)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(model.eval(), (x,), dynamic_shapes=shapes), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_pt2(tmp_path_factory) -> Path:
    import tiny_models

    return export(tiny_models.tiny_cnn(), tmp_path_factory.mktemp("pt2") / "tiny.pt2")


def test_unflattened_program_keeps_names_restores_layers_and_output(tiny_pt2):
    import tiny_models

    from reportgen.config import load_config
    from reportgen.models import load_model

    net = tiny_models.tiny_cnn().eval()
    loaded = load_model(load_config(None, model=str(tiny_pt2)))
    assert loaded.form == "export"
    assert loaded.input.size == (32, 32) and loaded.input.channels == 3  # read from the program itself
    names = {n: type(m).__name__ for n, m in loaded.model.named_modules() if n}
    assert names == {n: type(m).__name__ for n, m in net.named_modules() if n}  # same names, same torch.nn types
    assert loaded.model.get_submodule("0").weight.shape == (8, 3, 3, 3)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32, requires_grad=True)
        y = x.detach().clone().requires_grad_()
        assert torch.equal(loaded.model(x), net(y))
        loaded.model(x)[:, 1].sum().backward()
        net(y)[:, 1].sum().backward()
        assert torch.allclose(x.grad, y.grad, atol=1e-6)


def test_dynamic_batch_export_report_equals_the_module_report(tmp_path, image_folder, tiny_pt2):
    """Every analysis, same seed: the .pt2 report's figures are byte-identical to those of the nn.Module."""
    config = tmp_path / "fast.toml"
    config.write_text(FAST)
    common = ["--images", image_folder, "--samples", "2", "--config", config, "-q"]
    sites = {}
    for label, spec in (("module", ["tiny_models:tiny_cnn", "--input-size", "32x32", "--channels", "3"]),
                        ("export", [tiny_pt2])):
        sites[label] = tmp_path / label
        result = run("build", *spec, "--out", sites[label], *common)
        assert result.exit_code == 0, result.output
    manifests = {k: json.loads((v / "manifest.json").read_text()) for k, v in sites.items()}
    status = {k: {a["name"]: (a["status"], a["reason"]) for a in m["analyses"]} for k, m in manifests.items()}
    assert status["export"] == status["module"]
    assert "failed" not in {s for s, _ in status["export"].values()}
    assert status["export"]["grad-cam"][0] == status["export"]["guided-backprop"][0] == "ok"  # hooks, ReLU rules
    assert status["export"]["cam"][0] == status["export"]["top-images"][0] == "ok"
    figures = {k: {p: h for p, h in m["files"].items() if p.startswith("img/")} for k, m in manifests.items()}
    assert len(figures["export"]) > 50
    assert figures["export"] == figures["module"]
    assert manifests["export"]["model"]["layers"] == manifests["module"]["model"]["layers"]


def test_static_batch_export_is_refused_with_the_fix(tmp_path, image_folder):
    import tiny_models

    path = export(tiny_models.tiny_cnn(), tmp_path / "static.pt2", batch=1, dynamic=False)
    result = run("build", path, "--images", image_folder, "--out", tmp_path / "s")
    fails_in_one_line(result, "static batch size of 1", "dynamic batch dimension", "torch.export.Dim('batch')")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("damage", ["truncated", "noise", "empty zip"])
def test_corrupt_pt2_names_every_accepted_form(tmp_path, image_folder, tiny_pt2, damage):
    data = tiny_pt2.read_bytes()
    bad = tmp_path / "model.pt2"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "noise":
        bad.write_bytes(os.urandom(4096))
    else:
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("model/archive_format", "pt2")
    result = run("build", bad, "--images", image_folder, "--out", tmp_path / "s")
    text = fails_in_one_line(result, "model.pt2")
    if damage != "empty zip":  # no archive layout left: every form is named with how to produce it
        for form in ("torch.export.save", "save_pretrained", "torch.jit.script", "torchvision:ARCH", "timm:NAME",
                     "package.module:factory", "state_dict"):
            assert form in text, text
    else:
        assert "torch.export" in text


class Evil:
    marker = "MARKER"

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_payloads_in_a_pt2_are_never_loaded(tmp_path, image_folder, tiny_pt2, monkeypatch):
    """torch.export.load would unpickle a payload marked use_pickle (and fall back to an unrestricted torch.load
    for sample inputs): reportgen refuses both before calling it."""
    marker = tmp_path / "MARKER"
    monkeypatch.setattr(Evil, "marker", str(marker))
    evil = pickle.dumps(Evil(), protocol=2)
    for target in ("weights", "sample_inputs"):
        bad = tmp_path / f"evil_{target}.pt2"
        with zipfile.ZipFile(tiny_pt2) as src, zipfile.ZipFile(bad, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if target == "weights" and info.filename.endswith("model_weights_config.json"):
                    config = json.loads(data)
                    first = next(iter(config["config"].values()))
                    first["use_pickle"] = True
                    data = json.dumps(config).encode()
                elif "/data/weights/weight_0" in info.filename if target == "weights" else \
                        "/data/sample_inputs/" in info.filename:
                    data = evil
                dst.writestr(info, data)
        result = run("build", bad, "--images", image_folder, "--out", tmp_path / "s")
        fails_in_one_line(result, "refuses to load", "torch.export.export")
    assert not marker.exists()


class FunctionalNet(torch.nn.Module):
    """ReLU and GELU called as functions inside forward: no module to restore, the program calls ATen ops."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        h = torch.nn.functional.relu(self.conv(x))
        return self.fc(torch.nn.functional.gelu(h).mean((2, 3)))


def test_functional_nonlinearities_of_a_program_are_seen(tmp_path):
    """The non-linearity check and the ReLU rules see the program's ATen relu / gelu calls as they see F.relu /
    F.gelu in the original module: same verdicts, same guided-backprop maps."""
    import warnings

    from reportgen.config import load_config
    from reportgen.methods.attribution import guided_backprop
    from reportgen.methods.relu_rules import inspect_nonlinearities
    from reportgen.models import load_model

    net = FunctionalNet().eval()
    loaded = load_model(load_config(None, model=str(export(net, tmp_path / "f.pt2"))))
    x = torch.randn(3, 3, 32, 32)
    mine, theirs = inspect_nonlinearities(loaded.model, x), inspect_nonlinearities(net, x)
    assert mine.functional_relus == theirs.functional_relus == {"<model>": 1}
    assert list(mine.other_nonlinearities) == ["aten.gelu in <model>"]
    assert list(theirs.other_nonlinearities) == ["F.gelu in <model>"]
    assert not mine.rules_exact and not theirs.rules_exact
    assert mine.rule_reason == theirs.rule_reason.replace("F.gelu", "aten.gelu")
    target = torch.tensor([0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn that GELU keeps its plain gradient
        assert torch.allclose(guided_backprop(loaded.model, x, target), guided_backprop(net, x, target), atol=1e-6)


def test_residual_program_receptive_fields_and_copies(tmp_path):
    """torch.fx traces the restored program (its ATen adds and ReLUs are known pointwise ops), so every layer's
    receptive field equals the original module's; copy.deepcopy gives an independent twin (analyses copy models)."""
    import copy

    import models_zoo
    from reportgen.config import load_config
    from reportgen.methods.receptive_field import receptive_field
    from reportgen.models import load_model

    net = models_zoo.ZOO["shapes-resnet"].load_pretrained().eval()
    path = tmp_path / "res.pt2"
    x = torch.randn(2, 3, 64, 64)
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(path))
    model = load_model(load_config(None, model=str(path))).model
    for name, _ in net.named_modules():
        if name:
            mine, theirs = receptive_field(model, name, (3, 64, 64)), receptive_field(net, name, (3, 64, 64))
            assert (mine.size, mine.jump, mine.start, mine.method) == (theirs.size, theirs.jump, theirs.start, "fx")
    twin = copy.deepcopy(model)
    assert torch.equal(twin(x), model(x))
    with torch.no_grad():
        twin.get_submodule("conv1").weight.zero_()
    assert torch.equal(model(x), net(x)) and not torch.equal(twin(x), net(x))
