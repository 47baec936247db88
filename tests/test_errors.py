"""Bad input, interruption and untrusted files (issue 9).

Every failure a user can cause ends in one clear line and a non-zero exit (never a traceback, never a half-written
site, never a file deleted outside the output folder, never code run from a data file); one bad image inside a set
is skipped with a warning and listed on the data page. Each test writes its own bad files.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_ARGS, fails_in_one_line, run, write_image_folder
from reportgen.data import BadImage, read_image
from reportgen.models import InputSpec

REPO = Path(__file__).resolve().parents[1]
RGB = InputSpec("image", (16, 16), 3, (0.0,) * 3, (1.0,) * 3)
GREY = InputSpec("image", (16, 16), 1, (0.0,), (1.0,))
XSS = "<img src=x onerror=alert(1)>"


def build(out, images, *extra, model=TINY_ARGS):
    return run("build", *model, "--images", images, "--out", out, "--only", "predictions", *extra)


def png_bytes(arr: np.ndarray, mode=None, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


def solid(colour, size=(16, 16)) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (*size, len(colour))).copy()


# ---------------------------------------------------------------------------------------------------------- images


def read(path: Path, spec=RGB):
    counts: dict[str, int] = {}
    return read_image(path, spec, counts), counts


@pytest.mark.parametrize("kind", ["zero-byte", "truncated png", "truncated jpeg", "text named .png"])
def test_unreadable_files_are_bad_images(tmp_path, kind):
    path = tmp_path / ("x.jpg" if "jpeg" in kind else "x.png")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "truncated png":
        data = png_bytes(noise)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated jpeg":
        data = png_bytes(noise, format="JPEG", quality=90)
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("hello, I am not a picture\n")
    with pytest.raises(BadImage) as info:
        read(path)
    assert "\n" not in str(info.value) and str(info.value)


def fake_png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in 60 bytes: the classic decompression bomb shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(fake_png_header(100_000, 100_000))  # 10 gigapixels
    with pytest.raises(BadImage, match="decompression bomb"):
        read(bomb)
    # a real image above a (lowered) limit: both PIL's warning band (1-2x) and its error band (>2x) are refused
    monkeypatch.setattr("reportgen.data.MAX_PIXELS", 100)
    for side in (12, 20):
        path = tmp_path / f"big{side}.png"
        path.write_bytes(png_bytes(solid((1, 2, 3), (side, side))))
        with pytest.raises(BadImage, match="larger than 100 pixels"):
            read(path)


def test_greyscale_and_rgb_are_converted_to_the_models_channels(tmp_path):
    grey = tmp_path / "grey.png"
    grey.write_bytes(png_bytes(np.full((16, 16), 77, np.uint8)))
    arr, counts = read(grey, RGB)
    assert arr.shape == (16, 16, 3) and (arr == 77).all()
    assert counts == {"greyscale converted to RGB": 1}
    colour = tmp_path / "colour.png"
    colour.write_bytes(png_bytes(solid((255, 0, 0))))
    arr, counts = read(colour, GREY)
    assert arr.shape == (16, 16, 1) and abs(int(arr[0, 0, 0]) - 76) <= 1  # ITU-R 601 luma of pure red
    assert counts == {"RGB converted to greyscale": 1}


def test_rgba_palette_16bit_and_cmyk(tmp_path):
    # RGBA: transparent pixels become white, opaque ones keep their colour
    rgba = solid((0, 0, 255, 255))
    rgba[:, :8] = (255, 0, 0, 0)
    (tmp_path / "rgba.png").write_bytes(png_bytes(rgba))
    arr, counts = read(tmp_path / "rgba.png")
    assert (arr[:, :8] == 255).all() and (arr[:, 8:] == (0, 0, 255)).all()
    assert "transparency composited on white" in counts
    # palette: index 1 is green
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    arr, _ = read(tmp_path / "pal.png")
    assert (arr == (0, 255, 0)).all()
    # 16-bit greyscale: 65535 is white, 16384 a quarter
    deep = np.full((16, 16), 65535, np.uint16)
    deep[:, :8] = 16384
    Image.fromarray(deep).save(tmp_path / "deep.png")
    arr, counts = read(tmp_path / "deep.png", GREY)
    assert (arr[:, 8:] == 255).all() and (np.abs(arr[:, :8].astype(int) - 64) <= 1).all()
    assert "16-bit scaled to 8-bit" in counts
    # CMYK (JPEG and TIFF): no ink is white, magenta + yellow is red
    for fmt in ("JPEG", "TIFF"):
        cmyk = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
        cmyk.paste((0, 255, 255, 0), (0, 0, 8, 16))
        path = tmp_path / f"cmyk.{fmt.lower()}"
        cmyk.save(path, format=fmt)
        arr, counts = read(path)
        assert (np.abs(arr[:, 12:].astype(int) - 255) <= 3).all(), fmt
        assert (np.abs(arr[:, :4].astype(int) - (255, 0, 0)) <= 8).all(), fmt
        assert "CMYK converted to RGB" in counts


def test_animated_gif_uses_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    arr, counts = read(tmp_path / "anim.gif")
    assert (arr == (255, 0, 0)).all()
    assert counts.get("animated: first frame used") == 1


def test_exif_rotation_is_applied(tmp_path):
    # stored 20 wide x 10 high, left half red, right half blue; orientation 6 = "turn 90 degrees clockwise"
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :10] = (255, 0, 0)
    stored[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    spec = InputSpec("image", (20, 10), 3, (0.0,) * 3, (1.0,) * 3)  # the upright shape: 20 high, 10 wide
    arr, counts = read(tmp_path / "rot.jpg", spec)
    assert arr.shape == (20, 10, 3)
    # turned clockwise, the left (red) half is now on top
    assert (np.abs(arr[2:8].astype(int) - (255, 0, 0)) <= 20).all()
    assert (np.abs(arr[12:18].astype(int) - (0, 0, 255)) <= 20).all()
    assert counts.get("EXIF orientation applied") == 1


@pytest.mark.parametrize("case", ["missing", "empty folder", "no images"])
def test_image_sets_with_nothing_to_use(tmp_path, case):
    images = tmp_path / "imgs"
    if case != "missing":
        images.mkdir()
    if case == "no images":
        (images / "notes.txt").write_text("no pictures here")
        (images / "cls").mkdir()
        (images / "cls" / "data.csv").write_text("1,2,3")
    result = build(tmp_path / "site", images)
    fails_in_one_line(result, str(images), "--images" if case == "missing" else "no images found")
    assert not (tmp_path / "site").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["imgs"] if case != "missing" else [])


def test_all_images_unreadable_is_one_error(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        (images / f"bad{i}.png").write_bytes(b"garbage")
    result = build(tmp_path / "site", images, "-q")
    text = result.output.strip().splitlines()
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "none of the 3 images" in text[-1] and not (tmp_path / "site").exists()


HTML_LAYERS = f"""
import torch
from torch import nn


