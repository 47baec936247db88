"""Known answers that catch plausible one-line bugs the rest of the suite let through (issue 27): each test names
the bug it stands against. The answers come from a second computation written here (numpy, torch's own
attention, a direct loop), never from the function under test.

- attention rollout over two different layers, multiplied in the paper's order (later layers on the left);
- insertion on a non-constant image, which must start from its blurred copy;
- deletion with its fill value (0 in normalized units = the mean colour, not black);
- the randomization test's Spearman correlation of |maps| (a sign flip alone is no change);
- the attention self-check refusing a module whose real computation differs slightly from the recomputation;
- the ranks' merge of a distributed pass equal to one process, with the ranks as in-process objects;
- the sample images, a seeded draw within each class that changes with the seed.
"""

from __future__ import annotations

import copy
import math
import pickle
import threading

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.methods.attention import attention_grids, attention_rollout, recording_attention, rollout_of_weights
from reportgen.methods.faithfulness import (deletion_curve, deletion_insertion, insertion_curve, randomization_test,
                                           spearman)

# ---------------------------------------------------------------------------------------------------------------
# Attention rollout: two different layers


def test_rollout_of_two_different_layers_multiplies_the_later_layer_on_the_left():
    """Bug: ``rollout @ step`` for ``step @ rollout``. Tokens: class token, patches p1, p2 (grid 1x2). Layer 1:
    every token attends to p1 only; layer 2: every token attends to p2 only. With the residual, A'_l = (I + A_l)/2
    and the rollout is A'_2 A'_1: the class token reads p2 at layer 2 (weight 1/2), and p2 read p1 at layer 1, so
    its row is [1/4, 1/2, 1/4] (p1 gets 1/2 through p2). The other order gives [1/4, 1/4, 1/2]."""
    a1 = torch.tensor([[0.0, 1.0, 0.0]] * 3)[None, None]  # (N=1, heads=1, 3, 3)
    a2 = torch.tensor([[0.0, 0.0, 1.0]] * 3)[None, None]
    got = rollout_of_weights([a1, a2], 1, (1, 2))
    assert got.tolist() == [[[0.5, 0.25]]]
    # two heads are averaged before the product: heads (a1, a2) in both layers = one head of (a1 + a2) / 2
    both = torch.cat([a1, a2], dim=1)
    mean = (0.5 * torch.eye(3) + 0.5 * (a1 + a2)[0, 0] / 2)
    assert torch.allclose(rollout_of_weights([both, both], 1, (1, 2))[0], (mean @ mean)[0, 1:].reshape(1, 2))


def test_rollout_of_a_torchvision_vit_equals_the_product_of_its_own_attention_weights():
    """The tiny ViT's two encoder layers have different weights: the rollout (N, 32, 32) must be, on each 8x8
    patch, the class token's row of (I + A_2)/2 (I + A_1)/2 with A_l the head mean of what torch's own
    MultiheadAttention returns (need_weights=True) on that layer's recorded input, multiplied here in float64."""
    import tiny_models

    model = tiny_models.tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    layers = [model.encoder.layers[i].self_attention for i in range(2)]
    seen: list = []
    handles = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach())) for m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    weights = []
    with torch.no_grad():
        for m, t in zip(layers, seen):
            _, w = m(t, t, t, need_weights=True, average_attn_weights=True)  # (N, 17, 17), mean over heads
            weights.append(w.double().numpy())
    assert not np.allclose(weights[0], weights[1], atol=1e-3)  # two different layers
    eye = np.eye(17)
    expected = np.stack([((eye + weights[1][n]) / 2 @ (eye + weights[0][n]) / 2)[0, 1:].reshape(4, 4)
                         for n in range(2)])
    got = attention_rollout(model, x)
    assert got.shape == (2, 32, 32)
    per_patch = got[:, ::8, ::8].double().numpy()  # each patch's value over its 8x8 pixels
    assert np.allclose(per_patch, expected, atol=1e-6)
    assert torch.equal(got, got[:, ::8, ::8].repeat_interleave(8, 1).repeat_interleave(8, 2))
    wrong = np.stack([((eye + weights[0][n]) / 2 @ (eye + weights[1][n]) / 2)[0, 1:].reshape(4, 4)
                      for n in range(2)])
    assert not np.allclose(wrong, expected, atol=1e-4)  # so the order is what this test checks


# ---------------------------------------------------------------------------------------------------------------
# Deletion and insertion on a non-constant image


