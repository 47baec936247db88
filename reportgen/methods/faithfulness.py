"""Which attribution maps to trust: faithfulness and sanity checks, as plain functions on tensors.

Two checks, each batched, each independent of how the maps were made (a map is just a tensor here):

- **Deletion and insertion** (Petsiuk, Das & Saenko, RISE, BMVC 2018, https://arxiv.org/abs/1806.07421): pixels
  move, in order of decreasing attribution, from one image to another in ``steps`` equal steps, and the target's
  softmax probability is recorded after each step. Deletion moves them from the image to a constant fill (a map
  that finds what the model uses makes the probability fall fast: a low area under the curve is good); insertion
  moves them from a blurred copy into the image (the probability should rise fast: a high area is good).
- **Model-parameter randomization** (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, Sanity Checks for Saliency
  Maps, NeurIPS 2018, https://arxiv.org/abs/1810.03292): on a deep copy of the model, the layers are re-initialized
  one after the other from the logits down, the maps recomputed after each step and compared with the original
  ones (Spearman rank correlation of absolute values, SSIM). Maps that stay alike when the weights that make the
  decision are destroyed do not explain the decision.

Shared arguments, as in `reportgen.methods.attribution`: ``model`` returns logits (N, K) and comes back unchanged;
``inputs`` (N, C, H, W) normalized; ``target`` an int, N ints or a LongTensor (N,), or a callable (the curves then
record its ``probability`` where it has one, else its score as it returns; `reportgen.methods.targets`); ``maps``
(N, h, w) float, the attribution of each image (any sign; larger = more important; resized to (H, W) when
coarser).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attribution import Target, _check_inputs
from .targets import resolve_target, select_target, target_scores

Attribute = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# Deletion and insertion


def pixel_order(maps: torch.Tensor, size: tuple[int, int], generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """The rank of every pixel (N, H*W) int64 in order of decreasing map value: 0 = the most important pixel.

    ``maps`` (N, h, w) is resized to ``size`` = (H, W) (nearest neighbour) when coarser. Ties are broken in a
    random order (seeded by ``generator``) rather than in raster order, which would favour the image's top rows:
    maps that are flat over large areas (a CAM after its ReLU) then count as random there, which is what they say.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (N, h, w), got {tuple(maps.shape)}")
    m = maps.detach().float()
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m[:, None], size=size, mode="nearest")[:, 0]
    flat = m.reshape(m.shape[0], -1).cpu()
    n, p = flat.shape
    shuffle = torch.stack([torch.randperm(p, generator=generator) for _ in range(n)])
    by_value = torch.argsort(-flat.gather(1, shuffle), dim=1, stable=True)
    order = shuffle.gather(1, by_value)  # order[i, r] = the pixel of rank r
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(p).expand(n, p).contiguous())
    return ranks


