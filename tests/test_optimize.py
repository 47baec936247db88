"""Optimized inputs: activation maximization, DeepDream, adversarial examples and the random-sphere control."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from reportgen.methods.adversarial import adversarial, random_sphere, sphere_points
from reportgen.methods.optimize import (
    DEFAULTS,
    blur,
    bounded,
    channel,
    class_logit,
    class_prob,
    compose,
    deepdream,
    edge_energy,
    edge_energy_penalty,
    every,
    fourier_image,
    fourier_param,
    fourier_scale,
    gaussian_blur,
    grey_param,
    l2,
    l2_penalty,
    layer_energy,
    mapped_param,
    maximize,
    noise,
    penalized,
    pixel_bounds,
    pixel_param,
    random_affine,
    random_roll,
    random_zoom_rotate,
    soft_window,
    standard_edits,
    standard_param,
    standard_transforms,
    unit,
    window_mask,
    zero_below,
    zero_small_pixels,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast, and avoids thread spin-waits on a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def recipe(shape, generator=None, *, init=None, clamp=None, **settings) -> dict:
    """The report's recipe for ``maximize(model, objective, **recipe(...), steps=...)``, as
    ``reportgen.analyses.optimized._maximize`` builds it: ``settings`` by their `MaxDefaults` names, start noise of
    ``shape`` drawn first from ``generator``, then the random transforms from the same generator."""
    s = replace(DEFAULTS, **settings)
    g = gen() if generator is None else generator
    start = noise(shape, g) if init is None else init
    return dict(
        param=standard_param(start, clamp=clamp, fourier=s.fourier, fourier_decay=s.fourier_decay, grey=s.grey,
                             window=s.window),
        transforms=standard_transforms(g, jitter=s.jitter, scale_jitter=s.scale_jitter, rotate=s.rotate),
        edits=standard_edits(clamp=clamp, blur_every=s.blur_every, blur_sigma=s.blur_sigma, zero_small=s.zero_small,
                             zero_threshold=s.zero_threshold, fourier=s.fourier),
    )


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )


@pytest.fixture(scope="module")
def digits_mlp():
    """An MLP trained inline on sklearn's 8x8 digits (about 1 s), and test images in [0, 1] it classifies right."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:1500]), y[:1500]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(x[1500:]).argmax(1)
    ok = (pred == y[1500:]).nonzero().flatten()[:8] + 1500
    assert (pred == y[1500:]).float().mean() > 0.9
    return model, x[ok], y[ok]


# --------------------------------------------------------------------------------------------------------------------
# Model state: nothing may change, also after an error


def snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        [m.training for m in model.modules()],
        [
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            for m in model.modules()
        ],
    )


def assert_same(model: nn.Module, snap) -> None:
    state, flags, grads, modes, hooks = snap
    now = snapshot(model)
    assert now[0].keys() == state.keys()
    for k in state:
        assert torch.equal(now[0][k], state[k]), k
    assert now[1] == flags
    assert all(g is None for g in now[2]) and all(g is None for g in grads)
    assert now[3] == modes
    assert now[4] == hooks