class Weighted(nn.Module):
    """Logits ``[sum(w * x), 0]`` of a one-channel 8x8 image: the class-0 probability is sigmoid(w . x)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w.reshape(1, 1, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def reference_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """A second computation of the Gaussian blur of an (H, W) image (float64): the 2-D kernel as the outer product
    of exp(-d^2 / 2 s^2) cut at radius ceil(3 s) (at most side - 1), borders reflected without repeating the edge
    (numpy's 'reflect'), s = sigma x the shorter side; a direct sum over the window at every pixel."""
    s = sigma * min(img.shape)
    r = min(max(1, math.ceil(3 * s)), min(img.shape) - 1)
    d = np.arange(-r, r + 1)
    k = np.exp(-d ** 2 / (2 * s * s))
    kernel = np.outer(k, k) / k.sum() ** 2
    padded = np.pad(img, r, mode="reflect")
    out = np.empty_like(img)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            out[i, j] = (padded[i:i + 2 * r + 1, j:j + 2 * r + 1] * kernel).sum()
    return out


def reference_curve(w: np.ndarray, start: np.ndarray, end: np.ndarray, order: np.ndarray, steps: int) -> list:
    """Probabilities sigmoid(w . copy) as the pixels move from ``start`` to ``end`` in ``order`` (raster indices,
    most important first), ``round(j * 64 / steps)`` after step j."""
    out = []
    for j in range(steps + 1):
        copy = start.ravel().copy()
        moved = order[:round(j * 64 / steps)]
        copy[moved] = end.ravel()[moved]
        out.append(1 / (1 + math.exp(-float(w.ravel() @ copy))))
    return out


@pytest.fixture
def textured():
    """A textured image (a +-1.5 checkerboard with noise), weights on the bright squares of a region (the blur
    averages them out: the model sees it) and on one more pixel, and a map with distinct values (no ties: the
    order is known)."""
    gen = torch.Generator().manual_seed(7)
    checker = (torch.arange(8).view(8, 1) + torch.arange(8).view(1, 8)) % 2 * 2.0 - 1.0
    x = (1.5 * checker + 0.3 * torch.randn(8, 8, generator=gen)).view(1, 1, 8, 8)
    w = torch.zeros(8, 8)
    w[1:5, 2:8] = 0.25 * (checker[1:5, 2:8] > 0)
    w[6, 0] = -0.4
    maps = torch.randperm(64, generator=gen).float().reshape(1, 8, 8)
    order = np.argsort(-maps.numpy().ravel(), kind="stable")
    return Weighted(w), x, w.double().numpy(), maps, order


def test_insertion_on_a_textured_image_starts_from_its_blurred_copy(textured):
    """Bug: insertion starting from the unblurred image (its curve is then flat at the image's probability).
    Here the curve is a second computation's: the blurred copy by a direct 2-D sum, the pixels put back in the
    map's order, sigmoid of the model's sum; through both entry points (insertion alone and both curves)."""
    model, x, w, maps, order = textured
    img = x[0, 0].double().numpy()
    blurred = reference_blur(img, 0.1)
    assert np.abs(blurred - img).max() > 0.3  # the blur changes this image
    expected = reference_curve(w, blurred, img, order, steps=8)
    assert expected[-1] - expected[0] > 0.4  # and what the model sees (0.49 blurred, 0.99 whole)
    ins = insertion_curve(model, x, 0, maps, steps=8, blur_sigma=0.1)
    assert ins[0].tolist() == pytest.approx(expected, abs=1e-5)
    dele, ins2 = deletion_insertion(model, x, 0, maps, steps=8, blur_sigma=0.1)
    assert ins2[0].tolist() == pytest.approx(expected, abs=1e-5)
    assert dele[0].tolist() == pytest.approx(reference_curve(w, img, np.zeros_like(img), order, 8), abs=1e-6)


@pytest.mark.parametrize("fill", [0.0, 0.7, -2.0])
def test_deleted_pixels_take_the_fill_value_zero_being_the_mean_colour(textured, fill):
    """Bug: deleted pixels set to black (the darkest value) instead of the fill, whose default 0 is the mean colour
    in normalized units. Every step of the curve against the pixels replaced by ``fill`` here; the last point is
    the probability of an image of ``fill`` alone."""
    model, x, w, maps, order = textured
    img = x[0, 0].double().numpy()
    expected = reference_curve(w, img, np.full_like(img, fill), order, steps=8)
    kwargs = {} if fill == 0.0 else {"fill": fill}  # the default is the mean colour
    got = deletion_curve(model, x, 0, maps, steps=8, **kwargs)[0]
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    assert float(got[-1]) == pytest.approx(1 / (1 + math.exp(-fill * w.sum())), abs=1e-6)
    dele, _ = deletion_insertion(model, x, 0, maps, steps=8, **kwargs)
    assert dele[0].tolist() == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The randomization test compares |maps|


class SignFlips(nn.Module):
    """``sum(m * sign(s) * x)`` for a one-channel 6x6 image: ``m`` (a buffer, kept) sets the size of each pixel's
    gradient and the parameter ``s`` only its sign. Re-initialized, ``s`` draws new signs: the gradient keeps its
    absolute values exactly and changes its signs."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(11)
        self.register_buffer("m", torch.rand(36, generator=gen) + 0.1)  # distinct sizes, none zero
        self.s = nn.Parameter(torch.ones(36))
        with torch.no_grad():
            self.s[::2] = -1.0  # half negative: re-initialized from N(mean 0, std ~1), signs become random

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) * self.m * torch.sign(self.s)).sum(dim=1, keepdim=True)


def signed_gradient(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)
    return g[:, 0]  # (N, 6, 6), signed


def test_randomization_compares_absolute_maps_so_a_sign_flip_alone_is_no_change():
    """Bug: Spearman of the signed maps instead of |maps| (as Adebayo et al. compare them). After re-initializing
    ``s``, |gradient| = m exactly as before: the rank correlation of |maps| is 1 and SSIM (of |maps|) 1, although
    the signed maps are far apart."""
    model = SignFlips()
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    r = randomization_test(model, x, 0, signed_gradient, layers=[""], seed=3)
    flipped = (torch.sign(r.maps[0]) != torch.sign(r.original)).float().mean()
    assert 0.2 < float(flipped) < 0.8  # the signs did change
    assert torch.allclose(r.maps[0].abs(), r.original.abs())
    assert r.spearman[0].tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    assert r.ssim[0].tolist() == pytest.approx([1.0, 1.0], abs=1e-9)
    assert float(spearman(r.original, r.maps[0]).max()) < 0.5  # what the signed maps' correlation would say


# ---------------------------------------------------------------------------------------------------------------
# The attention self-check must refuse a module that computes slightly differently


class Tempered(nn.MultiheadAttention):
    """torch's MultiheadAttention whose keys are scaled by 1.004 inside forward (a temperature the reader does not
    know): weights recomputed from the module's inputs reproduce its output only to about 1e-3 of its magnitude."""

    def forward(self, query, key, value, **kwargs):
        return super().forward(query, key * 1.004, value, **kwargs)


