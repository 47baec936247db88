"""Time whole builds and check that memory does not grow with the image set (not a test).

    python benchmarks/bench_build.py                      # the default build, time per analysis
    python benchmarks/bench_build.py --memory             # peak memory for growing image sets

Each build runs in a fresh subprocess, which reports its own peak resident memory (getrusage RUSAGE_SELF).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_build(args: list[str]) -> tuple[float, float, dict]:
    """(wall seconds, peak RSS in MiB of this child, manifest) of one `reportgen build`."""
    out = Path(tempfile.mkdtemp()) / "site"
    child = ("import resource, sys\nfrom reportgen.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", child, "build", *args, "--out", str(out), "-q"], check=True,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_kib = int(proc.stdout.strip().splitlines()[-1])
    return wall, peak_kib / 1024, json.loads((out / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory", action="store_true", help="peak memory against the image-set size")
    parser.add_argument("model", nargs="?", default="shapes-cnn")
    args = parser.parse_args()
    if args.memory:
        # the streaming population analyses (one pass, bounded reducers) on growing image sets
        only = "predictions,distributions,top-images"
        print(f"{'images':>7} {'wall s':>7} {'peak MiB':>9}")
        for n in (100, 300, 1000):
            wall, peak, _ = run_build([args.model, "--max-images", str(n), "--only", only])
            print(f"{n:>7} {wall:>7.1f} {peak:>9.0f}")
        return
    wall, peak, manifest = run_build([args.model])
    print(f"build of {args.model}: {wall:.1f} s wall, peak {peak:.0f} MiB, {manifest['images']['used']} images")
    for key, seconds in manifest["timings"].items():
        print(f"  {key:<24} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
