"""Two-input networks drawn in their input plane: each hidden unit's line and the output's response surface.

A unit ``relu(w . x + b)`` of a first layer Linear(2, n) switches on across the line ``w . x + b = 0``. With that one
hidden ReLU layer the network is linear on each cell these lines cut out; with more ReLU layers a cell splits further
into linear regions whose borders the first layer's lines do not show (Montufar et al., "On the Number of Linear
Regions of Deep Neural Networks", 2014, https://arxiv.org/abs/1402.1869), and with smooth activations it is curved
everywhere.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..capture import preserved

__all__ = ["hidden_lines", "response_grid", "find_first_linear2"]

Segment = tuple[tuple[float, float], tuple[float, float]]


def hidden_lines(
    weight: Any, bias: Any, extent: Sequence[float] = (-1.0, 1.0, -1.0, 1.0)
) -> list[Segment | None]:
    """The line ``{x : w . x + b = 0}`` of each hidden unit, clipped to the plotting box.

    Args:
        weight: (n, 2) first-layer weight; bias: (n,).
        extent: (xmin, xmax, ymin, ymax).

    Returns:
        one entry per unit: ``((x0, y0), (x1, y1))`` with both endpoints on the box boundary, or None when w == 0
        or the line misses the box (touching it in a single corner counts as missing).
    """
    w = np.asarray(weight.detach().cpu() if isinstance(weight, torch.Tensor) else weight, dtype=np.float64)
    b = np.asarray(bias.detach().cpu() if isinstance(bias, torch.Tensor) else bias, dtype=np.float64).reshape(-1)
    if w.ndim != 2 or w.shape[1] != 2 or b.shape[0] != w.shape[0]:
        raise ValueError(f"expected weight (n, 2) and bias (n,), got {w.shape} and {b.shape}")
    xmin, xmax, ymin, ymax = (float(v) for v in extent)
    tol = 1e-9 * max(xmax - xmin, ymax - ymin, 1.0)
    segments: list[Segment | None] = []
    for (w0, w1), b0 in zip(w, b):
        points: list[tuple[float, float]] = []
        if w1 != 0:  # crossings of the left and right edges
            for x in (xmin, xmax):
                y = -(b0 + w0 * x) / w1
                if ymin - tol <= y <= ymax + tol:
                    points.append((x, min(max(y, ymin), ymax)))
        if w0 != 0:  # crossings of the bottom and top edges
            for y in (ymin, ymax):
                x = -(b0 + w1 * y) / w0
                if xmin - tol <= x <= xmax + tol:
                    points.append((min(max(x, xmin), xmax), y))
        if len(points) < 2:
            segments.append(None)
            continue
        # a line through a corner meets two edges there: keep the two crossings furthest apart
        pairs = [(p, q) for i, p in enumerate(points) for q in points[i + 1 :]]
        p, q = max(pairs, key=lambda pq: (pq[0][0] - pq[1][0]) ** 2 + (pq[0][1] - pq[1][1]) ** 2)
        if (p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 <= tol**2:
            segments.append(None)
        else:
            segments.append((p, q))
    return segments


def response_grid(model: nn.Module, extent: Sequence[float] = (-1.0, 1.0, -1.0, 1.0), resolution: int = 200) -> np.ndarray:
    """The model's preference for class 1 over the input plane: ``logit 1 - logit 0`` on a regular grid.

    Args:
        model: maps (B, 2) points to (B, 2) logits; a (B, 1) output is taken as the class-1 logit itself.
        extent: (xmin, xmax, ymin, ymax); grid points include the edges.
        resolution: points per axis.

    Returns:
        (resolution, resolution) float32; row i is y = linspace(ymin, ymax)[i] (row 0 at the bottom: plot with
        ``origin="lower"``), column j is x = linspace(xmin, xmax)[j]. Evaluated in eval mode, batched, no grad.
    """
    xmin, xmax, ymin, ymax = (float(v) for v in extent)
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    xs = torch.linspace(xmin, xmax, resolution, dtype=torch.float64)
    ys = torch.linspace(ymin, ymax, resolution, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1).to(device=device, dtype=dtype)
    out = []
    with preserved(model), torch.no_grad():
        model.eval()
        for batch in points.split(16384):
            logits = model(batch)
            logits = logits.reshape(logits.shape[0], -1)
            out.append(logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0])
    return torch.cat(out).reshape(resolution, resolution).float().cpu().numpy()


def find_first_linear2(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """``(name, module)`` of the model's first Linear layer when it takes 2 inputs; None otherwise.

    "First" is registration order (``named_modules()``), which is the forward order of ``nn.Sequential`` models.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            return (name, module) if module.in_features == 2 else None
    return None
