"""Seeded CPU training and evaluation of the zoo's task models (multilabel, regress, binary, segment, detect, embed).

The loop is `training.train_entry`'s (AdamW, one-cycle schedule, random horizontal flips, a checkpoint after every
epoch), with a loss and a test-split evaluation per task. Each checkpoint's safetensors metadata holds
``{"zoo", "epoch", "task", "metric", "test_accuracy", "metrics"}``: ``metric`` names the task's headline number,
``test_accuracy`` holds its value (the key the classifiers use, so that every checkpoint reads alike) and
``metrics`` all the numbers as JSON. The metrics are computed here from their definitions (numpy, plus
scikit-learn's average precision and ROC AUC), and `evaluate` gives them for any model and data split.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from . import ZooData, ZooEntry

HEADLINE = {
    "multilabel": "mAP",
    "regress": "mean R2",
    "binary": "accuracy",
    "segment": "mIoU",
    "detect": "mAP@0.5",
    "embed": "recall@1",
}


# --- evaluation -------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(entry: "ZooEntry", model: nn.Module, inputs: np.ndarray, batch: int = 250) -> list | np.ndarray:
    """The model's outputs on raw ``inputs`` in eval mode: a float32 array (N, ...) concatenated over batches, or
    the list of detection dicts (numpy) for a detector. The model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        outs: list = []
        for start in range(0, len(inputs), batch):
            out = model(entry.preprocess(inputs[start : start + batch]))
            if isinstance(out, list):
                outs.extend({k: v.numpy() for k, v in d.items()} for d in out)
            else:
                outs.append(out.numpy())
        return outs if entry.task == "detect" else np.concatenate(outs)
    finally:
        model.train(was_training)


def average_precision_voc(scores: np.ndarray, matched: np.ndarray, n_truth: int) -> float:
    """All-point interpolated average precision (PASCAL VOC 2010+, Everingham et al. 2010,
    https://doi.org/10.1007/s11263-009-0275-4): the area under the precision-recall curve once precision is made
    monotone (each precision replaced by the highest at any larger recall). ``scores`` (m,) of the detections,
    ``matched`` bool (m,) whether each is a true positive, ``n_truth`` the number of true objects. NaN if none."""
    if n_truth == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(matched[order])
    fp = np.cumsum(~matched[order])
    recall = np.concatenate([[0.0], tp / n_truth])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes: (m, 4) x (t, 4) -> (m, t)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def detection_ap(dets: list[dict], boxes: list[np.ndarray], box_labels: list[np.ndarray], num_classes: int,
                 iou: float = 0.5) -> np.ndarray:
    """Per-class AP at IoU >= ``iou`` (float64 (K,), NaN for a class with no true box). Within each image and class,
    detections are taken by falling score and each matches the unmatched true box it overlaps most, if that IoU
    reaches ``iou`` (the VOC protocol without "difficult" boxes); AP by `average_precision_voc`."""
    ap = np.full(num_classes, np.nan)
    for c in range(num_classes):
        scores, matched, n_truth = [], [], 0
        for det, tb, tl in zip(dets, boxes, box_labels):
            truth = tb[tl == c]
            n_truth += len(truth)
            sel = det["labels"] == c
            s, b = det["scores"][sel], det["boxes"][sel]
            order = np.argsort(-s, kind="stable")
            s, b = s[order], b[order]
            hit = np.zeros(len(s), bool)
            if len(truth) and len(s):
                ious = box_iou(b, truth)
                free = np.ones(len(truth), bool)
                for j in range(len(s)):
                    cand = np.where(free, ious[j], -1.0)
                    best = int(cand.argmax())
                    if cand[best] >= iou:
                        hit[j], free[best] = True, False
            scores.append(s)
            matched.append(hit)
        ap[c] = average_precision_voc(np.concatenate(scores), np.concatenate(matched), n_truth)
    return ap


