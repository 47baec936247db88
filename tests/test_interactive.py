"""The explorers of the pages (templates/static/interactive.js over data/NAME.js), driven in a real headless Chromium
from file://: the embeddings (hover a point: its image, class and prediction; click: its page; choose the layer),
an image's maps (method, class, opacity), the attention heads, the activation-map channels and the top images
(layer and channel). Every request stays inside the site; without JavaScript the pages show their figures as before.

One small site of a tiny ViT (18 images of 3 classes in class folders, 2 sample images) holds all of them; its
labels come from the folder names, which the tests read on their own.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_image_folder
from test_browser import Watch, browser  # noqa: F401 (browser: the shared fixture)

pytestmark = [pytest.mark.browser]

ONLY = "attention,embeddings,activation-maps,top-images,top-predictions,gradient,grad-cam"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    from reportgen.cli import main

    tmp = tmp_path_factory.mktemp("interactive")
    images = write_image_folder(tmp / "images")
    (tmp / "fast.toml").write_text("[analysis.embeddings]\nperplexity = 5.0\njobs = 1\n")
    args = ["build", "tiny_models:tiny_vit", "--input-size", "32x32", "--channels", "3", "--images", images,
            "--out", tmp / "site", "--samples", "2", "-q", "--only", ONLY, "--config", tmp / "fast.toml"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return (tmp / "site").resolve()


def data_of(site: Path, name: str) -> dict:
    """The object that data/NAME.js assigns, read without a browser."""
    text = (site / "data" / f"{name}.js").read_text()
    return json.loads(re.search(r"\]\s*=\s*(\{.*\});\s*$", text, re.S).group(1))


def png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_data_written_once_and_agrees_with_the_image_set(site):
    manifest = json.loads((site / "manifest.json").read_text())
    data = data_of(site, "embeddings")
    pts, classes = data["points"], data["classes"]
    assert len(pts["index"]) == 18 == len(set(pts["index"]))
    # the labels are the class folders the images were written in
    assert [classes[c] for c in pts["label"]] == [n.split("/")[0] for n in pts["name"]]
    samples = {s["index"]: s for s in manifest["images"]["samples"]}
    for k, i in enumerate(pts["index"]):
        if i in samples:
            assert classes[pts["pred"][k]] == samples[i]["pred"]
            # the sprite's tile is the image the page shows: the top-predictions figure is the same display copy
            # enlarged by nearest neighbour
            s = data["sprite"]
            sheet = png(site / s["file"])
            r, c = divmod(k, s["cols"])
            tile = sheet[r * s["tile"][0]:(r + 1) * s["tile"][0], c * s["tile"][1]:(c + 1) * s["tile"][1]]
            figure = png(site / "img" / "top-predictions" / f"image-{i:05d}.png")
            step = figure.shape[0] // tile.shape[0]
            assert np.array_equal(figure[::step, ::step][:tile.shape[0], :tile.shape[1]], tile)
    for layer in data["layers"]:
        assert {k: np.shape(v) for k, v in layer["views"].items()} == {"t-SNE": (18, 2), "PCA": (18, 2)}
    # written once: the data files are loaded by script src, never inlined in a page
    for page in site.rglob("*.html"):
        html = page.read_text()
        assert '"views"' not in html and "REPORTGEN_DATA" not in html, page
    explorers = {p.relative_to(site).as_posix() for p in site.rglob("*.html") if "/data/" in p.read_text()
                 or 'src="../data/' in p.read_text()}
    assert explorers == {f"analyses/{n}.html" for n in ("attention", "embeddings", "activation-maps", "top-images")}
    # each grid's tiles lie inside its PNG, the last one too
    for name in ("attention", "activation-maps", "top-images"):
        for g in data_of(site, name)["grids"]:
            h, w = png(site / g["file"]).shape[:2]
            assert (h, w) == (g["height"], g["width"])
            assert g["origin"][1] + (g["rows"] - 1) * g["pitch"][0] + g["tile"][0] <= h
            assert g["origin"][0] + (g["cols"] - 1) * g["pitch"][1] + g["tile"][1] <= w


@pytest.fixture
def page(site, browser):
    """A page of its own context; after the test, no console error and no request outside the site."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    watch = Watch(ctx, site)
    pg = ctx.new_page()
    watch.attach(pg)
    pg.watch = watch
    yield pg
    ctx.close()
    assert not watch.errors and not watch.outside, (watch.errors, watch.outside)