class TemperedViT(nn.Module):
    """Class token + 16 patch tokens (8-px patches of a 32x32 image), width 16, 2 heads, one `Tempered` layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.attn = Tempered(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        t = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(x).flatten(2).transpose(1, 2)], dim=1)
        return self.head((t + self.attn(t, t, t, need_weights=False)[0])[:, 0])


def test_attention_self_check_refuses_a_module_whose_computation_differs_slightly():
    """Bug: the check loosened by a factor of about N*L*D (e.g. the error compared with the sum of |output| rather
    than its maximum). The relative error here (measured below, ~1e-3) is 10x the default tolerance 1e-4 and far
    under N*L*D = 2*17*16 times it: the layer must be refused, with the size of the error, and drawn nowhere."""
    model = TemperedViT().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with recording_attention(model) as rec, torch.no_grad():
        model(x)
    assert rec.weights == {} and set(rec.refused) == {"attn"}
    assert "reproduce its output only to" in rec.refused["attn"]
    # the error the check measured, recomputed: the weights without the temperature, against the real output
    with torch.no_grad():
        t = torch.cat([model.cls.expand(2, -1, -1), model.embed(x).flatten(2).transpose(1, 2)], dim=1)
        real = model.attn(t, t, t, need_weights=False)[0]
        plain = nn.MultiheadAttention.forward(model.attn, t, t, t, need_weights=False)[0]
    err = float((plain - real).abs().max() / real.abs().max())
    assert 3e-4 < err < 1e-4 * 2 * 17 * 16 / 10
    assert f"{err:.1e}" in rec.refused["attn"]
    grids, refused = attention_grids(model, x)
    assert grids == {} and set(refused) == {"attn"}
    # the same module without the temperature is read (the refusal is about the difference, not the module)
    model.attn.__class__ = nn.MultiheadAttention
    with recording_attention(model) as rec, torch.no_grad():
        model(x)
    assert set(rec.weights) == {"attn"} and not rec.refused


# ---------------------------------------------------------------------------------------------------------------
# The ranks' merge of a distributed pass


def ranks_in_memory(size: int, body, monkeypatch) -> list:
    """``body(group)`` on ``size`` ranks at once (threads, each with its own `Group`); their all-gathers and
    gathers met in memory, every value pickled both ways as between processes. Each rank's return value."""
    import torch.distributed as dist

    from reportgen.distributed import Group, World

    local, slots = threading.local(), [None] * size
    barrier = threading.Barrier(size, timeout=30)

    def exchange(obj):
        slots[local.rank] = pickle.dumps(obj)
        barrier.wait()
        everyone = [pickle.loads(b) for b in slots]
        barrier.wait()
        return everyone

    def all_gather_object(out, obj):
        out[:] = exchange(obj)

    def gather_object(obj, out, dst=0):
        everyone = exchange(obj)
        if local.rank == dst:
            out[:] = everyone

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    monkeypatch.setattr(dist, "gather_object", gather_object)
    results: list = [None] * size
    errors: list = []

    def rank(r: int) -> None:
        local.rank = r
        try:
            results[r] = body(Group(World(r, size, r), store=None))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def make_reducers(seed: int) -> dict:
    """The build's reducers of the one pass, by analysis, over the tiny CNN's layers "1" (8x32x32 ReLU) and "4"
    (16x16x16 ReLU): histograms and statistics, dead units, top images and channel means, channel peaks, the
    sampled features of the embeddings and the neighbours' bank."""
    from reportgen.analyses.activations import EverPositive, FeatureBank, FeatureSample, StatsReducer, TopReducer
    from reportgen.analyses.optimized import ChannelStats

    return {
        "distributions": {"stats": StatsReducer(["1", "4"], 16), "alive": EverPositive(["1", "4"])},
        "top-images": {"top": TopReducer(["1", "4"], 3)},
        "unit-max": {"channels": ChannelStats(["1", "4"])},
        "embeddings": {"sample": FeatureSample(["4"], 7, 1 << 20, np.random.default_rng(seed))},
        "neighbours": {"bank": FeatureBank("4", 6, np.random.default_rng(seed))},
    }


