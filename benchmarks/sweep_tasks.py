"""Build a report of each torchvision segmentation and detection architecture of issue 30 (random seeded weights)
and of a timm classifier used as a multi-label head, through the real CLI, and write a table of what each build
did: exit code, wall and CPU seconds, each analysis's status (ran / not applicable and why / failed and why) from
the site's manifest.json, and every warning line the build printed (not a test).

    python benchmarks/sweep_tasks.py --out benchmarks/torchvision_tasks.md             # every model below
    python benchmarks/sweep_tasks.py --model lraspp_mobilenet_v3_large --work /tmp/sweep-x
    python benchmarks/sweep_tasks.py --src /tmp/sweep-head ...                         # run another checkout

Each model is what a user with a fine-tuned checkpoint has: ``torch.manual_seed(0)``, then the architecture with
``weights=None, weights_backbone=None`` and a small number of classes (5, background included for torchvision's
segmenters and detectors), its state dict saved to a file and given to ``reportgen build torchvision:ARCH --weights
FILE``; the timm model is ``timm.create_model("resnet18", pretrained=False, num_classes=5)`` with a model.json
``{"task": "multilabel", "class_names": [...]}`` beside its weights. Images: 8 crops of scikit-learn's two sample
photos in one flat folder, with the labels each task reads (issue 30 item 4): a labels.csv (multi-label), a
folder of class masks (segmentation: the class of a pixel from its brightness) and a COCO JSON of boxes (detection:
two fixed boxes per image). Inputs are smaller than the defaults where the model allows it (see `MODELS`) so each
build stays within minutes on a 2-core CPU; the sweep's fast config (few optimization steps, few noisy copies) and
``--samples 2``. Each build runs in its own subprocess; CPU seconds are the child's user + system time.

``retinanet_resnet50_fpn@320`` and ``fcos_resnet50_fpn@320`` are the same architectures and weights built with their
transform at 320 px instead of 800 (``sweep_factories:ARCH``, a ``module:factory`` spec from
benchmarks/sweep_factories.py, with ``--channels 3 --mean 0,0,0 --std 1,1,1`` as the torchvision loader sets them): a sixth of
the compute, so that ``-- --budget 0`` runs every analysis on them on this CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sweep_torchvision import FAST  # noqa: E402  the same fast settings as the classifier sweep

# model -> (task, input size given with --input-size (None: the loader's own), why that size)
MODELS = {
    "fcn_resnet50": ("segment", 128, "fully convolutional: any size; 128 instead of 520"),
    "deeplabv3_mobilenet_v3_large": ("segment", 128, "fully convolutional: any size; 128 instead of 520"),
    "lraspp_mobilenet_v3_large": ("segment", 128, "fully convolutional: any size; 128 instead of 520"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("detect", 320, "resizes to 320 inside: the loader's own size"),
    "retinanet_resnet50_fpn": ("detect", 320, "resizes to 800 inside whatever the input: 320 only sets the "
                                              "pictures' resolution, not the compute"),
    "fcos_resnet50_fpn": ("detect", 320, "resizes to 800 inside whatever the input: 320 only sets the pictures' "
                                         "resolution, not the compute"),
    "ssdlite320_mobilenet_v3_large": ("detect", 320, "resizes to 320 inside: the loader's own size"),
    # the same two built with their transform at 320 px (benchmarks/sweep_factories.py), to run with --budget 0
    "retinanet_resnet50_fpn@320": ("detect", 320, "built with min_size = max_size = 320 "
                                                  "(sweep_factories:retinanet_resnet50_fpn): 20 GMAC a pass"),
    "fcos_resnet50_fpn@320": ("detect", 320, "built with min_size = max_size = 320 "
                                             "(sweep_factories:fcos_resnet50_fpn): 20 GMAC a pass"),
    "timm:resnet18": ("multilabel", 128, "a CNN with global pooling: any size; 128 instead of 224"),
}
CLASSES = ["cat", "dog", "car", "tree"]  # the detectors' and the multi-label head's names
SEG_CLASSES = ["background", *CLASSES]  # a segmenter's class 0 is the background, as in torchvision's VOC models
IMAGE = 300  # side of each crop


def photos(root: Path, count: int = 8) -> list[str]:
    """``count`` IMAGExIMAGE crops of scikit-learn's two sample photos in one flat folder; their file names."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    root.mkdir(parents=True, exist_ok=True)
    names = []
    arrays = load_sample_images().images
    for k in range(count):
        arr = arrays[k % 2]
        h, w = arr.shape[:2]
        y, x = (k * 37) % (h - IMAGE), (k * 71) % (w - IMAGE)
        name = f"{['china', 'flower'][k % 2]}{k}.jpg"
        Image.fromarray(arr[y:y + IMAGE, x:x + IMAGE]).save(root / name)
        names.append(name)
    return names


