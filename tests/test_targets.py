"""Targets (reportgen.methods.targets): every method takes a callable score besides class indices.

Known answers on hand-weighted models (a 1x1-conv segmenter, a linear embedder), the exact equality of a callable
class logit with today's class indices for every method the report shows, the model left unchanged, and the
oracles of issue 30: Grad-CAM equal to pytorch-grad-cam's SemanticSegmentationTarget and FasterRCNNBoxScoreTarget,
Integrated Gradients and plain gradients equal to Captum's with a forward function that returns the same score.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.methods import attribution as A
from reportgen.methods import cams as C
from reportgen.methods import lrp as LRP
from reportgen.methods import paths as PATHS
from reportgen.methods.targets import (BoxScoreTarget, ClassTarget, RegionTarget, SimilarityTarget, resolve_target,
                                       select_target, target_scores)
from test_attribution import SHOWN, assert_untouched, display_map, hygiene_model, images, method_params, net_for, state

# ---------------------------------------------------------------------------------------------------------------
# Hand-weighted models


class LinearSegmenter(nn.Module):
    """A 1x1 convolution: class k's logit at pixel p is ``sum_c W[k, c] x_c(p) + b_k``; returns torchvision's
    segmentation dict ``{'out': (N, K, H, W), 'aux': ...}``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, aux: bool = True):
        super().__init__()
        k, c = weight.shape
        self.aux = aux
        self.head = nn.Conv2d(c, k, 1, bias=bias is not None)
        with torch.no_grad():
            self.head.weight.copy_(weight[:, :, None, None])
            if bias is not None:
                self.head.bias.copy_(bias)

    def forward(self, x):
        out = self.head(x)
        return {"out": out, "aux": out.detach() * 0} if self.aux else {"out": out}


W_SEG = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.5, -1.0], [-0.5, 0.25, 2.0]])  # 3 classes x 3 channels


