"""RISE, KernelSHAP and LIME (reportgen.methods.perturbation): against Captum 0.9 with the same feature mask and the
same sampled coalitions, against the paper's RISE algorithm written out here, and known answers (Shapley values of
a game linear in the superpixels, RISE's expectation on a model linear in the pixels); then their pages in a tiny
build, read by the trust checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_ARGS, run
from reportgen.methods import perturbation as P


def cnn(relu: str = "module") -> nn.Module:
    """A seeded 3x16x16 -> 3 CNN whose ReLUs are modules, one reused module, in place or functional (forward-only
    methods must not care)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
            self.fc = nn.Linear(6 * 4, 3)
            self.act = nn.ReLU(inplace=relu == "inplace")
            self.act2 = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if relu == "functional":
                h = torch.nn.functional.relu(self.conv2(torch.nn.functional.relu(self.conv1(x))))
            elif relu == "reused":
                h = self.act(self.conv2(self.act(self.conv1(x))))
            else:
                h = self.act2(self.conv2(self.act(self.conv1(x))))
            return self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))

    return Net().eval()


def image(seed: int = 1, size: int = 16, channels: int = 3) -> torch.Tensor:
    return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed))


def squares(size: int = 16, side: int = 4) -> torch.Tensor:
    """A feature mask of side x side squares, labels 0.. row by row: (size, size)."""
    idx = torch.arange(size) // side
    return idx[:, None] * (size // side) + idx[None, :]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).abs().max() / b.abs().max())


def feeding(rows: torch.Tensor):
    """A Captum perturb_func that yields these coalitions, in order."""
    def perturb(_original, **_kwargs):
        for row in rows:
            yield row[None].long()
    return perturb


# ---------------------------------------------------------------------------------------------------------------
# KernelSHAP and LIME against Captum


@pytest.mark.parametrize("relu", ["module", "reused", "inplace", "functional"])
def test_kernel_shap_equals_captum_with_the_same_coalitions(relu):
    captum = pytest.importorskip("captum.attr")
    model, x = cnn(relu), image()
    seg = torch.from_numpy(P.superpixels(((x[0] - x.min()) / (x.max() - x.min())).permute(1, 2, 0).numpy()[None],
                                         n_segments=12)[0])
    m, n = int(seg.max()) + 1, 60
    assert 6 <= m <= 16
    ours = P.kernel_shap(model, x, 2, segments=seg, n_samples=n, batch_size=7,
                         generator=torch.Generator().manual_seed(3))
    ks = captum.KernelShap(model)
    ks.perturb_func = feeding(P.shap_coalitions(m, n, torch.Generator().manual_seed(3)))
    # Captum imposes the two end conditions by a weight of 1e6 on the full and the empty coalition (float32 least
    # squares), which leaves them off by about 1e-5 of the values here; 1e8 makes its penalty hold them as ours does
    ks.inf_weight = 1e8
    theirs = ks.attribute(x, target=2, feature_mask=seg[None, None].expand_as(x), n_samples=n,
                          perturbations_per_eval=16)
    assert rel(ours, theirs[:, 0]) < 1e-5
    assert torch.equal(theirs[:, 0], theirs[:, 1])  # one value per superpixel, every channel alike


def test_lime_equals_captum_with_the_same_samples_kernel_and_ridge():
    captum = pytest.importorskip("captum.attr")
    linear_model = pytest.importorskip("captum._utils.models.linear_model")
    model, x, seg = cnn(), image(2), squares()
    n = 80

    def similarity(_original, _perturbed, interpretable, **_kwargs):  # the lime package's image kernel, written out
        z = interpretable.double()
        cosine = z.sum() / (z.sum().sqrt() * z.numel() ** 0.5) if z.sum() > 0 else torch.zeros((), dtype=z.dtype)
        return torch.exp(-(1 - cosine) ** 2 / 0.25 ** 2).sqrt().reshape(1)

    lime = captum.Lime(model, interpretable_model=linear_model.SkLearnRidge(alpha=1.0), similarity_func=similarity,
                       perturb_func=feeding(P.lime_coalitions(16, n, torch.Generator().manual_seed(4))))
    theirs = lime.attribute(x, target=1, feature_mask=seg[None, None].expand_as(x), n_samples=n,
                            return_input_shape=False)
    ours = P.lime(model, x, 1, segments=seg, n_samples=n, batch_size=32, generator=torch.Generator().manual_seed(4),
                  coefficients=True)[0]
    assert rel(ours, theirs) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Known answers


class Linear(nn.Module):
    """logits = (x * w).sum + b for 2 classes: linear in the pixels, hence in the superpixels' presence (fill 0)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w = nn.Parameter(torch.randn(2, *shape, generator=g))
        self.b = nn.Parameter(torch.tensor([0.3, -0.7]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, None] * self.w).flatten(2).sum(-1) + self.b


def test_kernel_shap_and_lime_recover_the_exact_contributions_of_a_linear_game():
    """f(z) = b + sum_j z_j c_j: the Shapley value of superpixel j is c_j, the sum of w x over its pixels; LIME
    without a ridge penalty fits the same line."""
    x, seg = image(3, size=8), squares(8, 2)  # 16 superpixels
    model = Linear(tuple(x.shape[1:]))
    contribution = torch.zeros(16, dtype=torch.float64)
    contribution.index_add_(0, seg.flatten(), (model.w[1] * x[0]).sum(0).detach().double().flatten())
    shap = P.kernel_shap(model, x, 1, segments=seg, n_samples=60, generator=torch.Generator().manual_seed(0),
                         coefficients=True)[0]
    assert torch.allclose(shap, contribution, rtol=1e-5, atol=1e-5)
    lime = P.lime(model, x, 1, segments=seg, n_samples=60, alpha=0.0, generator=torch.Generator().manual_seed(0),
                  coefficients=True)[0]
    assert torch.allclose(lime, contribution, rtol=1e-5, atol=1e-5)
    maps = P.kernel_shap(model, x, 1, segments=seg, n_samples=60, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(maps[0].double(), contribution[seg], rtol=1e-5, atol=1e-5)  # each pixel: its superpixel


def test_kernel_shap_values_add_up_to_the_score_difference_on_any_model():
    model, x, seg = cnn("reused"), image(4), squares()
    values = P.kernel_shap(model, x, 0, segments=seg, n_samples=30, generator=torch.Generator().manual_seed(1),
                           coefficients=True)[0]
    with torch.no_grad():
        gap = model(x)[0, 0] - model(torch.zeros_like(x))[0, 0]
    # exact up to float32 rounding of the logits (a batch of copies may round differently from one image alone)
    assert float(values.sum()) == pytest.approx(float(gap), abs=1e-6)
    assert abs(float(gap)) > 1e-3


def test_shap_coalitions_follow_the_shapley_kernel_sizes():
    z = P.shap_coalitions(6, 20002, torch.Generator().manual_seed(0))
    assert z[0].all() and not z[1].any()
    sizes = np.bincount(z[2:].sum(1).numpy(), minlength=7)
    k = np.arange(1, 6)
    expected = (5 / (k * (6 - k))) / (5 / (k * (6 - k))).sum() * 20000
    assert sizes[0] == sizes[6] == 0
    assert np.all(np.abs(sizes[1:6] - expected) < 4 * np.sqrt(expected))


def upsample(grid: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling with half-pixel centres and clamped edges, written out (numpy)."""
    def axis(n_in: int, n_out: int) -> np.ndarray:
        a = np.zeros((n_out, n_in))
        for o in range(n_out):
            src = min(max((o + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
            lo = int(np.floor(src))
            hi = min(lo + 1, n_in - 1)
            a[o, lo] += 1 - (src - lo)
            a[o, hi] += src - lo
        return a
    return axis(grid.shape[0], out[0]) @ grid @ axis(grid.shape[1], out[1]).T


def reference_masks(n: int, size: int, cells: int, p: float, seed: int) -> np.ndarray:
    """The paper's mask generation (Petsiuk et al. 2018, Sec. 3.2 and their code): a cells x cells grid of 0/1,
    upsampled to (cells + 1) * ceil(size / cells) and cropped with a shift in [0, cell); the same draws in the same
    order as reportgen's."""
    g = torch.Generator().manual_seed(seed)
    grids = (torch.rand((n, cells, cells), generator=g) < p).double().numpy()
    cell = -(-size // cells)
    sy = torch.randint(0, cell, (n,), generator=g).numpy()
    sx = torch.randint(0, cell, (n,), generator=g).numpy()
    up = [upsample(grid, ((cells + 1) * cell,) * 2) for grid in grids]
    return np.stack([u[y:y + size, x:x + size] for u, y, x in zip(up, sy, sx)])


def test_rise_equals_the_papers_algorithm_with_the_same_masks():
    model, x = cnn(), torch.cat([image(5), image(6)])
    n, cells, p = 50, 3, 0.4
    masks = reference_masks(n, 16, cells, p, seed=7)
    assert np.allclose(P.rise_masks(n, (16, 16), cells=cells, p=p, generator=torch.Generator().manual_seed(7)).numpy(),
                       masks, atol=1e-6)
    expected = np.zeros((2, 16, 16))
    with torch.no_grad():
        for i, target in enumerate((0, 2)):
            for mask in masks:  # one masked copy at a time: S = sum f(I . M) M / (N p)
                prob = model(x[i:i + 1] * torch.from_numpy(mask).float()).softmax(1)[0, target]
                expected[i] += float(prob) * mask
    expected /= n * p
    for batch_size in (7, 64):  # batches that cut across the two images, and one batch for all
        ours = P.rise(model, x, [0, 2], n_masks=n, cells=cells, p=p, batch_size=batch_size,
                      generator=torch.Generator().manual_seed(7))
        assert np.allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-7)
    alone = P.rise(model, x[1:], 2, n_masks=n, cells=cells, p=p, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(alone[0], ours[1], rtol=1e-5, atol=1e-7)


def test_rise_expectation_on_a_model_linear_in_the_pixels():
    """E[S(u)] = (b p + sum_v w_v x_v E[M_v M_u]) / p for the logit b + w.x; with M = A B for a shift's interpolation
    weights A and iid Bernoulli(p) cells B, E[M M^T] = A (p^2 11^T + p(1 - p) I) A^T, averaged over the shifts."""
    size, cells, p, n = 8, 2, 0.5, 20000
    x = image(8, size=size, channels=1)
    model = Linear(tuple(x.shape[1:]))
    cell = size // cells
    second = np.zeros((size * size, size * size))
    for y in range(cell):
        for s in range(cell):
            basis = np.stack([upsample(np.eye(cells * cells)[k].reshape(cells, cells), ((cells + 1) * cell,) * 2)
                              [y:y + size, s:s + size].flatten() for k in range(cells * cells)], axis=1)
            second += basis @ (p * p * np.ones((cells * cells,) * 2) + p * (1 - p) * np.eye(cells * cells)) @ basis.T
    second /= cell * cell
    wx = (model.w[0] * x[0]).detach().double().flatten().numpy()
    expected = (float(model.b[0].detach()) * p + second @ wx) / p
    maps = P.rise(model, x, 0, n_masks=n, cells=cells, p=p, score="logit", batch_size=4096,
                  generator=torch.Generator().manual_seed(9))
    # the standard error of the mean of the n terms f(I . M_i) M_i(u) / p, from the same masks
    masks = P.rise_masks(n, (size, size), cells=cells, p=p, generator=torch.Generator().manual_seed(9)).double()
    with torch.no_grad():
        terms = (model(x * masks[:, None].float())[:, 0].double()[:, None, None] * masks / p).flatten(1)
    se = terms.std(0).numpy() / np.sqrt(n)
    assert np.allclose(maps.flatten().numpy(), terms.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    assert np.all(np.abs(maps.flatten().double().numpy() - expected) < 4.5 * se)


def test_methods_leave_the_model_unchanged_and_say_what_is_wrong():
    model, x = cnn("inplace"), image()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(x)
    P.rise(model, x, 0, n_masks=8)
    P.kernel_shap(model, x, 0, segments=squares(), n_samples=8)
    P.lime(model, x, 0, segments=squares(), n_samples=8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and not model._forward_hooks and all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(x), out)
    with pytest.raises(ValueError, match="n_masks >= 1"):
        P.rise(model, x, 0, n_masks=0)
    with pytest.raises(ValueError, match="cells"):
        P.rise(model, x, 0, cells=17)
    with pytest.raises(ValueError, match="segments must be"):
        P.kernel_shap(model, x, 0, segments=squares(8, 2))
    with pytest.raises(ValueError, match="out of range"):
        P.lime(model, x, 5, segments=squares(), n_samples=4)


def test_superpixels_are_connected_slic_regions_numbered_without_gaps():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    images = np.zeros((2, 24, 24, 3))
    images[:, :, 12:] = 1.0  # two halves: SLIC keeps the edge
    images += rng.uniform(0, 0.05, images.shape)
    seg = P.superpixels(images, n_segments=8)
    for s in seg:
        labels = np.unique(s)
        assert labels.tolist() == list(range(len(labels))) and 4 <= len(labels) <= 12
        for k in labels:
            assert ndimage.label(s == k)[0].max() == 1  # one connected region
            right = (s[:, 12:] == k).sum() / (s == k).sum()
            assert right <= 0.2 or right >= 0.8  # on one side of the edge (blurred by SLIC's sigma = 1 pixel)
    gray = P.superpixels(images[..., :1], n_segments=8)
    assert gray.shape == (2, 24, 24) and gray.max() >= 3


# ---------------------------------------------------------------------------------------------------------------
# The pages, and the trust checks that read them

CONFIG = """
[analysis.rise]
masks = 40
[analysis.kernel-shap]
samples = 24
segments = 10
[analysis.lime]
samples = 24
segments = 10
[analysis.deletion-insertion]
steps = 4
images = 2
methods = ["rise", "kernel-shap", "lime"]
[analysis.randomization-test]
images = 1
steps = 2
methods = ["rise", "kernel-shap", "lime"]
"""


def test_pages_and_trust_tables(tmp_path, image_folder):
    (tmp_path / "c.toml").write_text(CONFIG)
    out = tmp_path / "site"
    names = ["rise", "kernel-shap", "lime"]
    result = run("build", *TINY_ARGS, "--images", image_folder, "--out", out, "--samples", "2", "--config",
                 tmp_path / "c.toml", "--only", ",".join(names + ["deletion-insertion", "randomization-test"]), "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    status = {a["name"]: a["status"] for a in manifest["analyses"]}
    assert all(status[n] == "ok" for n in names + ["deletion-insertion", "randomization-test"]), status
    for name, paper in (("rise", "1806.07421"), ("kernel-shap", "1705.07874"), ("lime", "1602.04938")):
        page = (out / "analyses" / f"{name}.html").read_text()
        assert paper in page and "Pitfalls" in page
        assert page.index("<img") < page.index("How to read it")  # the figure first, the course text after
    trust = manifest_tables(out, "deletion-insertion")
    assert [row[0] for row in trust] == [*names, "random order"]
    # the randomization check recomputes each map after every step of its cascade (named in its methods: over its
    # max_passes of 16 images per map, it would leave them out otherwise)
    cascade = manifest_tables(out, "randomization-test")
    assert [row[0] for row in cascade] == [*names, "edge detector (control)"]
    assert all(row[4] in ("pass", "fail") for row in cascade[:3])


def manifest_tables(out, name: str) -> list:
    """The rows of the "trust" table of analysis ``name`` in the site's manifest."""
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = [a for a in manifest["analyses"] if a["name"] == name]
    (table,) = [i for i in entry["items"] if i.get("key") == "trust"]
    return table["rows"]


def test_the_cost_each_page_states_is_the_images_one_map_sends_through_the_model():
    """`passes` (forward passes of one image per map, what the compute budget multiplies) against the images the
    method function really sends through the model at the page's defaults, counted by a hook."""
    import tiny_models
    from reportgen.analyses import get

    model = tiny_models.tiny_cnn().eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[0])))
    try:
        for name, method in (("rise", P.rise), ("kernel-shap", P.kernel_shap), ("lime", P.lime)):
            analysis = get(name)
            params = analysis.Params()
            seen.clear()
            options = {"rise": {}, "kernel-shap": {"segments": squares(32, 8)}, "lime": {"segments": squares(32, 8)}}
            method(model, x, 0, **options[name])
            assert sum(seen) == analysis.passes(None, params) == {"rise": 500, "kernel-shap": 200, "lime": 200}[name]
            assert max(seen) == 64  # batches of 64 copies (the functions' default batch_size)
    finally:
        handle.remove()