def recall_at_k(emb: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Retrieval recall@k (Song et al. 2016, https://arxiv.org/abs/1511.06452): the fraction of queries with at
    least one same-class image among their k nearest others by cosine similarity (every image queries the rest)."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, : max(ks)]
    same = labels[nearest] == labels[:, None]
    return {k: float(same[:, :k].any(axis=1).mean()) for k in ks}


def evaluate(entry: "ZooEntry", model: nn.Module, data: "ZooData") -> dict[str, float]:
    """The task's numbers on ``data`` (flat dict name -> float; per-class numbers as "NAME CLASS")."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    task, names = entry.task, entry.class_names
    out = predict(entry, model, data.inputs)
    m: dict[str, float] = {}
    if task == "multilabel":
        truth = data.truth["labels"].astype(bool)
        pred = out > 0  # sigmoid > 0.5
        tp, fp, fn = (pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        ap = [average_precision_score(truth[:, c], out[:, c]) for c in range(len(names))]
        m["mAP"], m["mean F1"] = float(np.mean(ap)), float(np.mean(f1))
        m.update({f"AP {n}": float(a) for n, a in zip(names, ap)})
        m.update({f"F1 {n}": float(f) for n, f in zip(names, f1)})
    elif task == "regress":
        truth = data.truth["values"].astype(np.float64)
        mae = np.abs(out - truth).mean(0)
        r2 = 1 - ((out - truth) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
        m["mean R2"], m["mean MAE"] = float(r2.mean()), float(mae.mean())
        m["exact counts"] = float((np.round(out) == truth).all(1).mean())  # images whose 8 rounded counts are all right
        m.update({f"MAE {n}": float(a) for n, a in zip(names, mae)})
        m.update({f"R2 {n}": float(r) for n, r in zip(names, r2)})
    elif task == "binary":
        logit = out[:, 0]
        m["accuracy"] = float(((logit > 0) == (data.labels == 1)).mean())
        m["AUC"] = float(roc_auc_score(data.labels, logit))
    elif task == "segment":
        truth = data.truth["class_masks"].astype(np.int64)
        k = len(names)
        conf = np.bincount((truth * k + out.argmax(1)).ravel(), minlength=k * k).reshape(k, k)
        iou = np.diag(conf) / np.maximum(conf.sum(0) + conf.sum(1) - np.diag(conf), 1)
        m["mIoU"], m["mIoU shapes"] = float(iou.mean()), float(iou[1:].mean())
        m["pixel accuracy"] = float(np.diag(conf).sum() / conf.sum())
        m.update({f"IoU {n}": float(v) for n, v in zip(names, iou)})
    elif task == "detect":
        ap = detection_ap(out, data.truth["boxes"], data.truth["box_labels"], len(names))
        m["mAP@0.5"] = float(np.nanmean(ap))
        m.update({f"AP50 {n}": float(a) for n, a in zip(names, ap)})
    elif task == "embed":
        rec = recall_at_k(out, data.labels)
        m["recall@1"], m["recall@5"] = rec[1], rec[5]
    else:
        raise ValueError(f"no evaluation for task '{task}'")
    return m


# --- training ---------------------------------------------------------------------------------------------------


def _centre_targets(boxes: list[np.ndarray], labels: list[np.ndarray], grid: int, stride: int, k: int):
    """CenterNet's targets for a batch: a Gaussian per object centre on its class's heatmap (sigma a sixth of the
    box's smaller side in cells, at least 0.5; the max where two overlap), and at each centre cell the log box
    size and the centre's offset within the cell. Returns heat (B, K, g, g), size (B, 2, g, g), offset
    (B, 2, g, g) and a mask (B, g, g) of the centre cells, all float32 tensors."""
    b = len(boxes)
    heat = np.zeros((b, k, grid, grid), np.float32)
    size = np.zeros((b, 2, grid, grid), np.float32)
    offset = np.zeros((b, 2, grid, grid), np.float32)
    mask = np.zeros((b, grid, grid), np.float32)
    cells = np.arange(grid, dtype=np.float32)
    for i, (bx, lb) in enumerate(zip(boxes, labels)):
        for box, c in zip(bx, lb):
            cx, cy = (box[0] + box[2]) / 2 / stride, (box[1] + box[3]) / 2 / stride
            w, h = box[2] - box[0], box[3] - box[1]
            ix, iy = min(int(cx), grid - 1), min(int(cy), grid - 1)
            sigma = max(min(w, h) / stride / 6, 0.5)
            g = np.exp(-((cells[None, :] - ix) ** 2 + (cells[:, None] - iy) ** 2) / (2 * sigma**2))
            heat[i, c] = np.maximum(heat[i, c], g)
            size[i, :, iy, ix] = np.log([w, h])
            offset[i, :, iy, ix] = (cx - ix, cy - iy)
            mask[i, iy, ix] = 1
    return tuple(torch.from_numpy(a) for a in (heat, size, offset, mask))


def _centernet_loss(model: nn.Module, x: torch.Tensor, targets) -> torch.Tensor:
    """Penalty-reduced pixel-wise focal loss on the heatmap (alpha 2, beta 4) plus L1 on log sizes and offsets at
    the centres, each normalized by the number of objects (Zhou et al. 2019, eq. 1-3)."""
    heat_t, size_t, off_t, mask = targets
    heat, size, offset = model.maps(x)
    p = torch.sigmoid(heat).clamp(1e-4, 1 - 1e-4)
    pos = (heat_t == 1).float()
    n = pos.sum().clamp(min=1)
    focal = -(pos * (1 - p) ** 2 * torch.log(p) + (1 - pos) * (1 - heat_t) ** 4 * p**2 * torch.log(1 - p)).sum() / n
    m = mask[:, None]
    reg = ((size - size_t).abs() * m).sum() / n + ((offset - off_t).abs() * m).sum() / n
    return focal + reg


def _supcon_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2, "L_out"): for each anchor, the mean over its
    same-class positives of -log softmax over all other samples of the cosine similarities / temperature."""
    sim = emb @ emb.T / temperature
    self_mask = torch.eye(len(emb), dtype=torch.bool)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    count = pos.sum(1)
    keep = count > 0
    per_anchor = -(log_prob.masked_fill(~pos, 0).sum(1)[keep] / count[keep])
    return per_anchor.mean()


def _flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    out = boxes.copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


def _init_from(model: nn.Module, path: Path) -> None:
    """Copy the shipped weights at ``path`` into every parameter and buffer of ``model`` with the same name and
    shape (a backbone shared with a classifier; heads of another size keep their random initialization)."""
    from safetensors.torch import load_file

    own = model.state_dict()
    shared = {k: v for k, v in load_file(str(path)).items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(shared, strict=False)


def train_task(
    entry: "ZooEntry",
    out_dir: Path | None,
    *,
    seed: int,
    epochs: int | None,
    max_train: int | None,
    log: Callable[[str], None],
) -> dict:
    """Train a task entry (``entry.task`` != "classify"); the fields of `models_zoo.TrainReport`, with ``metrics``
    (the last epoch's `evaluate` on the seed-0 test split) and ``test_accuracy`` its headline number."""
    from .training import _state

    recipe, task = entry.recipe, entry.task
    epochs = recipe.epochs if epochs is None else epochs
    start = time.perf_counter()
    torch.manual_seed(seed)
    train = entry.load_dataset("train", seed=0, n=max_train)
    test = entry.load_dataset("test", seed=0)
    model = entry.build_model()
    if recipe.init:
        _init_from(model, entry.weights_path().parent / f"{recipe.init}.safetensors")
    model.train()
    checkpoints: list[Path] = []
    metrics: dict[str, float] = {}
    width = train.inputs.shape[2]

    x_all = entry.preprocess(train.inputs)
    if task == "multilabel":
        y_all = torch.from_numpy(train.truth["labels"].astype(np.float32))
    elif task == "regress":
        y_all = torch.from_numpy(train.truth["values"].astype(np.float32))
    elif task == "segment":
        y_all = torch.from_numpy(train.truth["class_masks"].astype(np.int64))
    else:
        y_all = torch.from_numpy(train.labels)

    def loss_of(x: torch.Tensor, idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        if task == "detect":
            sel = idx.tolist()
            boxes = [_flip_boxes(train.truth["boxes"][i], width) if f else train.truth["boxes"][i]
                     for i, f in zip(sel, flip.tolist())]
            targets = _centre_targets(boxes, [train.truth["box_labels"][i] for i in sel],
                                      width // model.stride, model.stride, len(entry.class_names))
            return _centernet_loss(model, x, targets)
        y = y_all[idx]
        if task == "segment":
            y = torch.where(flip[:, None, None], y.flip(-1), y)
            return F.cross_entropy(model(x), y)
        if task == "embed":
            return _supcon_loss(model(x), y)
        if task == "binary":
            return F.binary_cross_entropy_with_logits(model(x)[:, 0], y.float())
        if task == "multilabel":
            return F.binary_cross_entropy_with_logits(model(x), y)
        return F.mse_loss(model(x), y)  # regress

    gen = torch.Generator().manual_seed(seed)
    n_train = len(x_all)
    steps_per_epoch = -(-n_train // recipe.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, total_steps=max(epochs * steps_per_epoch, 1), pct_start=0.15
    )
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n_train, generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            x = x_all[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5 if recipe.flips else torch.zeros(len(idx), dtype=torch.bool)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = loss_of(x, idx, flip)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        metrics = evaluate(entry, model, test)
        headline = metrics[HEADLINE[task]]
        log(f"{entry.name} epoch {epoch}/{epochs}: loss {loss.item():.4f}, test {HEADLINE[task]} {headline:.4f} "
            f"({time.perf_counter() - start:.1f} s)")
        if out_dir is not None:
            from safetensors.torch import save_file

            path = Path(out_dir) / f"{entry.name}-epoch{epoch:03d}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            meta = {"zoo": entry.name, "epoch": str(epoch), "task": task, "metric": HEADLINE[task],
                    "test_accuracy": f"{headline:.4f}", "metrics": json.dumps({k: round(v, 4) for k, v in metrics.items()})}
            save_file(_state(model), str(path), metadata=meta)
            checkpoints.append(path)

    model.eval()
    if not metrics:
        metrics = evaluate(entry, model, test)
    return dict(
        model=model,
        test_accuracy=metrics[HEADLINE[task]],
        seconds=time.perf_counter() - start,
        checkpoints=checkpoints,
        history=[],
        metrics=metrics,
    )
