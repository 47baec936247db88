"""Every figure of real-size models, checked as Chromium shows it (issue 29): a 224-px torchvision resnet18 with a
1,000-class head (random weights, long class names) and a Hugging Face ViT with 12 layers of 12 heads.

Issue 29 saw, on resnet18, the randomization test's charts collapse to a plot area about 30 px tall with the legend
over the curves and an axis label cut off, the attention grid as a 53 x 160 px thumbnail without layer or head
labels, activation-map strips of 16 channels about 120 px wide, and eight matplotlib warnings during a Hugging Face
build. Here the builds run with every warning an error, then each page is opened in Chromium (1280 x 900) and each
figure (`figure.item` image and colour bar) is measured as shown: its drawn parts come from the boxes
`reportgen.imaging` records in the PNG as it saves it (text chunk ``reportgen-layout``: plot areas, grid tiles,
legends, labels, in the file's pixels), scaled by the width the page shows the file at. Checked: no plot area or
tile under a least size and no text under a least size as shown; no label over a plot area, a tile, a legend or
another label; no legend over the data; every label inside its picture; no figure wider than the page.

The analyses are the ones that draw each kind of figure, at settings that keep both builds cheap (one sample image,
the gradient as the only method of the trust checks, four deletion steps).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from conftest import run, write_image_folder
from test_browser import CHROMIUM, NO_BROWSER, browser  # noqa: F401 (browser: the shared fixture)
from test_figure_layout import layout_problems  # the least sizes and what may not overlap, shared

LAYOUT_KEY = "reportgen-layout"

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("test_layout_real")]

VIEWPORT = {"width": 1280, "height": 900}

# cheap settings that still draw every figure kind: the trust checks on the gradient alone, one image each
CONFIG = """
[analysis.randomization-test]
methods = ["gradient"]
images = 1
steps = 6
[analysis.deletion-insertion]
methods = ["gradient"]
images = 1
steps = 4
[analysis.top-images]
n = 4
"""
RESNET_ANALYSES = ["predictions", "findings", "filters", "activation-maps", "distributions", "embeddings",
                   "top-images", "gradient", "randomization-test", "deletion-insertion"]
VIT_ANALYSES = ["attention", "gradient", "randomization-test"]  # the CNN build draws the other kinds
# a 1,000-class head with names as long as ImageNet's ("American Staffordshire terrier")
CLASS_NAMES = [f"{i:03d} great grey owl of the north" if i % 3 == 0 else f"{i:03d} tabby" for i in range(1000)]


@pytest.fixture(scope="module", autouse=True)
def _browser_present():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no browser: the browser test {NO_BROWSER}")
        pytest.skip(NO_BROWSER)


def build(tmp: Path, *args: str) -> Path:
    """``reportgen build`` in-process with every warning an error (a matplotlib warning fails the analysis that
    drew the figure, and so the build); the site, every analysis asked for having run."""
    (tmp / "fast.toml").write_text(CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run("build", *args, "--samples", "1", "--config", tmp / "fast.toml", "--out", tmp / "site", "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp / "site" / "manifest.json").read_text())
    wanted = set(args[args.index("--only") + 1].split(","))
    ran = {a["name"]: a["status"] for a in manifest["analyses"]}
    assert all(ran.get(n) == "ok" for n in wanted), {n: ran.get(n) for n in wanted}
    return tmp / "site"


@pytest.fixture(scope="module")
def resnet_site(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("resnet18")
    images = write_image_folder(tmp / "images", classes=(CLASS_NAMES[3], CLASS_NAMES[14], CLASS_NAMES[500]),
                                per_class=2, size=(224, 224))
    return build(tmp, "torchvision:resnet18", "--images", str(images), "--class-names", ",".join(CLASS_NAMES),
                 "--only", ",".join(RESNET_ANALYSES))


@pytest.fixture(scope="module")
def vit_site(tmp_path_factory) -> Path:
    """A Hugging Face ViT the size of ViT-B/16's layout (224 px, 16-px patches, 12 layers of 12 heads), narrow
    (96 dimensions) so that it runs in moments: its module names are the long ones ("vit.encoder.layer.11...")."""
    import torch

    transformers = pytest.importorskip("transformers")
    tmp = tmp_path_factory.mktemp("vit")
    cfg = transformers.ViTConfig(image_size=224, patch_size=16, hidden_size=96, num_hidden_layers=12,
                                 num_attention_heads=12, intermediate_size=192, num_labels=3,
                                 id2label={0: "cat", 1: "dog", 2: "bird"}, label2id={"cat": 0, "dog": 1, "bird": 2})
    torch.manual_seed(0)
    transformers.ViTForImageClassification(cfg).eval().save_pretrained(str(tmp / "vit"))
    images = write_image_folder(tmp / "images", per_class=2, size=(224, 224))
    return build(tmp, str(tmp / "vit"), "--images", str(images), "--only", ",".join(VIT_ANALYSES))


# each figure's picture and colour bar as shown: folded sections opened, lazy images loaded
SHOWN = """async () => {
  document.querySelectorAll("details").forEach(d => { d.open = true; });
  const imgs = [...document.querySelectorAll("figure.item > a > img, figure.item img.colorbar")];
  for (const img of imgs) img.loading = "eager";
  await Promise.all(imgs.map(img => img.decode().catch(() => null)));
  const page = document.documentElement.clientWidth;
  return imgs.map(img => { const r = img.getBoundingClientRect();
    return {src: img.getAttribute("src"), url: img.src, width: r.width, height: r.height, right: r.right, page,
            natural: img.naturalWidth}; });
}"""


def layout_of(path: Path) -> tuple[dict, int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text[LAYOUT_KEY]) if LAYOUT_KEY in im.text else None, im.size[0], im.size[1]


def figures_as_shown(site: Path, browser) -> tuple[list[str], int]:
    """Every figure of every page of ``site`` measured in Chromium: (problems, figures checked)."""
    manifest = json.loads((site / "manifest.json").read_text())
    entries = {}  # the site path of each shown picture -> (its manifest entry, the full-size file)
    for a in manifest["analyses"]:
        for it in a.get("items", []):
            if it.get("type") in ("plot", "grid", "picture") and "file" in it:
                entries[it["thumb"]] = entries[it["file"]] = (it, it["file"])
                if it.get("colorbar"):
                    entries[it["colorbar"]] = ({"type": "plot"}, it["colorbar"])
    ctx = browser.new_context(viewport=VIEWPORT)
    page = ctx.new_page()
    root = site.resolve()
    problems, seen, checked = [], set(), 0
    for path in sorted(root.rglob("*.html")):
        page.goto(path.as_uri(), wait_until="load")
        where = path.relative_to(root).as_posix()
        for shown in page.evaluate(SHOWN):
            rel = Path(unquote(urlsplit(shown["url"]).path)).resolve().relative_to(root).as_posix()
            if shown["right"] > shown["page"] + 1:
                problems.append(f"{where}: {rel} runs {shown['right'] - shown['page']:.0f} px past the page")
            if rel not in entries or rel.endswith(".gif"):
                continue
            entry, file = entries[rel]
            kind = entry["type"]
            if kind == "picture":  # an image as it is: only its size as shown
                if shown["width"] < 96:
                    problems.append(f"{where}: {rel} shown {shown['width']:.0f} px wide")
                continue
            layout, width, height = layout_of(site / file)
            if layout is None:
                problems.append(f"{where}: {file} has no recorded layout")
                continue
            scale = shown["width"] / width
            problems += [f"{where}: {file}: {p}" for p in layout_problems(kind, layout, width, height, scale)]
            seen.add(file)
            checked += 1
    ctx.close()
    return sorted(set(problems)), len(seen)


def kinds_in(site: Path) -> set[str]:
    manifest = json.loads((site / "manifest.json").read_text())
    return {it.get("kind") if it["type"] == "plot" else it["type"]
            for a in manifest["analyses"] for it in a.get("items", []) if it["type"] in ("plot", "grid")}


def test_resnet18_figures_as_shown(resnet_site, browser):
    problems, checked = figures_as_shown(resnet_site, browser)
    # every kind of chart the CNN report draws was there to check
    assert {"lines", "bars", "confusion", "histogram", "embedding", "embedding-strip", "reliability",
            "grid"} <= kinds_in(resnet_site)
    assert checked >= 30, checked
    assert not problems, problems[:20]


def test_vit_figures_as_shown(vit_site, browser):
    problems, checked = figures_as_shown(vit_site, browser)
    assert {"lines", "grid"} <= kinds_in(vit_site) and checked >= 5, checked
    assert not problems, problems[:20]
    manifest = json.loads((vit_site / "manifest.json").read_text())
    (attention,) = [a for a in manifest["analyses"] if a["name"] == "attention"]
    (heads,) = [it for it in attention["items"] if it["type"] == "grid"]
    # 12 layers x (the mean + 12 heads), each tile at least MIN_TILE as shown, its rows and columns labelled
    assert heads["count"] == 12 * 13
    layout, width, _ = layout_of(vit_site / heads["file"])
    assert len(layout["text"]) >= 12 + 13
