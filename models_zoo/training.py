"""Seeded CPU training loops for the zoo: minibatch training for the image models, full-batch for the 2-D MLP.

Both save a safetensors checkpoint after every epoch with the metadata ``{"zoo", "epoch", "test_accuracy"}``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from . import ZooEntry


def history_iterations(total: int = 10_000, count: int = 21) -> list[int]:
    """0 (the initialization) and log-spaced iterations 1 .. total: [0, 1, 2, 3, 4, 6, 10, 16, 25, ..., 10000]."""
    steps = np.unique(np.round(np.logspace(0, np.log10(total), count)).astype(int))
    return [0] + [int(s) for s in steps]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(model: nn.Module, path: Path, name: str, epoch: int, accuracy: float) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"zoo": name, "epoch": str(epoch), "test_accuracy": f"{accuracy:.4f}"}
    save_file(_state(model), str(path), metadata=meta)
    return path


@torch.no_grad()
def accuracy(entry: "ZooEntry", model: nn.Module, inputs: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    """Fraction of ``labels`` that ``model`` predicts from raw ``inputs`` (normalized here), in [0, 1]."""
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for start in range(0, len(labels), batch):
            x = entry.preprocess(inputs[start : start + batch])
            correct += int((model(x).argmax(1).numpy() == labels[start : start + batch]).sum())
        return correct / max(len(labels), 1)
    finally:
        model.train(was_training)


def train_entry(
    entry: "ZooEntry",
    out_dir: Path | None,
    *,
    seed: int,
    epochs: int | None,
    max_train: int | None,
    log: Callable[[str], None],
) -> dict:
    """Train ``entry``; the fields of its `models_zoo.TrainReport`, which `ZooEntry.train` (the caller) makes of
    them, so that this module does not import the package that imports it."""
    recipe = entry.recipe
    epochs = recipe.epochs if epochs is None else epochs
    start = time.perf_counter()
    torch.manual_seed(seed)
    train = entry.load_dataset("train", seed=0, n=max_train)
    test = entry.load_dataset("test", seed=0)
    model = entry.build_model()
    model.train()
    checkpoints: list[Path] = []
    history: list[tuple[int, dict[str, torch.Tensor]]] = []

    last_acc: list[float] = []

    def end_epoch(epoch: int) -> None:
        acc = accuracy(entry, model, test.inputs, test.labels)
        last_acc.append(acc)
        log(f"{entry.name} epoch {epoch}/{epochs}: test accuracy {acc:.4f} ({time.perf_counter() - start:.1f} s)")
        if out_dir is not None:
            path = Path(out_dir) / f"{entry.name}-epoch{epoch:03d}.safetensors"
            checkpoints.append(save_checkpoint(model, path, entry.name, epoch, acc))

    x_all = entry.preprocess(train.inputs)
    y_all = torch.from_numpy(train.labels)
    if recipe.iterations_per_epoch:
        keep = set(history_iterations(recipe.iterations_per_epoch * epochs))
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
        history.append((0, _state(model)))
        for it in range(1, recipe.iterations_per_epoch * epochs + 1):
            loss = F.cross_entropy(model(x_all), y_all)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if it in keep:
                history.append((it, _state(model)))
            if it % recipe.iterations_per_epoch == 0:
                end_epoch(it // recipe.iterations_per_epoch)
    else:
        gen = torch.Generator().manual_seed(seed)
        steps_per_epoch = -(-len(y_all) // recipe.batch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        # One-cycle schedule: a short warm-up then a cosine decay; it converges in few epochs without tuning.
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=recipe.lr, total_steps=max(epochs * steps_per_epoch, 1), pct_start=0.15
        )
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(y_all), generator=gen)
            for i in range(steps_per_epoch):
                idx = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
                x, y = x_all[idx], y_all[idx]
                if recipe.flips:
                    flip = torch.rand(len(idx), generator=gen) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            end_epoch(epoch)

    model.eval()
    test_acc = last_acc[-1] if last_acc else accuracy(entry, model, test.inputs, test.labels)
    return dict(
        model=model,
        test_accuracy=test_acc,
        seconds=time.perf_counter() - start,
        checkpoints=checkpoints,
        history=history,
    )
