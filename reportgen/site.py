"""Pages from the manifest alone: the Jinja2 environment, navigation, relative links.

This module never imports torch, so a site can be re-rendered from its manifest.json in about a second
(`reportgen render DIR`). Every link goes through the ``url`` filter, which makes it relative to the page, so the
site works opened from disk (file://) and served under any sub-path.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict
from urllib.parse import quote
from pathlib import Path
from typing import Any, Optional

from .artifacts import ArtifactWriter, slug
from .console import duration
from .manifest import SECTIONS, Manifest, read_manifest, write_manifest


def templates_dir() -> Path:
    """The templates folder: the repo's top-level templates/ in a checkout, reportgen/_templates when installed."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "templates", here / "_templates"):
        if (candidate / "base.html").is_file():
            return candidate
    import importlib.resources

    return Path(str(importlib.resources.files("reportgen._templates")))


def make_env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = format_number
    env.filters["slug"] = slug
    env.filters["duration"] = duration  # "25 min 40 s", as the console says it
    return env


def format_number(value: Any, digits: int = 3) -> str:
    """Numbers for people: ints with thousands separators, floats with ``digits`` significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "–"
        if 0 < abs(value) < 1e-3 or abs(value) >= 1e6:
            return f"{value:.{digits}g}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return str(value)


def relative_url(target: str, here: str) -> str:
    """The link from page ``here`` to site path ``target`` (both relative to the site root, '/'-separated).

    Absolute URLs and bare anchors pass through; everything else becomes relative and percent-encoded, so a site
    works from file:// and under any sub-path. ``relative_url("static/style.css", "layers/fc.html")`` is
    ``"../static/style.css"``.
    """
    if target.startswith(("http://", "https://", "#", "mailto:")):
        return target
    path, hash_, fragment = target.partition("#")
    rel = posixpath.relpath(path, posixpath.dirname(here) or ".") if path else posixpath.basename(here)
    return quote(rel, safe="/") + (hash_ + quote(fragment, safe="") if hash_ else "")


class Page:
    """One HTML page: its path in the site, title, breadcrumbs, template and context."""

    def __init__(self, path: str, title: str, template: str, crumbs: list[tuple[str, Optional[str]]], **context):
        self.path = path
        self.title = title
        self.template = template
        self.crumbs = crumbs
        self.context = context
        self.prev: Optional[Page] = None
        self.next: Optional[Page] = None


def layer_page(name: str) -> str:
    return f"layers/{slug(name)}.html"


def image_page(index: int) -> str:
    return f"images/{index:05d}.html"


def analysis_page(name: str) -> str:
    return f"analyses/{slug(name)}.html"


def plan_pages(manifest: Manifest) -> list[Page]:
    """Every page of the site, in navigation order, with previous/next links inside each series."""
    home = ("Model card", "index.html")
    pages: list[Page] = [Page("index.html", "Model card", "index.html", [("Model card", None)])]
    pages.append(Page("data.html", "Image set", "data.html", [home, ("Image set", None)]))
    series: list[list[Page]] = []
    analysis_pages = []
    for entry in manifest.analyses:
        group = SECTIONS.get(entry.section, entry.section)
        crumbs = [home, (group, f"index.html#{section_anchor(entry.section)}"), (entry.title, None)]
        if group == home[0]:  # the model card's own analyses sit right under it
            crumbs.pop(1)
        analysis_pages.append(Page(analysis_page(entry.name), entry.title, "analysis.html", crumbs, entry=entry))
    series.append(analysis_pages)

    layers = manifest.model["selected_layers"]
    by_layer: dict[str, list] = {}
    by_image: dict[int, list] = {}
    for entry in manifest.analyses:
        for item in entry.items:
            if item.get("layer") is not None:
                by_layer.setdefault(item["layer"], []).append((entry, item))
            if item.get("image") is not None:
                by_image.setdefault(item["image"], []).append((entry, item))
    ordered_layers = [l for l in layers if l in by_layer] + [l for l in by_layer if l not in layers]
    layer_pages = [Page(layer_page(l), f"Layer {l}", "layer.html",
                        [home, ("Layers", "index.html#layers"), (l, None)], layer=l,
                        groups=group_items(by_layer[l])) for l in ordered_layers]
    series.append(layer_pages)
    samples = {s["index"]: s for s in manifest.images["samples"]}
    image_pages = []
    for idx in sorted(by_image):
        info = samples.get(idx, {"index": idx, "name": str(idx), "label": None, "pred": None, "prob": None})
        image_pages.append(Page(image_page(idx), f"Image {info['name']}", "image.html",
                                [home, ("Images", "data.html#samples"), (info["name"], None)],
                                info=info, groups=group_items(by_image[idx])))
    series.append(image_pages)
    for run in series:
        for a, b in zip(run, run[1:]):
            a.next, b.prev = b, a
        pages.extend(run)
    return pages


def section_anchor(section: str) -> str:
    """The id of a section's block in the contents table of the model card."""
    return f"section-{slug(section)}"


