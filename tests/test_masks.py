"""Object masks for any image set (issue 28): `--masks DIR` / ``masks=``, read, resized and cropped with their
images through the same pick; and where the evidence lies, proved on hand-weighted models that read either a marker
placed outside the object or the object itself (the finding must fire on the first and must not on the second)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import fails_in_one_line, run
from reportgen.data import Masks, load_image_set, read_mask
from reportgen.errors import DataError
from reportgen.models import InputSpec

SIZE = 16
OBJECT = (slice(5, 11), slice(5, 11))  # the object: a 6x6 square in the middle of every image
MARKER = (slice(0, 3), slice(0, 3))  # class b's marker: a 3x3 patch in the top-left corner, outside the object
GREY = InputSpec(kind="image", size=(SIZE, SIZE), channels=1, mean=(0.0,), std=(1.0,))
MODEL_ARGS = ["--input-size", f"{SIZE}x{SIZE}", "--channels", "1", "--mean", "0", "--std", "1"]


def write_set(root: Path, per_class: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """``root/images/{a,b}/NN.png`` (greyscale 16x16 noise at 0..40) and ``root/masks/{a,b}/NN.png`` (255 on the
    object). Class b: a bright object (200) and the marker (255); class a: a dim object (90), no marker. Both cues
    give the label, so a model may read either one."""
    rng = np.random.default_rng(seed)
    images, masks = root / "images", root / "masks"
    for cls in ("a", "b"):
        (images / cls).mkdir(parents=True)
        (masks / cls).mkdir(parents=True)
        for k in range(per_class):
            arr = rng.integers(0, 40, (SIZE, SIZE)).astype(np.uint8)
            arr[OBJECT] = 200 if cls == "b" else 90
            if cls == "b":
                arr[MARKER] = 255
            mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
            mask[OBJECT] = 255
            Image.fromarray(arr, "L").save(images / cls / f"{k:02d}.png")
            Image.fromarray(mask, "L").save(masks / cls / f"{k:02d}.png")
    return images, masks


def reader(region: tuple[slice, slice], threshold: float) -> nn.Module:
    """A linear model that reads only ``region``: score s = mean of the region's pixels - ``threshold``, logits
    (-s, s) for classes (a, b). Its gradient is +/- 1 / area on the region and exactly 0 elsewhere, whatever the
    image, so its gradient map lies wholly inside (or wholly outside) the object."""
    weight = torch.zeros(SIZE, SIZE)
    weight[region] = 1.0
    weight /= weight.sum()
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([-weight.flatten(), weight.flatten()]))
        model[1].bias.copy_(torch.tensor([threshold, -threshold]))
    return model.eval()


def marker_model() -> nn.Module:
    return reader(MARKER, 0.5)  # the marker's mean is 1.0 in class b, at most 40/255 without it


def object_model() -> nn.Module:
    return reader(OBJECT, 145 / 255)  # between the dim (90) and the bright (200) object


# --- reading masks ---------------------------------------------------------------------------------------------------


def test_a_mask_is_resized_and_cropped_with_its_image(tmp_path):
    # a 32 x 16 image is centre-cropped to 16 x 16 (columns 8..23) and halved: its object at columns 12..19, rows
    # 4..11 lands at columns 2..5, rows 2..5 of the 8 x 8 input; so must its mask, whatever its format
    mask = np.zeros((16, 32), dtype=np.uint8)
    mask[4:12, 12:20] = 1
    want = np.zeros((8, 8), dtype=bool)
    want[2:6, 2:6] = True
    Image.fromarray(mask * 7, "L").save(tmp_path / "grey.png")
    rgba = np.zeros((16, 32, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha is not a colour, so only the object counts
    rgba[mask == 1, 1] = 3
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    palette = Image.fromarray(mask, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(tmp_path / "palette.bmp")
    for name in ("grey.png", "rgba.png", "palette.bmp"):
        assert np.array_equal(read_mask(tmp_path / name, (8, 8)), want), name
    image = np.zeros((16, 32), dtype=np.uint8)
    image[mask == 1] = 255
    Image.fromarray(image, "L").save(tmp_path / "image.png")
    spec = InputSpec(kind="image", size=(8, 8), channels=1, mean=(0.0,), std=(1.0,))
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(mask * 255, "L").save(masks / "image.bmp")  # another extension than its image's
    shown = load_image_set(str(tmp_path / "image.png"), spec, None, 0, masks=str(masks))
    assert np.array_equal(shown.masks.get(0), shown.display(0)[..., 0] > 127)


def test_masks_follow_the_max_images_pick(tmp_path):
    # each image's object sits at a row of its own; after a stratified pick of 5 of 12, the mask of image i must
    # still be the mask of the image shown as i
    images, masks = tmp_path / "images", tmp_path / "masks"
    for k in range(12):
        for root in (images, masks):
            (root / "ab"[k % 2]).mkdir(parents=True, exist_ok=True)
        arr = np.zeros((SIZE, SIZE), dtype=np.uint8)
        arr[k:k + 3, 2:9] = 255
        Image.fromarray(arr, "L").save(images / "ab"[k % 2] / f"{k:02d}.png")
        Image.fromarray(arr, "L").save(masks / "ab"[k % 2] / f"{k:02d}.bmp" if k == 3 else
                                       masks / "ab"[k % 2] / f"{k:02d}.png")
    (masks / "b" / "05.png").unlink()  # image b/05 has no mask: listed if picked, never an error
    image_set = load_image_set(str(images), GREY, None, seed=3, max_images=5, masks=str(masks))
    assert len(image_set) == 5 and len(image_set.masks.paths) == 5
    for i, name in enumerate(image_set.names):
        got = image_set.masks.get(i)
        if name == "b/05.png":
            assert got is None and image_set.masks.problems == [(name, f"no mask in '{masks}'")]
        else:
            k = int(Path(name).stem)
            assert got[k:k + 3, 2:9].all() and got.sum() == 21, name  # its own row, nothing else (a bmp too)
            assert np.array_equal(got, image_set.display(i)[..., 0] > 127)


def test_a_dataset_reads_its_masks_by_item_path(tmp_path):
    from reportgen.data import dataset_image_set

    class Folder(torch.utils.data.Dataset):  # what torchvision's ImageFolder lists: root and (path, label) samples
        def __init__(self, root):
            self.root = str(root)
            self.samples = [(str(p), "ab".index(p.parent.name)) for p in sorted(Path(root).rglob("*.png"))]

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            path, label = self.samples[i]
            return Image.open(path).convert("RGB"), label

    images, masks = write_set(tmp_path, per_class=3)
    dataset = Folder(images)
    bound = dataset_image_set(dataset, max_images=4, seed=0).bind(GREY, str(masks))
    for i, name in enumerate(bound.names):
        bound.display(i)
        assert np.array_equal(bound.masks.get(i), read_mask(masks / name, (SIZE, SIZE))), name
    Image.new("L", (SIZE, SIZE + 2)).save(masks / bound.names[0])
    wrong = dataset_image_set(dataset, max_images=4, seed=0).bind(GREY, str(masks))
    with pytest.raises(DataError, match="is 16x18 px but its image"):
        wrong.display(0)


def test_mask_problems_are_listed_not_scored():
    from reportgen.analyses.influence import mask_scores

    maps = np.zeros((2, 2, 2))
    maps[:, 0, 0] = 1.0
    inside = np.array([[True, False], [False, False]])
    mass, hit = mask_scores(maps, [inside, None])
    assert mass[0] == 1.0 and hit[0] == 1.0 and np.isnan(mass[1]) and np.isnan(hit[1])
    zoo = np.zeros((3, 4, 5), dtype=bool)  # the zoo's masks, in memory, go through the same pick
    zoo[np.arange(3), np.arange(3), 0] = True
    memory = Masks("zoo:x", arrays=zoo)
    memory.take([2, 0])
    assert memory.size == (4, 5) and memory.get(0)[2, 0] and memory.get(1)[0, 0] and memory.get(0).sum() == 1


# --- where the evidence lies: the finding fires on a marker model, and not on an object model -------------------------


def evidence(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    (found,) = [f for f in manifest["findings"] if f["id"] == "evidence-location"]
    for link in found["links"]:  # the figures it cites exist on their pages
        assert f'id="{link["anchor"]}"' in (out / link["page"]).read_text(), link
    return found


def test_a_model_that_reads_a_marker_outside_the_object_relies_on_context(tmp_path):
    from reportgen import build_report

    images, masks = write_set(tmp_path)
    report = build_report(marker_model(), str(images), masks=str(masks), out=tmp_path / "site", mean=[0.0],
                          std=[1.0], input_size=SIZE, channels=1, only=["findings", "predictions", "gradient"],
                          samples=4, seed=0)
    found = evidence(report.out)
    assert "relies on context / background" in found["sentence"]
    assert found["severity"] == "alert"  # no mass at all on the object: less than a uniform map's object area
    assert found["numbers"]["mass on object"] == 0.0 and found["numbers"]["pointing game"] == 0.0
    assert found["numbers"]["object area"] == pytest.approx(36 / 256)
    assert found["links"] and all(link["page"] == "analyses/gradient.html" for link in found["links"])
    assert [f for f in report.findings if f.id == "accuracy"][0].numbers["accuracy"] == 1.0


def test_masks_from_the_cli_on_a_user_folder(tmp_path):
    images, masks = write_set(tmp_path)
    spec = ["build", "test_masks:object_model", *MODEL_ARGS, "--images", images, "--masks", masks]
    (masks / "a" / "02.png").unlink()  # a missing mask: listed, the build goes on
    out = tmp_path / "site"
    result = run(*spec, "--out", out, "--only", "findings,predictions,gradient", "--samples", "4")
    assert result.exit_code == 0, result.output
    assert "no mask for image 'a/02.png'" in result.output
    found = evidence(out)
    assert found["severity"] == "info" and "relies on context" not in found["sentence"]
    assert found["numbers"]["mass on object"] == pytest.approx(1.0) and found["numbers"]["pointing game"] == 1.0
    data = (out / "data.html").read_text()
    assert "a/02.png" in data[data.index('id="masks"'):]
    # a mask of the wrong size, and a misnamed one (an orphan): one line each, nothing written
    Image.new("L", (SIZE + 1, SIZE)).save(masks / "b" / "01.png")
    fails_in_one_line(run(*spec, "--out", tmp_path / "wrong"), "mask", "b/01.png", "17x16 px but its image is 16x16",
                      "give each mask the size of its image")
    Image.new("L", (SIZE, SIZE)).save(masks / "b" / "01.png")
    Image.new("L", (SIZE, SIZE)).save(masks / "b" / "1.png")
    fails_in_one_line(run(*spec, "--out", tmp_path / "orphan"), "b/1.png", "matches no image", "rename or remove")
    assert not (tmp_path / "wrong").exists() and not (tmp_path / "orphan").exists()


def test_a_misnamed_mask_is_reported_before_torch_is_imported(tmp_path):
    from test_early_checks import run_fresh

    images, masks = write_set(tmp_path, per_class=1)
    Image.new("L", (SIZE, SIZE)).save(masks / "a" / "00 (copy).png")
    base = ["build", "test_masks:object_model", *MODEL_ARGS, "--images", str(images), "--out", str(tmp_path / "s")]
    orphan, missing = run_fresh([[*base, "--masks", str(masks)], [*base, "--masks", "no-such-masks"]], tmp_path)
    for r, fragment in ((orphan, "mask 'a/00 (copy).png' matches no image"),
                        (missing, "masks folder 'no-such-masks' does not exist")):
        assert r["code"] != 0 and not r["torch"] and len(r["output"].splitlines()) == 1, r
        assert fragment in r["output"].replace(str(masks) + "/", ""), r