def one_pass(model, images, reducers, group=None, batch_size=4):
    """The one pass as the build runs it (`reportgen.build.forward_pass`): batches, the agreement on histogram
    ranges, every reducer fed, the logits kept; with a ``group``, this rank's batches and the merge on rank 0."""
    from reportgen.analyses import Reducer
    from reportgen.capture import capture

    flat = [r for mine in reducers.values() for r in mine.values()]
    layers = sorted({layer for r in flat for layer in r.layers})
    agree = group is not None and any(type(r).span is not Reducer.span for r in flat)
    if group is None:
        batches = images.batches(batch_size, "cpu")
    else:
        batches = group.batches(images, batch_size, "cpu", lambda name, why: None)
    indices, logits, labels = [], [], []
    with capture(model, layers, as_maps=True) as rec, torch.no_grad():
        for batch in batches:
            if batch is None:
                if agree:
                    group.cover(flat, None)
                continue
            out = model(batch.inputs)
            if agree:
                group.cover(flat, [r.span({n: rec.acts[n] for n in r.layers}) for r in flat])
            for r in flat:
                r.update(batch, {n: rec.acts[n] for n in r.layers}, out)
            indices.append(batch.indices.numpy())
            logits.append(out.numpy())
            labels.append(batch.labels.numpy())
    if group is None:
        return np.concatenate(indices), np.concatenate(logits), np.concatenate(labels), list(images.skipped)
    return group.gather(reducers, indices, logits, labels, images.skipped, images.names)


def results_of(reducers: dict) -> dict:
    """Everything the analyses read from the reducers, as plain arrays."""
    out = {}
    stats = reducers["distributions"]["stats"].stats
    for layer, s in stats.items():
        out.update({f"stats/{layer}/{k}": v for k, v in s.result().items()})
    out.update({f"alive/{k}": v for k, v in reducers["distributions"]["alive"].ever.items()})
    top = reducers["top-images"]["top"]
    for layer in top.layers:
        out.update({f"top/{layer}/{k}": v for k, v in top.top[layer].result().items()})
    out.update({f"top-means/{k}": v for k, v in vars(top).items() if k not in ("top", "layers", "n")})
    ch = reducers["unit-max"]["channels"]
    out.update({f"channels/{k}": v for k, v in vars(ch).items() if k != "layers"})
    feats, idx, lab, preds = reducers["embeddings"]["sample"].collected()
    out.update({f"sample/{k}": v for k, v in feats.items()})
    out.update({"sample/indices": idx, "sample/labels": lab, "sample/preds": preds})
    bank = reducers["neighbours"]["bank"]
    out.update(zip(("bank/pixels", "bank/feats", "bank/indices"), bank.kept()))  # sorted by image index
    out["bank/seen"] = bank.seen
    return out


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and not (a and isinstance(a[0], (int, float))):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        a, b = a.numpy(), b.numpy() if torch.is_tensor(b) else b
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind == "f":  # float64 spreads merged by Chan's formula in another order: relative 1e-12
            return a.shape == b.shape and np.allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)
        return a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, float):
        return b == pytest.approx(a, rel=1e-12, abs=1e-12)
    return a == b


