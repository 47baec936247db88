"""Train zoo models: ``python -m models_zoo train NAME [--out DIR]`` or ``python -m models_zoo train-all``.

``train-all`` overwrites the shipped weights in ``models_zoo/weights/`` (and the MLP's history) and rewrites the
table in ``models_zoo/RESULTS.md`` with the measured accuracy and time. ``stats NAME`` prints the per-channel
mean/std of a train split, the numbers hard-coded in the registry.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _log(message: str) -> None:
    print(message, flush=True)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train_one(name: str, out: Path | None, seed: int, epochs: int | None) -> None:
    from . import get

    report = get(name).train(out, seed=seed, epochs=epochs, log=_log)
    _log(f"{name}: test accuracy {report.test_accuracy:.4f} in {report.seconds:.1f} s, {len(report.checkpoints)} checkpoints")


def train_all(seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    from . import WEIGHTS_DIR, ZOO

    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, entry in ZOO.items():
        with tempfile.TemporaryDirectory() as tmp:
            report = entry.train(Path(tmp), seed=seed, log=_log)
            last = report.checkpoints[-1]
            # The shipped file is the last epoch's checkpoint, metadata included.
            shutil.copyfile(last, entry.weights_path())
        if report.history:
            flat = {f"{it:05d}.{k}": v.to(torch.float32).contiguous() for it, state in report.history for k, v in state.items()}
            save_file(flat, str(entry.history_path()), metadata={"zoo": name, "iterations": ",".join(str(it) for it, _ in report.history)})
        rows.append((name, _params(report.model), report.test_accuracy, report.seconds))
        _log(f"{name}: test accuracy {report.test_accuracy:.4f} in {report.seconds:.1f} s")
    _write_results(rows, seed)


def _write_results(rows: list[tuple[str, int, float, float]], seed: int) -> None:
    import platform

    import torch

    lines = [
        "# Zoo results",
        "",
        f"Measured by `python -m models_zoo train-all --seed {seed}` on CPU ({platform.processor() or platform.machine()},"
        f" {torch.get_num_threads()} threads, torch {torch.__version__}). Train seconds include generating or loading"
        " the data and evaluating the test split after every epoch.",
        "",
        "| name | params | test accuracy | train seconds | command |",
        "|---|---:|---:|---:|---|",
    ]
    for name, params, acc, seconds in rows:
        lines.append(f"| {name} | {params:,} | {acc:.4f} | {seconds:.1f} | `python -m models_zoo train {name}` |")
    RESULTS.write_text("\n".join(lines) + "\n")


def stats(name: str) -> None:
    from . import get

    data = get(name).load_dataset("train")
    x = data.inputs.astype("float64") / 255.0
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    std = x.std(axis=axes)
    print("mean=(" + ", ".join(f"{m:.4f}" for m in mean) + ",)")
    print("std=(" + ", ".join(f"{s:.4f}" for s in std) + ",)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models_zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train one model, a checkpoint per epoch in --out")
    p_train.add_argument("name")
    p_train.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: none written)")
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--epochs", type=int, default=None)
    p_all = sub.add_parser("train-all", help="train every model and overwrite the shipped weights")
    p_all.add_argument("--seed", type=int, default=0)
    p_stats = sub.add_parser("stats", help="per-channel mean/std of a train split")
    p_stats.add_argument("name")
    sub.add_parser("list", help="the zoo's models")
    args = parser.parse_args(argv)

    from . import ZOO

    if args.command in ("train", "stats") and args.name not in ZOO:
        parser.error(f"unknown zoo model '{args.name}': known models are {', '.join(ZOO)}")
    if args.command == "train":
        train_one(args.name, args.out, args.seed, args.epochs)
    elif args.command == "train-all":
        train_all(args.seed)
    elif args.command == "stats":
        stats(args.name)
    else:
        for entry in ZOO.values():
            print(f"{entry.name:14s} {entry.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
