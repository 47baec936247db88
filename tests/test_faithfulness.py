"""Faithfulness and sanity checks: known answers on hand-weighted models, a second computation of the metrics, the
user's model left untouched, and small report builds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.methods.attribution import saliency
from reportgen.methods.faithfulness import (
    cascade_layers,
    curve_auc,
    deletion_curve,
    deletion_insertion,
    edge_map,
    gaussian_blur,
    insertion_curve,
    pixel_order,
    randomization_test,
    reinitialize,
    spearman,
    ssim,
    step_counts,
)


class RegionNet(nn.Module):
    """Logits ``[w * sum of the pixels in a known 2x4 region, 0]``: the decision depends on those 8 pixels only."""

    def __init__(self, w: float = 0.5, size: int = 8) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, size, size)
        mask[..., 2:4, 2:6] = 1.0
        self.register_buffer("mask", mask)
        self.fc = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[w], [0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x * self.mask).sum(dim=(1, 2, 3))[:, None])


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# ---------------------------------------------------------------------------------------------------------------
# Deletion and insertion: known answers


def test_deletion_perfect_map_gets_the_analytic_curve_reversed_the_worst_random_in_between():
    model, x = RegionNet(w=0.5), torch.ones(1, 1, 8, 8)
    perfect = model.mask[0]  # (1, 8, 8): the region first, everything else tied after it
    curve = deletion_curve(model, x, 0, perfect, steps=8, generator=torch.Generator().manual_seed(0))
    # step j deletes 8j of the 64 pixels: the 8 region pixels go in step 1, after which the logit is 0 (p = 0.5)
    expected = [sigmoid(0.5 * 8)] + [0.5] * 8
    assert curve[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert float(curve_auc(curve)[0]) == pytest.approx((sum(expected) - (expected[0] + expected[-1]) / 2) / 8)
    reversed_ = deletion_curve(model, x, 0, 1 - perfect, steps=8, generator=torch.Generator().manual_seed(0))
    assert reversed_[0, :8].tolist() == pytest.approx([sigmoid(4.0)] * 8, abs=1e-6)  # region deleted last
    rand = deletion_curve(model, x.expand(64, -1, -1, -1), 0, torch.zeros(64, 8, 8), steps=8,
                          generator=torch.Generator().manual_seed(1))
    aucs = [float(curve_auc(c)[0]) for c in (curve, rand.mean(0, keepdim=True), reversed_)]
    assert aucs[0] < aucs[1] < aucs[2]  # perfect < random order (the baseline) < the worst order


def test_random_order_is_the_hypergeometric_expectation():
    """An independent second computation: deleting n of 64 pixels at random leaves K of the 8 region pixels with
    the hypergeometric law, so the mean random-order curve is E[sigmoid(w K)] at every step."""
    w, draws = 0.5, 3000
    model = RegionNet(w=w)
    x = torch.ones(draws, 1, 8, 8)
    curves = deletion_curve(model, x, 0, torch.zeros(draws, 8, 8), steps=8, batch_size=4096,
                            generator=torch.Generator().manual_seed(0))
    for j, n in enumerate(step_counts(64, 8)):
        pmf = {k: math.comb(8, k) * math.comb(56, 64 - n - k) / math.comb(64, 64 - n)
               for k in range(9) if 0 <= 64 - n - k <= 56}
        expected = sum(p * sigmoid(w * k) for k, p in pmf.items())
        assert float(curves[:, j].mean()) == pytest.approx(expected, abs=0.01), j


def test_insertion_perfect_map_rises_first_and_both_curves_share_one_order():
    model, x = RegionNet(w=0.5), torch.ones(2, 1, 8, 8)
    perfect = model.mask[0].expand(2, -1, -1)
    curve = insertion_curve(model, x, 0, perfect, steps=8, blurred=torch.zeros_like(x))
    expected = [0.5] + [sigmoid(4.0)] * 8  # the 8 region pixels come back in step 1
    assert curve[0].tolist() == pytest.approx(expected, abs=1e-6)
    rand = insertion_curve(model, x, 0, torch.zeros(2, 8, 8), steps=8, blurred=torch.zeros_like(x),
                           generator=torch.Generator().manual_seed(0))
    assert (curve_auc(curve) > curve_auc(rand)).all()
    # the combined function = the two separate ones with one shared tie order, whatever the batch size
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3))
    dele, ins = deletion_insertion(model, x, 0, maps, steps=8, blur_sigma=0.1, batch_size=5)
    assert torch.allclose(dele, deletion_curve(model, x, 0, maps, steps=8, batch_size=64))
    assert torch.allclose(ins, insertion_curve(model, x, 0, maps, steps=8, blur_sigma=0.1, batch_size=1))


def test_curve_auc_step_counts_and_pixel_order():
    x = torch.linspace(0, 1, 11)
    assert curve_auc(torch.stack([1 - x, torch.full_like(x, 0.3)])).tolist() == pytest.approx([0.5, 0.3])
    assert step_counts(10, 4) == [0, 2, 5, 8, 10]  # round half to even: 2.5 -> 2, 7.5 -> 8
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.2]]])
    assert pixel_order(maps, (2, 2)).tolist() == [[3, 0, 1, 2]]  # 0.9 first, then 0.5, 0.2, 0.1
    # a coarse map is resized (nearest): each cell's pixels share its rank block
    ranks = pixel_order(torch.tensor([[[1.0, 0.0]]]), (2, 4), torch.Generator().manual_seed(0)).view(2, 4)
    assert set(ranks[:, :2].flatten().tolist()) == {0, 1, 2, 3}
    # ties are broken at random (seeded), not in raster order
    flat = [pixel_order(torch.zeros(1, 4, 4), (4, 4), torch.Generator().manual_seed(s)).tolist() for s in range(3)]
    assert flat[0] != flat[1] and all(sorted(f[0]) == list(range(16)) for f in flat)


def test_gaussian_blur_keeps_constants_and_sums():
    const = torch.full((1, 3, 16, 16), 0.7)
    assert torch.allclose(gaussian_blur(const, 0.1), const, atol=1e-6)
    impulse = torch.zeros(1, 1, 16, 16)
    impulse[..., 8, 8] = 1.0
    out = gaussian_blur(impulse, 0.1)  # sigma 1.6 px, radius 5: inside the image, the mass is kept
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5) and float(out[..., 8, 8]) < 0.1
    assert torch.equal(gaussian_blur(impulse, 0.0), impulse)


# ---------------------------------------------------------------------------------------------------------------
# Similarity metrics against a second computation


def test_spearman_matches_scipy_with_ties_and_constant_maps():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 6, 6), generator=g).float()  # many ties
    b = a + torch.randint(0, 3, (3, 6, 6), generator=g).float()
    got = spearman(a, b)
    for i in range(3):
        assert float(got[i]) == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten()).statistic, abs=1e-12)
    assert spearman(a, a.exp()).tolist() == pytest.approx([1.0] * 3)
    assert spearman(a, -a).tolist() == pytest.approx([-1.0] * 3)
    zero = torch.zeros(1, 4, 4)
    assert spearman(zero, a[:1, :4, :4]).tolist() == [0.0] and spearman(zero, zero).tolist() == [1.0]


def naive_ssim(x: np.ndarray, y: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """SSIM written out window by window (Wang et al. 2004), for maps already in [0, 1]."""
    r = np.arange(window) - (window - 1) / 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    k = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            px, py = x[i:i + window, j:j + window], y[i:i + window, j:j + window]
            mx, my = (k * px).sum(), (k * py).sum()
            vx, vy = (k * (px - mx) ** 2).sum(), (k * (py - my) ** 2).sum()
            cxy = (k * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_a_window_by_window_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 16, 14, generator=g)
    b = a + 0.3 * torch.rand(2, 16, 14, generator=g)
    got = ssim(a, b)
    for i in range(2):
        x, y = a[i].double().numpy(), b[i].double().numpy()
        assert float(got[i]) == pytest.approx(naive_ssim(x / x.max(), y / y.max()), abs=1e-9)
    assert ssim(a, 3 * a).tolist() == pytest.approx([1.0, 1.0])  # each map is scaled to [0, 1] first
    assert ssim(a, -a).tolist() == pytest.approx([1.0, 1.0])  # on absolute values


# ---------------------------------------------------------------------------------------------------------------
# Model-parameter randomization


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 3)).eval()


def snapshot(model: nn.Module) -> dict:
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                         for m in model.modules()),
            "modes": [m.training for m in model.modules()],
            "flags": [p.requires_grad for p in model.parameters()], "ids": [id(m) for m in model.modules()]}


def assert_unchanged(model: nn.Module, before: dict, x: torch.Tensor, out: torch.Tensor) -> None:
    after = snapshot(model)
    assert after["hooks"] == before["hooks"] and after["modes"] == before["modes"]
    assert after["flags"] == before["flags"] and after["ids"] == before["ids"]
    assert all(torch.equal(before["state"][k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), out)


def images(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_cascade_from_the_logits_down_with_norms_joined_to_their_layer():
    model = tiny_cnn()
    before, x = snapshot(model), images()
    out = model(x)
    assert cascade_layers(model, x) == [("8",), ("4",), ("0", "1")]
    assert cascade_layers(model, x, max_steps=2) == [("8", "4"), ("0", "1")]  # neighbours merged, order kept
    assert_unchanged(model, before, x, out)


def test_an_edge_detector_fails_and_the_gradient_passes_and_the_model_is_untouched():
    model = tiny_cnn()
    before, x = snapshot(model), images()
    out = model(x)
    edges = randomization_test(model, x, 0, lambda m, inputs, t: edge_map(inputs), seed=0)
    # a map that does not depend on the weights stays the same at every step: the check must fail it
    assert edges.spearman.min() == pytest.approx(1.0) and edges.ssim.min() == pytest.approx(1.0)
    grads = randomization_test(model, x, 0, lambda m, inputs, t: saliency(m, inputs, t), seed=0)
    assert [s for s in grads.layers] == [("8",), ("4",), ("0", "1")]
    assert grads.maps.shape == (3, 4, 16, 16) and grads.spearman.shape == grads.ssim.shape == (3, 4)
    assert torch.allclose(grads.original, saliency(model, x, 0))
    assert float(grads.spearman[-1].mean()) < 0.5  # the gradient of a re-initialized net is another map
    again = randomization_test(model, x, 0, lambda m, inputs, t: saliency(m, inputs, t), seed=0)
    assert torch.equal(again.spearman, grads.spearman)  # seeded
    other = randomization_test(model, x, 0, lambda m, inputs, t: saliency(m, inputs, t), seed=1)
    assert not torch.equal(other.spearman, grads.spearman)
    assert_unchanged(model, before, x, out)


def test_the_model_is_untouched_after_an_error_midway():
    model = tiny_cnn()
    before, x = snapshot(model), images()
    out = model(x)
    calls = []

    def attribute(m, inputs, t):
        calls.append(m)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return saliency(m, inputs, t)

    with pytest.raises(RuntimeError, match="boom"):
        randomization_test(model, x, 0, attribute)
    assert calls[0] is model and all(m is not model for m in calls[1:])  # steps run on a copy
    assert_unchanged(model, before, x, out)


def test_reinitialize_is_seeded_and_resets_batch_norm():
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.fill_(3.0)
        bn.running_mean.fill_(2.0)
    a, b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
    reinitialize(a, 7)
    reinitialize(b, 7)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    reinitialize(b, 8)
    assert not torch.equal(a.weight, b.weight)
    reinitialize(bn, 0)
    assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.running_mean, torch.zeros(4))
    state = torch.random.get_rng_state()
    reinitialize(conv, 1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone


# ---------------------------------------------------------------------------------------------------------------
# Report builds


def build_site(out, image_folder, extra=()):
    from conftest import TINY_ARGS

    from reportgen.build import build
    from reportgen.config import load_config
    from reportgen.console import Output

    cfg = load_config(None, model=TINY_ARGS[0], input_size=[32, 32], channels=3, images=str(image_folder),
                      out=str(out), samples=3, only=["predictions", "gradient", "grad-cam", "deletion-insertion",
                                                     "randomization-test", *extra],
                      analysis={"deletion-insertion": {"steps": 8, "methods": ["gradient", "grad-cam"]},
                                "randomization-test": {"images": 2, "methods": ["gradient", "grad-cam"]}})
    report = build(cfg, Output(silent=True))
    assert report.failed == []
    return json.loads((out / "manifest.json").read_text())


def test_report_tables_pages_and_reproducibility(tmp_path, image_folder):
    manifest = build_site(tmp_path / "a", image_folder)
    by_name = {a["name"]: a for a in manifest["analyses"]}
    di, rt = by_name["deletion-insertion"], by_name["randomization-test"]
    assert di["status"] == rt["status"] == "ok"
    trust = next(i for i in di["items"] if i["key"] == "trust")
    assert [r[0] for r in trust["rows"]] == ["gradient", "grad-cam", "random order"]
    assert all(0.0 <= r[1] <= 1.0 and 0.0 <= r[3] <= 1.0 for r in trust["rows"])
    verdicts = next(i for i in rt["items"] if i["key"] == "trust")
    assert [r[0] for r in verdicts["rows"]] == ["gradient", "grad-cam", "edge detector (control)"]
    assert verdicts["rows"][-1][2] == pytest.approx(1.0) and verdicts["rows"][-1][-1] == "fail"
    assert {i["type"] for i in rt["items"]} == {"table", "grid", "plot"}
    # both methods have their pages in this build: their maps are read, none recomputed
    assert "The maps checked are those the method pages of this report show (3 per method)." in di["notes"]
    assert "The maps checked are those the method pages of this report show (2 per method)." in rt["notes"]
    assert sum(i["type"] == "plot" for i in di["items"]) == 2  # one figure of curves per method
    card = (tmp_path / "a" / "index.html").read_text()
    assert 'id="trust"' in card and "edge detector" not in card.split('id="trust"')[1].split("</section>")[0]
    sample = manifest["images"]["samples"][0]["index"]
    page = (tmp_path / "a" / "images" / f"{sample:05d}.html").read_text()
    assert 'id="trust-glance"' in page
    assert 'class="tag right">pass' in page or 'class="tag wrong">fail' in page
    explained = {name: (tmp_path / "a" / "analyses" / f"{name}.html").read_text()
                 for name in ("deletion-insertion", "randomization-test")}
    assert "Petsiuk" in explained["deletion-insertion"] and "softmax probability" in explained["deletion-insertion"]
    assert "Adebayo" in explained["randomization-test"] and "deep copy" in explained["randomization-test"]
    # same config and seed: the same numbers
    again = build_site(tmp_path / "b", image_folder)
    for name in ("deletion-insertion", "randomization-test"):
        one = [i["rows"] for i in by_name[name]["items"] if i["type"] == "table"]
        two = [i["rows"] for i in {a["name"]: a for a in again["analyses"]}[name]["items"] if i["type"] == "table"]
        assert one == two


def test_skip_and_unknown_methods(tmp_path, image_folder):
    from reportgen.build import build
    from reportgen.config import load_config
    from reportgen.console import Output
    from reportgen.errors import ConfigError

    cfg = load_config(None, model="tiny_models:tiny_cnn", input_size=[32, 32], channels=3, images=str(image_folder),
                      out=str(tmp_path / "s"), samples=2, only=["predictions", "deletion-insertion"],
                      analysis={"deletion-insertion": {"methods": ["grad-kam"]}})
    with pytest.raises(ConfigError, match="unknown attribution method 'grad-kam'"):
        build(cfg, Output(silent=True))
    cfg = load_config(None, model="tiny_models:tiny_cnn", input_size=[32, 32], channels=3, images=str(image_folder),
                      out=str(tmp_path / "s"), samples=2, skip=["deletion-insertion", "randomization-test"],
                      only=["predictions", "gradient"])
    names = [a.name for a in build(cfg, Output(silent=True)).manifest.analyses]
    assert "deletion-insertion" not in names and "randomization-test" not in names
    assert 'id="trust"' not in (tmp_path / "s" / "index.html").read_text()


# ---------------------------------------------------------------------------------------------------------------
# Bounded cost: the page's maps are read, not recomputed; costly methods leave the cascade unless named


def build_context(image_folder, samples=3, **settings):
    """The context a build hands its analyses (tiny CNN, 32x32) and its plan, after the one pass, the sample pick
    and the settled plan (the context is then read-only)."""
    from conftest import TINY_ARGS

    from reportgen.build import (
        choose_analyses,
        forward_pass,
        load,
        make_plan,
        pick_samples,
        settle,
    )
    from reportgen.config import load_config
    from reportgen.console import Output

    cfg = load_config(None, model=TINY_ARGS[0], input_size=[32, 32], channels=3, images=str(image_folder),
                      samples=samples, only=["predictions", "deletion-insertion", "randomization-test"], **settings)
    ctx = load(cfg, Output(silent=True))
    chosen = choose_analyses(cfg)
    plan = make_plan(ctx, chosen)
    ctx.predictions = forward_pass(ctx, {})
    ctx.samples = pick_samples(ctx.predictions.indices, ctx.predictions.labels, samples, ctx.rng("samples"))
    settle(ctx, chosen, plan)
    return ctx, plan


def test_the_checks_read_the_maps_the_method_pages_show_and_compute_only_the_missing(image_folder):
    from reportgen.analyses import get
    from reportgen.analyses.faithfulness import predicted, report_maps

    ctx, plan = build_context(image_folder)
    targets = predicted(ctx, ctx.samples)
    page = get("smoothgrad")  # random noise per call: a recomputation would not give the page's maps
    upstream = plan.upstream("deletion-insertion")  # smoothgrad has no page in this build (--only)
    assert "smoothgrad" in upstream.params and "smoothgrad" not in upstream.pages
    opts = page.options(ctx, upstream.params["smoothgrad"])
    _, computed = report_maps(ctx, page, opts, ctx.samples, targets, upstream)
    assert computed == 3  # no page ran: computed
    result = page.run(ctx, upstream.params["smoothgrad"], {})
    read = plan.upstream("deletion-insertion", {"smoothgrad": result})
    maps, computed = report_maps(ctx, page, opts, ctx.samples, targets, read)
    assert computed == 0
    drawn = {item.key: item.array for item in result.items if item.key.startswith("shared-predicted-")}
    for p, i in enumerate(ctx.samples):
        np.testing.assert_array_equal(drawn[f"shared-predicted-{i:05d}-{int(targets[p])}"],
                                      np.clip(maps[p].numpy().astype(np.float64), 0, None))
    # a class no page drew (and one image's map dropped) is computed, the rest still read
    del result.shared["maps"][(ctx.samples[1], int(targets[1]))]
    again, computed = report_maps(ctx, page, opts, ctx.samples, targets, read)
    assert computed == 1
    assert torch.equal(again[0], maps[0]) and torch.equal(again[2], maps[2])


def test_the_checks_judge_the_settings_the_budget_gave_the_pages(image_folder):
    """The budget lowers SmoothGrad's noisy copies on its page: both checks are handed those settings, not the
    config's (they used to judge SmoothGrad at n = 50 while its page showed fewer copies)."""
    from conftest import TINY_ARGS

    from reportgen.analyses import get
    from reportgen.budget import count_macs
    from reportgen.build import choose_analyses, forward_pass, load, make_plan, pick_samples, settle
    from reportgen.config import load_config
    from reportgen.console import Output

    def context(budget):
        cfg = load_config(None, model=TINY_ARGS[0], input_size=[32, 32], channels=3, images=str(image_folder),
                          samples=2, budget=budget, only=["smoothgrad", "deletion-insertion", "randomization-test"])
        ctx = load(cfg, Output(silent=True))
        chosen = choose_analyses(cfg)
        plan = make_plan(ctx, chosen)
        ctx.predictions = forward_pass(ctx, {})
        ctx.samples = pick_samples(ctx.predictions.indices, ctx.predictions.labels, 2, ctx.rng("samples"))
        return ctx, chosen, plan

    ctx, _, _ = context(0)
    macs, _ = count_macs(ctx.model, ctx.images.load_inputs(ctx.samples[:1], ctx.device))
    maps = len(get("smoothgrad").map_targets(ctx))  # each sample's predicted and true class
    # a budget for 20 noisy copies per map (a forward and a backward pass each: 3 passes), and a bit
    ctx, chosen, plan = context(maps * 20.5 * 3 * macs / 1e9)
    settle(ctx, chosen, plan)
    fitted = plan.params["smoothgrad"]
    assert chosen.params["smoothgrad"].n == 50 and fitted.n == 20 and "smoothgrad" in plan.notes
    for check in ("deletion-insertion", "randomization-test"):
        upstream = plan.upstream(check)
        assert upstream.params["smoothgrad"] == fitted and "smoothgrad" in upstream.pages
    with pytest.raises(AttributeError, match="read-only"):
        ctx.samples = []


