"""Parameter and activation methods: filter tiles, channel picks, streaming statistics, receptive fields,
embeddings and the two-input perceptron views. Known answers wherever there is one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from reportgen.errors import LayerError
from reportgen.methods.activations import (
    RunningStats,
    StreamingTopK,
    filter_grid,
    first_layer_tiles,
    pick_channels,
    signed_range,
)
from reportgen.methods.embed import embed_layers, embed_pca, embed_tsne, knn_accuracy, nearest_neighbours
from reportgen.methods.perceptron import find_first_linear2, hidden_lines, response_grid
from reportgen.methods.receptive_field import receptive_field, rf_box


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tensors are tiny: a second intra-op thread only spins, and on a busy 2-core machine that made the
    receptive-field tests 5x slower in CPU time (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- filters as images -------------------------------------------------------------------------------------------


def test_grey_tiles_per_filter_and_shared_scale():
    w = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]], [[[4.0, 1.0], [-1.0, 2.0]]]])
    tiles = first_layer_tiles(w)
    np.testing.assert_allclose(tiles["grey"][0], [[0.5, -1.0], [0.25, 0.0]])
    np.testing.assert_allclose(tiles["grey"][1], 0.0)  # an all-zero filter stays zero, not NaN
    np.testing.assert_allclose(tiles["grey"][2], [[1.0, 0.25], [-0.25, 0.5]])
    shared = first_layer_tiles(w, shared_scale=True)
    np.testing.assert_allclose(shared["grey"], w[:, 0].numpy() / 4.0)
    assert "rgb" not in tiles


def test_rgb_tiles_map_zero_to_half():
    w = torch.zeros(2, 3, 3, 3)
    w[0, 0, 1, 1], w[0, 2, 0, 0] = 2.0, -1.0
    tiles = first_layer_tiles(w)
    rgb = tiles["rgb"]
    assert rgb.shape == (2, 3, 3, 3)
    assert rgb[0, 1, 1, 0] == 1.0 and rgb[0, 0, 0, 2] == 0.25 and rgb[0, 0, 0, 0] == 0.5
    np.testing.assert_allclose(rgb[1], 0.5)
    np.testing.assert_allclose(tiles["channels"][0, 0, 1, 1], 1.0)
    np.testing.assert_allclose(rgb, 0.5 + 0.5 * tiles["channels"].transpose(0, 2, 3, 1))


def test_filter_grid_holds_exactly_the_weights():
    w = torch.randn(7, 5, 3, 3, generator=gen())
    grid, limit = filter_grid(w, n_in=3, n_out=4)
    np.testing.assert_array_equal(grid, w[:4, :3].numpy())
    assert limit == pytest.approx(w[:4, :3].abs().max().item())
    grid, _ = filter_grid(w)  # clipped to what exists
    np.testing.assert_array_equal(grid, w.numpy())


def test_signed_range():
    assert signed_range(torch.zeros(3)) == 1.0
    assert signed_range(np.array([-3.0, 2.0])) == 3.0


# --- channel picks -----------------------------------------------------------------------------------------------


def test_pick_channels_active_breaks_ties_by_index():
    acts = torch.zeros(2, 5, 2, 2)
    acts[:, 3] = 2.0
    acts[:, 1] = 1.0
    acts[:, 4] = 1.0
    assert pick_channels(acts, 3).tolist() == [3, 1, 4]
    assert pick_channels(acts[0], 10).tolist() == [3, 1, 4, 0, 2]  # (C, H, W), k clipped


def test_pick_channels_seed_is_reproducible_and_sorted():
    acts = torch.zeros(40, 3, 3)
    a = pick_channels(acts, 6, mode="seed", generator=gen(1))
    b = pick_channels(acts, 6, mode="seed", generator=gen(1))
    assert a.tolist() == b.tolist() == sorted(a.tolist()) and len(set(a.tolist())) == 6
    assert pick_channels(acts, 6, mode="seed").tolist() == pick_channels(acts, 6, mode="seed").tolist()


# --- streaming statistics ----------------------------------------------------------------------------------------


def test_dead_fraction_of_dead_and_live_layers():
    x = torch.rand(100, 4, generator=gen())  # inputs in [0, 1)
    dead = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    live = nn.Sequential(nn.Linear(4, 8), nn.Softplus())
    with torch.no_grad():
        dead[0].weight.uniform_(-1, 1, generator=gen(1))
        dead[0].bias.fill_(-10.0)  # |w . x| <= 4 < 10: never active
        stats_dead, stats_live = RunningStats(), RunningStats()
        for batch in x.split(30):
            stats_dead.update(dead(batch))
            stats_live.update(live(batch))
    assert stats_dead.result()["dead_fraction"] == 1.0
    assert stats_live.result()["dead_fraction"] == 0.0


def test_dead_channel_of_a_conv_map():
    acts = torch.rand(6, 3, 4, 4, generator=gen()) - 0.5
    acts[:, 1] = -acts[:, 1].abs()  # channel 1 never > 0
    acts[:, 2] = -1.0
    acts[4, 2, 3, 0] = 0.1  # channel 2 active at one position of one image
    stats = RunningStats()
    for batch in acts.split(4):
        stats.update(batch)
    result = stats.result()
    assert result["active_units"].tolist() == [True, False, True]
    assert result["dead_fraction"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("chunk", [1 << 22, 7])
def test_streamed_histogram_and_moments_equal_one_pass(chunk):
    g = gen(3)
    # later batches reach far above and below the first batch's range, one value exactly on the top edge
    batches = [torch.rand(5, 2, 3, 3, generator=g), torch.tensor([[1.0], [0.0]]).expand(2, 18).reshape(2, 2, 3, 3)]
    batches += [torch.randn(4, 2, 3, 3, generator=g) * 5, torch.randn(3, 2, 3, 3, generator=g) * 50 + 100]
    first_max = batches[0].max().item()
    batches.insert(1, torch.full((1, 2, 3, 3), first_max))
    stats = RunningStats(bins=16, chunk=chunk)
    for batch in batches:
        stats.update(batch)
    result = stats.result()
    everything = torch.cat([b.reshape(-1) for b in batches]).double()
    expected = np.histogram(everything.numpy(), bins=result["hist_edges"])[0]
    np.testing.assert_array_equal(result["hist_counts"], expected)
    assert result["hist_counts"].sum() == result["count"] == everything.numel()
    assert len(result["hist_edges"]) == 17 and result["hist_edges"][0] <= everything.min().item()
    assert result["mean"] == pytest.approx(everything.mean().item(), rel=1e-12)
    assert result["std"] == pytest.approx(everything.std(correction=0).item(), rel=1e-12)
    assert (result["min"], result["max"]) == (everything.min().item(), everything.max().item())


def test_float32_values_on_and_beside_every_edge_fall_in_numpys_bins():
    # the bins are tested on the float32 values against edges rounded up to float32: values exactly on a float64
    # edge that a float32 holds, and the float32 neighbours of every edge, must land where np.histogram puts them
    stats = RunningStats(bins=8)
    stats.update(torch.tensor([[0.0], [0.7]]))  # edges 0, 0.0875, ..., 0.7: most are not float32 numbers
    edges = torch.from_numpy(stats.hist_edges).float()
    near = torch.cat([edges, torch.nextafter(edges, torch.tensor(-1.0)), torch.nextafter(edges, torch.tensor(1.0))])
    near = near[(near >= 0) & (near <= 0.7)]
    stats.update(near[:, None])
    result = stats.result()
    everything = torch.cat([torch.tensor([0.0, 0.7]), near]).double().numpy()
    np.testing.assert_array_equal(result["hist_counts"], np.histogram(everything, bins=result["hist_edges"])[0])


def test_histogram_far_from_zero_equals_numpy_on_every_edge():
    # a large offset makes the position arithmetic round: values on the float64 edges themselves and beside them
    stats = RunningStats(bins=16)
    first = torch.tensor([[1e6], [1e6 + 3.0]], dtype=torch.float64)
    stats.update(first)
    edges = torch.from_numpy(stats.hist_edges)
    later = torch.cat([edges, torch.nextafter(edges, torch.tensor(0.0, dtype=torch.float64)),
                       torch.nextafter(edges, torch.tensor(2e6, dtype=torch.float64)), edges + 2.5])[:, None]
    stats.update(later)  # the last group widens the range: edges regrown, then every value binned
    result = stats.result()
    everything = torch.cat([first, later]).reshape(-1).numpy()
    np.testing.assert_array_equal(result["hist_counts"], np.histogram(everything, bins=result["hist_edges"])[0])


def test_running_stats_rejects_nan_and_takes_bfloat16():
    stats = RunningStats()
    stats.update(torch.tensor([[1.0, -2.0]], dtype=torch.bfloat16))
    assert (stats.result()["min"], stats.result()["max"]) == (-2.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        stats.update(torch.tensor([[float("nan"), 0.0]]))


def test_std_survives_a_large_mean():
    stats = RunningStats()
    x = torch.randn(1000, 3, generator=gen(), dtype=torch.float64) + 1e8
    for batch in x.split(100):
        stats.update(batch)
    assert stats.result()["std"] == pytest.approx(x.std(correction=0).item(), rel=1e-6)


# --- streaming top-k ---------------------------------------------------------------------------------------------


def brute_top(acts: torch.Tensor, n: int):
    """Top-n images per channel by sorting everything at once (ties: lower image index)."""
    batch, channels = acts.shape[:2]
    flat = acts.reshape(batch, channels, -1)
    peak = flat.max(dim=2).values.T.double().numpy()  # (C, N)
    order = np.lexsort((np.broadcast_to(np.arange(batch), peak.shape), -peak), axis=1)[:, :n]
    return np.take_along_axis(peak, order, axis=1), order


@pytest.mark.parametrize("splits", [[12], [1] * 12, [5, 7], [3, 0, 4, 5]])
def test_streaming_topk_equals_global_sort(splits):
    # values rounded to a coarse grid so that ties between images happen and must go to the lower index
    acts = (torch.rand(12, 4, 5, 6, generator=gen(7)) * 4).round()
    top = StreamingTopK(n=5)
    start = 0
    for size in splits:
        top.update(acts[start : start + size], torch.arange(start, start + size))
        start += size
    result = top.result()
    values, images = brute_top(acts, 5)
    np.testing.assert_array_equal(result["values"], values)
    np.testing.assert_array_equal(result["indices"], images)
    for c in range(4):
        for rank in range(5):
            y, x = result["positions"][c, rank]
            image = result["indices"][c, rank]
            assert acts[image, c, y, x] == result["values"][c, rank]
            # the first maximum in row-major order
            assert (acts[image, c].reshape(-1) == result["values"][c, rank]).nonzero()[0].item() == y * 6 + x


def test_streaming_topk_features_and_short_streams():
    acts = torch.tensor([[1.0, 5.0], [3.0, 5.0], [2.0, 0.0]])
    top = StreamingTopK(n=4)
    top.update(acts[:2], [10, 11])
    top.update(acts[2:], [3])
    result = top.result()
    assert result["indices"].tolist() == [[11, 3, 10], [10, 11, 3]]
    assert result["values"].tolist() == [[3.0, 2.0, 1.0], [5.0, 5.0, 0.0]]
    assert result["positions"].shape == (2, 3, 2)


# --- receptive fields --------------------------------------------------------------------------------------------


def positive_(model: nn.Module, seed: int = 0) -> nn.Module:
    """All parameters positive, so a unit's input gradient has no cancellation: its support is the geometry."""
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.9 + 0.1)
    return model.eval()


