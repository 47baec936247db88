"""End-to-end builds through the CLI: model-spec forms, image sets, manifest hashes, safe output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import TINY_ARGS
from reportgen.cli import main


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def build_args(out, images, *extra):
    return ["build", *TINY_ARGS, "--images", images, "--out", out, "--only", "predictions", *extra]


def test_build_writes_index_and_manifest_with_true_hashes(tmp_path, image_folder):
    out = tmp_path / "site"
    (image_folder / "cat" / "broken.png").write_bytes(b"not a png at all")
    result = run(*build_args(out, image_folder))
    assert "index.html" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generator"] == "reportgen"
    assert manifest["model"]["spec"] == "tiny_models:tiny_cnn"
    assert manifest["config"]["seed"] == 0 and manifest["seed"] == 0
    assert {"torch", "torchvision", "reportgen"} <= set(manifest["created_with"])
    # every file the manifest lists exists with that hash, and every page is listed
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel
    assert "index.html" in manifest["files"]
    assert manifest["images"]["count"] == 19 and manifest["images"]["used"] == 18
    assert manifest["images"]["skipped"][0]["name"] == "cat/broken.png"
    assert manifest["model"]["classes"] == ["bird", "cat", "dog"]  # from the class folders
    pred = next(s for s in manifest["analyses"] if s["name"] == "predictions")
    assert pred["status"] == "ok" and 0.0 <= pred["metrics"]["accuracy"] <= 1.0
    assert "timings" in manifest and "forward pass" in manifest["timings"]


def test_only_runs_only_the_named_analyses(tmp_path, image_folder):
    out = tmp_path / "site"
    run(*build_args(out, image_folder))
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["analyses"]] == ["predictions"]


def test_refuses_to_replace_a_folder_that_is_not_a_report(tmp_path, image_folder):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    result = run(*build_args(out, image_folder), ok=False)
    assert result.exit_code != 0
    assert "not a reportgen site" in result.output
    assert (out / "thesis.tex").read_text() == "years of work"
    assert "Traceback" not in result.output


def test_refuses_root_and_a_file(tmp_path, image_folder):
    for bad in ("/", str(Path.home())):
        result = run(*build_args(bad, image_folder), ok=False)
        assert result.exit_code != 0 and "refusing" in result.output
    target = tmp_path / "file.txt"
    target.write_text("x")
    result = run(*build_args(target, image_folder), ok=False)
    assert result.exit_code != 0 and "is a file" in result.output


def test_previous_site_survives_a_build_that_fails_midway(tmp_path, image_folder, monkeypatch):
    out = tmp_path / "site"
    run(*build_args(out, image_folder))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def explode(*a, **k):
        raise KeyboardInterrupt  # as if Ctrl-C arrived while pages were written

    monkeypatch.setattr("reportgen.site.render_site", explode)
    result = run(*build_args(out, image_folder, "--seed", "3"), ok=False)
    assert result.exit_code == 130
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".site")]
    assert leftovers == []


def test_rebuild_replaces_a_previous_report(tmp_path, image_folder):
    out = tmp_path / "site"
    run(*build_args(out, image_folder))
    run(*build_args(out, image_folder, "--seed", "5"))
    assert json.loads((out / "manifest.json").read_text())["seed"] == 5


def save_state(model, path: Path, fmt: str) -> Path:
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


def test_model_spec_forms(tmp_path, image_folder):
    """zoo name, torchvision arch + state dict (.pt and .safetensors), TorchScript file, module:factory."""
    import torchvision

    from reportgen.config import load_config
    from reportgen.models import load_model

    # torchvision arch: the number of classes is read from the weights
    tv = torchvision.models.get_model("resnet18", weights=None, num_classes=5)
    for fmt in ("pt", "safetensors"):
        weights = save_state(tv, tmp_path / f"r18.{fmt}", fmt)
        loaded = load_model(load_config(None, model="torchvision:resnet18", weights=str(weights), input_size=[64, 64]))
        assert loaded.num_classes == 5 and loaded.form == "torchvision"
        assert torch.equal(loaded.model.fc.weight, tv.fc.weight)
    # TorchScript
    import tiny_models

    net = tiny_models.tiny_cnn().eval()
    script = tmp_path / "net.pt"
    torch.jit.script(net).save(str(script))
    loaded = load_model(load_config(None, model=str(script), input_size=[32, 32], channels=3))
    x = torch.randn(2, 3, 32, 32)
    assert loaded.form == "torchscript" and torch.allclose(loaded.model(x), net(x), atol=1e-6)
    # module:factory with weights
    weights = save_state(net, tmp_path / "tiny.safetensors", "safetensors")
    loaded = load_model(load_config(None, model="tiny_models:tiny_cnn", weights=str(weights), input_size=[32, 32],
                                    channels=3))
    assert loaded.form == "factory" and loaded.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    # zoo name
    loaded = load_model(load_config(None, model="lenet-digits"))
    assert loaded.form == "zoo" and loaded.input.size == (28, 28) and loaded.num_classes == 10


def test_build_with_torchvision_state_dict_and_folder_images(tmp_path, image_folder):
    import torchvision

    tv = torchvision.models.get_model("resnet18", weights=None, num_classes=3)
    weights = save_state(tv, tmp_path / "r18.pt", "pt")
    out = tmp_path / "site"
    run("build", "torchvision:resnet18", "--weights", weights, "--input-size", "48x48", "--images", image_folder,
        "--out", out, "--only", "predictions", "-q")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["form"] == "torchvision"
    assert manifest["model"]["input"]["size"] == [48, 48]


def test_zoo_image_set_form(tmp_path):
    out = tmp_path / "site"
    run("build", "lenet-digits", "--images", "zoo:lenet-digits", "--max-images", "40", "--out", out,
        "--only", "predictions", "-q")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"]["used"] == 40 and manifest["images"]["labelled"]
    pred = manifest["analyses"][0]
    assert pred["metrics"]["accuracy"] > 0.9


def test_config_file_with_flags_on_top(tmp_path, image_folder):
    cfg = tmp_path / "report.toml"
    cfg.write_text(f'model = "tiny_models:tiny_cnn"\ninput_size = [32, 32]\nchannels = 3\n'
                   f'images = "{image_folder.as_posix()}"\nseed = 7\nonly = ["predictions"]\n'
                   '[analysis.predictions]\nworst = 2\n')
    out = tmp_path / "site"
    run("build", "--config", cfg, "--out", out, "--seed", "9")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 9  # the flag wins over the file
    assert manifest["analyses"][0]["params"] == {"worst": 2}
    worst = [i for i in manifest["analyses"][0]["items"] if i["group"] == "Worst predictions"]
    assert len(worst) == 2


def test_unknown_config_keys_are_listed(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('modle = "x"\nseed = "zero"\n[analysis.predictions]\nworstt = 3\n')
    result = run("build", "--config", cfg, "--out", tmp_path / "s", ok=False)
    assert result.exit_code == 2
    assert "modle: unknown key (did you mean 'model'?)" in result.output
    assert "known keys:" in result.output and "seed: expected an integer" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("bad", [
    ["--only", "nosuch"],
    ["--layers", "0.weight.nope"],
])
def test_bad_names_give_one_line(tmp_path, image_folder, bad):
    result = run("build", *TINY_ARGS, "--images", image_folder, "--out", tmp_path / "s", *bad, ok=False)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_torchscript_build_marks_hook_based_analyses_not_applicable(tmp_path, image_folder):
    """A compiled graph cannot be hooked: those analyses say so, the rest runs, the build succeeds."""
    import tiny_models

    script = tmp_path / "net.ts"
    torch.jit.script(tiny_models.tiny_cnn().eval()).save(str(script))
    out = tmp_path / "site"
    run("build", script, "--input-size", "32x32", "--channels", "3", "--images", image_folder, "--out", out,
        "--samples", "2", "--only", "predictions,gradient,guided-backprop,grad-cam,nonlinearities", "-q")
    sections = {s["name"]: s for s in json.loads((out / "manifest.json").read_text())["analyses"]}
    assert sections["gradient"]["status"] == "ok" and sections["predictions"]["status"] == "ok"
    for name in ("guided-backprop", "grad-cam", "nonlinearities"):
        assert sections[name]["status"] == "not applicable"
        assert "TorchScript" in sections[name]["reason"]


def test_the_model_runs_once_before_the_image_set(tmp_path, image_folder):
    """The plan learns the model from one probe pass (output check, layer table, CAM layers, non-linearities) and
    one backward pass of one probe image (the last map layer the top logit's gradient reaches: Grad-CAM's default):
    with every analysis chosen, no `check` or `reducers` runs the model again before the image-set pass."""
    import tiny_models

    config = tmp_path / "fast.toml"
    config.write_text("[analysis.class-max]\nsteps = 1\n[analysis.unit-max]\nsteps = 1\n"
                      "[analysis.deepdream]\nimages = 1\noctaves = 1\nsteps_per_octave = 1\n"
                      "[analysis.adversarial]\nsteps = 1\nsphere_points = 0\n[analysis.smoothgrad]\nn = 2\n"
                      "[analysis.embeddings]\nperplexity = 5\n")
    tiny_models.CountingCNN.calls.clear()
    run("build", "tiny_models:counting_cnn", "--input-size", "32x32", "--channels", "3", "--images", image_folder,
        "--out", tmp_path / "site", "--batch-size", "7", "--samples", "2", "--config", config, "-q")
    calls = tiny_models.CountingCNN.calls
    first_batch = calls.index(7)
    assert calls[:first_batch] == [2, 1]  # the plan's probe: two inputs; Grad-CAM's default layer: one
    assert calls[first_batch:first_batch + 3] == [7, 7, 4]  # 18 images, once
    manifest = json.loads((tmp_path / "site" / "manifest.json").read_text())
    not_ok = {s["name"]: s["reason"] for s in manifest["analyses"] if s["status"] != "ok"}
    # a 2-D point model's analysis and the transformer ones: the only ones that do not apply to a CNN; and LRP,
    # because this CNN's forward records its batch size (a side effect torch.fx cannot trace)
    assert sorted(not_ok) == ["attention", "attention-rollout", "grad-rollout", "legrad", "lrp",
                              "perceptron"], not_ok
    assert "LRP needs its graph" in not_ok["lrp"]
    assert all("no attention module" in not_ok[name] for name in ("attention", "attention-rollout", "grad-rollout"))
