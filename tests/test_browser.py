"""A real headless Chromium over a site built from a zoo model: pages, images, links, requests, MathML, screenshots.

Screenshots (desktop, 390 px phone, dark scheme) of the model card and of one image page are kept in
``$REPORTGEN_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the repo root) for people to look at.

The browser is found by `find_browser` (the lookup `.ci/run` uses too). Without one the tests are skipped, except
in CI (``CI=true``), where they fail: a CI run must not turn green without the browser having run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from find_browser import DEBIAN_CHROMIUM, find_browser

CHROMIUM = find_browser()
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
NO_BROWSER = f"needs Debian's chromium on PATH or at {DEBIAN_CHROMIUM} (apt-get install chromium)"

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module", autouse=True)
def _browser_present():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no browser: the browser test {NO_BROWSER}")
        pytest.skip(NO_BROWSER)

# every image gets its real source, also those below the fold that loading="lazy" would leave unloaded
LOAD_ALL_IMAGES = """async () => {
  const imgs = [...document.images];
  for (const img of imgs) img.loading = "eager";
  await Promise.all(imgs.map(img => img.decode().catch(() => null)));
  return imgs.filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.getAttribute("src"));
}"""

LINKS = """() => [...document.querySelectorAll("a[href], link[href], script[src], img[src]")].map(el => ({
  tag: el.tagName.toLowerCase(), url: el.href || el.src,
  external_ok: !!el.closest(".explain, .paper") && el.tagName === "A"}))"""


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = Path(os.environ.get("REPORTGEN_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def site(lenet_site) -> Path:
    """The default site of the zoo model, small (`conftest.lenet_site`: every analysis, 60 images, 2 samples, few
    steps), built once for the session and shared with the reproducibility test."""
    return lenet_site


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (test_interactive and test_layout_real import this fixture)."""
    if CHROMIUM is None:
        pytest.skip(NO_BROWSER)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


