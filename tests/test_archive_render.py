"""`reportgen render` on a checkpoint archive: every snapshot's pages and the index again from the manifests; an
archive it cannot read says to run `reportgen archive` again (not `reportgen build`)."""

from __future__ import annotations

import hashlib
import json

from click.testing import CliRunner

from conftest import fails_in_one_line
from reportgen.cli import main
from test_archive import TINY, archive, save_checkpoints


def render(folder):
    return CliRunner().invoke(main, ["render", str(folder)], catch_exceptions=False)


def test_render_an_archive(tmp_path, image_folder):
    save_checkpoints(tmp_path / "ckpts", [(1, "a.safetensors"), (2, "b.safetensors")])
    out = tmp_path / "archive"
    archive(tmp_path / "ckpts", *TINY, "--images", image_folder, "--out", out, "--only", "predictions", "-q")
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    snapshot_page = out / "snapshots" / "step-00002" / "index.html"
    snapshot_page.write_text("an old template")
    (out / "index.html").unlink()

    result = render(out)
    assert result.exit_code == 0, result.output
    pages = len([p for p in before if p.endswith(".html")])
    assert result.output == f"rendered {pages} pages in {out} (the archive's index and its snapshots)\n"
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the same templates: byte for byte the archive that was built
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert files == {p: hashlib.sha256(b).hexdigest() for p, b in after.items() if p != "manifest.json"}

    # a snapshot this reportgen cannot read: rebuild the archive, not "the report"
    snap = out / "snapshots" / "step-00001" / "manifest.json"
    snap.write_text(json.dumps({**json.loads(snap.read_text()), "schema": 1, "version": "0.0.1"}))
    text = fails_in_one_line(render(out), "snapshot 'step-00001' is a report of schema 1 (reportgen 0.0.1)",
                             "build the archive again with `reportgen archive`")
    assert "reportgen build" not in text
    (out / "manifest.json").write_text(json.dumps({"generator": "reportgen", "kind": "archive"}))
    fails_in_one_line(render(out), "incomplete or damaged", "build the archive again with `reportgen archive`")
