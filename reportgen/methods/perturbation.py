"""Perturbation attribution: RISE, KernelSHAP and LIME, as plain functions on tensors.

The shared arguments (``model``, ``inputs`` (N, C, H, W), ``target``) are those of `reportgen.methods.attribution`;
the model is only run forward, under ``torch.no_grad``, in the mode the caller put it in, and comes back unchanged.
Each method scores many masked copies of every image: the copies of all images are laid out image by image and
evaluated ``batch_size`` per forward pass. The randomness comes from ``generator`` (a CPU ``torch.Generator``;
``None`` uses torch's global one), so the same seed gives the same maps.

- `rise`: random low-resolution binary masks, upsampled with a random shift; the map is the mask-weighted mean
  class probability (Petsiuk, Das & Saenko, BMVC 2018, https://arxiv.org/abs/1806.07421).
- `kernel_shap`: Shapley values of the superpixels, estimated by a weighted linear regression over sampled
  coalitions (Lundberg & Lee, NeurIPS 2017, https://arxiv.org/abs/1705.07874).
- `lime`: a locally weighted ridge regression of the class score on the superpixels' presence (Ribeiro, Singh &
  Guestrin, KDD 2016, https://arxiv.org/abs/1602.04938).

Superpixels come from scikit-image's SLIC (Achanta et al., TPAMI 2012), `superpixels`.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
from torch import nn

from .attribution import Target, _check_inputs
from .targets import resolve_target, select_target, target_scores

Score = Literal["logit", "prob"]
# builds the copies [a, b) of image i: a tensor (b - a, C, H, W)
CopyMaker = Callable[[int, int, int], torch.Tensor]


def _batches(num: int, n: int, batch_size: int):
    """The batches of ``n`` copies of each of ``num`` images laid out image by image (copy j of the layout is
    image j // n, copy j % n), ``batch_size`` per forward pass, a batch cutting across images where they meet:
    each batch as its runs ``[(image, first copy, end copy), ...]``."""
    for start in range(0, num * n, batch_size):
        stop = min(start + batch_size, num * n)
        yield [(i, max(start, i * n) - i * n, min(stop, (i + 1) * n) - i * n)
               for i in range(start // n, (stop - 1) // n + 1)]


def _run_batch(model: nn.Module, runs: list, make: CopyMaker, targets: object, score: Score) -> torch.Tensor:
    """The target scores of one batch's copies (`_batches`), in layout order (``targets`` resolved,
    `reportgen.methods.targets.resolve_target`: a callable is called on this batch's output)."""
    batch = torch.cat([make(i, a, b) for i, a, b in runs]) if len(runs) > 1 else make(*runs[0])
    owners = torch.cat([torch.full((b - a,), i, dtype=torch.long) for i, a, b in runs])
    return target_scores(model(batch), select_target(targets, owners), score)


def _scores_of_copies(model: nn.Module, x: torch.Tensor, targets: object, n: int, make: CopyMaker,
                      batch_size: int, score: Score) -> torch.Tensor:
    """The class scores (N, n) of ``n`` copies of each image of ``x`` (N, C, H, W): copies [a, b) of image i are
    ``make(i, a, b)``, evaluated ``batch_size`` per forward pass (`_batches`)."""
    num = x.shape[0]
    out = x.new_empty(num * n)
    at = 0
    with torch.no_grad():
        for runs in _batches(num, n, batch_size):
            s = _run_batch(model, runs, make, targets, score)
            out[at:at + len(s)] = s
            at += len(s)
    return out.view(num, n)


def _check_batch(batch_size: int, what: str) -> None:
    if batch_size < 1:
        raise ValueError(f"{what} needs batch_size >= 1, got {batch_size}")


# ---------------------------------------------------------------------------------------------------------------
# RISE


def rise_draws(n: int, cells: int | tuple[int, int], p: float, size: tuple[int, int],
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The random part of ``n`` RISE masks: binary grids (n, cells_h, cells_w) float (1 with probability ``p``) and
    shifts (n, 2) long, each uniform in ``[0, cell)`` with ``cell = ceil(side / cells)`` (the paper's code). Drawn
    in that order from ``generator`` on the CPU."""
    ch, cw = (cells, cells) if isinstance(cells, int) else cells
    (h, w) = size
    cell_h, cell_w = -(-h // ch), -(-w // cw)
    grids = (torch.rand((n, ch, cw), generator=generator) < p).float()
    shift_y = torch.randint(0, cell_h, (n,), generator=generator)
    shift_x = torch.randint(0, cell_w, (n,), generator=generator)
    return grids, torch.stack([shift_y, shift_x], dim=1)


def rise_expand(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks (n, H, W) in [0, 1] from ``rise_draws``: each grid of (ch, cw) cells is upsampled bilinearly to
    ((ch + 1) cell_h, (cw + 1) cell_w) pixels and cropped to H x W from its shift (Petsiuk et al. 2018)."""
    n, ch, cw = grids.shape
    h, w = size
    cell_h, cell_w = -(-h // ch), -(-w // cw)
    # PyTorch's bilinear upsampling (half-pixel centres, edges clamped); the paper's code uses scikit-image's
    # resize with reflected edges, which differs only within half a cell of the upsampled grid's border
    up = torch.nn.functional.interpolate(grids[:, None], size=((ch + 1) * cell_h, (cw + 1) * cell_w),
                                         mode="bilinear", align_corners=False)[:, 0]
    # every H x W window of the upsampled grids as a strided view (n, rows, cols, H, W), each mask's picked by its
    # shift: a copy of the crop, 2-3x cheaper than indexing every pixel with three broadcast index tensors
    windows = up.unfold(1, h, 1).unfold(2, w, 1)
    at = shifts.to(up.device)
    return windows[torch.arange(n, device=up.device), at[:, 0], at[:, 1]]


def rise_masks(n: int, size: tuple[int, int], *, cells: int | tuple[int, int] = 7, p: float = 0.5,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The ``n`` masks (n, H, W) in [0, 1] that `rise` draws with the same arguments and generator state."""
    grids, shifts = rise_draws(n, cells, p, size, generator)
    return rise_expand(grids, shifts, size)


def rise(model: nn.Module, inputs: torch.Tensor, target: Target, *, n_masks: int = 500,
         cells: int | tuple[int, int] = 7, p: float = 0.5, score: Score = "prob", batch_size: int = 64,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """RISE saliency, (N, H, W) (Petsiuk, Das & Saenko, BMVC 2018, https://arxiv.org/abs/1806.07421).

    ``S(x) = 1 / (n_masks p) sum_i f(I * M_i) M_i(x)``: ``n_masks`` random masks M_i, each a ``cells`` x ``cells``
    grid of 0/1 cells (1 with probability ``p``) upsampled bilinearly with a random shift of less than one cell
    (`rise_masks`), multiply the image (in normalized units, so a hidden pixel takes the normalization's mean
    colour); f is the target's softmax probability (``score="prob"``, the paper: the map is then >= 0, and its
    expectation at x is the mean probability of the copies that keep x) or its logit (``score="logit"``).

    The same masks are used for every image (an image gets the same map alone as in a batch, for the same
    generator state); the masked copies go through the model ``batch_size`` per forward pass.
    """
    _check_inputs(inputs)
    ch, cw = (cells, cells) if isinstance(cells, int) else cells
    num, _, height, width = inputs.shape
    if n_masks < 1:
        raise ValueError(f"rise needs n_masks >= 1, got {n_masks}")
    if not (1 <= ch <= height and 1 <= cw <= width):
        raise ValueError(f"rise cells {(ch, cw)} must be at least 1 and at most the {height}x{width} image")
    if not 0 < p <= 1:
        raise ValueError(f"rise needs 0 < p <= 1, got {p}")
    _check_batch(batch_size, "rise")
    targets = resolve_target(target, num, inputs.device)
    x = inputs.detach()
    grids, shifts = rise_draws(n_masks, (ch, cw), p, (height, width), generator)
    grids = grids.to(device=x.device, dtype=x.dtype)
    out = x.new_zeros(num, height, width)
    with torch.no_grad():
        for runs in _batches(num, n_masks, batch_size):
            # each batch expands only its own masks (all at once would be n x H x W: 800 MB at 4000 x 224^2)
            blocks = {(a, b): rise_expand(grids[a:b], shifts[a:b], (height, width)) for _, a, b in runs}
            scores = _run_batch(model, runs, lambda i, a, b: x[i] * blocks[(a, b)][:, None], targets, score)
            at = 0
            for i, a, b in runs:
                out[i] += torch.einsum("k,khw->hw", scores[at:at + b - a], blocks[(a, b)])
                at += b - a
    return out / (n_masks * p)


# ---------------------------------------------------------------------------------------------------------------
# Superpixels


def superpixels(images: np.ndarray, *, n_segments: int = 50, compactness: float = 10.0,
                sigma: float = 1.0) -> np.ndarray:
    """SLIC superpixels (Achanta et al., TPAMI 2012, https://doi.org/10.1109/TPAMI.2012.120) by scikit-image.

    ``images``: float (N, H, W, C) in [0, 1] (C = 3: RGB, segmented in CIELAB as scikit-image does by default;
    other C: the channels scaled to [0, 100], CIELAB's lightness range, so that ``compactness`` means the same).
    ``sigma``: the Gaussian smoothing before segmenting (scikit-image's examples use 1): without it, noisy images
    break into fragments that SLIC's connectivity step merges into a few regions. Returns int64 labels (N, H, W),
    0 to M_i - 1 for image i, each label one connected region; about ``n_segments`` regions per image (SLIC's grid;
    fewer on small or noisy images).
    """
    from skimage.segmentation import slic

    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4:
        raise ValueError(f"superpixels needs images (N, H, W, C), got shape {images.shape}")
    if n_segments < 1:
        raise ValueError(f"superpixels needs n_segments >= 1, got {n_segments}")
    out = np.empty(images.shape[:3], dtype=np.int64)
    for i, image in enumerate(images):
        if image.shape[-1] == 3:
            labels = slic(image, n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0,
                          channel_axis=-1)
        else:
            labels = slic(image * 100.0, n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0,
                          channel_axis=-1, convert2lab=False)
        out[i] = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)  # 0..M-1, no gaps
    return out


def input_superpixels(inputs: torch.Tensor, **kwargs: float) -> torch.Tensor:
    """`superpixels` of normalized inputs (N, C, H, W), each image min-max scaled to [0, 1] over all its channels
    first; (N, H, W) long on the inputs' device. Callers that have the displayed images should segment those."""
    x = inputs.detach().float()
    flat = x.reshape(x.shape[0], -1)
    low, high = flat.amin(1)[:, None, None, None], flat.amax(1)[:, None, None, None]
    scaled = ((x - low) / (high - low).clamp_min(1e-12)).permute(0, 2, 3, 1).cpu().numpy()
    return torch.from_numpy(superpixels(scaled, **kwargs)).to(inputs.device)


def _segments(inputs: torch.Tensor, segments: torch.Tensor | np.ndarray | None) -> torch.Tensor:
    if segments is None:
        return input_superpixels(inputs)
    seg = torch.as_tensor(segments, device=inputs.device).long()
    if seg.dim() == 2:
        seg = seg.expand(inputs.shape[0], *seg.shape)
    if seg.shape != (inputs.shape[0], *inputs.shape[2:]):
        raise ValueError(f"segments must be (N, H, W) = {(inputs.shape[0], *inputs.shape[2:])} or (H, W), got "
                         f"{tuple(seg.shape)}")
    if bool((seg < 0).any()):
        raise ValueError("segments must be labels >= 0")
    return seg


# ---------------------------------------------------------------------------------------------------------------
# Coalitions and the regressions of KernelSHAP and LIME


def shap_coalitions(m: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` coalitions of ``m`` features as KernelSHAP samples them, bool (n, m): the full coalition, the empty
    one, then ``n - 2`` drawn with size k in 1..m-1 of probability proportional to the Shapley kernel's
    (m - 1) / (k (m - k)) and the k members uniform (so each coalition has the kernel's weight; Lundberg & Lee
    2017). Drawn from ``generator``: the sizes, then one uniform number per feature and coalition."""
    if m < 1 or n < 2:
        raise ValueError(f"KernelSHAP needs m >= 1 features and n >= 2 samples, got m={m}, n={n}")
    ends = torch.stack([torch.ones(m, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)])
    if m == 1 or n == 2:
        return torch.cat([ends, ends[:1].expand(n - 2, m)]) if m == 1 else ends
    k = torch.arange(1, m, dtype=torch.float64)
    sizes = torch.multinomial((m - 1) / (k * (m - k)), n - 2, replacement=True, generator=generator) + 1
    rank = torch.rand((n - 2, m), generator=generator).argsort(dim=1).argsort(dim=1)
    return torch.cat([ends, rank < sizes[:, None]])


def lime_coalitions(m: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` coalitions of ``m`` features as LIME samples them for images, bool (n, m): the whole image first, then
    each feature kept with probability 1/2 (the lime package's image explainer)."""
    if m < 1 or n < 1:
        raise ValueError(f"LIME needs m >= 1 features and n >= 1 samples, got m={m}, n={n}")
    draws = torch.rand((n - 1, m), generator=generator) < 0.5
    return torch.cat([torch.ones(1, m, dtype=torch.bool), draws])


def shapley_regression(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KernelSHAP's solve: the Shapley value estimates (m,) from coalitions ``z`` (n, m) bool whose first two rows
    are the full and the empty coalition (`shap_coalitions`) and their scores ``y`` (n,).

    Least squares of ``y - y_empty`` on the sampled rows (all weights 1: the sampling carries the kernel), with the
    two end constraints of Lundberg & Lee imposed exactly: phi_0 = f(empty) and sum(phi) = f(full) - f(empty)
    (the last feature's value is eliminated, as the shap package does). In float64."""
    z, y = z.double(), y.double()
    m = z.shape[1]
    full, empty = y[0], y[1]
    total = full - empty
    if m == 1:
        return total.reshape(1)
    rows, targets = z[2:], y[2:] - empty
    if rows.shape[0] == 0:  # no sampled coalition: the constraint alone, spread evenly
        return total.expand(m) / m
    design = rows[:, :-1] - rows[:, -1:]
    rhs = targets - rows[:, -1] * total
    head = torch.linalg.lstsq(design, rhs[:, None], driver="gelsd").solution[:, 0]
    return torch.cat([head, (total - head.sum()).reshape(1)])


def lime_weights(z: torch.Tensor, kernel_width: float = 0.25) -> torch.Tensor:
    """LIME's sample weights (n,): ``exp(-d^2 / (2 width^2))`` with d the cosine distance between each coalition
    and the full one (the lime package's image explainer: ``sqrt(exp(-d^2 / width^2))``, width 0.25); an empty
    coalition has distance 1."""
    z = z.double()
    d = 1.0 - torch.sqrt(z.sum(dim=1) / z.shape[1])  # cos(z, 1) = |z| / (sqrt(|z|) sqrt(m))
    return torch.exp(-d ** 2 / (2.0 * kernel_width ** 2))


def weighted_ridge(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Coefficients (m,) of the weighted ridge regression with an intercept (not penalized):
    ``argmin_b,beta sum_k w_k (y_k - b - z_k beta)^2 + alpha |beta|^2`` (scikit-learn's ``Ridge``, which the lime
    package fits). In float64."""
    z, y, w = z.double(), y.double(), weights.double()
    mean_z = (w[:, None] * z).sum(0) / w.sum()
    mean_y = (w * y).sum() / w.sum()
    zc, yc = z - mean_z, y - mean_y
    gram = zc.T @ (w[:, None] * zc) + alpha * torch.eye(z.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, zc.T @ (w * yc))


def _superpixel_scores(model: nn.Module, inputs: torch.Tensor, target: Target, segments: torch.Tensor | None,
                       coalitions: Callable[[int], torch.Tensor], fill: float, batch_size: int,
                       score: Score, generator: torch.Generator | None
                       ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Segments (N, H, W), each image's coalitions (n, M_i) and their scores (n,) (copies: the superpixels out of
    the coalition set to ``fill``). ``coalitions(M)`` draws from ``generator``, which is set back to its state at
    the call before each image's draws."""
    _check_inputs(inputs)
    _check_batch(batch_size, "superpixel attribution")
    num = inputs.shape[0]
    targets = resolve_target(target, num, inputs.device)
    x = inputs.detach()
    seg = _segments(x, segments)
    zs = []
    start = generator.get_state() if generator is not None else None
    for i in range(num):
        if start is not None:  # every image draws from the call's starting state: alone or in a batch, the same
            generator.set_state(start)
        zs.append(coalitions(int(seg[i].max()) + 1).to(x.device))
    n = zs[0].shape[0]
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device)

    def make(i: int, a: int, b: int) -> torch.Tensor:
        keep = zs[i][a:b][:, seg[i]]  # (b - a, H, W): the coalition's pixels
        return torch.where(keep[:, None], x[i], fill_t)

    scores = _scores_of_copies(model, x, targets, n, make, batch_size, score)
    return seg, zs, list(scores)


def _paint(seg: torch.Tensor, values: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Each pixel gets its superpixel's value: (N, H, W)."""
    return torch.stack([v.to(device=s.device, dtype=dtype)[s] for s, v in zip(seg, values)])


def kernel_shap(model: nn.Module, inputs: torch.Tensor, target: Target, *,
                segments: torch.Tensor | np.ndarray | None = None, n_samples: int = 200, fill: float = 0.0,
                score: Score = "logit", batch_size: int = 64, generator: torch.Generator | None = None,
                coefficients: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """KernelSHAP on superpixels, signed (N, H, W) (Lundberg & Lee, NeurIPS 2017, https://arxiv.org/abs/1705.07874).

    The Shapley value of each superpixel for the target's logit (``score="prob"``: its probability), a superpixel
    being absent when its pixels take the value ``fill`` (normalized units: 0 is the normalization's mean colour),
    estimated from ``n_samples`` coalitions per image (`shap_coalitions`, the full and the empty one included) by
    `shapley_regression`; each pixel gets its superpixel's value. The values sum to f(image) - f(all filled).
    ``segments``: labels (N, H, W) or (H, W) from 0; None = `input_superpixels`. ``coefficients=True`` returns the
    per-image values (M_i,) instead of the maps. Each image draws its coalitions from ``generator`` as it stood at
    the call, so an image gets the same map alone as in a batch.
    """
    seg, zs, ys = _superpixel_scores(model, inputs, target, segments,
                                     lambda m: shap_coalitions(m, n_samples, generator), fill, batch_size, score,
                                     generator)
    values = [shapley_regression(z, y) for z, y in zip(zs, ys)]
    return values if coefficients else _paint(seg, values, inputs.dtype)


def lime(model: nn.Module, inputs: torch.Tensor, target: Target, *,
         segments: torch.Tensor | np.ndarray | None = None, n_samples: int = 200, kernel_width: float = 0.25,
         alpha: float = 1.0, fill: float = 0.0, score: Score = "logit", batch_size: int = 64,
         generator: torch.Generator | None = None, coefficients: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """LIME on superpixels, signed (N, H, W) (Ribeiro, Singh & Guestrin, KDD 2016, https://arxiv.org/abs/1602.04938).

    The coefficients of a ridge regression (``alpha``, with an intercept) of the target's logit (``score="prob"``:
    its probability) on the superpixels' presence, over ``n_samples`` coalitions per image (`lime_coalitions`: the
    whole image, then each superpixel kept with probability 1/2; an absent superpixel's pixels take ``fill``),
    each weighted by its closeness to the whole image (`lime_weights`, ``kernel_width``): the lime package's image
    explainer, with every superpixel in the model. Each pixel gets its superpixel's coefficient. ``segments`` and
    ``coefficients`` as in `kernel_shap`.
    """
    if kernel_width <= 0 or alpha < 0:
        raise ValueError(f"lime needs kernel_width > 0 and alpha >= 0, got {kernel_width}, {alpha}")
    seg, zs, ys = _superpixel_scores(model, inputs, target, segments,
                                     lambda m: lime_coalitions(m, n_samples, generator), fill, batch_size, score,
                                     generator)
    values = [weighted_ridge(z, y, lime_weights(z, kernel_width), alpha) for z, y in zip(zs, ys)]
    return values if coefficients else _paint(seg, values, inputs.dtype)
