"""Time whole builds and check that memory does not grow with the image set (not a test).

    python benchmarks/bench_build.py                      # the default build, time per analysis
    python benchmarks/bench_build.py --memory             # peak memory for growing image sets
    python benchmarks/bench_build.py torchvision:resnet50 --photos 24   # a torchvision model, random weights

A torchvision model gets its seeded random weights (``torchvision.models.get_model(ARCH)``, 1000 classes; the spec
without --weights) and ``--photos`` crops of scikit-learn's two sample photos at 300 px (no labels), the issue's
"24 photos" setting; the default build of everything else (the compute budget included: `--budget`).

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


def photos(root: Path, n: int) -> Path:
    """``n`` 300x300 crops of scikit-learn's two sample photos (half from each), in one folder (no labels)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    pictures = list(zip(["china", "flower"], load_sample_images().images))
    for k in range(n):
        name, arr = pictures[k % 2]
        h, w = arr.shape[:2]
        y, x = (k // 2 * 37) % (h - 300), (k // 2 * 71) % (w - 300)
        Image.fromarray(arr[y:y + 300, x:x + 300]).save(root / f"{name}{k // 2}.jpg")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory", action="store_true", help="peak memory against the image-set size")
    parser.add_argument("model", nargs="?", default="shapes-cnn")
    parser.add_argument("--photos", type=int, default=0, help="images: this many crops of two sample photos")
    parser.add_argument("extra", nargs="*", help="more `reportgen build` options, after --")
    args = parser.parse_args()
    if args.memory:
        # the streaming population analyses (one pass, bounded reducers) on growing image sets
        only = "predictions,distributions,top-images"
        print(f"{'images':>7} {'wall s':>7} {'peak MiB':>9}")
        for n in (100, 300, 1000):
            wall, peak, _ = run_build([args.model, "--max-images", str(n), "--only", only])
            print(f"{n:>7} {wall:>7.1f} {peak:>9.0f}")
        return
    build_args = [args.model, *args.extra]
    if args.photos:
        build_args += ["--images", str(photos(Path(tempfile.mkdtemp()), args.photos))]
    wall, peak, manifest = run_build(build_args)
    print(f"build of {args.model}: {wall:.1f} s wall, peak {peak:.0f} MiB, {manifest['images']['used']} images")
    for key, seconds in manifest["timings"].items():
        print(f"  {key:<24} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