def group_items(pairs: list) -> list[dict]:
    """[(analysis entry, item)] -> [{"entry": ..., "items": [...]}] keeping the report order of the analyses."""
    groups: "OrderedDict[str, dict]" = OrderedDict()
    for entry, item in pairs:
        groups.setdefault(entry.name, {"entry": entry, "items": []})["items"].append(item)
    return list(groups.values())


def nav_tree(manifest: Manifest, pages: list[Page]) -> dict:
    by_section: "OrderedDict[str, list]" = OrderedDict((k, []) for k in SECTIONS)
    for entry in manifest.analyses:
        by_section.setdefault(entry.section, []).append(
            {"name": entry.name, "title": entry.title, "path": analysis_page(entry.name),
             "status": entry.shown_status})
    return {
        "sections": [{"title": SECTIONS.get(k, k), "anchor": section_anchor(k), "entries": v}
                     for k, v in by_section.items() if v],
        "layers": [{"title": p.context["layer"], "path": p.path} for p in pages if p.template == "layer.html"],
        "images": [{"title": p.context["info"]["name"], "path": p.path} for p in pages if p.template == "image.html"],
    }


def copy_static(writer: ArtifactWriter) -> None:
    """Copy the templates' static assets (CSS, JS) into the site's static/ folder."""
    for asset in sorted((templates_dir() / "static").iterdir()):
        if asset.is_file():
            writer.write_bytes(f"static/{asset.name}", asset.read_bytes())


def render_pages(manifest: Manifest) -> list[tuple[str, str]]:
    """Every page of the site of ``manifest`` as ``(path, html)``, in memory: nothing is written."""
    env = make_env()
    pages = plan_pages(manifest)
    nav = nav_tree(manifest, pages)
    entries = {entry.name: entry for entry in manifest.analyses}
    rendered = []
    for page in pages:
        def url(target: str, _here: str = page.path) -> str:
            return relative_url(target, _here)

        template = env.get_template(page.template)
        rendered.append((page.path, template.render(
            page=page, manifest=manifest, nav=nav, url=url, entries=entries, section_anchor=section_anchor,
            analysis_page=analysis_page, layer_page=layer_page, image_page=image_page, **page.context)))
    return rendered


def write_pages(manifest: Manifest, writer: ArtifactWriter, rendered: list[tuple[str, str]]) -> list[str]:
    """Write the ``rendered`` pages (`render_pages`), the static assets and manifest.json; returns the paths."""
    copy_static(writer)
    for path, html in rendered:
        writer.write_text(path, html)
    write_manifest(writer, manifest)
    return [path for path, _ in rendered]


def render_site(manifest: Manifest, root: Path, writer: Optional[ArtifactWriter] = None) -> list[str]:
    """Write every page, the static assets and manifest.json into ``root``; returns the page paths."""
    rendered = render_pages(manifest)
    return write_pages(manifest, writer or ArtifactWriter(root), rendered)


def rerender(site_dir: Path) -> list[str]:
    """Render the pages of an existing site again from its manifest (after a template change). Every page is
    rendered before any old one is removed: a template error leaves the site as it was."""
    manifest = read_manifest(site_dir)
    rendered = render_pages(manifest)
    writer = ArtifactWriter(site_dir)
    for rel in list(manifest.files):
        if rel.endswith(".html") or rel.startswith("static/"):
            (site_dir / rel).unlink(missing_ok=True)
    writer.hashes.update({k: v for k, v in manifest.files.items()
                          if not (k.endswith(".html") or k.startswith("static/"))})
    return write_pages(manifest, writer, rendered)