def test_counting_images_counts_batches_stops_at_the_limit_and_leaves_no_hook():
    from reportgen.methods.faithfulness import TooManyPasses, counting_images

    model = RegionNet()
    with counting_images(model) as count:
        model(torch.ones(3, 1, 8, 8))
        model(torch.ones(2, 1, 8, 8))
    assert count == [5] and not model._forward_pre_hooks
    calls = []
    model.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    with pytest.raises(TooManyPasses), counting_images(model, limit=4):
        model(torch.ones(3, 1, 8, 8))
        model(torch.ones(3, 1, 8, 8))  # would make 6 > 4: stopped before it runs
    assert calls == [3] and not model._forward_pre_hooks


def test_randomization_leaves_out_costly_methods_with_a_note_unless_named(image_folder):
    from reportgen.analyses import Upstream
    from reportgen.analyses.faithfulness import RandomizationParams, RandomizationTest

    ctx, plan = build_context(image_folder, samples=1)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    test = RandomizationTest()
    # SmoothGrad (50 noisy copies) and occlusion (one copy per patch position) cost more than 8 passes per map
    params = RandomizationParams(steps=2, images=1, max_passes=8, methods=[])
    upstream = plan.upstream("randomization-test")
    result = test.run(ctx, params, {}, upstream)
    table = next(i for i in result.items if i.key == "trust")
    verdicts = {r[0]: r[-1] for r in table.rows}
    assert verdicts["gradient"] in ("pass", "fail")
    assert verdicts["smoothgrad"] == verdicts["occlusion"] == "not run (cost)"  # in the table, not dropped
    assert not any(i.key in ("cascade-smoothgrad", "similarity-occlusion") for i in result.items)
    note = next(n for n in result.notes if n.startswith("Left out of this check"))
    left_out = note.split(". ")[0].removeprefix("Left out of this check: ").split(", ")
    assert "smoothgrad" in left_out and "occlusion" in left_out and "gradient" not in left_out
    assert "more than 8 images" in note
    assert result.metrics["left out (cost)"] >= 2
    named = test.run(ctx, RandomizationParams(steps=2, images=1, max_passes=8, methods=["smoothgrad"]), {},
                     Upstream(params={"smoothgrad": upstream.params["smoothgrad"]}))
    assert [r[0] for r in next(i for i in named.items if i.key == "trust").rows] == [
        "smoothgrad", "edge detector (control)"]
    assert not any(n.startswith("Left out") for n in named.notes)
    after = ctx.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in ctx.model.modules())