def gradient_box(model: nn.Module, layer: nn.Module, y: int, x: int, shape: tuple[int, ...]):
    """Bounding box (top, left, bottom, right; exclusive) of the inputs unit (y, x) of ``layer`` depends on.

    A max pool passes gradient to its window's maximum only, and zero padding makes border maxima rare, so the
    support is a union over probes: a small positive background with a spike along one whole row (for the rows
    seen) or one whole column (for the columns), which then wins every max pool that can see it.
    """
    height, width = shape[-2:]
    rows = torch.full((height, *shape), 0.1)
    rows[torch.arange(height), :, torch.arange(height), :] = 100.0
    cols = torch.full((width, *shape), 0.1)
    cols[torch.arange(width), :, :, torch.arange(width)] = 100.0
    out = {}
    handle = layer.register_forward_hook(lambda m, i, o: out.__setitem__("y", o))
    try:
        extents = []
        for probe, axis in [(rows, 2), (cols, 3)]:
            probe.requires_grad_(True)
            model(probe)
            (grad,) = torch.autograd.grad(out["y"][:, :, y, x].sum(), probe)
            seen = (grad != 0).any(dim=0).any(dim=0)  # (H, W)
            hit = seen.any(dim=3 - axis).nonzero()  # rows: reduce columns; columns: reduce rows
            extents.append((int(hit.min()), int(hit.max()) + 1))
    finally:
        handle.remove()
    (top, bottom), (left, right) = extents
    return top, left, bottom, right, out["y"].shape[-2:]