class LinearEmbedder(nn.Module):
    """``e = A flatten(x)``, an embedding (N, D)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, x):
        return x.flatten(1) @ self.a.T


# ---------------------------------------------------------------------------------------------------------------
# A callable class logit is today's class index, for every method


def _callable_map(name: str, model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    return display_map(name, model, x, target, **method_params(name))


@pytest.mark.parametrize("name", list(SHOWN))
def test_callable_class_logit_gives_todays_map_for_every_method(name):
    model, x, classes = net_for(name).eval(), images(3), torch.tensor([0, 3, 1])
    if name == "legrad":  # LeGrad reads class logits through the model's own head: it refuses a callable
        with pytest.raises(ValueError, match="explains class logits"):
            _callable_map(name, model, x, ClassTarget(classes))
        return
    if name == "cam":  # the page turns a ClassTarget into the rows of the head; a plain callable has no row
        with pytest.raises(ValueError, match="not applicable to a callable target"):
            _callable_map(name, model, x, lambda out: out[:, 2])
        with pytest.raises(ValueError, match="negated logit"):
            _callable_map(name, model, x, ClassTarget(0, activation="sigmoid", negate=True))
        torch.testing.assert_close(_callable_map(name, model, x, ClassTarget(classes)),
                                   _callable_map(name, model, x, classes), rtol=0, atol=0)
        return
    today = _callable_map(name, model, x, classes)
    # per-image classes go through every batch's select(index); a plain function of one class is used as is
    torch.testing.assert_close(_callable_map(name, model, x, ClassTarget(classes)), today, rtol=0, atol=0)
    # RISE scores probabilities: a plain callable's score is used as it returns, so it returns the probability
    plain = (lambda out: out.softmax(dim=1)[:, 2]) if name == "rise" else (lambda out: out[:, 2])
    torch.testing.assert_close(_callable_map(name, model, x, plain), _callable_map(name, model, x, 2), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(SHOWN))
def test_every_method_leaves_the_model_unchanged_with_a_callable_target(name):
    params = method_params(name)
    if "cam" in name:
        params["layer"] = "features"
    if name == "cam":
        params["fc"] = "fc"
    x = images(2)
    cases = [("ok", 0, ClassTarget([0, 1])), ("fail", 1, ClassTarget([0, 1])),
             ("bad shape", 0, lambda out: out[:, :2])]  # (N, 2) scores: not one per image
    for case, fail_at, target in cases:
        model = hygiene_model(fail_at=fail_at, name=name)
        before = state(model)
        if case == "ok" and name != "legrad":
            assert display_map(name, model, x, target, **params).shape == (2, 8, 8)
        else:
            with pytest.raises((RuntimeError, ValueError),
                               match="injected|one score per image|not applicable|explains class logits"):
                display_map(name, model, x, target, **params)
        assert_untouched(model, before)


# ---------------------------------------------------------------------------------------------------------------
# Known answers on hand-weighted models


def seg_inputs(n: int = 2, h: int = 6, w: int = 5, seed: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_region_gradient_on_a_linear_segmenter_is_the_class_weight_over_the_region():
    model, x, k = LinearSegmenter(W_SEG, torch.tensor([0.1, -0.2, 0.3])).eval(), seg_inputs(), 1
    # d/dx_c(p) of (1/|M|) sum_{q in M} (sum_c W[k, c] x_c(q) + b_k) = W[k, c] [p in M] / |M|
    mask = torch.zeros(2, 6, 5, dtype=torch.bool)
    mask[0, 1:4, 2:5] = True
    mask[1, 0, :] = True
    expected = W_SEG[k][None, :, None, None] * (mask[:, None] / mask.sum((1, 2)).view(2, 1, 1, 1))
    torch.testing.assert_close(A.gradient(model, x, RegionTarget(k, mask)), expected, rtol=1e-6, atol=1e-7)
    # the predicted region: the pixels whose argmax is k, computed here from the logits directly
    logits = torch.einsum("kc,nchw->nkhw", W_SEG, x) + torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1)
    predicted = logits.argmax(dim=1) == k
    assert predicted.any(dim=(1, 2)).all()
    expected = W_SEG[k][None, :, None, None] * (predicted[:, None] / predicted.sum((1, 2)).view(2, 1, 1, 1))
    torch.testing.assert_close(A.gradient(model, x, RegionTarget(k)), expected, rtol=1e-6, atol=1e-7)
    fixed = RegionTarget.from_prediction(model(x), k)
    assert torch.equal(fixed.mask, predicted)
    torch.testing.assert_close(A.gradient(model, x, fixed), expected, rtol=1e-6, atol=1e-7)
    # the score is the mean logit over the region
    torch.testing.assert_close(RegionTarget(k, mask)(model(x)),
                               torch.stack([logits[i, k][mask[i]].mean() for i in range(2)]))


def test_an_empty_region_scores_zero_without_nan():
    model, x = LinearSegmenter(W_SEG).eval(), seg_inputs()
    empty = RegionTarget(2, torch.zeros(6, 5, dtype=torch.bool))
    assert torch.equal(empty(model(x)), torch.zeros(2))
    grad = A.gradient(model, x, empty)
    assert torch.equal(grad, torch.zeros_like(x))
    ig = PATHS.integrated_gradients(model, x, empty, steps=4)
    assert torch.isfinite(ig).all() and not ig.any()


def test_region_target_checks_its_class_and_mask():
    model, x = LinearSegmenter(W_SEG).eval(), seg_inputs()
    with pytest.raises(ValueError, match="category 3 is out of range"):
        A.gradient(model, x, RegionTarget(3))
    with pytest.raises(ValueError, match="at the output's resolution"):
        A.gradient(model, x, RegionTarget(0, torch.ones(4, 4, dtype=torch.bool)))
    with pytest.raises(ValueError, match="the model returns a dict"):
        A.gradient(model, x, 0)  # class indices on a segmenter: one line that names the fix


def test_occlusion_calls_the_target_on_every_pass():
    model, x, k = LinearSegmenter(W_SEG).eval(), seg_inputs(h=6, w=4), 0
    mask = torch.zeros(6, 4, dtype=torch.bool)
    mask[1:5, 1:3] = True
    drops = A.occlusion(model, x, RegionTarget(k, mask), window=(2, 2), stride=(2, 2), fill=0.5)
    # linear: the drop of the mean logit is the occluded region pixels' sum_c W[k, c] (x_c - fill) / |M|
    contrib = torch.einsum("c,nchw->nhw", W_SEG[k], x - 0.5) * mask / mask.sum()
    expected = contrib.view(2, 3, 2, 2, 2).sum(dim=(2, 4))
    torch.testing.assert_close(drops, expected, rtol=1e-5, atol=1e-6)


def test_similarity_gradient_on_a_linear_embedder_is_the_analytic_derivative():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(4, 3 * 3 * 2, generator=g, dtype=torch.float64)
    model, x = LinearEmbedder(a).eval(), torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64)
    for ref in (torch.randn(4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)):
        r = ref.expand(2, 4)
        e = x.flatten(1) @ a.T
        cos = (e * r).sum(1) / (e.norm(dim=1) * r.norm(dim=1))
        # d cos / d e = r / (|e| |r|) - cos e / |e|^2, and d e / d x = A
        de = r / (e.norm(dim=1) * r.norm(dim=1))[:, None] - cos[:, None] * e / e.norm(dim=1)[:, None] ** 2
        target = SimilarityTarget(ref)
        torch.testing.assert_close(target(model(x)), cos)
        torch.testing.assert_close(A.gradient(model, x, target), (de @ a).view_as(x), rtol=1e-10, atol=1e-12)
        # a central finite difference of the score agrees too
        step = torch.zeros_like(x)
        step[1, 2, 1, 0] = 1e-6
        with torch.no_grad():
            fd = (target(model(x + step)) - target(model(x - step)))[1] / 2e-6
        assert abs(float(fd) - float(A.gradient(model, x, target)[1, 2, 1, 0])) < 1e-7


def test_class_target_binary_and_multilabel_scores():
    logits = torch.tensor([[2.0, -1.0], [-0.5, 3.0]])
    assert torch.equal(ClassTarget(1)(logits), torch.tensor([-1.0, 3.0]))
    torch.testing.assert_close(ClassTarget([0, 1]).probability(logits), logits.softmax(1).diagonal())
    torch.testing.assert_close(ClassTarget(1, activation="sigmoid").probability(logits), torch.sigmoid(logits[:, 1]))
    one = logits[:, :1]  # a binary head: one logit; its class 0 is the negated logit
    assert torch.equal(ClassTarget(0, activation="sigmoid", negate=True)(one), -one[:, 0])
    torch.testing.assert_close(ClassTarget(0, activation="sigmoid", negate=True).probability(one),
                               1 - torch.sigmoid(one[:, 0]))
    assert torch.equal(ClassTarget(0, activation="identity")(one[:, 0]), one[:, 0])  # (N,) regression output
    with pytest.raises(ValueError, match="index 2 is out of range"):
        ClassTarget(2)(logits)


def test_select_target_follows_the_images_of_a_batch():
    rows = torch.tensor([1, 1, 0])
    assert torch.equal(select_target(resolve_target([4, 7], 2), rows), torch.tensor([7, 7, 4]))
    ref = torch.eye(2)
    assert torch.equal(select_target(SimilarityTarget(ref), rows).reference, ref[rows])
    plain = lambda out: out[:, 0]  # noqa: E731
    assert select_target(resolve_target(plain, 2), rows) is plain


def test_lrp_of_a_linear_score_starts_from_output_times_gradient():
    model, x, k = LinearSegmenter(W_SEG, aux=False).eval(), seg_inputs(), 2
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[2:, :3] = True
    target = RegionTarget(k, mask)
    # a bias-free linear model: LRP-0 gives every pixel its own contribution, x * gradient
    relevance = LRP.lrp(model, x, target, rule="epsilon", epsilon=1e-12)
    torch.testing.assert_close(relevance, x * A.gradient(model, x, target), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(relevance.flatten(1).sum(1), target(model(x)), rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    embedder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 5, 4)).eval()
    before = state(embedder)
    with pytest.raises(ValueError, match="LRP explains class logits"):
        LRP.lrp(embedder, x, SimilarityTarget(torch.ones(4)), rule="epsilon")
    assert_untouched(embedder, before)


# ---------------------------------------------------------------------------------------------------------------
# Oracles: pytorch-grad-cam's targets, Captum's forward functions


class TinySegmenter(nn.Module):
    """A fully-convolutional segmenter at full resolution, torchvision's output dict."""

    def __init__(self, seed: int = 0, k: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                                      nn.ReLU())
        self.classifier = nn.Conv2d(6, k, 1)

    def forward(self, x):
        return {"out": self.classifier(self.features(x))}