@pytest.mark.parametrize("size", [2, 3])
def test_ranks_merged_on_rank_0_equal_one_process(tmp_path, monkeypatch, size):
    """Bug: a rank's share dropped or put in the wrong place in the merge (`Group.gather`: reducers merged in rank
    order, logits and labels sorted by image index, unreadable images in image order). 21 images and an unreadable
    file (the last) in batches of 4 (6 batches, dealt round robin to 2 or 3 ranks): rank 0's merged reducers, logits, labels
    and skipped files equal one process's, every other rank gets None."""
    import tiny_models
    from conftest import write_image_folder

    from reportgen.data import folder_image_set
    from reportgen.models import InputSpec

    root = write_image_folder(tmp_path / "images", per_class=7, size=(32, 32))
    # unreadable, the last file (with it elsewhere one process's batches would refill and differ from the ranks')
    (root / "dog" / "zz.png").write_bytes(b"not a png")
    spec = InputSpec(kind="image", size=(32, 32), channels=3, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))
    model = tiny_models.tiny_cnn().eval()

    def images():
        return folder_image_set(root, spec)

    alone = make_reducers(seed=5)
    idx, logits, labels, skipped = one_pass(model, images(), alone)
    assert len(idx) == 21 and [name for name, _ in skipped] == ["dog/zz.png"]

    # each rank its own reducers, image set and model (the ranks run at once, the capture's hooks are per model)
    shares = [(make_reducers(seed=5), images(), copy.deepcopy(model)) for _ in range(size)]

    def body(group):
        reducers, imgs, mine = shares[group.rank]
        return one_pass(mine, imgs, reducers, group)

    merged = ranks_in_memory(size, body, monkeypatch)
    assert all(m is None for m in merged[1:])
    m_idx, m_logits, m_labels, m_bad = merged[0]
    assert np.array_equal(m_idx, idx) and np.array_equal(m_labels, labels) and np.array_equal(m_logits, logits)
    assert [name for name, _ in m_bad] == [name for name, _ in skipped]
    want, got = results_of(alone), results_of(shares[0][0])
    assert set(got) == set(want)
    for key in want:
        assert same(want[key], got[key]), key
    # rank 1's reducers saw only its own batches: so the equality above is the merge's work
    assert not same(results_of(shares[1][0]), want)


# ---------------------------------------------------------------------------------------------------------------
# The sample pick changes with the seed


def test_sample_pick_is_a_seeded_draw_within_each_class():
    """Bug: the pick always takes the first images of each class whatever the seed (no shuffle). Over 300 seeds,
    3 classes of 6 images (one pick per class): every image is picked, each about 1/6 of the time, and the pick
    changes with the seed; one seed gives one pick."""
    from reportgen.build import pick_samples

    indices = np.arange(18)
    labels = np.repeat([0, 1, 2], 6)
    picks = [pick_samples(indices, labels, 3, np.random.default_rng(seed)) for seed in range(300)]
    assert all(sorted(labels[p].tolist()) == [0, 1, 2] for p in picks)  # one image of each class
    counts = np.bincount(np.concatenate(picks), minlength=18)
    assert counts.min() >= 25 and counts.max() <= 75  # 50 expected each (binomial sd 6.5)
    assert len({tuple(p) for p in picks}) > 100
    assert picks[7] == pick_samples(indices, labels, 3, np.random.default_rng(7))


def test_the_reports_sample_images_change_with_the_seed(tmp_path, image_folder):
    """The same through the CLI: the manifest's sample images of two seeds differ, one image of each class each."""
    import json

    from conftest import TINY_ARGS, run

    picked = []
    for seed in (0, 1):
        out = tmp_path / f"site{seed}"
        result = run("build", *TINY_ARGS, "--images", image_folder, "--out", out, "--only", "predictions",
                     "--samples", "3", "--seed", seed, "-q")
        assert result.exit_code == 0, result.output
        samples = json.loads((out / "manifest.json").read_text())["images"]["samples"]
        assert sorted(s["label"] for s in samples) == ["bird", "cat", "dog"]
        picked.append([s["name"] for s in samples])
    assert picked[0] != picked[1]