def step_counts(pixels: int, steps: int) -> list[int]:
    """How many pixels have moved after each of the ``steps`` steps: ``steps + 1`` counts from 0 to ``pixels``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [round(j * pixels / steps) for j in range(steps + 1)]


def perturbation_curves(model: nn.Module, start: torch.Tensor, end: torch.Tensor, target: Target,
                        maps: torch.Tensor, *, steps: int = 32, batch_size: int = 64,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """The target's softmax probability (N, steps + 1) in [0, 1] while pixels move from ``start`` to ``end``.

    ``start`` and ``end`` (N, C, H, W); after step j the ``round(j * H * W / steps)`` most important pixels of
    ``maps`` (all channels of a pixel together; `pixel_order`) come from ``end``, the others from ``start``.
    Column 0 is ``start`` itself, the last column ``end``. All ``N * (steps + 1)`` copies go through the model in
    batches of ``batch_size``, without gradients. Deletion and insertion are this function with (image, fill) and
    (blurred image, image).
    """
    _check_inputs(start)
    if start.shape != end.shape:
        raise ValueError(f"start {tuple(start.shape)} and end {tuple(end.shape)} must have the same shape")
    if maps.dim() != 3 or maps.shape[0] != start.shape[0]:
        raise ValueError(f"maps {tuple(maps.shape)} for {start.shape[0]} images: give one (h, w) map per image")
    ranks = pixel_order(maps, tuple(start.shape[-2:]), generator)
    return _curves(model, start, end, resolve_target(target, start.shape[0], start.device), ranks, steps, batch_size)


def _curves(model: nn.Module, start: torch.Tensor, end: torch.Tensor, targets: object, ranks: torch.Tensor,
            steps: int, batch_size: int) -> torch.Tensor:
    n, _, h, w = start.shape
    ranks = ranks.to(start.device).view(n, 1, h, w)
    counts = torch.tensor(step_counts(h * w, steps), device=start.device)
    jobs = [(i, j) for i in range(n) for j in range(steps + 1)]  # every (image, step) copy, batched below
    probs = torch.empty(n, steps + 1)
    with torch.no_grad():
        for k in range(0, len(jobs), batch_size):
            chunk = torch.tensor(jobs[k:k + batch_size], device=start.device)
            img, step = chunk[:, 0], chunk[:, 1]
            moved = ranks[img] < counts[step].view(-1, 1, 1, 1)
            copies = torch.where(moved, end[img], start[img])
            scores = target_scores(model(copies), select_target(targets, img), score="prob")
            probs[img.cpu(), step.cpu()] = scores.float().cpu()
    return probs


def deletion_curve(model: nn.Module, inputs: torch.Tensor, target: Target, maps: torch.Tensor, *,
                   steps: int = 32, fill: float = 0.0, batch_size: int = 64,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Deletion (Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421): (N, steps + 1) probabilities in [0, 1]
    as the most important pixels are set to ``fill`` (in normalized input units: 0 = the normalization mean
    colour). Lower area = the map found what the model needs."""
    return perturbation_curves(model, inputs, torch.full_like(inputs, fill), target, maps, steps=steps,
                               batch_size=batch_size, generator=generator)