class OutOnly(nn.Module):
    """pytorch-grad-cam's segmentation tutorial wrapper: the model's ``['out']``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def pgc_normalized(lowres: torch.Tensor, size: tuple[int, int]):
    """pytorch-grad-cam's normalization of one layer's map (N, h, w): ReLU, min-max per map and resize to ``size``
    (W, H), then the multi-layer aggregation's min-max again (base_cam.compute_cam_per_layer and
    aggregate_multi_layers)."""
    import numpy as np
    from pytorch_grad_cam.utils.image import scale_cam_image

    return scale_cam_image(scale_cam_image(np.maximum(lowres.detach().numpy(), 0), size))


def test_grad_cam_of_a_region_equals_pytorch_grad_cam_semantic_segmentation_target():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model, x = TinySegmenter().eval(), torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pred = model(x)["out"].argmax(1)
    k = 1  # the class of the smaller region (21 and 10 of 120 pixels), so that the region shapes the map
    masks = pred == k
    assert masks.any(dim=(1, 2)).all()
    # the first ReLU, before a 3x3 conv: after the last one the weights would be the 1x1 head's row, whatever
    # the region (the same map after normalization for every mask)
    layer = "features.1"
    before = state(model)
    _, lowres = C.class_activation_map(model, x, RegionTarget(k, masks), layer, C.grad_cam_weights,
                                       return_lowres=True)
    assert_untouched(model, before)
    wrapped = OutOnly(model)
    with GradCAM(model=wrapped, target_layers=[wrapped.model.get_submodule(layer)]) as gradcam:
        theirs = gradcam(x, targets=[SemanticSegmentationTarget(k, m.float().numpy()) for m in masks])
    ours = pgc_normalized(lowres, (10, 12))
    assert ours.shape == theirs.shape == (2, 12, 10) and theirs.max() > 0.99
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(theirs), rtol=0, atol=1e-5)
    # the comparison sees the region: the mirrored region gives another map
    _, other = C.class_activation_map(model, x, RegionTarget(k, masks.flip(1)), layer, C.grad_cam_weights,
                                      return_lowres=True)
    assert abs(pgc_normalized(other, (10, 12)) - theirs).max() > 0.1


def tiny_faster_rcnn(seed: int = 0) -> nn.Module:
    """torchvision's Faster R-CNN (RPN, RoI heads, post-processing) on a two-conv backbone, random seeded weights,
    64 px: the detection pipeline pytorch-grad-cam's FasterRCNNBoxScoreTarget is written for, cheap on a CPU."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    backbone.out_channels = 16
    return FasterRCNN(backbone, num_classes=None, min_size=64, max_size=64,
                      rpn_anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),)),
                      box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), box_head=TwoMLPHead(16 * 49, 32),
                      box_predictor=FastRCNNPredictor(32, 3), rpn_pre_nms_top_n_test=50,
                      rpn_post_nms_top_n_test=20, box_detections_per_img=6, box_score_thresh=0.0).eval()