def plain_stack() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(2, 2, 3, padding=2, dilation=2),
        nn.AvgPool2d(2),
        nn.Conv2d(2, 2, (3, 5), padding=(0, 1)),
    )


@pytest.mark.parametrize("layer", ["0", "2", "3", "4", "5"])
def test_rf_box_equals_gradient_support_plain_stack(layer):
    model = positive_(plain_stack())
    shape = (1, 48, 40)
    rf = receptive_field(model, layer, shape)
    assert rf.method == "fx" and not rf.covers_input
    _, _, _, _, (out_h, out_w) = gradient_box(model, model.get_submodule(layer), 0, 0, shape)
    for y, x in [(out_h // 2, out_w // 2), (0, 0), (out_h - 1, out_w - 1)]:
        assert gradient_box(model, model.get_submodule(layer), y, x, shape)[:4] == rf_box(rf, y, x, shape[-2:])


def test_rf_known_values_plain_stack():
    rf = receptive_field(plain_stack(), "3", (1, 64, 64))
    # conv3 s2 p1: r 3, j 2, c 0; maxpool3 s2 p1: r 7, j 4, c 0; conv3 d2 p2: r 23, j 4, c 0
    assert (rf.size, rf.jump, rf.start) == ((23, 23), (4, 4), (0.0, 0.0))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        down = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2), nn.BatchNorm2d(8))
        self.layer1 = nn.Sequential(BasicBlock(4, 4), BasicBlock(4, 8, stride=2, downsample=down))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def forward(self, x):
        return self.head(self.layer1(self.pool(self.stem(x))))