def test_embeddings_hover_shows_the_image_and_click_opens_its_page(site, page):
    data = data_of(site, "embeddings")
    page.watch.goto(page, site / "analyses" / "embeddings.html")
    explore = page.locator("#explore")
    assert explore.is_visible()
    layers = [layer["key"] for layer in data["layers"]]
    assert page.locator("#explore select[name=layer] option").all_inner_texts() == layers
    before = page.eval_on_selector_all("#explore circle", "cs => cs.map(c => c.getAttribute('cx'))")
    page.select_option("#explore select[name=layer]", layers[0])
    after = page.eval_on_selector_all("#explore circle", "cs => cs.map(c => c.getAttribute('cx'))")
    assert before != after and len(after) == 18
    # hover a point of an image that has a page: its name, class and prediction, and its thumbnail
    paged = page.locator("#explore circle.paged").first
    k = int(paged.get_attribute("data-k"))
    paged.hover(force=True)
    tip = page.locator("#explore .tip")
    assert tip.is_visible()
    text = tip.inner_text()
    classes, pts = data["classes"], data["points"]
    assert pts["name"][k] in text
    assert f"class {classes[pts['label'][k]]}" in text and f"predicted {classes[pts['pred'][k]]}" in text
    thumb = page.eval_on_selector("#explore .tip .thumb", "e => getComputedStyle(e).backgroundImage")
    assert data["sprite"]["file"] in thumb
    # a point without a page enlarges its thumbnail, and says so
    other = page.locator("#explore circle:not(.paged)").first
    j = int(other.get_attribute("data-k"))
    other.click(force=True)
    page.wait_for_function("() => document.querySelector('#zoom').open")
    assert page.locator("#zoom .thumb").bounding_box()["height"] >= 300
    assert pts["name"][j] in page.locator("#zoom p").inner_text()
    page.keyboard.press("Escape")
    paged.click(force=True)
    page.wait_for_url(re.compile(rf"images/{pts['index'][k]:05d}\.html$"))


def test_image_page_switches_method_class_and_opacity(site, page):
    first = sorted((site / "images").glob("*.html"))[0]
    page.watch.goto(page, first)
    box = page.locator("#compare")
    assert box.is_visible()
    methods = page.locator("#compare select[name=method] option").all_inner_texts()
    assert methods == ["Gradient saliency", "Grad-CAM"]
    over = page.locator("#compare img.over")
    shown = []
    for method in methods:
        page.select_option("#compare select[name=method]", label=method)
        for cls in page.locator("#compare select[name=class] option").all():
            page.select_option("#compare select[name=class]", cls.get_attribute("value"))
            src = over.get_attribute("src")
            assert (first.parent / src).resolve().is_file()
            shown.append(src)
    folder = {"Gradient saliency": "gradient", "Grad-CAM": "grad-cam"}
    assert {s.split("/")[-2] for s in shown} == set(folder.values()) and len(set(shown)) == len(shown)
    page.fill("#compare input[name=opacity]", "30")
    assert page.eval_on_selector("#compare img.over", "e => getComputedStyle(e).opacity") == "0.3"
    # the base under the map is the image itself; both have one size
    sizes = page.eval_on_selector_all("#compare img", "is => is.map(i => [i.naturalWidth, i.clientWidth])")
    assert len(sizes) == 2 and sizes[0] == sizes[1] and sizes[0][0] > 0
    # the map opens at full size
    page.locator("#compare a.zoomable").click()
    page.wait_for_function("() => document.querySelector('#zoom').open")
    assert page.eval_on_selector("#zoom img", "e => e.getAttribute('src')") == over.get_attribute("src")