def labels(task: str, images: Path, names: list[str], work: Path) -> Path:
    """The label file of ``task`` for these images: multi-label CSV (a label on when the crop's mean of one colour
    channel is above the set's median, the fourth on the china photo), class masks (pixel class by brightness
    quartile, 255 at the border as an ignore band) or COCO boxes (two fixed boxes per image)."""
    import numpy as np
    from PIL import Image

    arrays = [np.asarray(Image.open(images / n).convert("RGB")) for n in names]
    if task == "multilabel":
        means = np.array([a.reshape(-1, 3).mean(0) for a in arrays])
        on = (means > np.median(means, 0)).astype(int)
        path = work / "labels.csv"
        rows = ["image," + ",".join(CLASSES)]
        for n, row in zip(names, on):
            rows.append(",".join([n, *map(str, row), str(int(n.startswith("china")))]))
        path.write_text("\n".join(rows) + "\n")
        return path
    if task == "segment":
        path = work / "masks"
        path.mkdir(exist_ok=True)
        for n, a in zip(names, arrays):
            grey = a.mean(2)
            mask = np.digitize(grey, np.quantile(grey, [0.2, 0.4, 0.6, 0.8])).astype(np.uint8)
            mask[:4], mask[-4:], mask[:, :4], mask[:, -4:] = 255, 255, 255, 255
            Image.fromarray(mask).save(path / (Path(n).stem + ".png"))
        return path
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}
    for i, n in enumerate(names):
        coco["images"].append({"id": i + 1, "file_name": n, "width": IMAGE, "height": IMAGE})
        for j, (box, cat) in enumerate((([20, 30, 120, 100], 1 + i % 4), ([150, 140, 130, 150], 1 + (i + 1) % 4))):
            coco["annotations"].append({"id": 2 * i + j + 1, "image_id": i + 1, "bbox": box, "category_id": cat,
                                        "area": box[2] * box[3], "iscrowd": 0})
    path = work / "boxes.json"
    path.write_text(json.dumps(coco))
    return path


def weights(model: str, task: str, path: Path) -> str:
    """Save the seeded random state dict of ``model``; the model argument `reportgen build` takes."""
    import torch

    torch.manual_seed(0)
    if model.startswith("timm:"):
        import timm

        net = timm.create_model(model.split(":", 1)[1], pretrained=False, num_classes=len(CLASSES))
        (path.parent / "model.json").write_text(json.dumps({"task": task, "class_names": CLASSES}))
        torch.save(net.state_dict(), path)
        return model
    import torchvision

    arch, _, small = model.partition("@")
    net = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=len(SEG_CLASSES))
    torch.save(net.state_dict(), path)
    return f"sweep_factories:{arch}" if small else f"torchvision:{arch}"