@pytest.mark.parametrize("layer", ["layer1.0", "layer1.1.conv1", "layer1"])
def test_rf_box_equals_gradient_support_basic_blocks(layer):
    model = positive_(TinyResNet())
    shape = (3, 64, 56)
    rf = receptive_field(model, layer, shape)
    _, _, _, _, (out_h, out_w) = gradient_box(model, model.get_submodule(layer), 0, 0, shape)
    for y, x in [(out_h // 2, out_w // 2), (1, 0)]:
        assert gradient_box(model, model.get_submodule(layer), y, x, shape)[:4] == rf_box(rf, y, x, shape[-2:])


def test_rf_after_global_pool_covers_input_and_model_is_untouched():
    model = TinyResNet().train()
    rf = receptive_field(model, "head.2", (3, 32, 30))
    assert rf.covers_input and rf_box(rf, 0, 0, (32, 30)) == (0, 0, 32, 30)
    assert model.training and all(not m._forward_hooks for m in model.modules())
    with pytest.raises(LayerError, match="layer1"):
        receptive_field(model, "layer1.9", (3, 32, 30))


class Untraceable(nn.Module):
    """Control flow on tensor values defeats fx tracing: the hooks fallback must give the same geometry."""

    def __init__(self) -> None:
        super().__init__()
        self.features = plain_stack()

    def forward(self, x):
        if x.sum() > -1e9:
            x = x * 1.0
        return self.features(x)


def test_rf_fallback_when_tracing_fails():
    model = Untraceable().train()
    bn_free_before = [p.clone() for p in model.parameters()]
    rf = receptive_field(model, "features.5", (1, 48, 40))
    expected = receptive_field(plain_stack(), "5", (1, 48, 40))
    assert rf.method == "hooks"
    assert (rf.size, rf.jump, rf.start) == (expected.size, expected.jump, expected.start)
    assert model.training and all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(bn_free_before, model.parameters()))


# --- embeddings --------------------------------------------------------------------------------------------------


def clusters(n_per: int = 30, dim: int = 20, n_classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 20
    labels = np.repeat(np.arange(n_classes), n_per)
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def test_embed_pca_recovers_plane_coordinates():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(10, 2)))
    # two zero-mean, mutually orthogonal coordinate columns: exactly the principal axes, variances 25 : 1
    q, _ = np.linalg.qr(np.column_stack([np.ones(200), rng.normal(size=(200, 2))]))
    coords = q[:, 1:] * np.array([50.0, 10.0])
    out = embed_pca(coords @ basis.T + 3.0)
    signs = np.sign((out * coords).sum(axis=0))
    np.testing.assert_allclose(out * signs, coords, atol=1e-4)


