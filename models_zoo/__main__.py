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
import time
from pathlib import Path

from . import WEIGHTS_DIR, ZOO, get

# torch is imported inside train_all: `list` and `stats` answer without loading it.

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _log(message: str) -> None:
    print(message, flush=True)


def train_one(name: str, out: Path | None, seed: int, epochs: int | None) -> None:
    report = get(name).train(out, seed=seed, epochs=epochs, log=_log)
    _log(f"{name}: test accuracy {report.test_accuracy:.4f} in {report.seconds:.1f} s, {len(report.checkpoints)} checkpoints")
    if report.metrics:
        _log(_numbers(report.metrics))


def train_all(seed: int, names: list[str]) -> None:
    import torch
    from safetensors.torch import save_file

    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    for name in names or list(ZOO):
        entry = ZOO[name]
        cpu = time.process_time()
        with tempfile.TemporaryDirectory() as tmp:
            report = entry.train(Path(tmp), seed=seed, log=_log)
            # The shipped file is the last epoch's checkpoint, metadata included.
            shutil.copyfile(report.checkpoints[-1], entry.weights_path())
        cpu = time.process_time() - cpu
        if report.history:
            flat = {f"{it:05d}.{k}": v.to(torch.float32).contiguous() for it, state in report.history for k, v in state.items()}
            meta = {"zoo": name, "iterations": ",".join(str(it) for it, _ in report.history)}
            save_file(flat, str(entry.history_path()), metadata=meta)
        params = sum(p.numel() for p in report.model.parameters())
        command = f"`OMP_NUM_THREADS=1 python -m models_zoo train-all {name}`"
        row = f"| {name} | {params:,} | {report.test_accuracy:.4f} | {report.seconds:.1f} | {cpu:.1f} | {command} |"
        if entry.task != "classify":
            row = f"| {name} | {entry.task} | {params:,} | {_numbers(report.metrics)} | {report.seconds:.1f} | {cpu:.1f} | {command} |"
        _log(f"{name}: test accuracy {report.test_accuracy:.4f} in {report.seconds:.1f} s wall, {cpu:.1f} s CPU")
        rows = _read_results()  # read late: another train-all may have finished a row meanwhile
        rows[name] = row
        _write_results(rows)


_HEADER = """# Zoo results

Measured by `OMP_NUM_THREADS=1 python -m models_zoo train-all NAME` (seed 0, CPU only) on this project's 2-core
machine while other jobs kept its load average between 10 and 14. Under that load torch's default 2 threads ran
4-6x slower than 1 thread (its threads wait on each other whenever one is descheduled), so these are 1-thread runs.
CPU seconds (the process's user + system time) are what a 1-thread run needs, i.e. about its wall time on an idle
core, and an upper bound for 2 idle cores; the wall seconds are inflated by the shared load. Both include generating
or loading the data and evaluating the test split after every epoch.

| name | params | test accuracy | wall seconds | CPU seconds | command |
|---|---:|---:|---:|---:|---|
"""


_TASK_HEADER = """
## Models of other tasks (issue 30)

Trained and measured the same way, under a load average of 10 to 28 (so the wall seconds are inflated 5 to 20
times); shapes-multilabel, -count, -binary and -embed start from shapes-cnn's shipped weights (`Recipe.init`),
whose own training is not in their seconds. The numbers are those of the last epoch on the seed-0 test split
(1,000 images), computed by `models_zoo.task_training.evaluate`: multi-label F1 at sigmoid 0.5 and average precision
(scikit-learn); per-output MAE and R^2 = 1 - SS_res / SS_tot of the counts; binary accuracy at logit 0 and ROC AUC
(scikit-learn); per-class IoU from the pixel confusion matrix, background included in the mIoU; per-class AP at IoU
0.5 with VOC's all-point interpolation, each detection matched greedily by falling score to the unmatched true box
it overlaps most; retrieval recall@k, the share of test images with a same-class image among their k nearest
other test images by cosine similarity.

| name | task | params | numbers (test split) | wall seconds | CPU seconds | command |
|---|---|---:|---|---:|---:|---|
"""


def _numbers(metrics: dict[str, float]) -> str:
    """The metrics as one table cell: "mIoU 0.81, IoU background 0.99, ..." in evaluation order."""
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())


def _read_results() -> dict[str, str]:
    rows: dict[str, str] = {}
    if RESULTS.is_file():
        for line in RESULTS.read_text().splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if line.startswith("|") and cells[0] not in ("name", "---"):
                rows[cells[0]] = line
    return rows


def _write_results(rows: dict[str, str]) -> None:
    body = "\n".join(rows[name] for name, e in ZOO.items() if name in rows and e.task == "classify")
    tasks = "\n".join(rows[name] for name, e in ZOO.items() if name in rows and e.task != "classify")
    RESULTS.write_text(_HEADER + body + "\n" + (_TASK_HEADER + tasks + "\n" if tasks else ""))


def stats(name: str) -> None:
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
    p_all = sub.add_parser("train-all", help="train every model (or NAMES) and overwrite the shipped weights")
    p_all.add_argument("names", nargs="*", help="only these models (default: all)")
    p_all.add_argument("--seed", type=int, default=0)
    p_stats = sub.add_parser("stats", help="per-channel mean/std of a train split")
    p_stats.add_argument("name")
    sub.add_parser("list", help="the zoo's models")
    args = parser.parse_args(argv)
    for name in [getattr(args, "name", None)] + list(getattr(args, "names", [])):
        if name is not None and name not in ZOO:
            parser.error(f"unknown zoo model '{name}': known models are {', '.join(ZOO)}")
    if args.command == "train":
        train_one(args.name, args.out, args.seed, args.epochs)
    elif args.command == "train-all":
        train_all(args.seed, args.names)
    elif args.command == "stats":
        stats(args.name)
    else:
        for entry in ZOO.values():
            print(f"{entry.name:14s} {entry.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