def probe(archs: list[str], images: Path, small: bool) -> None:
    """Print what the sweep's seeded random segmenters and detectors output on two of its images, without a report:
    a segmenter's logit range and each class's pixel share at 128x128, a detector's detections per image, score
    range and detections per class at 320x320 (``small``: RetinaNet and FCOS built with ``min_size=max_size=320``
    instead of 800, only to make the pass short on a busy CPU)."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    paths = sorted(images.glob("*.jpg"))[:2]
    segmenters = torchvision.models.list_models(module=torchvision.models.segmentation)
    for arch in archs:
        seg = arch in segmenters
        side = 128 if seg else 320
        extra = {"min_size": 320, "max_size": 320} if small and arch.endswith("resnet50_fpn") else {}
        torch.manual_seed(0)
        net = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=len(SEG_CLASSES),
                                           **extra).eval()
        x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((side, side))))
                         .permute(2, 0, 1).float() / 255 for p in paths])
        with torch.no_grad():
            if seg:
                mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
                std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
                out = net((x - mean) / std)["out"]
                share = [round((out.argmax(1) == c).float().mean().item(), 3) for c in range(len(SEG_CLASSES))]
                print(arch, f"logits min {out.min():.3g} max {out.max():.3g} std {out.std():.3g}; pixel share", share)
                continue
            for d in net(list(x)):
                s = d["scores"]
                span = f"scores {s.min():.4f}..{s.max():.4f}" if len(s) else "no scores"
                print(arch, "detections", len(s), span, "per class",
                      torch.bincount(d["labels"], minlength=len(SEG_CLASSES)).tolist())


def build(model: str, work: Path, images: Path, names: list[str], config: Path, samples: int, src: str | None,
          extra: list[str]) -> dict:
    task, size, why = MODELS[model]
    tag = model.replace(":", "-").replace("@", "-")
    folder = work / tag
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / "weights.pt"
    spec = weights(model, task, state)
    out = work / f"site-{tag}"
    label_path = labels(task, images, names, folder)
    names_flag = ",".join(SEG_CLASSES if task == "segment" else CLASSES)
    cmd = ["reportgen", "build", spec, "--weights", str(state), "--images", str(images), "-o", str(out),
           "--config", str(config), "--samples", str(samples), "--labels", str(label_path), *extra]
    if size:
        cmd += ["--input-size", f"{size}x{size}"]
    if not model.startswith("timm:"):
        cmd += ["--class-names", names_flag]
    env = dict(os.environ)
    if spec.startswith("sweep_factories:"):
        # as the torchvision loader says of these models: 3 channels, normalized inside
        cmd += ["--channels", "3", "--mean", "0,0,0", "--std", "1,1,1"]
        env["PYTHONPATH"] = str(Path(__file__).parent) + os.pathsep + env.get("PYTHONPATH", "")
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    (folder / "stdout.txt").write_text(proc.stdout)
    (folder / "stderr.txt").write_text(proc.stderr)
    row = {"model": model, "task": task, "size": size, "size_why": why, "rc": proc.returncode, "wall": wall,
           "cpu": cpu, "command": " ".join(cmd),
           "warnings": [line for line in (proc.stdout + proc.stderr).splitlines() if "warning" in line.lower()]}
    manifest = out / "manifest.json"
    if not manifest.exists():
        row["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:400]
        return row
    m = json.loads(manifest.read_text())
    row["ran"] = [a["name"] for a in m["analyses"] if a["status"] == "ok"]
    row["not_applicable"] = {a["name"]: a["reason"] for a in m["analyses"] if a["status"] == "not applicable"}
    row["failed"] = {a["name"]: a["reason"] for a in m["analyses"] if a["status"] == "failed"}
    row["seconds"] = {a["name"]: round(a.get("seconds", 0.0), 1) for a in m["analyses"]}
    row["notes"] = m["model"].get("notes", []) if isinstance(m.get("model"), dict) else []
    return row


def markdown(rows: list[dict], argv: list[str], source: str) -> str:
    """The results as Markdown: a summary table, then per model the not-applicable reasons, failures and
    warnings."""
    lines = ["# Issue 30's architectures: one report each", "",
             f"Made with `python benchmarks/sweep_tasks.py {' '.join(argv)}` on "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {source}, on this project's "
             "2-core CPU machine shared with other jobs (wall and CPU seconds of the whole `reportgen build` "
             "subprocess, start-up included).", "",
             "| model | task | input | exit | wall s | CPU s | ran | not applicable | failed | warnings |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['task']} | {r['size']} | {r['rc']} | {r['wall']:.0f} | "
                         f"{r['cpu']:.0f} | | | build error: {r['error']} | {len(r['warnings'])} |")
            continue
        lines.append(f"| {r['model']} | {r['task']} | {r['size']} | {r['rc']} | {r['wall']:.0f} | {r['cpu']:.0f} | "
                     f"{len(r['ran'])} | {len(r['not_applicable'])} | "
                     f"{', '.join(r['failed']) or '-'} | {len(r['warnings'])} |")
    for r in rows:
        lines += ["", f"## {r['model']} ({r['task']})", "", f"`{r['command']}`", "",
                  f"Input {r['size']}: {r['size_why']}."]
        if "error" in r:
            lines += ["", f"Build error (exit {r['rc']}): {r['error']}"]
        else:
            lines += ["", "Ran: " + (", ".join(r["ran"]) or "none") + "."]
            slow = sorted(r["seconds"].items(), key=lambda kv: -kv[1])[:5]
            lines += ["", "Slowest (s): " + ", ".join(f"{k} {v}" for k, v in slow) + "."]
            if r["failed"]:
                lines += ["", "Failed:", ""] + [f"- **{k}**: {v}" for k, v in r["failed"].items()]
            if r["not_applicable"]:
                lines += ["", "Not applicable:", ""] + [f"- {k}: {v or '(NO REASON GIVEN)'}"
                                                        for k, v in r["not_applicable"].items()]
        if r["warnings"]:
            lines += ["", "Warnings:", ""] + [f"- {w}" for w in r["warnings"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", choices=list(MODELS), help="models (default: all of them)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sweep-tasks"), help="weights, images, sites")
    parser.add_argument("--samples", type=int, default=2, help="sample images of the per-image analyses")
    parser.add_argument("--src", help="a reportgen checkout to run instead of the installed one (PYTHONPATH): its reportgen/ and "
                        "templates/ both (the pages are rendered from templates/ beside the package)")
    parser.add_argument("--out", type=Path, help="write the Markdown results here")
    parser.add_argument("--json", type=Path, help="append each row as a JSON line to this file")
    parser.add_argument("--merge", type=Path, nargs="+", help="only write --out from these JSON-line files "
                        "(several sweeps run side by side)")
    parser.add_argument("--probe", action="store_true", help="only print what the random torchvision models "
                        "output on two images (no report); RetinaNet and FCOS at min_size 320")
    parser.add_argument("extra", nargs="*", help="more `reportgen build` options, after --")
    args = parser.parse_args()
    if args.merge:
        rows = [json.loads(line) for path in args.merge for line in path.read_text().splitlines() if line.strip()]
        order = list(MODELS)
        rows.sort(key=lambda r: order.index(r["model"]))
        source = f"reportgen from {args.src}" if args.src else "the installed (editable) reportgen"
        args.out.write_text(markdown(rows, sys.argv[1:], source))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    images = args.work / "images"
    names = photos(images)
    if args.probe:
        probe([m for m in args.model or list(MODELS) if not m.startswith("timm:") and "@" not in m], images,
              small=True)
        return
    config = args.work / "fast.toml"
    config.write_text(FAST)
    rows = []
    for model in args.model or list(MODELS):
        row = build(model, args.work, images, names, config, args.samples, args.src, args.extra)
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("model", "rc", "wall", "cpu", "failed", "error")}), flush=True)
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        if args.out:
            source = f"reportgen from {args.src}" if args.src else "the installed (editable) reportgen"
            args.out.write_text(markdown(rows, sys.argv[1:], source))


if __name__ == "__main__":
    main()