def insertion_curve(model: nn.Module, inputs: torch.Tensor, target: Target, maps: torch.Tensor, *,
                    steps: int = 32, blurred: torch.Tensor | None = None, blur_sigma: float = 0.05,
                    batch_size: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
    """Insertion (Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421): (N, steps + 1) probabilities in [0, 1]
    as the most important pixels of ``inputs`` are put into ``blurred`` (default: `gaussian_blur` of the inputs
    with ``blur_sigma`` times the shorter image side). Higher area = the map found what the model needs."""
    start = gaussian_blur(inputs, blur_sigma) if blurred is None else blurred
    return perturbation_curves(model, start, inputs, target, maps, steps=steps, batch_size=batch_size,
                               generator=generator)


def deletion_insertion(model: nn.Module, inputs: torch.Tensor, target: Target, maps: torch.Tensor, *,
                       steps: int = 32, fill: float = 0.0, blur_sigma: float = 0.05, batch_size: int = 64,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`deletion_curve` and `insertion_curve` of the same maps with the same tie-breaking order: two
    (N, steps + 1) probability tensors. The copies of both go through the model in shared batches
    (`deletion_insertion_many` of one map set)."""
    return deletion_insertion_many(model, inputs, target, [maps], steps=steps, fill=fill, blur_sigma=blur_sigma,
                                   batch_size=batch_size, generators=[generator])[0]


def deletion_insertion_many(model: nn.Module, inputs: torch.Tensor, target: Target, maps: Sequence[torch.Tensor],
                            *, steps: int = 32, fill: float = 0.0, blur_sigma: float = 0.05, batch_size: int = 64,
                            generators: Sequence[torch.Generator | None] | None = None
                            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`deletion_insertion` of several map sets of the same images (each (N, h, w), e.g. one per attribution
    method; ``generators``: the tie-breaking generator of each, default None each): a (deletion, insertion) pair of
    (N, steps + 1) probabilities per map set, each what `deletion_insertion` returns for it alone.

    The copies of all map sets go through the model together, ``batch_size`` at a time, and the three copies that
    every map set's curves share go through once per image, not once per map set: the image (deletion's first
    point, insertion's last), its blurred copy (insertion's first) and the all-``fill`` image (deletion's last).
    With M map sets that is N (3 + 2 M (steps - 1)) images instead of 2 M N (steps + 1) (at 17 points, 11% fewer).
    """
    _check_inputs(inputs)
    maps = list(maps)
    generators = [None] * len(maps) if generators is None else list(generators)
    if not maps or len(generators) != len(maps):
        raise ValueError(f"give one generator per map set: {len(maps)} map sets, {len(generators)} generators")
    for m in maps:
        if m.dim() != 3 or m.shape[0] != inputs.shape[0]:
            raise ValueError(f"maps {tuple(m.shape)} for {inputs.shape[0]} images: give one (h, w) map per image")
    n, _, h, w = inputs.shape
    counts = torch.tensor(step_counts(h * w, steps), device=inputs.device)  # checks steps >= 1
    targets = resolve_target(target, n, inputs.device)
    starts = torch.cat([inputs, gaussian_blur(inputs, blur_sigma)])  # row k * n + i: curve k (0 deletion) of image i
    ends = torch.cat([torch.full_like(inputs, fill), inputs])
    image = torch.arange(n)
    # the shared copies first, as (map set 0, curve, image, step) rows: the image, its blurred copy, the filled image
    shared = torch.cat([torch.stack([torch.zeros_like(image), torch.full_like(image, k), image,
                                     torch.full_like(image, j)], dim=1) for k, j in ((0, 0), (1, 0), (0, steps))])
    # then every map set's own steps, map set by map set (so a batch needs the pixel order of one or two sets)
    own = torch.cartesian_prod(torch.arange(len(maps)), torch.arange(2), image, torch.arange(1, steps)).view(-1, 4)
    jobs = torch.cat([shared, own])
    scores = torch.empty(len(jobs))
    ranks: dict[int, torch.Tensor] = {}  # each map set's pixel order (`pixel_order`) while its copies are made
    drawn: set[int] = set()
    size = (h, w)
    with torch.no_grad():
        for a in range(0, len(jobs), batch_size):
            chunk = jobs[a:a + batch_size]
            sets = chunk[:, 0].unique_consecutive().tolist()
            for s in list(ranks):
                if s < sets[0]:
                    del ranks[s]
            parts = []
            for s in sets:
                if s not in ranks:
                    ranks[s] = pixel_order(maps[s], size, generators[s]).to(inputs.device).view(n, 1, h, w)
                    drawn.add(s)
                rows = chunk[chunk[:, 0] == s].to(inputs.device)
                k, i, j = rows[:, 1], rows[:, 2], rows[:, 3]
                moved = ranks[s][i] < counts[j].view(-1, 1, 1, 1)
                parts.append(torch.where(moved, ends[k * n + i], starts[k * n + i]))
            copies = parts[0] if len(parts) == 1 else torch.cat(parts)
            out = model(copies)
            scores[a:a + len(chunk)] = target_scores(out, select_target(targets, chunk[:, 2].to(inputs.device)),
                                                     score="prob").float().cpu()
    for s in range(len(maps)):  # with steps = 1 no copy needs an order: draw it anyway, as each generator expects
        if s not in drawn:
            pixel_order(maps[s], size, generators[s])
    probs = torch.empty(len(maps), 2, n, steps + 1)
    probs[own[:, 0], own[:, 1], own[:, 2], own[:, 3]] = scores[len(shared):]
    whole, blurred, filled = scores[:len(shared)].view(3, n)
    probs[:, 0, :, 0] = probs[:, 1, :, steps] = whole
    probs[:, 1, :, 0] = blurred
    probs[:, 0, :, steps] = filled
    return [(p[0], p[1]) for p in probs]


def curve_auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under curves (N, steps + 1) sampled at equal steps over [0, 1] (trapezoid rule): (N,) in [0, 1]."""
    c = curves.double()
    steps = c.shape[1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    return (c.sum(dim=1) - (c[:, 0] + c[:, -1]) / 2) / steps


def gaussian_blur(inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur of (N, C, H, W) per channel; ``sigma`` as a fraction of the shorter side (0 = no blur).
    The kernel is cut at 3 sigma; borders are reflected, so a constant image stays constant."""
    _check_inputs(inputs)
    s = sigma * min(inputs.shape[-2:])
    if s <= 0:
        return inputs.clone()
    radius = min(max(1, math.ceil(3 * s)), min(inputs.shape[-2:]) - 1)
    x = torch.arange(-radius, radius + 1, dtype=inputs.dtype, device=inputs.device)
    kernel = torch.exp(-x ** 2 / (2 * s * s))
    kernel = kernel / kernel.sum()
    c = inputs.shape[1]
    out = F.pad(inputs, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


# ---------------------------------------------------------------------------------------------------------------
# Similarity of maps


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks (N, P) float64 of each row, ties given their average rank (as Spearman's coefficient needs): each
    row sorted once, a run of equal values spanning sorted positions first..last ranked (first + last) / 2, all rows
    at once (the rank of the first of ``c`` ties is exact, and so is the half-integer first + (c - 1) / 2)."""
    v = x.detach().double().cpu()
    n, p = v.shape
    if p == 0:
        return v.clone()
    ordered, where = v.sort(dim=1)
    pos = torch.arange(p).expand(n, p)
    starts = torch.ones(n, p, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # a new run of equal values begins here
    ends = torch.ones(n, p, dtype=torch.bool)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, pos, 0).cummax(dim=1).values
    last = torch.where(ends, pos, p).flip(1).cummin(dim=1).values.flip(1)
    return torch.empty_like(v).scatter_(1, where, first + (last - first).double() / 2.0)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps (N, ...) -> (N,) in [-1, 1], ties at their average rank.

    A constant map has no rank order: the correlation with it is 0, or 1 when both maps are constant.
    """
    if a.shape != b.shape:
        raise ValueError(f"maps {tuple(a.shape)} and {tuple(b.shape)} must have the same shape")
    ra, rb = _average_ranks(a.reshape(a.shape[0], -1)), _average_ranks(b.reshape(b.shape[0], -1))
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    na, nb = ra.norm(dim=1), rb.norm(dim=1)
    rho = (ra * rb).sum(dim=1) / (na * nb).clamp_min(1e-300)
    flat_a, flat_b = na == 0, nb == 0
    rho = torch.where(flat_a | flat_b, (flat_a & flat_b).double(), rho)
    return rho.clamp(-1.0, 1.0)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of each pair of maps (N, h, w) -> (N,) (Wang, Bovik, Sheikh & Simoncelli, Image
    Quality Assessment: From Error Visibility to Structural Similarity, IEEE TIP 2004,
    https://doi.org/10.1109/TIP.2003.819861).

    As Adebayo et al., on absolute values scaled to [0, 1] per map (divided by its maximum; an all-zero map stays
    zero), data range 1, K1 = 0.01, K2 = 0.03, a Gaussian window (``window`` pixels, ``sigma``; no padding, as the
    paper's code). A window larger than the map shrinks to the map. 1 = identical maps.
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"maps must be two (N, h, w) tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")

    def unit(m: torch.Tensor) -> torch.Tensor:
        m = m.detach().double().abs().cpu()
        top = m.flatten(1).amax(dim=1).view(-1, 1, 1)
        return torch.where(top > 0, m / top.clamp_min(1e-300), torch.zeros_like(m))[:, None]

    x, y = unit(a), unit(b)
    size = min(window, *a.shape[-2:])
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma * sigma))
    g = (g / g.sum()).expand(5, size)
    # the Gaussian window is the outer product of two 1-D ones: two 1-D passes over the five local moments at once
    # cost 2 * size instead of size ** 2 products per pixel (this ran once per map and cascade step)
    moments = F.conv2d(torch.cat([x, y, x * x, y * y, x * y], dim=1), g.reshape(5, 1, 1, size), groups=5)
    moments = F.conv2d(moments, g.reshape(5, 1, size, 1), groups=5)
    mx, my, xx, yy, xy = moments.split(1, dim=1)
    vx, vy, cxy = xx - mx * mx, yy - my * my, xy - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


# ---------------------------------------------------------------------------------------------------------------
# Model-parameter randomization


NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def cascade_layers(model: nn.Module, inputs: torch.Tensor, max_steps: int | None = None) -> list[tuple[str, ...]]:
    """The steps of the randomization cascade, nearest the logits first: each a tuple of dotted names of modules
    that own parameters (not counting their children's) and run in a forward pass of ``inputs``.

    Modules are ordered by when they first start running; a normalization layer (batch, group or layer norm)
    joins the step of the module that started just before it (a conv and its batch norm are one layer, as in
    the paper's per-layer cascade). With ``max_steps``, a longer cascade is cut into that many runs of neighbouring
    steps of near-equal length (as the paper randomizes Inception's blocks), which bounds the cost. Learned on a
    deep copy (hooks on the copy only): ``model`` is not touched.
    """
    twin = copy.deepcopy(model)
    owners = {id(m): name for name, m in twin.named_modules()
              if any(True for _ in m.parameters(recurse=False))}
    started: list[tuple[str, nn.Module]] = []
    handles = []

    def hook(module: nn.Module, _args: object) -> None:
        name = owners[id(module)]
        if all(name != n for n, _ in started):
            started.append((name, module))

    try:
        for _name, m in twin.named_modules():
            if id(m) in owners:
                handles.append(m.register_forward_pre_hook(hook))
        with torch.no_grad():
            twin(inputs[:1].detach())
    finally:
        for h in handles:
            h.remove()
    steps: list[list[str]] = []
    for name, module in started:
        if steps and isinstance(module, NORMS):
            steps[-1].append(name)
        else:
            steps.append([name])
    steps.reverse()
    if max_steps is not None and len(steps) > max_steps:
        bounds = [round(k * len(steps) / max_steps) for k in range(max_steps + 1)]
        steps = [[name for step in steps[a:b] for name in step] for a, b in itertools.pairwise(bounds)]
    return [tuple(step) for step in steps]


def reinitialize(module: nn.Module, seed: int) -> None:
    """Re-initialize the parameters ``module`` owns (not its children's), in place and seeded.

    A module with ``reset_parameters`` (Conv, Linear, BatchNorm...) is reset as PyTorch initializes it, drawn on
    the CPU from ``seed`` and copied over (so the result does not depend on the device); batch norm resets to
    weight 1, bias 0 and fresh running statistics. Any other parameter is drawn from a normal distribution with
    its own mean and standard deviation.
    """
    own = dict(module.named_parameters(recurse=False))
    buffers = dict(module.named_buffers(recurse=False))
    gen = torch.Generator().manual_seed(seed)
    if hasattr(module, "reset_parameters"):
        fresh = copy.deepcopy(module).cpu()
        with torch.random.fork_rng(devices=[]):  # reset_parameters draws from the global CPU generator
            torch.manual_seed(seed)
            fresh.reset_parameters()
        new = {**dict(fresh.named_parameters(recurse=False)), **dict(fresh.named_buffers(recurse=False))}
    else:
        new = {}
    with torch.no_grad():
        for name, p in own.items():
            if name in new:
                p.copy_(new[name])
            else:
                std = float(p.float().std()) if p.numel() > 1 else 1.0
                p.copy_(torch.randn(p.shape, generator=gen).mul_(std).add_(float(p.float().mean())))
        for name, b in buffers.items():
            if name in new:
                b.copy_(new[name])


@dataclass
class Randomization:
    """What `randomization_test` measured. ``layers``: the cascade's steps (tuples of dotted names), nearest the
    logits first; step k randomized ``layers[:k + 1]``. ``original`` (N, h, w) maps of the trained model;
    ``maps`` (S, N, h, w) after each of the S steps; ``spearman`` and ``ssim`` (S, N) float64: each step's maps
    against the original (|values|)."""

    layers: list[tuple[str, ...]]
    original: torch.Tensor
    maps: torch.Tensor
    spearman: torch.Tensor
    ssim: torch.Tensor


def randomization_test(model: nn.Module, inputs: torch.Tensor, target: Target, attribute: Attribute, *,
                       layers: list[tuple[str, ...] | str] | None = None, seed: int = 0,
                       original: torch.Tensor | None = None) -> Randomization:
    """Cascading model-parameter randomization (Adebayo et al. 2018, https://arxiv.org/abs/1810.03292).

    ``attribute(model, inputs, targets) -> (N, h, w)`` computes the maps of one method; it is called once on
    ``model`` and once per step on a deep copy whose layers are re-initialized cumulatively (`reinitialize`, the
    modules of step k with seeds from ``seed``, k and their position), following ``layers``: the steps, nearest the
    logits first, each a dotted name or a tuple of them (default: `cascade_layers`). ``model`` itself
    is never changed (it is only read and passed to ``attribute``). The targets stay those given (usually the
    trained model's predicted classes). ``original`` (N, h, w): the trained model's maps when already computed
    (a report passes the maps its method pages show), else computed here. Returns a `Randomization`.
    """
    return randomization_tests(model, inputs, target, [attribute], layers=layers, seed=seed,
                               originals=[original])[0]


def randomization_tests(model: nn.Module, inputs: torch.Tensor, target: Target, attributes: Sequence[Attribute], *,
                        layers: list[tuple[str, ...] | str] | None = None, seed: int = 0,
                        originals: Sequence[torch.Tensor | None] | None = None) -> list[Randomization]:
    """`randomization_test` of several methods (``attributes``, with their ``originals``, None = computed here)
    through one cascade: a `Randomization` per method, each what `randomization_test` returns for it alone.

    The cascade runs once: one deep copy, each step's modules re-initialized once (the same seeds), then every
    method's maps recomputed on it, rather than a copy and a cascade per method. The similarities of all steps are
    computed together at the end.
    """
    _check_inputs(inputs)
    attributes = list(attributes)
    originals = [None] * len(attributes) if originals is None else list(originals)
    if len(originals) != len(attributes):
        raise ValueError(f"{len(attributes)} methods and {len(originals)} original map sets: give one per method")
    targets = resolve_target(target, inputs.shape[0], inputs.device)
    originals = [(attribute(model, inputs, targets) if o is None else o).detach().float().cpu()
                 for attribute, o in zip(attributes, originals)]
    twin = copy.deepcopy(model)
    cascade = [(s,) if isinstance(s, str) else tuple(s) for s in layers] if layers is not None else \
        cascade_layers(model, inputs)
    if not cascade:
        raise ValueError("the model has no parameters to randomize")
    maps: list[list[torch.Tensor]] = [[] for _ in attributes]
    for k, step in enumerate(cascade):
        for j, name in enumerate(step):
            reinitialize(twin.get_submodule(name), seed * 1_000_003 + k * 101 + j)
        for m, attribute in enumerate(attributes):
            maps[m].append(attribute(twin, inputs, targets).detach().float().cpu())
    out = []
    for original, steps in zip(originals, maps):
        stacked = torch.stack(steps)  # (S, N, h, w)
        flat, before = stacked.flatten(0, 1), original.expand_as(stacked).flatten(0, 1)
        shape = stacked.shape[:2]
        out.append(Randomization(cascade, original, stacked, spearman(before.abs(), flat.abs()).view(shape),
                                 ssim(before, flat).view(shape)))
    return out


class TooManyPasses(RuntimeError):
    """`counting_images` stopped a model call that would have gone over its ``limit``."""


@contextmanager
def counting_images(model: nn.Module, limit: int | None = None) -> Iterator[list[int]]:
    """Count the images that go through ``model`` while the block runs: yields a one-element list, the number of
    images so far (the batch sizes of the calls of ``model`` itself, not of its submodules), a method's cost in
    forward passes of one image. With ``limit``, a call that would take the count over it raises `TooManyPasses`
    before it runs. The counting hook is removed in ``finally``: put it on a copy, never on a user's model."""
    count = [0]

    def hook(_module: nn.Module, args: tuple) -> None:
        first = args[0] if args else None
        count[0] += int(first.shape[0]) if torch.is_tensor(first) and first.dim() else 1
        if limit is not None and count[0] > limit:
            raise TooManyPasses(f"more than {limit} images through the model")

    handle = model.register_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def edge_map(inputs: torch.Tensor) -> torch.Tensor:
    """The Sobel edge magnitude of the image (N, H, W) >= 0, the maximum over channels: a "saliency map" that does
    not depend on the model at all, the control that must fail the randomization check."""
    _check_inputs(inputs)
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=inputs.dtype,
                      device=inputs.device)
    kernels = torch.stack([sx, sx.T])[:, None]
    c = inputs.shape[1]
    x = F.pad(inputs.detach().reshape(-1, 1, *inputs.shape[-2:]), (1, 1, 1, 1), mode="replicate")
    g = F.conv2d(x, kernels).view(inputs.shape[0], c, 2, *inputs.shape[-2:])
    return g.pow(2).sum(dim=2).sqrt().amax(dim=1)


def target_probabilities(model: nn.Module, inputs: torch.Tensor, target: Target) -> torch.Tensor:
    """The target's softmax probability (N,) of ``inputs`` (a callable target's ``probability``, or its score),
    without gradients."""
    with torch.no_grad():
        return target_scores(model(inputs), resolve_target(target, inputs.shape[0], inputs.device), score="prob")