class Watch:
    """Console errors, page errors and every request that leaves the site, for one browser context."""

    def __init__(self, ctx, site: Path) -> None:
        self.site = site.resolve()
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.page_url = ""
        ctx.route("**/*", self.route)

    def inside(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme != "file":
            return False
        path = Path(unquote(parts.path)).resolve()
        return path == self.site or self.site in path.parents

    def route(self, route) -> None:
        url = route.request.url
        if self.inside(url):
            route.continue_()
        else:
            self.outside.append(f"{self.page_url}: {url}")
            route.abort()

    def attach(self, page) -> None:
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"{self.page_url}: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"{self.page_url}: {e}"))
        page.on("request", lambda r: None if self.inside(r.url) or r.url.startswith("data:")
                else self.outside.append(f"{self.page_url}: {r.url}"))

    def goto(self, page, path: Path) -> None:
        self.page_url = path.relative_to(self.site).as_posix()
        page.goto(path.as_uri(), wait_until="load")


def ids_of(path: Path) -> set[str]:
    from html.parser import HTMLParser

    ids: set[str] = set()

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            ids.update(v for k, v in attrs if k == "id" and v)

    P().feed(path.read_text(encoding="utf-8"))
    return ids


def test_every_page_loads_clean(site, browser):
    """No console error, every image loaded, every internal link resolves (anchors too), nothing leaves the site."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    watch = Watch(ctx, site)
    page = ctx.new_page()
    watch.attach(page)
    root = site.resolve()
    pages = sorted(root.rglob("*.html"))
    assert len(pages) >= 3
    broken, unloaded, external = [], [], []
    id_cache: dict[Path, set[str]] = {}
    for path in pages:
        watch.goto(page, path)
        unloaded += [f"{watch.page_url}: {src}" for src in page.evaluate(LOAD_ALL_IMAGES)]
        for link in page.evaluate(LINKS):
            parts = urlsplit(link["url"])
            if parts.scheme in ("http", "https"):
                if not link["external_ok"]:
                    external.append(f"{watch.page_url}: {link['url']}")
                continue
            target = Path(unquote(parts.path)).resolve()
            if parts.scheme != "file" or not (target == root or root in target.parents) or not target.is_file():
                broken.append(f"{watch.page_url}: {link['tag']} -> {link['url']}")
                continue
            if parts.fragment and target.suffix == ".html":
                if parts.fragment not in id_cache.setdefault(target, ids_of(target)):
                    broken.append(f"{watch.page_url}: anchor -> {link['url']}")
    ctx.close()
    problems = {"console errors": watch.errors, "images not loaded": unloaded, "broken links": broken,
                "links to other sites": external, "requests outside the site": sorted(set(watch.outside))}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}


def test_manifest_lists_every_file_on_disk(site):
    """Every file of the site is in the manifest (except manifest.json itself), with its true sha256."""
    manifest = json.loads((site / "manifest.json").read_text())
    on_disk = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == set(manifest["files"]), (sorted(on_disk - set(manifest["files"]))[:10],
                                                sorted(set(manifest["files"]) - on_disk)[:10])
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((site / rel).read_bytes()).hexdigest() == digest, rel


def test_zoom_and_mathml(site, browser):
    """A thumbnail opens enlarged in the dialog; MathML renders as maths (a subscript sits below its base)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    watch = Watch(ctx, site)
    page = ctx.new_page()
    watch.attach(page)
    watch.goto(page, site.resolve() / "index.html")
    page.locator("a.zoomable").first.click()
    page.wait_for_function("() => { const i = document.querySelector('#zoom img');"
                           " return document.querySelector('#zoom').open && i && i.complete && i.naturalWidth > 0; }")
    page.keyboard.press("Escape")
    assert page.evaluate("() => !document.querySelector('#zoom').open")

    watch.goto(page, site.resolve() / "analyses" / "predictions.html")
    box = page.evaluate("""() => { const s = document.querySelector('.explain math msub');
      const [base, sub] = [...s.children].map(e => e.getBoundingClientRect());
      return {base_bottom: base.bottom, sub_bottom: sub.bottom, sub_left: sub.left, base_right: base.right,
              height: sub.height, display: getComputedStyle(s).display}; }""")
    assert box["height"] > 0
    assert box["sub_bottom"] > box["base_bottom"] + 1, box  # laid out as a subscript, not as inline text
    assert box["sub_left"] >= box["base_right"] - 1, box
    ctx.close()
    assert not watch.errors and not watch.outside, (watch.errors, watch.outside)


@pytest.mark.parametrize("name, viewport, scheme", [
    ("desktop", (1280, 900), "light"),
    ("phone", (390, 844), "light"),
    ("dark", (1280, 900), "dark"),
])
def test_screenshots(site, browser, artifacts, name, viewport, scheme):
    """The model card and one image page fit the width (no sideways scrolling) and are kept as screenshots."""
    ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, color_scheme=scheme)
    watch = Watch(ctx, site)
    page = ctx.new_page()
    watch.attach(page)
    image_pages = sorted((site / "images").glob("*.html")) if (site / "images").is_dir() else []
    targets = [("index", site / "index.html")] + ([("image", image_pages[0])] if image_pages else [])
    for label, path in targets:
        watch.goto(page, path.resolve())
        page.evaluate(LOAD_ALL_IMAGES)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= viewport[0], f"{label} page is {width}px wide at a {viewport[0]}px viewport"
        if scheme == "dark":
            bg = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
            assert bg != "rgb(255, 255, 255)", "the dark scheme keeps a white page"
        page.screenshot(path=str(artifacts / f"{label}-{name}.png"), full_page=True)
    if name == "phone":
        # the sidebar folds behind the menu button and opens on a tap
        assert not page.locator("#sidebar").is_visible()
        page.locator("button.menu").click()
        assert page.locator("#sidebar").is_visible()
    ctx.close()
    assert not watch.errors and not watch.outside, (watch.errors, watch.outside)
