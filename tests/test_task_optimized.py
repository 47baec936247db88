"""Class images and adversarial examples per task (issue 30 item 3): known answers on tiny hand-weighted models.

Each model is linear where the answer needs it, so that the result is a formula of its weights: Adam from a zero
image under a constant gradient g moves every pixel by lr * sign(g) per step; an l2 attack on a linear score moves
along its weight vector and crosses the boundary after margin / (||w|| step) steps; a random direction on a circle
crosses a line at distance m from the centre with probability arccos(m / r) / pi.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.analyses.findings import robustness_findings
from reportgen.analyses.optimized import (Adversarial, AdversarialParams, ClassMax, ClassMaxParams, class_counts,
                                          prototypes)
from reportgen.context import Predictions
from reportgen.data import ImageSet
from reportgen.methods import adversarial as adv
from reportgen.methods import optimize as opt
from reportgen.models import InputSpec


def flags(model: nn.Module) -> list:
    return [m.training for m in model.modules()] + [p.requires_grad for p in model.parameters()]


def state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(model: nn.Module, before_flags: list, before_state: dict) -> bool:
    return flags(model) == before_flags and all(torch.equal(v, model.state_dict()[k]) for k, v in before_state.items())


class Linear(nn.Module):
    """z = W x_flat + b: logits of a multi-label head (K rows), a binary logit (1 row), a regressor's outputs."""

    def __init__(self, weight, bias) -> None:
        super().__init__()
        self.fc = nn.Linear(len(weight[0]), len(weight))
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(weight, dtype=torch.float32))
            self.fc.bias.copy_(torch.tensor(bias, dtype=torch.float32))

    def forward(self, x):
        return self.fc(x.flatten(1))


class PixelSeg(nn.Module):
    """A 1x1-conv segmenter: y_k(p) = W_k . x(p) + b_k, torchvision's dict output {'out': (N, K, H, W)}."""

    def __init__(self, weight, bias) -> None:
        super().__init__()
        self.conv = nn.Conv2d(len(weight[0]), len(weight), 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(weight, dtype=torch.float32)[:, :, None, None])
            self.conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))

    def forward(self, x):
        return {"out": self.conv(x)}


class OneBoxDetector(nn.Module):
    """A detector with one candidate box per image, label 1, score sigmoid(w . x + b), kept above 0.05 as a
    detector's own threshold keeps its boxes (torchvision's output: a list of dicts)."""

    def __init__(self, w, b) -> None:
        super().__init__()
        self.fc = nn.Linear(len(w), 1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([w], dtype=torch.float32))
            self.fc.bias.fill_(b)

    def forward(self, x):
        scores = torch.sigmoid(self.fc(x.flatten(1)))[:, 0]
        box = torch.tensor([[2.0, 2.0, 6.0, 6.0]])
        out = []
        for s in scores:
            keep = s > 0.05
            out.append({"boxes": box[: int(keep)], "labels": torch.ones(int(keep), dtype=torch.long),
                        "scores": s.reshape(1)[: int(keep)]})
        return out


# --------------------------------------------------------------------------------------------------------------------
# Class images


def adam_from_zero(model, objective, shape, steps=5, lr=0.1):
    param = opt.pixel_param(torch.zeros(shape))
    return opt.maximize(model, objective, param, steps=steps, lr=lr)


