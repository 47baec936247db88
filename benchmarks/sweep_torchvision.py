"""Build a report of every classification architecture in torchvision.models (random seeded weights), one after
the other, and write a table of build time, peak memory and what was not applicable or failed (not a test).

    python benchmarks/sweep_torchvision.py --out benchmarks/torchvision_sweep.md            # every architecture
    python benchmarks/sweep_torchvision.py --arch resnet18 --arch vit_b_16                  # some of them

Each architecture gets a state dict of `ARCH(num_classes=2)` with seeded random weights (torchvision's zero-
initialized heads are re-drawn so the logits vary), saved to a file and given to `reportgen build torchvision:ARCH
--weights FILE`: the way a user with a fine-tuned checkpoint runs it. Images: crops of scikit-learn's two sample
photos in two class folders, at each model's default input size. The config is the fast one below (few
optimization steps, few noisy copies); every analysis runs unless the compute budget (`--budget`, default 2000 GMAC
per analysis) refuses it: such an analysis is listed as "NAME (over budget)" among the not applicable ones. Each
build runs in its own subprocess, which reports its peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAST = """
[analysis.class-max]
steps = 8
[analysis.unit-max]
steps = 8
channels = 2
[analysis.deepdream]
images = 1
octaves = 2
steps_per_octave = 2
[analysis.adversarial]
steps = 3
sphere_points = 4
[analysis.smoothgrad]
n = 4
[analysis.embeddings]
perplexity = 3
"""


def photos(root: Path, per_class: int) -> Path:
    """``per_class`` 300x300 crops of each of scikit-learn's two sample photos, one class folder each."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    for name, arr in zip(["china", "flower"], load_sample_images().images):
        (root / name).mkdir(parents=True, exist_ok=True)
        h, w = arr.shape[:2]
        for k in range(per_class):
            y, x = (k * 37) % (h - 300), (k * 71) % (w - 300)
            Image.fromarray(arr[y:y + 300, x:x + 300]).save(root / name / f"{k}.jpg")
    return root


def weights(arch: str, path: Path) -> None:
    """A seeded random state dict of ``arch`` with 2 classes; zero-initialized classifier weights re-drawn."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=2)
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and not module.weight.abs().sum():
            torch.nn.init.normal_(module.weight, std=0.02)
    torch.save(model.state_dict(), path)


def build(arch: str, work: Path, images: Path, config: Path, extra: list[str]) -> dict:
    state = work / f"{arch}.pt"
    weights(arch, state)
    out = work / arch
    child = ("import resource, sys\nfrom reportgen.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", child, "build", f"torchvision:{arch}", "--weights", str(state),
                           "--images", str(images), "--out", str(out), "--config", str(config), "-q", *extra],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    state.unlink()
    lines = proc.stdout.strip().splitlines()
    row = {"arch": arch, "seconds": wall, "peak_mib": int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else None}
    manifest = out / "manifest.json"
    if proc.returncode or not manifest.exists() or any(line.startswith("exit") and line != "exit 0" for line in lines):
        row["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return row
    m = json.loads(manifest.read_text())
    row["input"] = m["model"].get("input", {}).get("size")
    row["not_applicable"] = {a["name"]: a["reason"] for a in m["analyses"] if a["status"] == "not applicable"}
    row["failed"] = {a["name"]: a["reason"] for a in m["analyses"] if a["status"] == "failed"}
    row["timings"] = m["timings"]
    return row


def table_row(row: dict) -> str:
    """One markdown table row of a `build` result (also of a line of a --json file)."""
    arch = row["arch"]
    if "error" in row:
        return f"| {arch} | | {row['seconds']:.0f} | | | build error: {row['error']} |"
    size = "x".join(map(str, row["input"])) if row["input"] else ""
    na = ", ".join(f"{k} (over budget)" if v.startswith("not run") else k
                   for k, v in sorted(row["not_applicable"].items())) or "-"
    failed = "; ".join(f"{k}: {v[:120]}" for k, v in row["failed"].items()) or "-"
    return f"| {arch} | {size} | {row['seconds']:.0f} | {row['peak_mib'] or 0:.0f} | {na} | {failed} |"


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", action="append", help="architectures (default: every classifier)")
    parser.add_argument("--images", type=int, default=4, help="images per class (two classes)")
    parser.add_argument("--out", type=Path, help="append each architecture's row to this markdown file")
    parser.add_argument("--json", type=Path, help="append each row as a JSON line to this file")
    parser.add_argument("extra", nargs="*", help="more `reportgen build` options, after --")
    args = parser.parse_args()
    archs = args.arch or torchvision.models.list_models(module=torchvision.models)
    work = Path(tempfile.mkdtemp())
    images = photos(work / "photos", args.images)
    config = work / "fast.toml"
    config.write_text(FAST)
    if args.out and not args.out.exists():
        args.out.write_text("| architecture | input | build s | peak MiB | not applicable | failed |\n"
                            "|---|---|---|---|---|---|\n")
    for arch in archs:
        row = build(arch, work, images, config, args.extra)
        line = table_row(row)
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as fh:
                fh.write(line + "\n")
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
