"""The Python entry point (issue 17): `reportgen.build_report` from a model object and a Dataset, a DataLoader or
an image folder gives the CLI's numbers, leaves the model as it was, and says every mistake in one line; the
notebook display; `reportgen.imaging.show`; the README's example runs as written."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import reportgen
from reportgen.api import state_dict_sha256
from reportgen.cli import main
from reportgen.errors import ConfigError, DataError, ModelError, ReportgenError

ONLY = ["predictions", "distributions", "gradient", "grad-cam"]
README = Path(__file__).resolve().parents[1] / "README.md"


def tiny():
    import tiny_models

    return tiny_models.tiny_cnn()


def numbers(manifest: dict) -> dict:
    """What must agree between two builds of the same model on the same images: per analysis, its status and every
    number it computed; and the sample images."""
    return {"analyses": {a["name"]: (a["status"], a["metrics"]) for a in manifest["analyses"]},
            "samples": [(s["index"], s["name"], s["pred"], s["prob"]) for s in manifest["images"]["samples"]],
            "used": manifest["images"]["used"], "classes": manifest["model"]["classes"],
            "state_dict_sha256": manifest["model"]["state_dict_sha256"]}


def read(folder: Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


def test_module_with_folder_dataset_and_dataloader_give_the_cli_numbers(tmp_path, image_folder):
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    cli_out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["build", "tiny_models:tiny_cnn", "--input-size", "32x32", "--channels", "3",
                                       "--images", str(image_folder), "--out", str(cli_out), "--samples", "3",
                                       "--batch-size", "5", "--only", ",".join(ONLY), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    expected = numbers(read(cli_out))
    assert expected["used"] == 18 and expected["classes"] == ["bird", "cat", "dog"]

    # the same batch size everywhere: a different one may change the last float digits of batched computations
    common = {"input_size": 32, "only": ONLY, "samples": 3}
    from_folder = reportgen.build_report(tiny(), image_folder, out=tmp_path / "folder", batch_size=5, **common)
    # PIL images (ImageFolder without a transform): the same files, read by torchvision
    from_dataset = reportgen.build_report(tiny(), ImageFolder(str(image_folder)), out=tmp_path / "dataset",
                                          batch_size=5, **common)
    # float tensors in [0, 1] through a DataLoader, whose batch size becomes the build's
    loader = torch.utils.data.DataLoader(ImageFolder(str(image_folder), transform=ToTensor()), batch_size=5)
    from_loader = reportgen.build_report(tiny(), loader, out=tmp_path / "loader", **common)
    for report in (from_folder, from_dataset, from_loader):
        assert numbers(read(report.out)) == expected
        assert report.manifest.model["form"] == "object" and report.failed == []
    assert read(from_loader.out)["config"]["batch_size"] == 5
    assert read(from_dataset.out)["images"]["source"].startswith("ImageFolder at ")


def test_a_list_of_uint8_tensors_without_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.integers(0, 255, (3, 32, 32), dtype=np.uint8)) for _ in range(5)]
    report = reportgen.build_report(tiny(), images, out=tmp_path / "site", only=["predictions"], samples=2)
    manifest = read(report.out)
    assert manifest["images"]["count"] == 5 and manifest["images"]["labelled"] is False
    assert manifest["model"]["input"]["size"] == [32, 32] and manifest["model"]["input"]["channels"] == 3
    assert manifest["images"]["samples"][0]["name"].startswith("item ")


def test_an_item_the_dataset_cannot_read_is_skipped_and_listed(tmp_path, image_folder):
    from torchvision.datasets import ImageFolder

    (image_folder / "cat" / "broken.png").write_bytes(b"not a png at all")
    report = reportgen.build_report(tiny(), ImageFolder(str(image_folder)), out=tmp_path / "site", input_size=32,
                                    only=["predictions"], samples=2)
    images = read(report.out)["images"]
    assert images["count"] == 19 and images["used"] == 18
    assert images["skipped"][0]["name"] == "cat/broken.png"
    assert images["skipped"][0]["reason"].startswith("the dataset raised UnidentifiedImageError")


def test_manifest_records_the_state_dict_sha256(tmp_path, image_folder):
    model = tiny()
    report = reportgen.build_report(model, image_folder, out=tmp_path / "site", input_size=32, only=["predictions"])
    recorded = read(report.out)["model"]["weights_sha256"]
    # an independent second computation: name, dtype, shape and bytes of every tensor, in name order
    h = hashlib.sha256()
    for name in sorted(model.state_dict()):
        t = model.state_dict()[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes())
    assert recorded == h.hexdigest() == state_dict_sha256(tiny()) == read(report.out)["model"]["state_dict_sha256"]
    with torch.no_grad():
        model[0].bias[0] += 1e-3
    assert state_dict_sha256(model) != recorded
    assert "state dict" in (tmp_path / "site" / "index.html").read_text()


def hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def snapshot_of(model):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # 2: FailsOnBigBatches runs it
    model_mode = [m.training for m in model.modules()]
    with torch.no_grad():
        model.eval()
        out = model(x)
    for m, mode in zip(model.modules(), model_mode):
        m.training = mode
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()], [p.grad for p in model.parameters()], out, x)


def assert_unchanged(model, before):
    state, modes, flags, grads, out, x = before
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(a is b for a, b in zip([p.grad for p in model.parameters()], grads))
    assert hooks(model) == 0
    mode = model.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), out)
    model.train(mode)


def test_the_model_is_left_exactly_as_it_was(tmp_path, image_folder):
    model = tiny()
    model.train()  # a model mid-training: train mode, one frozen layer, a gradient already there
    model[0].weight.requires_grad_(False)
    model[-1].weight.grad = torch.ones_like(model[-1].weight)
    before = snapshot_of(model)
    rng = torch.get_rng_state()
    report = reportgen.build_report(model, image_folder, out=tmp_path / "site", input_size=32, samples=2,
                                    only=["predictions", "gradient", "smoothgrad", "guided-backprop", "grad-cam",
                                          "class-max"], analysis={"class-max": {"steps": 2}, "smoothgrad": {"n": 2}})
    assert report.failed == []
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng)  # a training loop's random stream goes on as if nothing ran


def test_the_model_is_left_as_it_was_after_an_error(tmp_path, image_folder):
    import tiny_models

    model = tiny_models.FailsOnBigBatches()
    model.train()
    before = snapshot_of(model)
    out = tmp_path / "site"
    with pytest.raises(ModelError, match="failed on a batch of the image set"):
        reportgen.build_report(model, image_folder, out=out, input_size=32, only=["predictions"])
    assert_unchanged(model, before)
    assert not out.exists() and not list(tmp_path.glob(".site*"))  # no half-written site


class Normalized(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.randn(3, 32, 32), 0


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.zeros(3, 32, 32), 0


@pytest.mark.parametrize("model, images, options, error, fragment", [
    ("tiny", "normalized", {}, DataError, "drop Normalize"),
    ("tiny", [(torch.zeros(3, 32, 32), 7)] * 3, {}, DataError, "label 7 but the model has 3 outputs"),
    ("tiny", [(torch.zeros(3, 32, 32), "cat")] * 3, {}, DataError, "labels must be integers"),
    ("tiny", [(torch.zeros(5, 32, 32), 0)] * 3, {}, DataError, "not an image (C, H, W)"),
    ("tiny", "stream", {}, DataError, "IterableDataset"),
    ("tiny", 42, {}, DataError, "give an image folder"),
    ("a string of nothing", "folder", {}, ModelError, "names nothing"),
    (42, "folder", {}, ModelError, "give an nn.Module"),
    ("tiny", "folder", {"sedd": 1}, ConfigError, "did you mean 'seed'"),
    ("tiny", "folder", {"only": ["grad-kam"]}, ConfigError, "unknown analysis 'grad-kam'"),
    ("tiny", "folder", {"device": "cuda"}, ConfigError, "the model is on cpu"),
])
def test_mistakes_are_one_line(tmp_path, image_folder, model, images, options, error, fragment):
    model = tiny() if model == "tiny" else model
    images = {"normalized": Normalized(), "stream": Stream(), "folder": image_folder}.get(
        images, images) if isinstance(images, str) else images
    if options.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    out = tmp_path / "site"
    with pytest.raises(error) as info:
        reportgen.build_report(model, images, out=out, input_size=32, **{"only": ["predictions"], **options})
    message = info.value.format_message()
    assert fragment in message and "\n" not in message
    assert isinstance(info.value, ReportgenError) and not out.exists()


def test_repr_html_inlines_the_model_card(tmp_path, image_folder):
    report = reportgen.build_report(tiny(), image_folder, out=tmp_path / "site", input_size=32, samples=2,
                                    only=["predictions"])
    shown = report._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and "torch.nn.modules.container.Sequential" in shown
    import html

    page = html.unescape(re.search(r'srcdoc="([^"]*)"', shown).group(1))
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:") for s in sources)  # every picture inlined: no server needed
    assert "<style>" in page and 'rel="stylesheet"' not in page
    # the confusion matrix of the page is the very file of the site
    png = (tmp_path / "site" / "img" / "predictions").glob("*.png")
    import base64

    inlined = {base64.b64decode(s.split(",", 1)[1]) for s in sources if s.startswith("data:image/png")}
    assert any(p.read_bytes() in inlined for p in png)
    import importlib.util

    if importlib.util.find_spec("IPython") is None:  # outside Jupyter, show() says where the page is instead
        with pytest.raises(ReportgenError, match="index.html"):
            report.show()


def test_imaging_show_uses_the_report_colour_scales():
    from reportgen.imaging import colorize

    maps = np.zeros((2, 4, 4))
    maps[0, 0, :] = [1, 2, 3, 4]
    maps[1, 3, 3] = 8
    maps[1, 2, 2] = -5  # heat: negative counts as 0
    fig = reportgen.imaging.show(torch.tensor(maps), percentile=100)
    drawn = [ax.images[0].get_array() for ax in fig.axes[:2]]
    # shared scale at the 100th percentile: 8 is the top colour for both maps
    for k in range(2):
        assert np.allclose(np.asarray(drawn[k]), colorize(np.clip(maps[k], 0, None), "heat", 8.0))
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == ["0", "8"]
    fig = reportgen.imaging.show(maps, scale="per-image", percentile=100)
    assert np.allclose(np.asarray(fig.axes[0].images[0].get_array()), colorize(maps[0], "heat", 4.0))
    signed = reportgen.imaging.show(maps[:, None], style="signed", percentile=100)  # (N, 1, H, W) summed
    assert np.allclose(np.asarray(signed.axes[1].images[0].get_array()), colorize(maps[1], "signed", 8.0))
    with pytest.raises(ValueError, match="mean= and std="):
        reportgen.imaging.show(maps, images=torch.full((2, 3, 4, 4), -2.0))


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- api-example -->\s*```python\n(.*?)```\s*<!-- /api-example -->", text, re.S)
    assert match, "README.md has no Python API example between the api-example markers"
    return match.group(1)


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    report = namespace["report"]
    assert (tmp_path / "shapes-site" / "index.html").is_file() and report.failed == []
    assert (tmp_path / "runs" / "exp1" / "report" / "index.html").is_file()
