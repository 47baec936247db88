"""Input x Gradient, Integrated Gradients, GradientSHAP and DeepLIFT: known answers and Captum 0.9 as the peer.

Known answers: on a linear model Input x Gradient is x * w and Integrated Gradients (x - x') * w for every quadrature,
so its sum is F(x) - F(x') exactly; DeepLIFT on a hand-weighted two-layer net, worked by hand with the Rescale rule,
and its summation-to-delta on conv nets with every way of writing a ReLU and max pooling.

Captum, on small conv nets whose ReLUs are modules used once, one module reused, in-place or functional:
- `IntegratedGradients` (every method) and `InputXGradient` take plain gradients: equal for every form (1e-5). Its
  'riemann_trapezoid' is the peer's mistake: its weights are 1/n with halved ends on n points 0..1, which sum to
  1 - 1/n, so its attributions are (n - 1)/n of the trapezoid rule's (ours; the weights sum to 1, and our sum
  converges to F(x) - F(x'), Captum's to (1 - 1/n) of it);
- `DeepLift` hooks nn.ReLU modules: equal where every ReLU is a module used once (also in place). Where it is wrong:
  a reused module raises (its hooks keep one input per module); functional ReLUs keep their gradient (it does not
  see them), and a ReLU module followed by a max-pooling module gets a rule that does not add up; in both cases its
  attributions miss F(x) - F(x') by far more than rounding, ours do not.
- `GradientShap` draws from torch's global generator: its mean over many draws equals ours within the standard
  error of the draws, which a direct loop over the same distribution measures.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TINY_ARGS, run
from reportgen.methods.deeplift import DeepLiftWarning, deeplift
from reportgen.methods.paths import (completeness_gap, gradient_shap, input_x_gradient, integrated_gradients,
                                     make_baseline, path_points)

FORMS = ["once", "reused", "inplace", "functional"]
QUADRATURES = ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]


class ReluNet(nn.Module):
    """conv -> ReLU -> conv (+ skip) -> ReLU -> max pool -> conv -> ReLU -> mean -> linear, the ReLUs written as
    ``form`` says; the weights depend only on the seed. ``pool=False`` leaves the max pool out."""

    def __init__(self, form: str, seed: int = 0, pool: bool = True) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.form, self.pool = form, pool
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)
        self.maxpool = nn.MaxPool2d(2)
        self.mid = nn.Conv2d(6, 6, 1)  # keeps ReLU modules apart from the max pool (see the module docstring)
        if form == "once":
            self.act1, self.act2, self.act3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        elif form == "reused":
            self.act = nn.ReLU()
        elif form == "inplace":
            self.act1, self.act2, self.act3 = nn.ReLU(inplace=True), nn.ReLU(inplace=True), nn.ReLU(inplace=True)

    def relu(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.form in ("once", "inplace"):
            return getattr(self, f"act{i}")(x)
        if self.form == "reused":
            return self.act(x)
        return [F.relu, torch.relu, lambda t: t.relu_()][i - 1](x)  # functional (the last one in place)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(1, self.conv1(x))
        x = self.relu(2, self.conv2(x) + x)
        if self.pool:
            x = self.maxpool(self.mid(x))
        x = self.relu(3, self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


def images(n: int = 3, h: int = 6, w: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def logit_change(model: nn.Module, x: torch.Tensor, baseline, target) -> torch.Tensor:
    t = torch.as_tensor(target).view(-1, 1).expand(len(x), 1)
    with torch.no_grad():
        return (model(x).gather(1, t) - model(torch.broadcast_to(torch.as_tensor(baseline), x.shape)).gather(1, t))[:, 0]


# ---------------------------------------------------------------------------------------------------------------
# Known answers


@pytest.mark.parametrize("method", QUADRATURES)
def test_linear_model_integrated_gradients_is_difference_times_weight_and_complete(method):
    model, x = linear_model(), images(3)
    weight = model[1].weight.detach()
    base = make_baseline(x, "black", low=[-1.0, -2.0, -0.5])
    got = integrated_gradients(model, x, [0, 3, 1], baseline=base, steps=7, method=method, batch_size=5)
    for i, k in enumerate([0, 3, 1]):
        torch.testing.assert_close(got[i], (x[i] - base[i]) * weight[k].view(3, 6, 6), rtol=1e-5, atol=1e-6)
    gap, delta = completeness_gap(model, x, [0, 3, 1], got, base)
    assert delta.abs().min() > 0.1 and gap.abs().max() < 1e-5 * delta.abs().max()


def test_linear_model_input_x_gradient_is_x_times_weight():
    model, x = linear_model(), images(3)
    weight = model[1].weight.detach()
    got = input_x_gradient(model, x, 2)
    torch.testing.assert_close(got, x * weight[2].view(3, 6, 6))
    # and the pixels' terms add up to the logit less the bias
    torch.testing.assert_close(got.flatten(1).sum(1), model(x)[:, 2].detach() - model[1].bias[2].detach())


def test_quadrature_weights_integrate_polynomials():
    for method in QUADRATURES:
        alphas, weights = path_points(9, method)
        assert abs(weights.sum() - 1) < 1e-12 and alphas.min() >= 0 and alphas.max() <= 1, method
    alphas, weights = path_points(4, "gausslegendre")  # exact up to degree 7
    assert abs((weights * alphas ** 7).sum() - 1 / 8) < 1e-12
    alphas, weights = path_points(5, "riemann_trapezoid")  # exact for straight lines
    assert alphas.tolist() == [0, 0.25, 0.5, 0.75, 1] and abs((weights * (3 * alphas + 1)).sum() - 2.5) < 1e-12
    with pytest.raises(ValueError, match="unknown integration method"):
        path_points(4, "simpson")


def test_integrated_gradients_converges_to_the_change_of_the_logit_on_a_relu_net():
    model, x = ReluNet("once").eval(), images(2)
    gaps = []
    integrated_gradients(model, x, [1, 2], baseline=0.3, steps=256, batch_size=300, gaps=gaps)
    gap, delta = gaps[0]
    torch.testing.assert_close(delta, logit_change(model, x, 0.3, [1, 2]))
    assert gap.abs().max() < 1e-2 * delta.abs().max()
    coarse = []
    integrated_gradients(model, x, [1, 2], baseline=0.3, steps=2, method="riemann_left", gaps=coarse)
    assert coarse[0][0].abs().max() > 10 * gap.abs().max()  # two points: a visible gap, which the page reports


def test_deeplift_hand_checked_two_layer_net():
    # h = W1 x + b = [1, -0.5, 1] at x = [1, 1], and b = [0, 0.5, -1] at the baseline 0; ReLU secants
    # [1/1, (0 - 0.5)/(-0.5 - 0.5), (1 - 0)/(1 + 1)] = [1, 0.5, 0.5]; y = W2 relu(h): multipliers of h
    # [-1, 1, 1.5]; of x: W1^T [-1, 1, 1.5] = [0.5, 0.5]; y(x) - y(0) = 2 - 1 = 1 = 0.5 + 0.5
    first = nn.Linear(2, 3)
    second = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [1.0, 1.0]]))
        first.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
        second.weight.copy_(torch.tensor([[-1.0, 2.0, 3.0]]))
    x = torch.ones(1, 1, 1, 2)
    for relu in (nn.ReLU(), nn.ReLU(inplace=True)):
        model = nn.Sequential(nn.Flatten(), first, relu, second)
        assert deeplift(model, x, 0).flatten().tolist() == [0.5, 0.5]
    # the gradient's multipliers differ: ReLU mask [1, 0, 1] gives W1^T [-1, 0, 3] = [2, 3]
    assert input_x_gradient(model, x, 0).flatten().tolist() == [2.0, 3.0]


@pytest.mark.parametrize("form", FORMS)
def test_deeplift_sums_to_delta_and_is_the_same_for_every_way_of_writing_relu(form):
    x, base = images(3), make_baseline(images(3), "blur", blur=0.2)
    reference = deeplift(ReluNet("once").eval(), x, [0, 1, 3], baseline=base)
    gaps = []
    got = deeplift(ReluNet(form).eval(), x, [0, 1, 3], baseline=base, gaps=gaps)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-7)
    gap, delta = gaps[0]
    torch.testing.assert_close(delta, logit_change(ReluNet(form).eval(), x, base, [0, 1, 3]), rtol=1e-5, atol=1e-6)
    assert gap.abs().max() < 1e-5 * delta.abs().max()
    plain = input_x_gradient(ReluNet("once").eval(), x - base, [0, 1, 3])
    assert rel(reference, plain) > 1e-2  # the rule changes the map


def test_deeplift_names_the_non_linearities_it_has_no_rule_for():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 2)).eval()
    with pytest.warns(DeepLiftWarning, match=r"F\.gelu \(1x\), F\.group_norm \(1x\)"):
        deeplift(model, images(2), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deeplift(ReluNet("functional").eval(), images(2), 0)  # ReLUs and max pooling only: no warning


def test_baselines():
    x = images(2)
    black = make_baseline(x, "black", low=[-1.0, -2.0, -3.0])
    assert black[:, :, 2, 3].tolist() == [[-1.0, -2.0, -3.0]] * 2
    assert make_baseline(x, "mean").abs().max() == 0
    noise = make_baseline(x, "uniform", low=-1.0, high=[1.0, 2.0, 3.0], generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise[0], noise[1]) and noise.min() >= -1 and (noise[:, 2].max() > 1)
    blurred = make_baseline(torch.ones(1, 3, 6, 6), "blur", blur=0.3)
    torch.testing.assert_close(blurred, torch.ones(1, 3, 6, 6))  # a constant image stays constant
    with pytest.raises(ValueError, match="needs low"):
        make_baseline(x, "black")
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline(x, "white")


def test_gradient_shap_is_the_mean_of_its_draws():
    """The same draws, taken one by one by a direct loop: the mean of (x - x') * grad at x' + a (x - x')."""
    model, x = ReluNet("once").eval(), images(2)
    pool = images(5, seed=7)
    got = gradient_shap(model, x, [2, 0], baselines=pool, n=9, batch_size=4,
                        generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    picks, alphas = torch.randint(5, (9,), generator=g), torch.rand(9, generator=g)
    expected = torch.zeros_like(x)
    for i, k in enumerate([2, 0]):
        for b, a in zip(pool[picks], alphas):
            point = (b + a * (x[i] - b))[None].requires_grad_(True)
            (grad,) = torch.autograd.grad(model(point)[0, k], point)
            expected[i] += (x[i] - b) * grad[0] / 9
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# Captum 0.9


@pytest.mark.parametrize("form", FORMS)
def test_integrated_gradients_and_input_x_gradient_equal_captum(form):
    captum = pytest.importorskip("captum.attr")
    model, x, targets = ReluNet(form).eval(), images(3), [0, 3, 1]
    base = make_baseline(x, "uniform", low=-1.5, high=1.5, generator=torch.Generator().manual_seed(2))
    ig = captum.IntegratedGradients(model)
    for method in QUADRATURES:
        ours = integrated_gradients(model, x, targets, baseline=base, steps=12, method=method, batch_size=10)
        peer = ig.attribute(x, baselines=base, target=targets, n_steps=12, method=method)
        if method == "riemann_trapezoid":
            peer = peer * 12 / 11  # Captum's trapezoid weights sum to 1 - 1/n (module docstring)
        assert rel(ours, peer) < 1e-5, method
    assert rel(input_x_gradient(model, x, targets), captum.InputXGradient(model).attribute(x, target=targets)) < 1e-5


def test_captum_trapezoid_rule_misses_the_change_of_the_logit_by_one_step():
    captum = pytest.importorskip("captum.attr")
    model, x = linear_model(), images(2)
    delta = logit_change(model, x, 0.0, 1)
    peer = captum.IntegratedGradients(model).attribute(x, target=1, n_steps=10, method="riemann_trapezoid")
    torch.testing.assert_close(peer.flatten(1).sum(1), 0.9 * delta, rtol=1e-5, atol=1e-6)
    ours = integrated_gradients(model, x, 1, steps=10, method="riemann_trapezoid")
    torch.testing.assert_close(ours.flatten(1).sum(1), delta, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", FORMS)
def test_deeplift_equals_captum_where_captum_sees_every_relu(form):
    captum = pytest.importorskip("captum.attr")
    x, targets = images(3), [0, 3, 1]
    base = make_baseline(x, "black", low=[-1.0, -0.5, -2.0])
    model = ReluNet(form).eval()
    ours = deeplift(model, x, targets, baseline=base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets hooks
        if form == "reused":  # its hooks keep one input per module: a reused module is refused
            with pytest.raises(RuntimeError, match="used more than once"):
                captum.DeepLift(model).attribute(x, baselines=base, target=targets)
            return
        peer = captum.DeepLift(model).attribute(x, baselines=base, target=targets)
    delta = logit_change(model, x, base, targets)
    if form in ("once", "inplace"):
        assert rel(ours, peer) < 1e-5
    else:  # functional ReLUs keep their gradient in Captum: its attributions do not add up, ours do
        assert (peer.flatten(1).sum(1) - delta).abs().max() > 1e-2 * delta.abs().max()
        assert (ours.flatten(1).sum(1) - delta).abs().max() < 1e-5 * delta.abs().max()


def test_deeplift_max_pooling_against_captum():
    captum = pytest.importorskip("captum.attr")
    x = images(3)
    torch.manual_seed(3)
    pooled = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert rel(deeplift(pooled, x, 1, baseline=0.2), captum.DeepLift(pooled).attribute(x, baselines=0.2, target=1)) < 1e-5
        # a ReLU module right before the max-pooling module: Captum's attributions no longer add up; ours do
        torch.manual_seed(3)
        adjacent = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(36, 3)).eval()
        peer = captum.DeepLift(adjacent).attribute(x, baselines=0.2, target=1)
    gaps = []
    deeplift(adjacent, x, 1, baseline=0.2, gaps=gaps)
    gap, delta = gaps[0]
    assert (peer.flatten(1).sum(1) - delta).abs().max() > 1e-2 * delta.abs().max()
    assert gap.abs().max() < 1e-5 * delta.abs().max()


def test_gradient_shap_mean_equals_captum_within_its_standard_error():
    captum = pytest.importorskip("captum.attr")
    model, x, pool = ReluNet("once", pool=False).eval(), images(2, 4, 4), images(6, 4, 4, seed=9)
    n = 3000
    ours = gradient_shap(model, x, 1, baselines=pool, n=n, batch_size=1000, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(4)  # Captum draws from the global generator
    peer = captum.GradientShap(model).attribute(x, baselines=pool, target=1, n_samples=n, stdevs=0.0)
    # the standard deviation of one draw, from a direct loop over 400 draws of the same distribution
    g = torch.Generator().manual_seed(8)
    draws = []
    for b, a in zip(pool[torch.randint(6, (400,), generator=g)], torch.rand(400, generator=g)):
        point = (b + a * (x - b)).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(point)[:, 1].sum(), point)
        draws.append((x - b) * grad)
    sd = torch.stack(draws).std(dim=0)
    z = (ours - peer).abs() / (sd * (2.0 / n) ** 0.5 + 1e-12)  # two independent means of n draws each
    assert z.max() < 5.0 and z.mean() < 1.5, (float(z.max()), float(z.mean()))
    assert rel(ours, peer) < 0.2  # and the estimates are close at all (the test can fail)


# ---------------------------------------------------------------------------------------------------------------
# The report


def test_pages_state_their_cost_and_the_gap(tmp_path, image_folder):
    """One build of the tiny CNN with a budget below one forward pass: each page states as its cost the images its
    map sends through the model forward and backward (counted with hooks, a backward counting 2) times its maps.
    A second build with the pages: Integrated Gradients and DeepLIFT show the completeness gap of every map."""
    import tiny_models
    from reportgen.analyses import get

    model = tiny_models.tiny_cnn().eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = {"forward": 0, "backward": 0}

    def pre(_m, args):
        seen["forward"] += int(args[0].shape[0])

    def post(_m, _args, out):
        if out.requires_grad:
            out.register_hook(lambda g: seen.__setitem__("backward", seen["backward"] + int(g.shape[0])))

    names = ["input-x-gradient", "integrated-gradients", "gradient-shap", "deeplift"]
    options = {"integrated-gradients": {"steps": 32, "method": "gausslegendre", "baseline": "black",
                                        "low": [-1.0] * 3, "high": [1.0] * 3, "batch_size": 64, "gaps": []},
               "gradient-shap": {"n": 32, "batch_size": 64, "baselines": images(4, 32, 32),
                                 "generator": torch.Generator().manual_seed(0)},
               "deeplift": {"baseline": "black", "low": [-1.0] * 3, "gaps": []}}
    per_map = {}
    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    try:
        for name in names:
            seen.update(forward=0, backward=0)
            get(name).attribute(model, x, torch.tensor([0]), **options.get(name, {}))
            per_map[name] = seen["forward"] + 2 * seen["backward"]
    finally:
        for h in handles:
            h.remove()
    assert per_map == {"input-x-gradient": 3, "integrated-gradients": 3 * 32 + 2, "gradient-shap": 96,
                       "deeplift": 6}

    out = tmp_path / "refused"
    config = tmp_path / "c.toml"  # the settings the budget may lower, fixed: every page is refused
    config.write_text("[analysis.integrated-gradients]\nsteps = 32\n[analysis.gradient-shap]\nn = 32\n")
    result = run("build", *TINY_ARGS, "--images", image_folder, "--out", out, "--samples", "2", "--budget", "1e-6",
                 "--only", ",".join(names), "--config", config, "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    maps = sum(1 + (s["label"] != s["pred"]) for s in manifest["images"]["samples"])
    assert all(a["status"] == "not applicable" for a in manifest["analyses"]), manifest["analyses"]
    stated = {a["name"]: int(re.search(r"as much as ([\d,]+) forward passes", a["reason"]).group(1).replace(",", ""))
              for a in manifest["analyses"]}
    assert stated == {name: maps * per_map[name] for name in names}

    out = tmp_path / "site"
    result = run("build", *TINY_ARGS, "--images", image_folder, "--out", out, "--samples", "2",
                 "--only", "integrated-gradients,deeplift", "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    for a in manifest["analyses"]:
        assert a["status"] == "ok", a
        page = (out / "analyses" / f"{a['name']}.html").read_text()
        assert "Completeness gap per map" in page
    metrics = {a["name"]: a["metrics"] for a in manifest["analyses"]}
    assert metrics["deeplift"]["largest |completeness gap| / |F(x) - F(x')|"] < 1e-4
    assert metrics["integrated-gradients"]["largest |completeness gap| / |F(x) - F(x')|"] < 0.05


def test_deeplift_is_not_applicable_beyond_relus_and_max_pooling():
    """The page's verdict, from the facts the build's plan learns (the non-linearity report and the layer table)."""
    from types import SimpleNamespace

    from reportgen.analyses.paths import DeepLift, deeplift_reason
    from reportgen.methods.relu_rules import inspect_nonlinearities

    def facts(model: nn.Module) -> SimpleNamespace:
        layers = [SimpleNamespace(type=type(m).__name__, out_shape=(1,)) for m in model.modules()]
        return SimpleNamespace(nonlinearities=inspect_nonlinearities(model, images(1)), layers=layers)

    assert DeepLift().exactness(facts(ReluNet("reused").eval())) == (
        "exact", "every ReLU call and 2-D max pooling rewritten (Rescale rule)")
    gelu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)).eval()
    verdict, why = DeepLift().exactness(facts(gelu))
    assert verdict == "not applicable" and "GELU" in why and "would not add up" in why
    norm = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)).eval()
    assert "GroupNorm" in deeplift_reason(facts(norm))
    linear = nn.Sequential(nn.Flatten(), nn.Linear(108, 2)).eval()
    assert deeplift_reason(facts(linear)).startswith("the model has no ReLU")
