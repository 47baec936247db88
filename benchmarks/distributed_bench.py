"""Wall time of the population pass, and of a checkpoint archive, with 1 process and with N processes (torchrun, gloo,
one thread each).

    python benchmarks/distributed_bench.py [--model shapes-cnn] [--max-images 1000] [--procs 2] [--repeat 2]
                                           [--part pass|archive|items|both|all] [--archive-images 300]
                                           [--items-only class-max,smoothgrad,occlusion] [--items-batch 4]

Each build runs the analyses whose state comes from the one pass (`--only`, default distributions and top images)
on the zoo model's test split; the pass's time is the manifest's ``timings["forward pass"]`` of rank 0, which for N
processes includes waiting for the others and gathering their reducers. The whole command's wall time (imports,
loading, the analyses and the pages on rank 0) is printed beside it. The best of ``--repeat`` runs is kept (the
least disturbed by other work on the machine); the load average is printed too.

The archive part saves 4 checkpoints of the zoo's ``shapes-cnn`` (its shipped weights plus seeded noise that
shrinks with the epoch, epochs 1 to 4, the zoo name in the metadata) and times ``reportgen archive`` over them
(`--archive-only` analyses on `--archive-images` images of the test split, built from scratch every time): with N
processes checkpoint k is built whole by rank k mod N. Printed: the archive's own seconds (from its last line:
checkpoints found, snapshots built, index written) and the whole command's.

The items part times the analyses whose per-item work the ranks share (`--items-only`, default class images,
SmoothGrad and occlusion) on `--items-images` images with batches of `--items-batch` (so that class-max's 8
classes make 2 batches; SmoothGrad and occlusion take one image per chunk at that batch size): the seconds are the
sum of those analyses' manifest timings on rank 0 (which include waiting for the other ranks' chunks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(procs: int, command: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``python COMMAND`` in ``procs`` processes (torchrun when more than one, one thread each); the finished
    process and its wall seconds."""
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr",
               "127.0.0.1", "--master-port", str(free_port()), *command]
    else:
        cmd = [sys.executable, *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return done, time.perf_counter() - t0


def one_build(procs: int, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(seconds of the pass on rank 0, seconds of the whole command) of one build with ``procs`` processes."""
    build = ["-m", "reportgen", "build", args.model, "--out", str(out), "--only", args.only, "--batch-size",
             str(args.batch_size), "--max-images", str(args.max_images), "-q"]
    done, wall = launch(procs, build)
    if done.returncode:
        sys.exit(f"the build with {procs} process(es) failed:\n{done.stdout}{done.stderr}")
    timings = json.loads((out / "manifest.json").read_text())["timings"]
    return timings["forward pass"], wall


def save_checkpoints(folder: Path, n: int = 4) -> None:
    """``n`` checkpoints of shapes-cnn: the shipped weights plus seeded noise of std 0.05 / epoch, epochs 1..n."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(ROOT / "models_zoo" / "weights" / "shapes-cnn.safetensors"))
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(1, n + 1):
        noisy = {k: (v + torch.randn(v.shape, generator=gen) * 0.05 / epoch if v.is_floating_point() else v)
                 .contiguous() for k, v in weights.items()}
        save_file(noisy, str(folder / f"epoch-{epoch}.safetensors"), metadata={"epoch": str(epoch),
                                                                                  "zoo": "shapes-cnn"})


def one_archive(procs: int, args: argparse.Namespace, checkpoints: Path, out: Path) -> tuple[float, float]:
    """(seconds of the archive as it reports them, seconds of the whole command) with ``procs`` processes."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # every snapshot built, none reused
    command = ["-m", "reportgen", "archive", str(checkpoints), "--out", str(out), "--only", args.archive_only,
               "--max-images", str(args.archive_images), "-q"]
    done, wall = launch(procs, command)
    found = re.search(r"Archive written to .* in ([0-9.]+) s \(4 snapshots built", done.stdout)
    if done.returncode or not found:
        sys.exit(f"the archive with {procs} process(es) failed:\n{done.stdout}{done.stderr}")
    return float(found.group(1)), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-cnn")
    parser.add_argument("--max-images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--only", default="distributions,top-images")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--part", choices=("pass", "archive", "items", "both", "all"), default="both")
    parser.add_argument("--archive-images", type=int, default=300)
    parser.add_argument("--archive-only", default="predictions,filters,distributions,grad-cam")
    parser.add_argument("--items-only", default="class-max,smoothgrad,occlusion")
    parser.add_argument("--items-images", type=int, default=64)
    parser.add_argument("--items-batch", type=int, default=4)
    args = parser.parse_args()
    if args.part in ("pass", "both", "all"):
        bench_pass(args)
    if args.part in ("archive", "both", "all"):
        bench_archive(args)
    if args.part in ("items", "all"):
        bench_items(args)


def one_items_build(procs: int, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(seconds of the split analyses on rank 0, seconds of the whole command) of one build with ``procs``."""
    names = args.items_only.split(",")
    build = ["-m", "reportgen", "build", args.model, "--out", str(out), "--only", args.items_only, "--batch-size",
             str(args.items_batch), "--max-images", str(args.items_images), "-q"]
    done, wall = launch(procs, build)
    if done.returncode:
        sys.exit(f"the build with {procs} process(es) failed:\n{done.stdout}{done.stderr}")
    timings = json.loads((out / "manifest.json").read_text())["timings"]
    return sum(timings[name] for name in names), wall


def bench_items(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        best: dict[int, tuple[float, float]] = {}
        for _ in range(args.repeat):
            for procs in (1, args.procs):
                got = one_items_build(procs, args, Path(tmp) / f"items-{procs}")
                best[procs] = min(best.get(procs, got), got)
    print(f"{args.model}, {args.items_images} images, batch {args.items_batch}, --only {args.items_only} (their "
          f"chunks split), one thread per process, best of {args.repeat} (load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}):")
    print(f"{'processes':>9}  {'analyses s':>10}  {'speed-up':>8}  {'command s':>9}")
    for procs, (items_s, wall) in best.items():
        print(f"{procs:>9}  {items_s:10.2f}  {best[1][0] / items_s:7.2f}x  {wall:9.1f}")


def bench_archive(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoints(Path(tmp) / "ckpts")
        best: dict[int, tuple[float, float]] = {}
        for _ in range(args.repeat):
            for procs in (1, args.procs):
                got = one_archive(procs, args, Path(tmp) / "ckpts", Path(tmp) / f"archive-{procs}")
                best[procs] = min(best.get(procs, got), got)
    print(f"archive of 4 shapes-cnn checkpoints, {args.archive_images} images, --only {args.archive_only}, one "
          f"thread per process, best of {args.repeat} (load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}):")
    print(f"{'processes':>9}  {'archive s':>9}  {'speed-up':>8}  {'command s':>9}")
    for procs, (archive_s, wall) in best.items():
        print(f"{procs:>9}  {archive_s:9.2f}  {best[1][0] / archive_s:7.2f}x  {wall:9.1f}")


def bench_pass(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        best: dict[int, tuple[float, float]] = {}
        for _ in range(args.repeat):
            for procs in (1, args.procs):
                got = one_build(procs, args, Path(tmp) / f"site-{procs}")
                best[procs] = min(best.get(procs, got), got)
    print(f"{args.model}, {args.max_images} images, batch {args.batch_size}, --only {args.only}, one thread per "
          f"process, best of {args.repeat} (load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}):")
    print(f"{'processes':>9}  {'pass s':>7}  {'speed-up':>8}  {'command s':>9}")
    for procs, (pass_s, wall) in best.items():
        print(f"{procs:>9}  {pass_s:7.2f}  {best[1][0] / pass_s:7.2f}x  {wall:9.1f}")


if __name__ == "__main__":
    main()