def test_embed_tsne_is_seeded_and_separates_clusters():
    x, labels = clusters(n_per=20, dim=60)  # D > 50: goes through the PCA pre-reduction
    a, b = embed_tsne(x, perplexity=10, seed=1), embed_tsne(x, perplexity=10, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (60, 2)
    assert knn_accuracy(a, labels, k=3) == 1.0
    assert embed_tsne(x[:2]).shape == (2, 2)


def test_embed_layers_parallel_equals_sequential():
    x, _ = clusters(n_per=15, dim=60)
    layers = {"a": x, "b": x[:, :30] * 2}
    sequential = embed_layers(layers, perplexity=8, seed=2, n_jobs=1)
    parallel = embed_layers(layers, perplexity=8, seed=2, n_jobs=2, parallel=True)
    assert list(parallel) == ["a", "b"]
    for name in layers:
        np.testing.assert_array_equal(parallel[name], sequential[name])
        np.testing.assert_array_equal(parallel[name], embed_tsne(layers[name], perplexity=8, seed=2))


def test_knn_accuracy_known_answers():
    x, labels = clusters()
    assert knn_accuracy(x, labels) == 1.0
    # every point's nearest neighbours carry the other label: 1-NN is always wrong
    line = np.arange(40, dtype=np.float32)[:, None]
    alternating = np.arange(40) % 2
    assert knn_accuracy(line, alternating, k=1, holdout=0.5, seed=3) <= 0.2
    assert knn_accuracy(x, labels, seed=4) == knn_accuracy(torch.from_numpy(x), torch.from_numpy(labels), seed=4)


def test_nearest_neighbours_against_brute_force():
    x = torch.randn(50, 7, generator=gen()).numpy()
    x[10] = x[3]  # an exact duplicate is still a neighbour when excluding self
    queries = [3, 0, 49, 10]
    got = nearest_neighbours(x, queries, k=4, chunk=8)
    d = ((x[queries][:, None] - x[None]) ** 2).sum(-1)
    d[np.arange(4), queries] = np.inf
    np.testing.assert_array_equal(got, np.argsort(d, axis=1, kind="stable")[:, :4])
    assert got[0, 0] == 10 and got[3, 0] == 3
    with_self = nearest_neighbours(x, [5], k=2, exclude_self=False)
    assert with_self[0, 0] == 5
    ties = np.array([[0.0], [1.0], [-1.0], [2.0]], dtype=np.float32)
    assert nearest_neighbours(ties, [0], k=3, chunk=1).tolist() == [[1, 2, 3]]


# --- perceptron --------------------------------------------------------------------------------------------------


def test_hidden_lines_lie_on_the_boundary_and_on_the_line():
    extent = (-2.0, 3.0, -1.0, 1.5)
    w = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    b = torch.tensor([0.5, -0.5, -2.0, 1.0, 100.0, 0.0, 1.0])
    segments = hidden_lines(w, b, extent)
    assert segments[3] is None  # w == 0
    assert segments[4] is None  # the line misses the box
    assert segments[1] == ((-2.0, 0.5), (3.0, 0.5))  # horizontal
    assert segments[2] == ((2.0, -1.0), (2.0, 1.5))  # vertical
    xmin, xmax, ymin, ymax = extent
    for unit, seg in enumerate(segments):
        if seg is None:
            continue
        (x0, y0), (x1, y1) = seg
        for t in (0.0, 0.3, 1.0):
            px, py = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            assert abs(w[unit, 0].item() * px + w[unit, 1].item() * py + b[unit].item()) < 1e-9
        for px, py in seg:
            on_edge = min(abs(px - xmin), abs(px - xmax), abs(py - ymin), abs(py - ymax))
            assert on_edge < 1e-12 and xmin <= px <= xmax and ymin <= py <= ymax
        assert (x0, y0) != (x1, y1)


def test_response_grid_matches_direct_evaluation():
    model = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 2)).train()
    extent = (-1.0, 2.0, -3.0, 0.0)
    grid = response_grid(model, extent, resolution=31)
    assert grid.shape == (31, 31) and model.training
    xs, ys = np.linspace(-1, 2, 31), np.linspace(-3, 0, 31)
    model.eval()
    with torch.no_grad():
        for i, j in [(0, 0), (30, 0), (0, 30), (12, 7), (30, 30)]:
            logits = model(torch.tensor([[xs[j], ys[i]]], dtype=torch.float32))[0]
            assert grid[i, j] == pytest.approx((logits[1] - logits[0]).item(), abs=1e-6)


def test_find_first_linear2():
    model = nn.Sequential(nn.Identity(), nn.Sequential(nn.Linear(2, 4)), nn.ReLU(), nn.Linear(4, 2))
    name, module = find_first_linear2(model)
    assert name == "1.0" and module is model[1][0]
    assert find_first_linear2(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))) is None
    assert find_first_linear2(nn.Sequential(nn.ReLU())) is None