def test_grad_cam_of_detections_equals_pytorch_grad_cam_faster_rcnn_box_score_target():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    model, x = tiny_faster_rcnn(), torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        found = model(x)
    # the three best detections of each image, as pytorch-grad-cam's tutorial takes those above a threshold
    pairs = [(d["labels"][:3], d["boxes"][:3]) for d in found]
    assert all(len(lab) == 3 for lab, _ in pairs)
    target = BoxScoreTarget.per_image(pairs)
    before = state(model)
    _, lowres = C.class_activation_map(model, x, target, "backbone", C.grad_cam_weights, return_lowres=True)
    assert_untouched(model, before)
    with GradCAM(model=model, target_layers=[model.backbone]) as gradcam:
        theirs = gradcam(x, targets=[FasterRCNNBoxScoreTarget(lab.numpy(), box.numpy()) for lab, box in pairs])
    ours = pgc_normalized(lowres, (64, 64))
    assert theirs.max() > 0.99
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(theirs), rtol=0, atol=1e-5)
    # the comparison sees the boxes: two of the three give another map
    _, other = C.class_activation_map(model, x, BoxScoreTarget.per_image([(lab[:2], box[:2]) for lab, box in pairs]),
                                      "backbone", C.grad_cam_weights, return_lowres=True)
    assert abs(pgc_normalized(other, (64, 64)) - theirs).max() > 0.1