def html_net():
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module({XSS!r}, nn.Conv2d(3, 4, 3, padding=1))
    net.add_module("relu", nn.ReLU())
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("<b>fc</b>", nn.Linear(4, 3))
    return net
"""


def test_bad_images_are_skipped_listed_and_every_user_string_escaped(tmp_path, monkeypatch):
    """One build over a mixed bag: bad files skipped and listed, conversions noted, odd names (files, classes,
    layers, the image folder) shown as text."""
    monkeypatch.syspath_prepend(write_module(tmp_path / "mods", "htmlnet", HTML_LAYERS))
    images = tmp_path / "<script>alert(3) images"
    write_image_folder(images, classes=("with space", "ünïcødé", XSS), per_class=3, size=(32, 32))
    (images / "with space" / "zero bytes.png").write_bytes(b"")
    (images / "ünïcødé" / "<svg onload=alert(2)>.png").write_text("text, not an image")
    (images / XSS / "grey ünï.png").write_bytes(png_bytes(np.full((32, 32), 128, np.uint8)))
    out = tmp_path / "site"
    result = build(out, images, "--samples", "12",
                   model=["htmlnet:html_net", "--input-size", "16x16", "--channels", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.count("skipped image") == 2
    manifest = json.loads((out / "manifest.json").read_text())
    im = manifest["images"]
    assert im["count"] == 12 and im["used"] == 10
    assert {s["name"] for s in im["skipped"]} == {"with space/zero bytes.png", "ünïcødé/<svg onload=alert(2)>.png"}
    assert im["conversions"] == {"greyscale converted to RGB": 1}
    assert manifest["model"]["classes"] == sorted(["with space", "ünïcødé", XSS])
    pages = {p.relative_to(out).as_posix(): p.read_text(encoding="utf-8") for p in out.rglob("*.html")}
    data = pages["data.html"]
    assert "&lt;svg onload=alert(2)&gt;.png" in data and "zero bytes.png" in data and "ünïcødé" in data
    assert "greyscale converted to RGB" in data
    assert "&lt;b&gt;fc&lt;/b&gt;" in pages["index.html"] and "&lt;script&gt;alert(3) images" in data
    for name, html in pages.items():
        for raw in ("<img src=x", "<svg onload", "<b>fc", "<script>alert"):
            assert raw not in html, (name, raw)
    assert any("&lt;img src=x onerror=alert(1)&gt;" in html for html in pages.values())


# ---------------------------------------------------------------------------------------------------------- models


def write_module(folder: Path, name: str, source: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    return str(folder)


def test_model_spec_that_names_nothing(tmp_path, image_folder):
    result = run("build", "no-such-model", "--images", image_folder, "--out", tmp_path / "s")
    fails_in_one_line(result, "'no-such-model' names nothing", "zoo name")
    result = run("build", "tiny_models:no_such_factory", "--input-size", "32x32", "--channels", "3",
                 "--images", image_folder, "--out", tmp_path / "s")
    fails_in_one_line(result, "has no attribute 'no_such_factory'")
    result = run("build", "no_such_module_xyz:make", "--images", image_folder, "--out", tmp_path / "s")
    fails_in_one_line(result, "cannot import 'no_such_module_xyz'")


@pytest.mark.parametrize("factory, message", [
    ("raising_factory", "raised RuntimeError: factory exploded on purpose"),
    ("not_a_module", "returned int, not an nn.Module"),
    ("bad_output", "not (N, classes) logits"),
])
def test_factories_that_raise_or_return_the_wrong_thing(tmp_path, image_folder, factory, message):
    result = run("build", f"tiny_models:{factory}", "--input-size", "32x32", "--channels", "3",
                 "--images", image_folder, "--out", tmp_path / "s")
    fails_in_one_line(result, message)


def test_model_that_ignores_the_batch_is_refused(tmp_path, image_folder, monkeypatch):
    src = ("import torch\nfrom torch import nn\n"
           "class Pooled(nn.Module):\n"
           "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(3, 4)\n"
           "    def forward(self, x):\n        return self.fc(x.mean(dim=(0, 2, 3))).unsqueeze(0)\n"
           "def pooled():\n    return Pooled()\n")
    monkeypatch.syspath_prepend(write_module(tmp_path / "mods", "batchless", src))
    result = run("build", "batchless:pooled", "--input-size", "8x8", "--channels", "3", "--images", image_folder,
                 "--out", tmp_path / "s")
    fails_in_one_line(result, "(1, 4) for a batch of 2")


def test_weights_that_do_not_fit_list_the_keys(tmp_path, image_folder):
    import tiny_models

    state = tiny_models.tiny_cnn().state_dict()
    state["head.weight"] = state.pop("7.weight")
    state["3.weight"] = torch.zeros(1, 2, 3)
    weights = tmp_path / "w.pt"
    torch.save(state, weights)
    result = build(tmp_path / "s", image_folder, "--weights", weights)
    fails_in_one_line(result, "missing: 7.weight", "unexpected: head.weight", "wrong shape: 3.weight (1, 2, 3)")


class Evil:
    """Unpickling this runs a shell command: the marker file must never appear."""

    marker = "MARKER"

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_torchscript(tmp_path: Path, evil: bytes) -> Path:
    """A real TorchScript archive whose pickles are replaced by ``evil``."""
    import tiny_models

    good = tmp_path / "good_script.pt"
    torch.jit.script(tiny_models.tiny_cnn()).save(str(good))
    bad = tmp_path / "evil_script.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, evil if info.filename.endswith((".pkl")) else data)
    return bad


def test_pickles_that_would_run_code_are_never_run(tmp_path, image_folder, monkeypatch):
    marker = tmp_path / "MARKER"
    monkeypatch.setattr(Evil, "marker", str(marker))
    monkeypatch.chdir(tmp_path)
    payload = {"0.weight": Evil()}
    zipped = tmp_path / "evil.pt"
    torch.save(payload, zipped)
    raw = tmp_path / "evil_raw.pt"
    raw.write_bytes(pickle.dumps(payload, protocol=2))
    assert "system" in raw.read_bytes().decode("latin-1")  # the payload is really there
    for weights in (zipped, raw):
        result = build(tmp_path / "s", image_folder, "--weights", weights)
        fails_in_one_line(result, "refuses to load", "state_dict")
    # the same payloads given as a TorchScript model file, and hidden inside a real TorchScript archive
    for spec in (zipped, raw, evil_torchscript(tmp_path, pickle.dumps(Evil(), protocol=2))):
        result = run("build", spec, "--input-size", "32x32", "--channels", "3", "--images", image_folder,
                     "--out", tmp_path / "s")
        fails_in_one_line(result, "not a loadable TorchScript file")
    assert not marker.exists()
    assert not (tmp_path / "s").exists()


def test_corrupt_torchscript(tmp_path, image_folder):
    import tiny_models

    good = tmp_path / "net.pt"
    torch.jit.script(tiny_models.tiny_cnn()).save(str(good))
    data = good.read_bytes()
    for name, content in (("cut.pt", data[: len(data) // 2]), ("noise.pt", os.urandom(4096))):
        (tmp_path / name).write_bytes(content)
        result = run("build", tmp_path / name, "--input-size", "32x32", "--channels", "3",
                     "--images", image_folder, "--out", tmp_path / "s")
        fails_in_one_line(result, "not a loadable TorchScript file", name)


def test_unknown_layer_suggests_the_closest_names(tmp_path, image_folder):
    result = build(tmp_path / "s", image_folder, "--layers", "3x")
    fails_in_one_line(result, "unknown layer '3x'", "closest: 3", "reportgen layers")
    result = run("layers", "tiny_models:tiny_cnn", "--input-size", "32x32")
    fails_in_one_line(result, "--channels")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda(tmp_path, image_folder):
    result = build(tmp_path / "s", image_folder, "--device", "cuda")
    fails_in_one_line(result, "CUDA is not available", "--device cpu")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------------------- config


def test_wrong_types_and_out_of_range_values_are_all_listed(tmp_path, image_folder):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('seed = -1\nbatch_size = 0\nsamples = "many"\nchannels = 2\ndevice = "gpu"\nlayers = "conv"\n'
                   'colour = "red"\n')
    result = run("build", "--config", cfg, "--out", tmp_path / "s")
    text = fails_in_one_line(result, f"config file '{cfg}'", "seed: must be >= 0", "batch_size: must be >= 1",
                             "samples: expected an integer", "channels: must be one of 1, 3",
                             "device: must be one of auto, cpu, cuda", "layers: expected a list of strings",
                             "colour: unknown key", "known keys: model, weights")
    assert result.exit_code == 2 and "and 6 more" in text


@pytest.mark.parametrize("flags, fragment", [
    (["--max-images", "0"], "--max_images: must be >= 1"),
    (["--samples", "0"], "--samples: must be >= 1"),
    (["--batch-size", "-4"], "--batch_size: must be >= 1"),
    (["--input-size", "0x32"], "is not a size"),
    (["--mean", "a,b"], "not a comma-separated list of numbers"),
    (["--std", "0,1,1"], "--std values must be positive"),
    (["--mean", "0.5,0.5"], "--mean has 2 values for 3 channels"),
])
def test_bad_flags(tmp_path, image_folder, flags, fragment):
    result = build(tmp_path / "s", image_folder, *flags)
    fails_in_one_line(result, fragment)


def test_analysis_parameters_are_checked(tmp_path, image_folder):
    cfg = tmp_path / "a.toml"
    cfg.write_text('[analysis.predictions]\nworst = -3\nwrost = 1\n[analysis.nosuch]\nx = 1\n')
    result = build(tmp_path / "s", image_folder, "--config", cfg)
    fails_in_one_line(result, "analysis.nosuch: unknown analysis; known: findings, predictions")
    cfg.write_text('[analysis.predictions]\nworst = -3\nwrost = 1\n')
    result = build(tmp_path / "s", image_folder, "--config", cfg)
    fails_in_one_line(result, "analysis.predictions.worst: must be >= 0",
                      "analysis.predictions.wrost: unknown key (did you mean 'worst'?); known keys: worst")
    cfg.write_text('analysis = { predictions = 3 }\n')
    result = build(tmp_path / "s", image_folder, "--config", cfg)
    fails_in_one_line(result, "analysis.predictions: expected a table")


def test_window_analyses_check_their_ranges(tmp_path, image_folder):
    """Analyses with windows and strides (occlusion) refuse negative strides and windows larger than the image."""
    from reportgen.analyses import all_analyses
    from reportgen.config import describe_params

    found = {a.name: a for a in all_analyses()}
    if "occlusion" not in found:
        pytest.skip("no occlusion analysis registered yet")
    keys = {k for k, *_ in describe_params(found["occlusion"].Params)}
    cfg = tmp_path / "o.toml"
    assert {"window", "stride"} <= keys
    for key, value, fragment in (("stride", -2, "must be >= 1"), ("window", 0, "must be >= 1"),
                                 ("window", 999, "larger than the 32x32 input")):
        cfg.write_text(f"[analysis.occlusion]\n{key} = {value}\n")
        result = run("build", *TINY_ARGS, "--images", image_folder, "--out", tmp_path / "s", "--only", "occlusion",
                     "--config", cfg)
        fails_in_one_line(result, f"analysis.occlusion.{key}", fragment)
    assert not (tmp_path / "s").exists()


def test_invalid_toml_and_missing_config(tmp_path):
    cfg = tmp_path / "broken.toml"
    cfg.write_text("seed = \n")
    fails_in_one_line(run("build", "--config", cfg), "is not valid TOML", "line 1")
    fails_in_one_line(run("build", "--config", tmp_path / "nope.toml"), "does not exist")


# ---------------------------------------------------------------------------------------------------------- output


def test_output_places_that_are_refused(tmp_path, image_folder):
    (tmp_path / "file.txt").write_text("x")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    for out, fragment in ((tmp_path / "file.txt", "is a file"), (precious, "not a reportgen site"),
                          ("/", "refusing"), (Path.home(), "refusing"), ("~", "refusing"),
                          (tmp_path / "no" / "such" / "site", "does not exist")):
        fails_in_one_line(build(out, image_folder), fragment)
    assert (tmp_path / "file.txt").read_text() == "x"
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]


def test_a_site_holding_the_users_files_is_not_replaced(tmp_path, image_folder):
    import tiny_models

    out = tmp_path / "site"
    assert build(out, image_folder).exit_code == 0
    weights = out / "tiny.pt"  # the user keeps the weights in the site folder
    torch.save(tiny_models.tiny_cnn().state_dict(), weights)
    fails_in_one_line(build(out, image_folder, "--weights", weights), "lies inside --out", "move it out")
    fails_in_one_line(build(out, image_folder), "did not write (tiny.pt)", "move them out")
    inside = out / "imgs"
    shutil.copytree(image_folder, inside)
    fails_in_one_line(build(tmp_path / "site", inside), "'" + str(inside) + "' lies inside --out")
    weights.unlink()
    shutil.rmtree(inside)
    assert build(out, image_folder, "--seed", "2").exit_code == 0


def test_read_only_output_place(tmp_path, image_folder):
    if os.geteuid() == 0:
        out = Path("/proc") / "reportgen-site"  # root ignores permission bits; /proc refuses new files to anyone
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        out = ro / "site"
    try:
        fails_in_one_line(build(out, image_folder), "give a writable --out")
    finally:
        if out.parent != Path("/proc"):
            out.parent.chmod(0o755)


def test_a_second_build_to_the_same_site_fails_cleanly(tmp_path, image_folder):
    from reportgen.staging import site_lock

    out = tmp_path / "site"
    assert build(out, image_folder).exit_code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with site_lock(out.resolve()):
        fails_in_one_line(build(out, image_folder, "--seed", "4"), "another reportgen build is writing")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "site"]


SLOW_MODEL = """
import os
import time
import torch
from torch import nn


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0.4")))  # slow on purpose: a signal lands mid-build
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def slow():
    return Slow()