class Boom(nn.Module):
    """Identity that raises on its ``fail_at``-th forward call: an error in the middle of an optimization."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return x


def unusual_state(model: nn.Module) -> nn.Module:
    """Train mode with one frozen parameter: the flags a method must restore, not reset to defaults."""
    model.train()
    next(model.parameters()).requires_grad_(False)
    return model


CALLS = {
    "maximize": lambda m: maximize(m, class_logit(1) - 1e-3 * l2(), **recipe((2, 3, 8, 8)), steps=3),
    "maximize-priors": lambda m: maximize(m, class_logit([0, 1]), steps=3, **recipe(
        (2, 3, 8, 8), window=0.9, scale_jitter=0.2, rotate=30, fourier=True, grey=True)),
    "maximize-layer": lambda m: maximize(m, channel("2", 1), **recipe((1, 3, 8, 8)), steps=3),
    "deepdream": lambda m: deepdream(m, torch.randn(2, 3, 12, 12, generator=gen()), "2", steps_per_octave=2),
    "adversarial": lambda m: adversarial(m, torch.randn(2, 3, 8, 8, generator=gen()), steps=3),
    "random_sphere": lambda m: random_sphere(m, torch.randn(2, 3, 8, 8, generator=gen()), 1.0, m=10, batch_size=4),
}


@pytest.mark.parametrize("name", CALLS)
def test_model_unchanged_after_success(name):
    model = unusual_state(tiny_cnn())
    snap = snapshot(model)
    CALLS[name](model)
    assert_same(model, snap)


@pytest.mark.parametrize("name", CALLS)
def test_model_unchanged_after_error(name):
    model = unusual_state(tiny_cnn())
    model.insert(3, Boom(fail_at=2))  # inserted after the watched layer "2", which keeps its name
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        CALLS[name](model)
    assert_same(model, snap)


# --------------------------------------------------------------------------------------------------------------------
# Objectives and penalties


OBJECTIVES = {
    "class_logit": class_logit(2),
    "class_logit per image": class_logit([0, 1, 2]),
    "class_prob": class_prob(3),
    "unit flat": unit("2", 17),
    "unit chw": unit("2", (1, 3, 4)),
    "channel": channel("0", 2),
    "layer_energy": layer_energy("2"),
    "with penalties": class_logit(1) - 1e-2 * l2() - 1e-3 * edge_energy(),
}


@pytest.mark.parametrize("name", OBJECTIVES)
def test_maximize_raises_every_objective_in_five_steps(name):
    model = tiny_cnn().eval()
    # no transforms or edits here: the curve then scores exactly the images being optimized, step by step
    res = maximize(model, OBJECTIVES[name], pixel_param(noise((3, 3, 8, 8), gen())), steps=5)
    assert res.images.shape == (3, 3, 8, 8) and res.curve.shape == (5, 3) and res.final_scores.shape == (3,)
    assert (res.final_scores > res.curve[0]).all(), (res.curve, res.final_scores)


def test_maximize_with_default_transforms_still_rises():
    model = tiny_cnn().eval()
    res = maximize(model, class_logit(2), **recipe((2, 3, 8, 8)), steps=20)
    assert (res.final_scores > res.curve[0] + 0.01).all(), (res.curve[0], res.final_scores)


def test_objective_algebra_matches_the_maths():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    x = torch.ones(2, 1, 2, 2)
    obj = 3 * class_logit(2) - class_logit(0) * 0.5 - 0.25 * l2() + 1.0
    assert torch.allclose(obj(logits, None, x), torch.tensor([9 - 0.5 - 1 + 1, 18 - 2 - 1 + 1]))
    assert torch.equal(class_logit([2, 0])(logits), torch.tensor([3.0, 4.0]))
    assert torch.allclose(class_prob(1)(logits), logits.softmax(1)[:, 1])
    assert set((channel("a", 0) + layer_energy("b") - unit("a", 1)).layers) == {"a", "b"}


def test_layer_objectives_read_the_recorded_output():
    from reportgen.capture import capture

    model = nn.Sequential(nn.Identity())
    x = torch.arange(24.0).view(2, 3, 2, 2)
    with capture(model, ["0"], keep_live=True) as rec:
        logits = model(x)
        assert torch.equal(unit("0", (1, 0, 1))(logits, rec), x[:, 1, 0, 1])
        assert torch.equal(unit("0", 5)(logits, rec), x.flatten(1)[:, 5])
        assert torch.equal(channel("0", 2)(logits, rec), x[:, 2].mean((1, 2)))
        assert torch.equal(layer_energy("0")(logits, rec), x.pow(2).mean((1, 2, 3)))


def test_edge_energy_zero_for_constant_and_grows_with_frequency():
    n = 32
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    constant = torch.full((1, 3, n, n), 0.7)
    gradient = (xx / n).float().expand(1, 3, n, n)
    checker = ((xx + yy) % 2).float().expand(1, 3, n, n)
    e = [edge_energy_penalty(img).item() for img in (constant, gradient, checker)]
    assert e[0] < 1e-10
    assert e[2] > e[1] > e[0]
    assert edge_energy_penalty(torch.full((2, 3, 64, 64), 123.4)).abs().max() < 1e-10
    # channels are separate images: the same pattern in 3 channels has 3 times the energy of one channel
    assert torch.allclose(edge_energy_penalty(checker), 3 * edge_energy_penalty(checker[:, :1]))
    assert (edge_energy()(None, None, checker) == edge_energy_penalty(checker)).all()


def test_l2_matches_formula():
    x = torch.randn(4, 3, 5, 5, generator=gen())
    expected = torch.stack([(img**2).sum() for img in x])
    assert torch.allclose(l2_penalty(x), expected)
    assert torch.allclose(l2()(None, None, x), expected)


def test_transforms():
    const = torch.full((1, 2, 9, 9), 0.3)
    assert torch.allclose(blur(const, 1.5), const)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1
    b = blur(spike, 1.0)
    assert torch.isclose(b.sum(), torch.tensor(1.0)) and b[0, 0, 4, 4] < 0.2
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    z = zero_small_pixels(x, percentile=25)
    assert (z == 0).sum() == 4 and torch.equal(z[z != 0], x[x > 4])
    assert (zero_small_pixels(x, threshold=10.0) == 0).sum() == 9


def test_maximize_respects_clamp_and_init_and_batches_independently():
    model = tiny_cnn().eval()
    lo, hi = pixel_bounds([0.5, 0.4, 0.3], [0.25, 0.2, 0.25])
    res = maximize(model, class_logit(4), **recipe((2, 3, 8, 8), clamp=(lo, hi)), steps=20, lr=0.5)
    for c in range(3):
        assert res.images[:, c].min() >= lo[c] - 1e-6 and res.images[:, c].max() <= hi[c] + 1e-6
    init = torch.randn(2, 3, 8, 8, generator=gen(1))
    both = maximize(model, class_logit([0, 3]), **recipe(None, init=init, jitter=0), steps=4).images
    first = maximize(model, class_logit(0), **recipe(None, init=init[:1], jitter=0), steps=4).images
    assert torch.allclose(both[:1], first, atol=1e-6)
    assert torch.equal(init, torch.randn(2, 3, 8, 8, generator=gen(1)))  # init not modified


def test_same_seed_same_images():
    model = tiny_cnn().eval()
    obj = class_logit(1) - 1e-3 * edge_energy()
    a = maximize(model, obj, **recipe((2, 3, 8, 8), gen(7), zero_small=10), steps=6)
    b = maximize(model, obj, **recipe((2, 3, 8, 8), gen(7), zero_small=10), steps=6)
    c = maximize(model, obj, **recipe((2, 3, 8, 8), gen(8), zero_small=10), steps=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.curve, b.curve)
    assert not torch.equal(a.images, c.images)
    x = torch.randn(3, 3, 8, 8, generator=gen())
    adv1, adv2 = adversarial(model, x, steps=5), adversarial(model, x, steps=5)
    assert torch.equal(adv1.adv, adv2.adv) and torch.equal(adv1.probs, adv2.probs)
    x = torch.randn(2, 3, 12, 12, generator=gen())
    assert torch.equal(deepdream(model, x, "2", generator=gen(3)), deepdream(model, x, "2", generator=gen(3)))


def test_deepdream_amplifies_the_layer_and_keeps_shape():
    from reportgen.capture import capture

    model = tiny_cnn().eval()
    x = torch.randn(2, 3, 16, 16, generator=gen())
    lo, hi = [-1.0] * 3, [1.0] * 3
    x = x.clamp(-1, 1)
    out = deepdream(model, x, "4", octaves=2, steps_per_octave=5, clamp=(lo, hi), generator=gen())
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    with capture(model, ["4"]) as rec, torch.no_grad():
        model(x)
        before = rec.acts["4"].pow(2).mean((1, 2, 3))
        model(out)
        after = rec.acts["4"].pow(2).mean((1, 2, 3))
    assert (after > before).all()


# --------------------------------------------------------------------------------------------------------------------
# Adversarial examples and random directions


def test_untargeted_adversarial_flips_a_trained_model_with_a_small_change(digits_mlp):
    model, x, _ = digits_mlp
    res = adversarial(model, x, steps=100)
    assert res.success.all() and (res.final != res.original).all()
    # 8x8 digits have only 64 values, so the smallest flips are ~10-20% of the image norm (about 13% median with
    # 0.01-sized steps); images with more pixels need far less
    assert res.rel_norm.max() < 25.0, res.rel_norm
    with torch.no_grad():
        assert torch.equal(model(res.adv).argmax(1), res.final)
    # the table: row 0 is the original, each image changes label exactly at its last step and then stays
    assert torch.equal(res.labels[0], res.original)
    for i in range(len(x)):
        k = int(res.steps_taken[i])
        assert (res.labels[:k, i] == res.original[i]).all()
        assert (res.labels[k:, i] == res.final[i]).all() and (res.probs[k:, i] == res.probs[k, i]).all()
    assert res.labels.dtype == torch.long and res.probs.shape == (101, len(x))


def test_targeted_adversarial_reaches_the_target(digits_mlp):
    model, x, y = digits_mlp
    target = (y + 1) % 10
    for norm in ("l2", "linf"):
        res = adversarial(model, x, target=target, steps=200, norm=norm)
        assert res.success.all() and torch.equal(res.final, target), norm


def test_adversarial_without_stopping_runs_all_steps_and_batches_independently(digits_mlp):
    model, x, _ = digits_mlp
    res = adversarial(model, x[:3], steps=5, stop_at_change=False, step_size=0.1)
    assert (res.steps_taken == 5).all()
    # five steps of length 0.1: at most 0.5 away, and more than one step away
    limit = 100 * 0.5 / x[:3].flatten(1).norm(dim=1)
    assert (res.rel_norm <= limit + 1e-4).all() and (res.rel_norm > limit / 5).all()
    one = adversarial(model, x[1:2], steps=5, stop_at_change=False, step_size=0.1)
    assert torch.allclose(one.adv, res.adv[1:2], atol=1e-6)


def test_adversarial_clamp():
    model = tiny_cnn().eval()
    x = torch.rand(2, 3, 8, 8, generator=gen())
    res = adversarial(model, x, steps=10, norm="linf", step_size=0.3, stop_at_change=False, clamp=(0.0, 1.0))
    assert res.adv.min() >= 0 and res.adv.max() <= 1


def test_sphere_points_have_the_requested_norm():
    x = torch.randn(3, 7, 7, generator=gen())
    pts = sphere_points(x, 0.37, 200, gen(1))
    assert pts.shape == (200, 3, 7, 7)
    dist = (pts - x).flatten(1).norm(dim=1)
    assert ((dist - 0.37).abs() / 0.37).max() < 1e-5
    assert torch.equal(pts, sphere_points(x, 0.37, 200, gen(1)))
    # directions are spread out: their mean is near the centre
    assert (pts.mean(0) - x).flatten().norm() < 0.37 / 5


def test_random_sphere_counts_and_is_seeded(digits_mlp):
    model, x, _ = digits_mlp
    adv = adversarial(model, x[:3])
    radius = 2 * (adv.adv - x[:3]).flatten(1).norm(dim=1)
    a = random_sphere(model, x[:3], radius, m=300, batch_size=128, generator=gen(5))
    b = random_sphere(model, x[:3], radius, m=300, batch_size=128, generator=gen(5))
    assert torch.equal(a.changed, b.changed)
    assert torch.allclose(a.norm_min, radius, rtol=1e-5) and torch.allclose(a.norm_max, radius, rtol=1e-5)
    assert torch.allclose(a.fraction, a.changed / 300.0)
    # Szegedy et al.: random directions of twice the adversarial norm flip far less often than every time, and so
    # do those of the same norm (the report's control), which the adversarial direction flips every time
    assert (a.fraction < 0.5).all(), a.fraction
    same = random_sphere(model, x[:3], radius / 2, m=100, batch_size=128, generator=gen(5))
    assert bool(adv.success.all()) and (same.fraction < 0.5).all(), same.fraction
    huge = random_sphere(model, x[:1], 1e4, m=50, generator=gen())
    assert huge.changed.item() > 0  # far away the label is no longer the image's
    # the points come in blocks of 50 whatever the batch size: the same counts with batches of 7
    c = random_sphere(model, x[:3], radius, m=300, batch_size=7, generator=gen(5))
    assert torch.equal(a.changed, c.changed) and (c.drawn == 300).all()


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    from reportgen.methods.adversarial import wilson_interval

    for k, n in [(0, 100), (3, 50), (50, 100), (100, 100), (1, 7)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = wilson_interval(k, n)
        assert abs(low - ci.low) < 1e-5 and abs(high - ci.high) < 1e-5, (k, n)


def test_random_sphere_stops_once_the_interval_is_tight():
    # a model that never changes its label: 0 flips; the 95% Wilson half-width is 0.0357 after 50 points and
    # 0.0185 after 100, so a tolerance of 0.02 stops every image after the second block
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([5.0, -5.0]))
    x = torch.randn(2, 3, 8, 8, generator=gen(1))
    res = random_sphere(model, x, 1.0, m=1000, batch_size=32, generator=gen(2), tolerance=0.02)
    assert res.drawn.tolist() == [100, 100] and res.changed.tolist() == [0, 0]
    assert torch.allclose(res.high, torch.full((2,), 1.959964**2 / (100 + 1.959964**2)))
    full = random_sphere(model, x, 1.0, m=1000, batch_size=256, generator=gen(2))
    assert full.drawn.tolist() == [1000, 1000]


def test_zoo_lenet_adversarial():
    zoo = pytest.importorskip("models_zoo")
    try:
        entry = zoo.get("lenet-digits")
        model = entry.load_pretrained()
    except Exception as exc:  # noqa: BLE001 - registry or weights not there yet in this checkout
        pytest.skip(f"lenet-digits not available: {exc}")
    data = entry.load_dataset("test", n=32)
    x = entry.preprocess(data.inputs)
    with torch.no_grad():
        right = model(x).argmax(1) == torch.as_tensor(data.labels)
    x = x[right][:8]
    snap = snapshot(model)
    res = adversarial(model, x, steps=100, clamp=pixel_bounds(entry.mean, entry.std))
    assert_same(model, snap)
    # measured: 11-35% (median 16%) of the normalized image's norm, whose dark background dominates it
    assert res.success.all() and res.rel_norm.median() < 25.0 and res.rel_norm.max() < 50.0, res.rel_norm


# --------------------------------------------------------------------------------------------------------------------
# Priors against tiling: window, random zoom and rotation, Fourier parameterization, grey


def test_window_mask_is_one_in_the_middle_and_zero_at_the_corners():
    a = window_mask(16, 12, 1.0)
    assert a.shape == (16, 12) and a.min() >= 0 and a.max() <= 1
    assert a[8, 6] == 1 and a[0, 0] == a[-1, -1] == a[0, -1] == a[-1, 0] == 0
    assert torch.equal(a, a.flip(0)) and torch.equal(a, a.flip(1))  # centred
    assert window_mask(16, 16, 0.5).sum() < window_mask(16, 16, 1.0).sum()
    with pytest.raises(ValueError):
        window_mask(8, 8, 0.0)


@pytest.mark.parametrize("fourier", [False, True])
def test_window_makes_the_image_the_data_mean_outside(fourier):
    model = tiny_cnn().eval()
    res = maximize(model, class_logit(2), **recipe((2, 3, 16, 16), window=0.8, fourier=fourier), steps=10, lr=0.2)
    alpha = window_mask(16, 16, 0.8)
    assert (res.images[..., alpha == 0] == 0).all()  # 0 = the data mean in normalized space
    assert res.images[..., 8, 8].abs().min() > 0
    assert res.final_scores.shape == (2,) and (res.final_scores > res.curve[0]).all()


def test_random_affine_keeps_a_constant_image_constant_and_is_seeded():
    const = torch.full((3, 2, 10, 10), 0.7)
    assert torch.allclose(random_affine(const, 0.3, 180, gen()), const, atol=1e-6)
    x = torch.randn(3, 2, 10, 10, generator=gen(1))
    assert random_affine(x) is x  # nothing asked, nothing done
    a, b = random_affine(x, 0.2, 45, gen(5)), random_affine(x, 0.2, 45, gen(5))
    assert torch.equal(a, b) and not torch.allclose(a, x)
    assert not torch.equal(a, random_affine(x, 0.2, 45, gen(6)))
    # a zoom about the centre keeps a centred symmetric blob centred: its mass stays symmetric
    blob = window_mask(10, 10, 0.6).expand(1, 1, 10, 10)
    zoomed = random_affine(blob, 0.3, 0, gen())
    assert torch.allclose(zoomed, zoomed.flip(-1), atol=1e-5) and torch.allclose(zoomed, zoomed.flip(-2), atol=1e-5)


def test_fourier_scale_and_image():
    scale = fourier_scale(8, 9, decay=1.0)
    assert scale.shape == (8, 5) and torch.isclose(scale.pow(2).mean(), torch.tensor(1.0))
    assert scale[0, 0] == scale.max() and scale[4, 4] == scale.min()  # DC most, the highest frequency least
    assert torch.equal(fourier_scale(8, 9, 0.0), torch.ones(8, 5))  # no decay: white
    spec = torch.randn(2, 3, 8, 5, 2, generator=gen())
    img = fourier_image(spec, (8, 9), 1.0)
    assert img.shape == (2, 3, 8, 9) and img.dtype == torch.float32
    # the inverse: an image's own spectrum gives it back
    from reportgen.methods.optimize import _fourier_init

    x = torch.randn(2, 3, 8, 9, generator=gen(1))
    assert torch.allclose(fourier_image(_fourier_init(x, 1.5), (8, 9), 1.5), x, atol=1e-5)
    # a DC coefficient alone is a constant image
    dc = torch.zeros(1, 1, 8, 5, 2)
    dc[0, 0, 0, 0, 0] = 1.0
    flat = fourier_image(dc, (8, 9), 1.0)
    assert torch.allclose(flat, flat[0, 0, 0, 0].expand_as(flat)) and flat[0, 0, 0, 0] > 0


def test_fourier_maximize_is_seeded_and_clamped():
    model = tiny_cnn().eval()
    lo, hi = pixel_bounds([0.5, 0.4, 0.3], [0.25, 0.2, 0.25])
    kw = dict(fourier=True, clamp=(lo, hi), scale_jitter=0.1, rotate=20)
    a = maximize(model, class_logit(1), **recipe((2, 3, 16, 16), gen(3), **kw), steps=15, lr=0.2)
    b = maximize(model, class_logit(1), **recipe((2, 3, 16, 16), gen(3), **kw), steps=15, lr=0.2)
    c = maximize(model, class_logit(1), **recipe((2, 3, 16, 16), gen(4), **kw), steps=15, lr=0.2)
    assert torch.equal(a.images, b.images) and torch.equal(a.curve, b.curve) and not torch.equal(a.images, c.images)
    assert a.images.shape == (2, 3, 16, 16)
    for ch in range(3):
        assert a.images[:, ch].min() >= lo[ch] - 1e-6 and a.images[:, ch].max() <= hi[ch] + 1e-6
    assert (a.final_scores > a.curve[0]).all()
    with pytest.raises(ValueError, match="fourier"):  # zeroing small pixels needs pixels
        recipe((1, 3, 8, 8), fourier=True, zero_small=10)


@pytest.mark.parametrize("fourier", [False, True])
def test_grey_gives_equal_channels_inside_every_channel_bound(fourier):
    model = tiny_cnn().eval()
    lo, hi = pixel_bounds([0.5, 0.4, 0.3], [0.25, 0.2, 0.25])
    res = maximize(model, class_logit(0), **recipe((2, 3, 8, 8), grey=True, fourier=fourier, clamp=(lo, hi)),
                   steps=10, lr=0.5)
    assert torch.equal(res.images[:, 0], res.images[:, 1]) and torch.equal(res.images[:, 1], res.images[:, 2])
    assert res.images.min() >= max(lo) - 1e-6 and res.images.max() <= min(hi) + 1e-6
    assert (res.final_scores > res.curve[0]).all()


# --------------------------------------------------------------------------------------------------------------------
# The composable parts: transforms, parameterizations, the recipe


BOUNDS = ([-1.0, -0.5, 0.0], [1.0, 0.5, 2.0])

# name -> (build(generator) -> transform, random?)
TRANSFORMS = {
    "random_roll": (lambda g: random_roll(3, g), True),
    "random_zoom_rotate": (lambda g: random_zoom_rotate(0.2, 30, g), True),
    "soft_window": (lambda g: soft_window(0.8), False),
    "gaussian_blur": (lambda g: gaussian_blur(0.7), False),
    "every": (lambda g: every(2, gaussian_blur(1.0)), False),
    "zero_below": (lambda g: zero_below(25), False),
    "bounded": (lambda g: bounded(BOUNDS), False),
    "standard_transforms": (lambda g: compose(*standard_transforms(g, scale_jitter=0.1, rotate=20)), True),
    "standard_edits": (lambda g: compose(*standard_edits(clamp=BOUNDS, blur_every=2, zero_small=10)), False),
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transform_is_seeded_keeps_shape_and_leaves_the_global_rng_alone(name):
    build, random = TRANSFORMS[name]
    x = torch.randn(2, 3, 10, 12, generator=gen(9))
    copy = x.clone()
    rng = torch.get_rng_state()
    # three calls: transforms with a counter or a generator change from call to call, the same way for the same seed
    a = [t(x) for t in [build(gen(1))] for _ in range(3)]
    b = [t(x) for t in [build(gen(1))] for _ in range(3)]
    assert all(out.shape == x.shape and out.dtype == x.dtype for out in a)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert torch.equal(x, copy)  # the input is not modified
    assert torch.equal(torch.get_rng_state(), rng)  # randomness only from the generator passed in
    if random:
        c = [t(x) for t in [build(gen(2))] for _ in range(3)]
        assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_compose_applies_in_order():
    x = torch.arange(4.0).view(1, 1, 2, 2)
    plus1, times2 = (lambda t: t + 1), (lambda t: t * 2)
    assert torch.equal(compose(plus1, times2)(x), (x + 1) * 2)
    assert torch.equal(compose(times2, plus1)(x), 2 * x + 1)
    assert compose()(x) is x
    # a random transform inside a chain draws exactly what it draws alone
    y = torch.randn(2, 3, 8, 8, generator=gen())
    chained = compose(random_roll(2, gen(4)), soft_window(0.8), gaussian_blur(0.5))(y)
    assert torch.equal(chained, gaussian_blur(0.5)(soft_window(0.8)(random_roll(2, gen(4))(y))))


def test_every_counts_its_calls_and_bounded_keeps_grey_inside_every_channel():
    t = every(3, lambda x: x + 1)
    x = torch.zeros(1, 1, 1, 1)
    assert [float(t(x)) for _ in range(7)] == [0, 0, 1, 0, 0, 1, 0]
    assert float(every(0, lambda x: x + 1)(x)) == 0  # 0: never
    colour = bounded(BOUNDS)(torch.full((1, 3, 2, 2), 5.0))
    assert colour[0, :, 0, 0].tolist() == [1.0, 0.5, 2.0]
    grey = bounded(BOUNDS)(torch.tensor([-9.0, 0.2, 9.0]).view(1, 1, 1, 3))
    assert grey.flatten().tolist() == [0.0, pytest.approx(0.2), 0.5]  # inside [-1, 1], [-0.5, 0.5] and [0, 2]


def test_pixel_param_is_the_clipped_start_and_leaves_init_alone():
    init = torch.randn(2, 3, 6, 7, generator=gen())
    params, image = pixel_param(init, clamp=BOUNDS)
    assert len(params) == 1 and params[0].requires_grad and params[0].shape == (2, 3, 6, 7)
    assert image() is params[0] and torch.equal(image(), bounded(BOUNDS)(init))
    for c in range(3):
        assert image()[:, c].min() >= BOUNDS[0][c] and image()[:, c].max() <= BOUNDS[1][c]
    assert torch.equal(init, torch.randn(2, 3, 6, 7, generator=gen()))


def test_fourier_param_image_has_the_scaled_parameter_as_spectrum():
    h, w, decay = 8, 9, 1.5
    init = torch.randn(2, 3, h, w, generator=gen())
    params, image = fourier_param(init, decay)
    assert params[0].shape == (2, 3, h, w // 2 + 1, 2) and image().shape == (2, 3, h, w)
    assert torch.allclose(image(), init, atol=1e-5)  # it starts at init
    # known answer: a spectrum free of the constraints of a real image's FFT (column 0 must be Hermitian; an odd
    # width has no Nyquist column) comes back as rfft2(image) = parameter * fourier_scale
    spec = torch.randn(2, 3, h, w // 2 + 1, 2, generator=gen(1))
    spec[..., 0, :] = 0
    with torch.no_grad():
        params[0].copy_(spec)
    got = torch.fft.rfft2(image(), norm="ortho")
    assert torch.allclose(got, torch.view_as_complex(spec) * fourier_scale(h, w, decay), atol=1e-5)
    # and one coefficient a at (0, k) is the cosine 2 a s_k cos(2 pi k x / W) / sqrt(H W) along every row
    one = torch.zeros_like(spec)
    one[0, 0, 0, 2, 0] = 0.5
    with torch.no_grad():
        params[0].copy_(one)
    xs = torch.arange(w, dtype=torch.float64)
    cosine = 2 * 0.5 * fourier_scale(h, w, decay, dtype=torch.float64)[0, 2] * torch.cos(2 * torch.pi * 2 * xs / w)
    assert torch.allclose(image()[0, 0].double(), (cosine / (h * w) ** 0.5).expand(h, w), atol=1e-6)
    # with bounds, the image is clipped inside the graph
    _, clipped = fourier_param(10 * init, decay, clamp=BOUNDS)
    for c in range(3):
        assert clipped()[:, c].min() >= BOUNDS[0][c] - 1e-6 and clipped()[:, c].max() <= BOUNDS[1][c] + 1e-6


@pytest.mark.parametrize("base", [pixel_param, fourier_param])
def test_grey_param_copies_one_channel_inside_every_channel_bound(base):
    init = 3 * torch.randn(2, 3, 8, 8, generator=gen())
    params, image = grey_param(init, base, clamp=BOUNDS)
    assert params[0].shape[:2] == (2, 1) and image().shape == (2, 3, 8, 8)
    x = image()
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert x.min() >= 0.0 - 1e-6 and x.max() <= 0.5 + 1e-6  # the tightest of the three channels' bounds


def test_mapped_param_windows_the_image():
    params, image = mapped_param(pixel_param(torch.ones(1, 2, 12, 12)), soft_window(0.8))
    assert torch.equal(image(), window_mask(12, 12, 0.8).expand(1, 2, 12, 12))
    assert image().shape == (1, 2, 12, 12) and params[0].shape == (1, 2, 12, 12)


PARAMS = {
    "pixels": lambda x: pixel_param(x),
    "fourier": lambda x: fourier_param(x, 1.5),
    "grey pixels": lambda x: grey_param(x),
    "grey fourier": lambda x: grey_param(x, fourier_param, decay=1.5),
    "windowed pixels": lambda x: mapped_param(pixel_param(x), soft_window(0.9)),
    "standard (class-max)": lambda x: standard_param(x, fourier=True, fourier_decay=1.5, grey=True, window=0.8),
}


@pytest.mark.parametrize("name", PARAMS)
def test_every_parameterization_raises_the_objective_in_five_steps(name):
    model = tiny_cnn().eval()
    param = PARAMS[name](noise((2, 3, 16, 16), gen(), std=0.1))
    res = maximize(model, class_logit([1, 3]), param, steps=5, lr=0.1)
    assert res.images.shape == (2, 3, 16, 16) and res.curve.shape == (5, 2)
    assert (res.final_scores > res.curve[0]).all(), (res.curve, res.final_scores)


def test_recipe_is_the_settings_and_maximize_draws_nothing_itself():
    g = gen()
    assert len(standard_transforms(g)) == 1  # the defaults: jitter only
    assert len(standard_transforms(g, scale_jitter=0.1)) == 2 and standard_transforms(g, jitter=0) == []
    assert len(standard_edits()) == 1 and len(standard_edits(clamp=BOUNDS, zero_small=5)) == 3
    assert standard_edits(fourier=True) == [] and standard_edits(blur_every=0) == []
    logits, x = torch.tensor([[1.0, 2.0]]), torch.ones(1, 1, 2, 2)
    obj = penalized(class_logit(1), l2_weight=0.5, edge_weight=2.0)
    assert torch.allclose(obj(logits, None, x), torch.tensor([2.0 - 0.5 * 4 - 0.0]))
    assert penalized(class_logit(1)).name == "class_logit(1)"  # zero weights add nothing
    model = tiny_cnn().eval()
    rng = torch.get_rng_state()
    maximize(model, class_logit(0), **recipe((1, 3, 8, 8), scale_jitter=0.1, rotate=10), steps=3)
    assert torch.equal(torch.get_rng_state(), rng)


def test_maximize_takes_one_transform_or_a_list_and_edits_need_one_tensor():
    model = tiny_cnn().eval()

    def run(wrap):
        param = pixel_param(noise((1, 3, 8, 8), gen()))
        return maximize(model, class_logit(2), param, wrap(random_roll(1, gen(3))), edits=wrap(gaussian_blur(0.5)),
                        steps=3).images

    assert torch.equal(run(lambda f: [f]), run(lambda f: f))
    a, b = (torch.zeros(1, 3, 8, 8, requires_grad=True) for _ in range(2))
    two = ([a, b], lambda: a + b)
    with pytest.raises(ValueError, match="one pixel tensor"):  # an every() edit would count two calls per step
        maximize(model, class_logit(0), two, edits=[gaussian_blur(0.5)], steps=1)
    assert maximize(model, class_logit(0), two, steps=2).images.shape == (1, 3, 8, 8)  # no edits: any tensors


def test_adam_is_torch_adam_bit_for_bit():
    """`maximize`'s Adam (written out: torch.optim imports torch._dynamo) makes the same bits as torch.optim.Adam,
    over steps with gradients of very different sizes, so the report's images do not change."""
    from reportgen.methods.optimize import _Adam

    g = gen(0)
    start = [torch.randn(2, 3, 4, 4, generator=g), torch.randn(3, 5, 2, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) * 10.0 ** (s % 5 - 3) for p in start] for s in range(12)]
    mine, theirs = [p.clone() for p in start], [p.clone().requires_grad_(True) for p in start]
    adam, ref = _Adam(mine, lr=0.05), torch.optim.Adam(theirs, lr=0.05)
    for step in grads:
        adam.step(step)
        for p, grad in zip(theirs, step):
            p.grad = grad
        ref.step()
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b.detach())


def test_maximize_uses_no_torch_optimizer(monkeypatch):
    """torch.optim's first step imports torch._dynamo (2 to 3 s of a build): `maximize` uses none of its
    optimizers."""

    def refuse(*args, **kwargs):
        raise AssertionError("a torch.optim optimizer was built")

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", refuse)
    model = tiny_cnn().eval()
    assert maximize(model, class_logit(0), **recipe((1, 3, 8, 8)), steps=2).curve.shape == (2, 1)
