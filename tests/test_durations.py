"""Times and rates for people, one helper on the console and the pages: "25 min 40 s", "0.4 GMAC/s"."""

from __future__ import annotations

import pytest

from reportgen.budget import Fitted, estimate_line
from reportgen.console import duration


@pytest.mark.parametrize("seconds, text", [
    (None, "–"), (float("nan"), "–"), (0.0, "0 s"), (0.0004, "< 1 ms"), (0.0042, "4 ms"), (0.42, "420 ms"),
    (0.9996, "1.0 s"), (4.24, "4.2 s"), (9.96, "10 s"), (42.4, "42 s"), (59.6, "1 min"), (61.0, "1 min 1 s"),
    (1540.3, "25 min 40 s"), (3599.6, "1 h"), (7530.0, "2 h 6 min"),
])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_estimate_line_rate_and_time():
    fitted = {"occlusion": Fitted(None, 600e9, 600e9), "grad-cam": Fitted(None, 16e9, 16e9),
              "refused": Fitted(None, 5e12, 5e12, refused="over")}
    # 616 GMAC at 0.4 GMAC/s: 1540 s (the refused analysis spends nothing)
    line = estimate_line(fitted, 0.4e9)
    assert line == ("the analyses will spend at most 616 GMAC (occlusion 600 GMAC, grad-cam 16 GMAC); at most about "
                    "25 min 40 s at the measured 0.4 GMAC/s")
    assert estimate_line(fitted, 61.6e9).endswith("at most about 10 s at the measured 62 GMAC/s")
    assert estimate_line(fitted, None) == "the analyses will spend at most 616 GMAC (occlusion 600 GMAC, grad-cam " \
                                          "16 GMAC)"


def test_pages_say_durations(tmp_path):
    from test_site import fake_manifest

    from reportgen.artifacts import ArtifactWriter
    from reportgen.site import render_site

    root = tmp_path / "site"
    writer = ArtifactWriter(root)
    manifest = fake_manifest(writer)
    manifest.build_seconds = 1540.3
    render_site(manifest, root, writer)
    index = (root / "index.html").read_text()
    assert "<dd>25 min 40 s</dd>" in index and "e+03" not in index
    assert "Build time 25 min 40 s in all; loading the model and images 100 ms" in index
    assert "This analysis took 1.2 s." in (root / "analyses" / "maps.html").read_text()