"""


def test_sigint_sigterm_and_sighup_leave_the_previous_site_intact(tmp_path, image_folder):
    """A slow build in a subprocess is interrupted once its temporary folder exists (SIGHUP: its terminal closed);
    meanwhile a second build to the same site fails cleanly. Afterwards: the previous site byte for byte, no
    temporary folder, no lock file, one line."""
    mods = write_module(tmp_path / "mods", "slowmodel", SLOW_MODEL)
    sites = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        parent = tmp_path / sig.name
        parent.mkdir()
        sites[sig] = parent / "site"
        if not sites[signal.SIGINT].exists():
            assert build(sites[sig], image_folder).exit_code == 0
        else:
            shutil.copytree(sites[signal.SIGINT], sites[sig])
    before = {p.relative_to(sites[signal.SIGINT]): p.read_bytes() for p in sites[signal.SIGINT].rglob("*")
              if p.is_file()}
    # 2 s per batch of one image: the signals (sent within seconds of each build's start, however loaded the
    # machine) land long before a build could finish (it was 0.4 s, and under load a build once finished first)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([mods, str(REPO)]), "SLOW_SECONDS": "2"}
    procs = {}
    for sig, out in sites.items():
        cmd = [sys.executable, "-c", "from reportgen.cli import main; main()", "build", "slowmodel:slow",
               "--input-size", "16x16", "--channels", "3", "--images", str(image_folder), "--out", str(out),
               "--only", "predictions", "--batch-size", "1", "--seed", "9"]
        # SIGHUP at its default in the child even where this test runs under nohup (an ignored signal is inherited,
        # and a build leaves a signal it was started ignoring ignored)
        procs[sig] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        for sig, proc in procs.items():
            deadline = time.monotonic() + 60
            while not list(sites[sig].parent.glob(".site.tmp-*")):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the build never started"
                time.sleep(0.05)
            if sig == signal.SIGINT:
                # a second build while the first one is writing: refused at once, nothing touched
                fails_in_one_line(build(sites[sig], image_folder), "another reportgen build is writing")
            time.sleep(0.5)
            assert proc.poll() is None, "the build finished before the signal: make the model slower"
            proc.send_signal(sig)
        for sig, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=60)
            lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
            assert proc.returncode == 128 + sig, (sig, stdout, stderr)
            assert len(lines) == 1 and "Traceback" not in stderr, (sig, stdout, stderr)
            assert f"interrupted by {sig.name}" in lines[0] and "previous site is unchanged" in lines[0]
            out = sites[sig]
            after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
            assert after == before, sig
            assert sorted(p.name for p in out.parent.iterdir()) == ["site"], sig
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_interrupt_during_the_swap_is_deferred_until_the_new_site_is_in_place(tmp_path, image_folder,
                                                                               monkeypatch):
    """A signal between the two renames must not leave the user with no site at all."""
    import reportgen.staging as rb

    out = tmp_path / "site"
    assert build(out, image_folder).exit_code == 0
    real_rename = os.rename
    calls = []

    def rename_then_signal(src, dst):
        real_rename(src, dst)
        calls.append(dst)
        if len(calls) == 1:  # the old site has just moved aside: Ctrl-C now
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(rb.os, "rename", rename_then_signal)
    result = build(out, image_folder, "--seed", "6")
    assert len(calls) == 2, calls
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert "new site is complete" in result.output
    assert json.loads((out / "manifest.json").read_text())["seed"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "site"]


def test_model_failing_during_the_pass_is_one_line(tmp_path, image_folder):
    from click.testing import CliRunner

    from reportgen.cli import main

    out = tmp_path / "site"
    result = CliRunner().invoke(main, ["build", "tiny_models:fails_on_big_batches", "--input-size", "32x32",
                                       "--channels", "3", "--images", str(image_folder), "--out", str(out),
                                       "--batch-size", "4", "--only", "predictions"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "failed on a batch of the image set" in lines[0]
    assert "shape mismatch inside the model" in lines[0] and "Traceback" not in result.output
    assert not out.exists()