def shown_tile(page) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(page.locator("#explore .cut").screenshot())).convert("RGB"))


@pytest.mark.parametrize("name, choose", [
    ("attention", {"layer": 1, "head": 2}),
    ("activation-maps", {"layer": 1, "channel": 3}),
    ("top-images", {"layer": 1, "channel": 2}),
])
def test_tiles_browse_by_layer_and_channel(site, page, name, choose):
    """The tile shown is the one chosen, cut from its grid's PNG: compared with the crop of that PNG read here."""
    data = data_of(site, name)
    page.watch.goto(page, site / "analyses" / f"{name}.html")
    assert page.locator("#explore").is_visible()
    for axis, pos in choose.items():
        options = page.locator(f"#explore select[name={axis}] option").all_inner_texts()
        assert len(options) > pos, (axis, options)
        page.select_option(f"#explore select[name={axis}]", options[pos])
    values = [page.eval_on_selector(f"#explore select[name={a}]", "s => s.value") for a in data["axes"]]
    tile = next(t for t in data["tiles"] if t[4:] == values)
    assert json.loads(page.get_attribute("#explore", "data-shown")) == tile[:4]
    g = data["grids"][tile[0]]
    th, tw, span = g["tile"][0], g["tile"][1], tile[3]
    top, left = g["origin"][1] + tile[1] * g["pitch"][0], g["origin"][0] + tile[2] * g["pitch"][1]
    crop = png(site / g["file"])[top:top + th, left:left + tw + (span - 1) * g["pitch"][1]]
    shot = shown_tile(page)
    scale = round(shot.shape[0] / th)
    # the element's box may start half a pixel off the screenshot's grid: sample the middle of each drawn pixel
    assert abs(shot.shape[0] - th * scale) <= 1 and abs(shot.shape[1] - crop.shape[1] * scale) <= 1, shot.shape
    drawn = shot[scale // 2::scale, scale // 2::scale][:crop.shape[0], :crop.shape[1]]
    assert np.abs(drawn.astype(int) - crop.astype(int)).mean() < 2
    # the next button steps along the last axis; the grid opens at full size
    last = data["axes"][-1]
    before = page.eval_on_selector(f"#explore select[name={last}]", "s => s.value")
    page.locator("#explore button", has_text="▶").click()
    assert page.eval_on_selector(f"#explore select[name={last}]", "s => s.value") != before
    page.locator("#explore a.zoomable").click()
    page.wait_for_function("() => { const i = document.querySelector('#zoom img');"
                           " return document.querySelector('#zoom').open && i.complete && i.naturalWidth > 0; }")
    assert page.eval_on_selector("#zoom img", "e => e.naturalWidth") == g["width"]


def test_without_javascript_the_pages_keep_their_figures(site, browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=False)
    watch = Watch(ctx, site)
    page = ctx.new_page()
    watch.attach(page)
    for rel in ["analyses/embeddings.html", "analyses/attention.html", sorted((site / "images").glob("*.html"))[0]]:
        watch.goto(page, site / rel)
        assert not page.locator("section.interactive").first.is_visible()
        assert page.locator("figure.item img").count() > 0
        assert page.locator("figure.item img").first.is_visible()
    ctx.close()
    assert not watch.errors and not watch.outside, (watch.errors, watch.outside)


def test_explorers_fit_a_phone(site, page):
    """On a 390 px screen no explorer widens the page (long layer names in the choosers)."""
    page.set_viewport_size({"width": 390, "height": 844})
    for name in ("embeddings", "attention", "activation-maps", "top-images"):
        page.watch.goto(page, site / "analyses" / f"{name}.html")
        assert page.locator("#explore").is_visible()
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, name