def test_multilabel_class_image_moves_along_the_label_weights_only():
    # rows with entries of equal size: Adam's sign steps then point exactly along each row
    w = [[1.0, -1.0, 1.0, -1.0], [-2.0, -2.0, 2.0, 2.0], [0.5, 0.5, 0.5, -0.5]]
    model = Linear(w, [0.1, -0.2, 0.3]).train()
    model.fc.weight.requires_grad_(True)
    before, kept = flags(model), state(model)
    ctx = SimpleNamespace(task="multilabel")
    make, what = ClassMax().objective(ctx, ClassMaxParams())
    res = adam_from_zero(model, make([0, 1, 2]), (3, 1, 2, 2))
    x = res.images.flatten(1).numpy()
    wn = np.asarray(w)
    for j in range(3):
        cos = x[j] @ wn[j] / (np.linalg.norm(x[j]) * np.linalg.norm(wn[j]))
        assert cos == pytest.approx(1.0, abs=1e-6)
        # 5 Adam steps of 0.1 from 0 under a constant gradient: every pixel moved by 0.5 (up to Adam's eps)
        np.testing.assert_allclose(np.abs(x[j]), 0.5, rtol=1e-5)
        # the label's logit rose by 0.5 ||w_j||_1, the objective at the end
        assert float(res.final_scores[j]) == pytest.approx([0.1, -0.2, 0.3][j] + 0.5 * np.abs(wn[j]).sum(), rel=1e-5)
    assert what == "the logit of the label '{name}'"
    assert same(model, before, kept)


def test_binary_class_images_are_the_two_log_odds():
    w = [[1.0, -1.0, -1.0, 1.0]]
    model = Linear(w, [0.0]).eval()
    ctx = SimpleNamespace(task="binary")
    make, _ = ClassMax().objective(ctx, ClassMaxParams())
    res = adam_from_zero(model, make([0, 1]), (2, 1, 2, 2))
    x = res.images.flatten(1).numpy()
    np.testing.assert_allclose(x[1], 0.5 * np.sign(w[0]), rtol=1e-5)  # most positive: along w
    np.testing.assert_allclose(x[0], -0.5 * np.sign(w[0]), rtol=1e-5)  # most negative: against it
    z = model(res.images).detach()[:, 0].numpy()
    assert z[1] == pytest.approx(2.0, rel=1e-5) and z[0] == pytest.approx(-2.0, rel=1e-5)
    # probability objective: sigmoid of the log-odds, so its gradient is p (1 - p) w
    prob = opt.binary_prob([0, 1])
    xs = torch.zeros(2, 1, 2, 2, requires_grad=True)
    (g,) = torch.autograd.grad(prob(model(xs)).sum(), xs)
    np.testing.assert_allclose(g.flatten(1).numpy(), 0.25 * np.array([[-1.0], [1.0]]) * np.array(w), rtol=1e-6)