def test_a_check_whose_every_method_page_did_not_run_does_not_apply_and_says_why():
    from reportgen.analyses import Upstream
    from reportgen.analyses.faithfulness import DeletionParams, attribution_methods
    from reportgen.analyses.influence import SmoothGradParams
    from reportgen.artifacts import NotApplicable

    upstream = Upstream(params={"smoothgrad": SmoothGradParams(n=1000)}, pages=frozenset(),
                        missing={"smoothgrad": "its page was not run, being over the build's compute budget"})
    with pytest.raises(NotApplicable, match="no attribution method to check: smoothgrad: its page was not run"):
        attribution_methods(None, upstream, DeletionParams())
    with pytest.raises(NotApplicable, match="no attribution method applies"):
        attribution_methods(None, Upstream(), DeletionParams())


def test_best_at_names_the_best_methods_and_none_on_a_complete_tie():
    from reportgen.analyses.faithfulness import best_at

    got = best_at({"a": {"deletion": 0.1, "insertion": 0.9}, "b": {"deletion": 0.1, "insertion": 0.5},
                   "c": {"deletion": 0.3, "insertion": 0.9}})
    assert got == {"a": "deletion, insertion", "b": "deletion", "c": "insertion"}
    # flat curves (a detector with nothing to find under a given box): every AUC 0 tells no method apart
    flat = best_at({m: {"deletion": 0.0, "insertion": 0.0} for m in ("a", "b", "c")})
    assert flat == {"a": "–", "b": "–", "c": "–"}
    assert best_at({"a": {"deletion": 0.2, "insertion": 0.4}}) == {"a": "deletion, insertion"}
