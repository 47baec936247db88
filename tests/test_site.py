"""The site from a hand-made manifest (no torch): pages, navigation, relative links, escaping, re-rendering."""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from click.testing import CliRunner

from reportgen.manifest import SCHEMA, Manifest

EVIL = "<img src=x onerror=alert(1)>"
CLASSES = [EVIL, "cat & dog", "café ☕"]
LAYERS = ["features.0", "features.3", "fc"]


def _png(writer, rel: str, size=(20, 20), seed=0) -> str:
    import io

    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (*size, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return writer.write_bytes(rel, buf.getvalue())


def _picture(root, key, caption, label="", layer=None, image=None, group=None, seed=0, size=(20, 20), thumb=False,
             colorbar=False) -> dict:
    file = _png(root, f"img/fake/{key}.png", size, seed)
    entry = {"type": "picture", "key": key, "caption": caption, "label": label, "layer": layer, "image": image,
             "group": group, "alt": label or caption or key, "file": file, "width": size[1], "height": size[0],
             "thumb": _png(root, f"img/fake/{key}.thumb.png", (8, 8), seed) if thumb else file}
    if colorbar:
        entry["colorbar"] = _png(root, f"img/fake/{key}.colorbar.png", (6, 40), seed)
    return entry


def fake_manifest(root) -> "Manifest":
    """A small but complete manifest (every item kind, layer and image tags, a failed and a skipped analysis),
    with its picture files written through ``root`` (an `ArtifactWriter`); class and file names are hostile on
    purpose."""
    samples = [{"index": 3, "name": f"{EVIL}/img 3.png", "label": EVIL, "pred": "cat & dog", "prob": 0.61},
               {"index": 7, "name": "café ☕/pic with spaces.png", "label": "café ☕", "pred": "café ☕", "prob": 0.98}]
    overview = [
        _picture(root, "worst-00", f"true {EVIL}, predicted cat & dog", label=f"#1 {EVIL}/img 3.png",
                 group="Worst predictions", seed=1),
        {"type": "table", "key": "per-class", "caption": "Per-class accuracy.", "label": "Per-class accuracy",
         "layer": None, "image": None, "group": None, "alt": "Per-class accuracy", "columns": ["class", "n", "accuracy"],
         "rows": [[c, 5, 0.8] for c in CLASSES]},
        {**_picture(root, "confusion", "Rows are true classes.", label="Confusion matrix", seed=2, size=(60, 60)),
         "type": "plot"},
    ]
    maps = [
        _picture(root, "act-0", "Activations of features.0", label="features.0", layer="features.0", colorbar=True,
                 seed=3, size=(300, 300), thumb=True),
        _picture(root, "act-3", "Activations of features.3", label="features.3", layer="features.3", seed=4),
        _picture(root, "sal-3", f"Saliency of {EVIL}", label="saliency", image=3, layer="fc", seed=5),
        _picture(root, "sal-7", "Saliency of café ☕", label="saliency", image=7, seed=6),
        {**_picture(root, "grid", "A grid of filters.", label="filters", layer="features.0", seed=7, size=(40, 80)),
         "type": "grid", "count": 8},
        {"type": "table", "key": "neighbours", "caption": "Nearest neighbours.", "label": "Neighbours",
         "layer": "fc", "image": None, "group": "Embedding", "alt": "Neighbours", "columns": ["image", "distance"],
         "rows": [[f"{EVIL}/img 3.png", 0.5]],
         "row_images": [[_picture(root, "nn-0", "neighbour 0", seed=8)]]},
        {"type": "table", "key": "image-00003", "caption": "Scores on one image.", "label": "Per-image scores",
         "layer": None, "image": 3, "group": "img 3 detail", "detail": True, "alt": "Per-image scores",
         "columns": ["method", "score"], "rows": [["saliency", 0.25]]},
    ]
    anim = _picture(root, "optim", "Optimized input.", label="optimized", layer="fc", seed=9)
    anim.update(type="plot", animation=_png(root, "img/fake/optim.gif", (10, 10), 9))

    def section(name, title, group, items, status="ok", reason=None, seconds=0.5, metrics=None):
        return {"name": name, "title": title, "section": group, "summary": f"the {title}", "order": 0,
                "paper": "A paper (2014)" if name == "maps" else "", "paper_url":
                    "https://arxiv.org/abs/1312.6034" if name == "maps" else "",
                "status": status, "reason": reason, "seconds": seconds, "items": items,
                "metrics": metrics or {}, "notes": [], "params": {"top": 3, "label": EVIL}}

    sections = [
        section("predictions", "Predictions", "model", overview,
                metrics={"images": 12, "accuracy": 0.75, "loss": 0.61, "labelled images": 12}),
        section("maps", "Saliency & maps", "influence", maps, seconds=1.25),
        section("optim", "Feature visualization", "optimized", [anim]),
        section("broken", "Broken analysis", "activations", [], status="failed", reason=f"ValueError: {EVIL}"),
        section("skipped", "Skipped analysis", "parameters", [], status="not applicable",
                reason="applies to image models only"),
    ]
    layer_rows = [{"name": n, "type": t, "out_shape": s, "params": p, "calls": 1}
                  for n, t, s, p in [("features.0", "Conv2d", [6, 28, 28], 156), ("features.1", "ReLU", [6, 28, 28], 0),
                                     ("features.3", "Conv2d", [16, 10, 10], 2416), ("fc", "Linear", [3], 51)]]
    return Manifest.from_json({
        "generator": "reportgen", "version": "0.0-test",
        "created_with": {"reportgen": "0.0-test", "torch": "x", "torchvision": "x", "python": "3", "device": "cpu"},
        "model": {"spec": f"zoo:{EVIL}", "form": "zoo", "weights": f"/w/{EVIL}.safetensors",
                  "weights_sha256": "ab" * 32, "zoo": None, "parameters": 2623,
                  "input": {"kind": "image", "size": [28, 28], "channels": 1, "mean": [0.5], "std": [0.25]},
                  "classes": CLASSES, "notes": [f"note about {EVIL}"], "layers": layer_rows,
                  "selected_layers": LAYERS},
        "images": {"source": f"folder {EVIL}", "count": 13, "used": 12, "labelled": True, "classes": CLASSES,
                   "class_counts": [4, 4, 4], "skipped": [{"name": f"{EVIL}.png", "reason": "not an image"}],
                   "conversions": {"grey to RGB": 2}, "notes": [], "samples": samples},
        "config": {"seed": 0}, "seed": 0,
        "timings": {"load model and images": 0.1, "forward pass": 0.2, "predictions": 0.5, "maps": 1.25},
        "build_seconds": 2.5, "analyses": sections, "files": dict(root.hashes), "schema": SCHEMA,
    })


class Links(HTMLParser):
    """Collects href/src attributes, ids and text nodes of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()
        self.imgs_without_alt = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img" and "alt" not in a:
            self.imgs_without_alt += 1
        for key in ("href", "src"):
            if a.get(key) is not None:
                self.refs.append((tag, key, a[key]))


def parse(path: Path) -> Links:
    p = Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


@pytest.fixture
def site(tmp_path) -> Path:
    from reportgen.artifacts import ArtifactWriter
    from reportgen.site import render_site

    root = tmp_path / "site"
    writer = ArtifactWriter(root)
    render_site(fake_manifest(writer), root, writer)
    return root


def html_pages(root: Path) -> list[Path]:
    return sorted(root.rglob("*.html"))


def test_render_site_without_torch(tmp_path):
    """Rendering imports neither torch nor the analyses: a site re-renders from its manifest alone."""
    code = ("import sys, json; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
            "from test_site import fake_manifest\nfrom pathlib import Path\n"
            "from reportgen.site import render_site\nfrom reportgen.artifacts import ArtifactWriter\n"
            "root = Path(%r); w = ArtifactWriter(root); render_site(fake_manifest(w), root, w)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'matplotlib')]\n"
            "assert not bad, bad\n") % (str(Path(__file__).parent), str(Path(__file__).parents[1]),
                                        str(tmp_path / "s"))
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert (tmp_path / "s" / "index.html").is_file()


def test_pages_and_navigation(site):
    pages = {p.relative_to(site).as_posix() for p in html_pages(site)}
    assert {"index.html", "data.html", "analyses/predictions.html", "analyses/maps.html", "analyses/optim.html",
            "analyses/broken.html", "analyses/skipped.html", "layers/features.0.html", "layers/features.3.html",
            "layers/fc.html", "images/00003.html", "images/00007.html"} <= pages
    # layers keep the model's order; features.1 has no items and gets no page
    assert "layers/features.1.html" not in pages
    layer = (site / "layers" / "features.3.html").read_text()
    assert 'rel="prev" href="features.0.html"' in layer and 'rel="next" href="fc.html"' in layer
    assert 'aria-current="page"' in layer
    # every page has the sidebar with every section, layer and image, and breadcrumbs
    for page in html_pages(site):
        text = page.read_text()
        assert 'id="sidebar"' in text and 'class="crumbs"' in text, page
        for target in ("analyses/maps.html", "layers/fc.html", "images/00007.html"):
            assert target.split("/")[-1] in text, (page, target)
    # an item tagged with a layer and an image appears on the analysis page, the layer page and the image page
    for rel in ("analyses/maps.html", "layers/fc.html", "images/00003.html"):
        assert "img/fake/sal-3.png" in (site / rel).read_text(), rel
    failed = (site / "analyses" / "broken.html").read_text()
    assert "failed" in failed and "ValueError" in failed


def test_links_are_relative_and_resolve(site):
    explain_links = set()
    for page in html_pages(site):
        links = parse(page)
        assert links.imgs_without_alt == 0, page
        for tag, key, ref in links.refs:
            if ref.startswith(("http://", "https://")):
                # only the paper links of analyses may leave the site, and only as links, never as resources
                assert tag == "a" and key == "href", (page, ref)
                explain_links.add(ref)
                continue
            assert not ref.startswith(("/", "file:", "//")), (page, ref)
            parts = urlsplit(ref)
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page.resolve()
            assert target.is_file(), (page, ref)
            assert site.resolve() in target.parents, (page, ref)
            if parts.fragment:
                assert parts.fragment in parse(target).ids, (page, ref)
    assert explain_links <= {"https://arxiv.org/abs/1312.6034"}


def test_user_strings_are_escaped(site):
    for page in html_pages(site):
        text = page.read_text()
        assert EVIL not in text, page
        assert "<img src=x" not in text, page
        # the markup of the page contains no tag the templates did not write
        tags = set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", text))
        assert tags <= {"html", "head", "meta", "title", "link", "body", "a", "header", "button", "span", "div",
                        "nav", "p", "details", "summary", "ul", "li", "code", "main", "h1", "h2", "h3", "section",
                        "dl", "dt", "dd", "br", "table", "thead", "tbody", "tr", "th", "td", "figure", "figcaption",
                        "img", "footer", "dialog", "form", "script", "strong", "math", "mrow", "mo", "mi", "msub",
                        "mfrac", "mn", "msup", "munderover", "mover", "munder", "msqrt", "mtext", "em", "ol",
                        "small", "caption", "colgroup", "col", "abbr", "sup", "sub", "kbd", "var", "svg", "path",
                        "label", "input", "select", "option", "mspace", "mtable", "mtr", "mtd", "semantics",
                        "annotation", "mstyle", "b", "i", "aside"}, (page, tags)
    index = (site / "index.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in index
    assert "cat &amp; dog" in index and "café ☕" in index
    image = (site / "images" / "00007.html").read_text()
    assert "pic with spaces.png" in image


def test_model_card_contents(site):
    index = (site / "index.html").read_text()
    for needle in ("2,623", "ab" * 32, "features.3", "Conv2d", "0.75", "Confusion matrix", "Worst predictions",
                   "analyses/maps.html", "1.2 s", "data.html"):
        assert needle in index, needle


def test_manifest_lists_every_file(site):
    manifest = json.loads((site / "manifest.json").read_text())
    for page in html_pages(site):
        assert page.relative_to(site).as_posix() in manifest["files"]
    assert "static/style.css" in manifest["files"] and "static/site.js" in manifest["files"]
    assert len([p for p in (site / "static").iterdir() if p.suffix == ".css"]) == 1


def test_render_command_rerenders(site):
    from reportgen.cli import main

    index = site / "index.html"
    index.write_text("stale")
    (site / "stray.html").write_text("not ours")
    result = CliRunner().invoke(main, ["render", str(site)])
    assert result.exit_code == 0, result.output
    assert "rendered" in result.output
    assert "Model card" in index.read_text()
    assert (site / "img" / "fake" / "sal-3.png").is_file()  # pictures are kept
    manifest = json.loads((site / "manifest.json").read_text())
    assert "img/fake/sal-3.png" in manifest["files"]
    # twice in a row gives the same pages
    first = {p: p.read_bytes() for p in html_pages(site)}
    assert CliRunner().invoke(main, ["render", str(site)]).exit_code == 0
    assert {p: p.read_bytes() for p in html_pages(site)} == first


def test_analysis_pages_lead_with_their_results(site):
    """A page opens with its numbers and figures; the explanation follows, folded, then the settings; a group of
    supporting detail (one table per image) folds under its heading; tables can be sorted."""
    html = (site / "analyses" / "maps.html").read_text()
    first_figure = html.index("<figure")
    assert html.index('<h1>') < first_figure
    numbers = (site / "analyses" / "predictions.html").read_text()
    assert numbers.index('class="metrics"') < numbers.index("<figure") < numbers.index('id="how-it-works"')
    assert first_figure < html.index('<details class="explain" id="how-it-works">') < html.index('class="params"')
    assert "Source: <a" in html.split('id="how-it-works"')[1]  # the paper stays with its explanation
    assert '<details class="detail"><summary>img 3 detail</summary>' in html
    assert "<h3>Embedding</h3>" in html  # a group that is not all detail keeps its heading
    assert 'class="sortable"' in html
    # a page without results opens its explanation
    assert '<details class="explain" id="how-it-works" open>' in (site / "analyses" / "skipped.html").read_text()


def test_render_that_fails_leaves_every_page_in_place(site, monkeypatch):
    """A page that cannot be rendered (a template error) stops `render` before any old page is removed: the site
    stays as it was (it lost every page before)."""
    from reportgen import site as site_module
    from reportgen.cli import main

    before = {p: p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}
    real = site_module.make_env

    def broken_env():
        env = real()
        env.get_template = lambda name: (_ for _ in ()).throw(RuntimeError("a template is broken"))
        return env

    monkeypatch.setattr(site_module, "make_env", broken_env)
    result = CliRunner().invoke(main, ["render", str(site)])
    assert result.exit_code != 0
    assert {p: p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()} == before


def test_render_command_refuses_other_folders(tmp_path):
    from reportgen.cli import main

    result = CliRunner().invoke(main, ["render", str(tmp_path)])
    assert result.exit_code != 0 and "not a reportgen site" in result.output


def test_url_is_relative_from_every_depth():
    from reportgen.site import relative_url

    assert relative_url("static/style.css", "index.html") == "static/style.css"
    assert relative_url("static/style.css", "layers/fc.html") == "../static/style.css"
    assert relative_url("layers/fc.html", "layers/a.html") == "fc.html"
    assert relative_url("index.html#layers", "images/00001.html") == "../index.html#layers"
    assert relative_url("img/a b.png", "index.html") == "img/a%20b.png"
    assert relative_url("https://arxiv.org/abs/1", "index.html") == "https://arxiv.org/abs/1"


def test_format_number():
    from reportgen.site import format_number

    assert format_number(1234567) == "1,234,567"
    assert format_number(0.75) == "0.75"
    assert format_number(0.0) == "0"
    assert format_number(3.14159) == "3.14"
    assert format_number(float("nan")) == "–"
    assert format_number(None) == "–"
    assert format_number(EVIL) == EVIL  # escaping is the template's job


def test_manifest_round_trips_and_older_or_foreign_ones_are_one_line(tmp_path):
    from reportgen.artifacts import ArtifactWriter
    from reportgen.cli import main
    from reportgen.errors import ReportgenError

    writer = ArtifactWriter(tmp_path / "fake")
    manifest = fake_manifest(writer)
    assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    assert manifest.entry("maps").seconds == 1.25 and manifest.entry("nothing") is None
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"generator": "reportgen", "version": "0.1", "sections": []}))
    result = CliRunner().invoke(main, ["render", str(old)])
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and "schema 1 (reportgen 0.1)" in lines[0]
    assert "build the report again" in lines[0] and not (old / "index.html").exists()
    with pytest.raises(ReportgenError, match="not written by reportgen"):
        Manifest.from_json({"generator": "mkdocs"})
    with pytest.raises(ReportgenError, match="incomplete or damaged"):
        Manifest.from_json({"generator": "reportgen", "schema": SCHEMA, "analyses": []})
