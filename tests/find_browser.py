"""The one place that says where the browser for tests/test_browser.py is; `.ci/run` asks the same question.

Debian's ``chromium`` on PATH, else ``/usr/bin/chromium``. Run as a script it prints the path and exits 0, or says
what is missing and exits 1.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DEBIAN_CHROMIUM = Path("/usr/bin/chromium")


def find_browser() -> Path | None:
    """The chromium executable, or None."""
    found = shutil.which("chromium")
    if found:
        return Path(found)
    return DEBIAN_CHROMIUM if DEBIAN_CHROMIUM.is_file() else None


if __name__ == "__main__":
    path = find_browser()
    if path is None:
        print(f"no chromium on PATH or at {DEBIAN_CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        sys.exit(1)
    print(path)