def centre_disk(h: int, w: int) -> np.ndarray:
    """The centre region written out: pixel centres within a quarter of the shorter side of the map's centre."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot(yy + 0.5 - h / 2, xx + 0.5 - w / 2) <= min(h, w) / 4


def test_segment_class_image_gradient_is_the_class_weights_over_the_centre_disk():
    w = [[1.0, -1.0], [0.5, 2.0], [-1.0, -1.0]]
    model = PixelSeg(w, [0.0, 0.1, -0.1]).eval()
    disk = centre_disk(8, 8)
    assert disk.sum() == 12
    obj = opt.region_logit([0, 1, 2])
    xs = torch.zeros(3, 2, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(obj(model(xs)).sum(), xs)
    for k in range(3):
        expect = np.asarray(w[k])[:, None, None] * disk[None] / disk.sum()
        np.testing.assert_allclose(g[k].numpy(), expect, rtol=1e-6, atol=1e-9)
    # Adam: the centre moves along sign(W_k), the rest stays at the data mean (0)
    res = adam_from_zero(model, obj, (3, 2, 8, 8), steps=4, lr=0.1)
    for k in range(3):
        img = res.images[k].numpy()
        np.testing.assert_allclose(img[:, disk], np.repeat(0.4 * np.sign(np.asarray(w[k]))[:, None], 12, 1), rtol=1e-5)
        assert not img[:, ~disk].any()


def test_embed_prototypes_and_their_class_images():
    e = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]], np.float32)
    labels = np.array([0, 0, 1, -1])
    ctx = SimpleNamespace(task="embed", class_names=["a", "b", "c"],
                          predictions=Predictions(np.arange(4), e, labels, task="embed"))
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    np.testing.assert_allclose(prototypes(ctx), [unit[:2].mean(0), unit[2], [0.0, 0.0]], rtol=1e-6)
    assert class_counts(ctx).tolist() == [2, 1, 0]
    assert ClassMax().pick_classes(ctx, ClassMaxParams())[0] == [0, 1]  # a class without images has no prototype
    model = Linear([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], [0.0, 0.0]).eval()
    make, _ = ClassMax().objective(ctx, ClassMaxParams())
    res = adam_from_zero(model, make([0, 1]), (2, 1, 2, 2), steps=30, lr=0.05)
    out = model(res.images).detach().numpy()
    for j, proto in enumerate(prototypes(ctx)[:2]):  # cosine to its own prototype close to 1
        assert out[j] @ proto / (np.linalg.norm(out[j]) * np.linalg.norm(proto)) > 0.999


def test_detect_and_regress_say_why_not():
    assert "detect" not in ClassMax.tasks and "regress" not in Adversarial.tasks
    assert "non-maximum suppression" in ClassMax().not_for_task("detect")
    assert "real outputs have none" in Adversarial().not_for_task("regress")
    ctx = SimpleNamespace(task="regress", class_names=["o1"], predictions=None)
    with pytest.raises(Exception, match="'prob' needs probabilities, and a regress model's outputs have none"):
        ClassMax().check(ctx, ClassMaxParams(target="prob"))


# --------------------------------------------------------------------------------------------------------------------
# Adversarial flips


def test_binary_flip_at_the_linear_margin():
    w = np.array([3.0, -1.0, 2.0, 1.0])
    model = Linear([w.tolist()], [0.25]).train()
    before, kept = flags(model), state(model)
    x = torch.tensor([[[[0.5, 0.2], [0.3, -0.1]]], [[[-0.4, 0.3], [0.1, -0.5]]]])
    z0 = x.flatten(1).numpy() @ w + 0.25
    margin = np.abs(z0) / np.linalg.norm(w)  # the distance to the boundary z = 0
    step = 0.01
    res = adv.adversarial(model, x, flip=adv.ClassFlip(binary=True), steps=200, step_size=step)
    assert res.success.all()
    np.testing.assert_array_equal(res.steps_taken.numpy(), np.ceil(margin / step))
    dist = (res.adv - x).flatten(1).norm(dim=1).numpy()
    assert ((dist >= margin) & (dist < margin + step)).all()
    assert res.original.tolist() == (z0 > 0).astype(int).tolist() and (res.final != res.original).all()
    p = 1 / (1 + np.exp(-z0))
    np.testing.assert_allclose(res.probs[0].numpy(), np.maximum(p, 1 - p), rtol=1e-5)
    assert same(model, before, kept)


def test_sphere_control_counts_the_binary_flip_on_a_circle():
    # d = 2 (a 1x1x2 image): points on a circle of radius r around x cross the line z = 0 at distance m from x
    # with probability arccos(m / r) / pi
    w = np.array([1.0, 1.0])
    model = Linear([w.tolist()], [-1.0]).eval()
    x = torch.tensor([[[[1.0, 1.0]]]])  # z = 1, distance m = 1 / sqrt(2)
    m, r = 1 / math.sqrt(2), 1.0
    sph = adv.random_sphere(model, x, r, m=4000, batch_size=1000, generator=torch.Generator().manual_seed(0),
                            flip=adv.ClassFlip(binary=True))
    expect = math.acos(m / r) / math.pi  # 0.25
    assert float(sph.fraction[0]) == pytest.approx(expect, abs=4 * math.sqrt(expect * (1 - expect) / 4000))


def test_multilabel_flip_lists_the_labels_that_crossed():
    w = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
    model = Linear(w, [0.0, 0.0, 0.0]).eval()
    x = torch.tensor([[[[0.3, -2.0], [1.0, 1.0]]]])  # labels on: 0 (0.3), off: 1 (-2), on: 2 (2)
    res = adv.adversarial(model, x, flip=adv.LabelSetFlip(0.5), steps=100, step_size=0.05)
    assert res.success.all()
    z_adv = res.adv.flatten(1).numpy() @ np.asarray(w).T
    assert (z_adv > 0).astype(int).tolist() == res.final.tolist() == [[0, 0, 1]]  # label 0 crossed first
    assert res.original.tolist() == [[1, 0, 1]] and float(res.probs[-1, 0]) == 1.0
    k = int(res.steps_taken[0])
    assert res.labels[k - 1, 0].tolist() == [1, 0, 1]  # the step before the flip: the original set


def test_segmentation_flip_share_equals_a_numpy_count():
    w = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]  # class 0 = background at 0, class 1 where x0 > max(x1, 0)
    model = PixelSeg(w, [0.0, 0.0, 0.0]).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 6, 6, generator=g) * torch.tensor([1.0, 0.4]).view(1, 2, 1, 1)
    flip = adv.RegionFlip(0.5, background=0)
    res = adv.adversarial(model, x, flip=flip, steps=200, step_size=0.05)
    y0 = model(x)["out"].detach().numpy()[0]
    pred0 = y0.argmax(0)
    main = np.bincount(pred0[pred0 != 0], minlength=3).argmax()
    region = pred0 == main

    def share(img):
        pred = model(img)["out"].detach().numpy()[0].argmax(0)
        return float((pred[region] != main).mean())

    k = int(res.steps_taken[0])
    assert res.success.all() and share(res.adv) > 0.5
    assert float(res.probs[-1, 0]) == pytest.approx(share(res.adv), abs=1e-7)
    assert float(res.probs[k - 1, 0]) <= 0.5  # not yet flipped one step before
    bound = flip.start(model(x))
    assert int(bound.category[0]) == main and torch.equal(bound.region[0], torch.as_tensor(region))


def test_detection_flip_loses_the_top_box_at_the_score_margin():
    w = np.array([2.0, -1.0, 0.0, 2.0])
    model = OneBoxDetector(w.tolist(), 0.5).eval()
    x = torch.tensor([[[[0.5, 0.1], [0.2, 0.3]]], [[[-0.5, 0.5], [0.0, -0.5]]]])
    z0 = x.flatten(1).numpy() @ w + 0.5  # image 0: score sigmoid(1.5) > 0.5; image 1: sigmoid(-1.5), nothing to lose
    step = 0.02
    res = adv.adversarial(model, x, flip=adv.DetectionFlip(0.5, 0.5), steps=200, step_size=step)
    assert res.success.tolist() == [True, False] and res.steps_taken.tolist()[1] == 0
    # lost when the score falls below 0.5, i.e. z below 0: after ceil(margin / step) steps
    assert int(res.steps_taken[0]) == math.ceil(z0[0] / np.linalg.norm(w) / step)
    assert torch.equal(res.adv[1], x[1])
    # a page whose images all lack a top detection: the finding says why it is not checked
    (f,) = robustness_findings({"change %": [], "changed": [], "steps": 200, "flips": "loses the top detection"})
    assert f.severity == "not checked" and "no sample image has a top detection" in f.sentence


def test_neighbour_flip_changes_the_nearest_row():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]])
    model = Linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]).eval()  # the embedding is the image (1x1x2)
    x = torch.tensor([[[[1.0, 0.3]]]])
    flip = adv.NeighbourFlip(bank, own=[-1])
    res = adv.adversarial(model, x, flip=flip, steps=100, step_size=0.05)
    e = res.adv.flatten(1).numpy()[0]
    sims = bank.numpy() @ e / (np.linalg.norm(bank.numpy(), axis=1) * np.linalg.norm(e))
    assert res.success.all() and res.original.tolist() == [0] and int(res.final[0]) == int(sims.argmax()) == 1
    # its own row is never its neighbour
    own = adv.NeighbourFlip(bank, own=[0]).start(model(x))
    assert own.nearest.tolist() == [1]


def test_model_unchanged_after_an_error():
    model = Linear([[1.0, 0.0]], [0.0]).train()
    before, kept = flags(model), state(model)
    with pytest.raises(ValueError, match="segmentation flip reads"):
        adv.adversarial(model, torch.zeros(1, 1, 1, 2), flip=adv.RegionFlip())
    with pytest.raises(ValueError, match="segmentation objective reads"):
        adam_from_zero(model, opt.region_logit(0), (1, 1, 1, 2), steps=1)
    assert same(model, before, kept)


# --------------------------------------------------------------------------------------------------------------------
# The page and its finding


def test_multilabel_page_table_and_finding():
    spec = InputSpec("image", (2, 2), 1, (0.5,), (0.5,))
    arrays = [np.array([[140, 20], [200, 200]], np.uint8)[..., None], np.full((2, 2, 1), 90, np.uint8)]
    images = ImageSet(source="stub", names=["a.png", "b.png"], labels=np.array([-1, -1]), class_names=None,
                      spec=spec, _load=lambda i: arrays[i])
    w = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
    model = Linear(w, [0.0, 0.0, 0.0]).eval()
    ctx = SimpleNamespace(model=model, images=images, samples=[0, 1], device="cpu", class_names=["cat", "dog", "sun"],
                          loaded=SimpleNamespace(input=spec, label_offset=0), task="multilabel",
                          batch_size=lambda grad: 8, generator=lambda name: torch.Generator().manual_seed(0),
                          map_chunks=lambda fn, chunks, label: [fn(c) for c in chunks])
    params = AdversarialParams(steps=60, step_size=0.05, targeted=True, sphere_points=100, sphere_tolerance=0.0)
    result = Adversarial().run(ctx, params, {})
    summary = next(i for i in result.items if i.key == "summary")
    (a, b) = summary.rows
    # image a: cat (0.1) on, dog (-0.84) off, sun on: cat is nearest its threshold and goes off first
    assert a[:4] == ["a.png", "cat, sun", "sun", "-cat"] and a[6] == "yes"
    assert b[1] == "none" and b[6] == "yes"  # every label off; the nearest one comes on
    robust = result.shared["robustness"]
    assert robust["flips"] == "changes the predicted label set" and robust["changed"] == [True, True]
    assert any("targeted variant" in n for n in result.notes)
    (f,) = robustness_findings(robust)
    assert f.sentence.startswith("A median change of") and "changes the predicted label set (2 of 2" in f.sentence
    assert "flip the label" not in f.sentence


def test_the_attack_on_a_detector_needs_a_top_detection_to_lose():
    from types import SimpleNamespace

    from reportgen.analyses.optimized import SCORE_THRESHOLD, Adversarial

    def ctx(*tops):
        dets = [{"scores": np.array(t, np.float32)} for t in tops]
        pred = SimpleNamespace(detections=dets, row=lambda i: i)
        return SimpleNamespace(task="detect", predictions=pred, samples=list(range(len(dets))))

    low = ctx([0.2, 0.2], [0.2], [])  # a random SSDlite: every score 1/K
    why = Adversarial.nothing_to_lose(low)
    assert why.startswith(f"none of the 3 sample images has a detection of score {SCORE_THRESHOLD:g} or more "
                          "(the highest scores 0.2)")
    assert Adversarial().cost(low, None) == 0.0
    assert Adversarial.nothing_to_lose(ctx([], [SCORE_THRESHOLD, 0.1])) == ""
    assert Adversarial.nothing_to_lose(SimpleNamespace(task="classify")) == ""