def test_box_score_target_equals_pytorch_grad_cam_on_given_detections():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0], [30.0, 30.0, 40.0, 44.0]],
                         requires_grad=True)
    scores = torch.tensor([0.9, 0.6, 0.4], requires_grad=True)
    det = {"boxes": boxes, "labels": torch.tensor([1, 2, 1]), "scores": scores}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
    given = (torch.tensor([1, 2, 2, 1]),  # a match, a match, a label that differs, an IoU below 0.5
             torch.tensor([[1.0, 0.0, 10.0, 11.0], [5.0, 6.0, 20.0, 20.0], [30.0, 30.0, 40.0, 44.0],
                           [0.0, 0.0, 20.0, 20.0]]))
    ours = BoxScoreTarget(*given)([det, empty])
    theirs = FasterRCNNBoxScoreTarget(given[0].numpy(), given[1].numpy())
    assert float(ours[1].detach()) == 0.0
    torch.testing.assert_close(ours[0], theirs(det)[0])
    ours_grad = torch.autograd.grad(ours.sum(), [boxes, scores])
    theirs_grad = torch.autograd.grad(theirs(det).sum(), [boxes, scores])
    for a, b in zip(ours_grad, theirs_grad):
        torch.testing.assert_close(a, b)
    assert torch.equal(ours_grad[1], torch.tensor([1.0, 1.0, 0.0]))  # the two matched detections' scores


def test_gradient_and_integrated_gradients_equal_captum_with_a_forward_function():
    captum = pytest.importorskip("captum.attr")
    model = TinySegmenter(seed=3).double().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:6, 1:7] = True
    for target in (RegionTarget(1, mask), SimilarityTarget(torch.linspace(-1, 1, 3 * 8 * 8, dtype=torch.float64),
                                                          key="out")):
        def forward(inputs: torch.Tensor, target=target) -> torch.Tensor:
            return target(model(inputs))

        ref = captum.Saliency(forward).attribute(x, abs=False)
        torch.testing.assert_close(A.gradient(model, x, target), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
        ref = captum.IntegratedGradients(forward).attribute(x, baselines=0.0, n_steps=16, method="gausslegendre")
        ours = PATHS.integrated_gradients(model, x, target, steps=16, method="gausslegendre", batch_size=12)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
