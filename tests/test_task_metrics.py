"""The task metrics (reportgen.methods.task_metrics) against independent computations of the same definitions:
scikit-learn's average precision, F1, R^2 and MAE, numpy's correlation, pycocotools' COCOeval for AP at IoU 0.5, a
brute-force double loop for retrieval, and hand-made confusion matrices with known IoUs."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from reportgen.methods import task_metrics as tm

# --- multi-label ----------------------------------------------------------------------------------------------------


def test_average_precision_and_f1_equal_scikit_learn_with_unknown_labels_left_out():
    from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    m, k = 120, 6
    labels = (rng.random((m, k)) < 0.3).astype(np.int8)
    logits = rng.normal(size=(m, k)) + 1.5 * labels
    logits[:10, 0] = np.round(logits[:10, 0])  # ties: one threshold each
    labels[rng.random((m, k)) < 0.1] = -1  # unknown
    labels[:, 5] = np.where(labels[:, 5] < 0, -1, 0)  # a label with no positive: AP undefined
    s = tm.multilabel_scores(logits, labels, threshold=0.5)
    for j in range(k):
        keep = labels[:, j] >= 0
        y, z = labels[keep, j], logits[keep, j]
        pred = (1 / (1 + np.exp(-z)) > 0.5).astype(int)
        p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
        assert (s.precision[j], s.recall[j], s.f1[j]) == pytest.approx((p, r, f), abs=1e-12)
        if j < 5:
            assert s.ap[j] == pytest.approx(average_precision_score(y, z), abs=1e-12)
    assert np.isnan(s.ap[5]) and s.macro_ap == pytest.approx(np.mean(s.ap[:5]), abs=1e-12)
    # micro and macro means over complete labels equal scikit-learn's on the same (M, K) arrays
    full = labels.copy()
    full[full < 0] = 0
    s = tm.multilabel_scores(logits, full)
    pred = (1 / (1 + np.exp(-logits)) > 0.5).astype(int)
    assert s.micro_f1 == pytest.approx(f1_score(full, pred, average="micro", zero_division=0), abs=1e-12)
    assert s.macro_f1 == pytest.approx(f1_score(full, pred, average="macro", zero_division=0), abs=1e-12)
    assert s.micro_precision == pytest.approx(
        precision_recall_fscore_support(full, pred, average="micro", zero_division=0)[0], abs=1e-12)


def test_the_threshold_decides_f1_but_not_ap():
    # sigmoid(2) = 0.881 and sigmoid(3) = 0.953: at 0.95 only the second label's positive is predicted
    s = tm.multilabel_scores(np.array([[2.0, -1.0], [0.5, 3.0]]), np.array([[1, 0], [0, 1]]), threshold=0.95)
    assert s.predicted.tolist() == [0, 1] and s.recall.tolist() == [0.0, 1.0] and s.precision.tolist() == [0.0, 1.0]
    assert s.ap.tolist() == [1.0, 1.0]  # the ranking is perfect whatever the threshold


# --- regression -----------------------------------------------------------------------------------------------------


def test_regression_scores_equal_scikit_learn_and_numpy_with_unknowns_left_out():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(1)
    truth = rng.normal(size=(50, 3))
    outputs = truth * [1.0, 0.5, -1.0] + rng.normal(scale=0.3, size=(50, 3))
    truth[rng.random((50, 3)) < 0.2] = np.nan
    s = tm.regression_scores(outputs, truth)
    for j in range(3):
        ok = ~np.isnan(truth[:, j])
        y, p = truth[ok, j], outputs[ok, j]
        assert s.n[j] == ok.sum()
        assert s.mae[j] == pytest.approx(mean_absolute_error(y, p), rel=1e-12)
        assert s.rmse[j] == pytest.approx(np.sqrt(mean_squared_error(y, p)), rel=1e-12)
        assert s.r2[j] == pytest.approx(r2_score(y, p), rel=1e-12)
        assert s.pearson[j] == pytest.approx(np.corrcoef(y, p)[0, 1], rel=1e-12)
    assert s.pearson[2] < -0.9 and s.r2[2] < 0  # anti-correlated: worse than the mean
    assert np.isnan(s.residuals[np.isnan(truth)]).all()
    constant = tm.regression_scores(np.array([[1.0], [2.0]]), np.array([[3.0], [3.0]]))
    assert np.isnan(constant.r2[0]) and np.isnan(constant.pearson[0]) and constant.mae[0] == 1.5


# --- segmentation ---------------------------------------------------------------------------------------------------


def test_iou_from_a_hand_made_confusion_matrix():
    m = np.array([[50, 10, 0, 0],  # class 0: tp 50, fn 10, fp 5 -> 50 / 65
                  [5, 30, 5, 0],  # class 1: tp 30, fn 10, fp 10 -> 30 / 50
                  [0, 0, 0, 0],  # class 2: never true, predicted 5 times -> 0 / 5
                  [0, 0, 0, 0]])  # class 3: absent from truth and prediction: left out of the mean
    s = tm.segmentation_scores(m)
    assert s.iou[:3].tolist() == pytest.approx([50 / 65, 30 / 50, 0.0])
    assert np.isnan(s.iou[3]) and s.classes == 3
    assert s.miou == pytest.approx((50 / 65 + 0.6 + 0.0) / 3)
    assert s.pixel_accuracy == pytest.approx(80 / 100)
    assert s.true_pixels.tolist() == [60, 40, 0, 0] and s.predicted_pixels.tolist() == [55, 40, 5, 0]


def test_confusion_from_masks_counts_pixels_and_leaves_out_the_ignore_value():
    truth = np.array([[[0, 1], [255, 2]], [[2, 2], [1, 255]]], dtype=np.uint8)
    pred = np.array([[[0, 2], [1, 2]], [[2, 0], [1, 1]]], dtype=np.uint8)
    m = tm.confusion_from_masks(truth, pred, 3)
    expected = np.zeros((3, 3), dtype=np.int64)
    for t, p in zip(truth.ravel(), pred.ravel()):
        if t != 255:
            expected[t, p] += 1
    assert m.tolist() == expected.tolist() and m.sum() == 6
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        tm.confusion_from_masks(truth, pred, 2)


# --- detection ------------------------------------------------------------------------------------------------------


def coco_ap50(detections, truths, k):
    """Per-class AP at IoU 0.5 (area all, 100 detections) and its mean, by pycocotools' COCOeval."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    anns, results = [], []
    for i, (det, gt) in enumerate(zip(detections, truths)):
        for b, c in zip(gt["boxes"], gt["labels"]):
            w = xywh(b)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1, "bbox": w,
                         "area": w[2] * w[3], "iscrowd": 0})
        for b, c, s in zip(det["boxes"], det["labels"], det["scores"]):
            results.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)})
    gt = COCO()
    gt.dataset = {"images": [{"id": i + 1, "width": 100, "height": 100} for i in range(len(truths))],
                  "annotations": anns, "categories": [{"id": c + 1, "name": str(c)} for c in range(k)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][0, :, :, 0, -1]  # IoU 0.5, recall points, classes, area all, 100 detections
    per_class = [float(precision[:, c].mean()) if (precision[:, c] > -1).any() else float("nan") for c in range(k)]
    return per_class, float(ev.stats[1])


def random_boxes(rng, n):
    xy = rng.uniform(0, 70, size=(n, 2))
    wh = rng.uniform(5, 30, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_detection_ap50_equals_pycocotools_on_random_boxes():
    rng = np.random.default_rng(2)
    k, detections, truths = 3, [], []
    for _ in range(6):
        g = random_boxes(rng, int(rng.integers(1, 5)))
        gl = rng.integers(0, 2, size=len(g))  # class 2 never true: left out of the mean
        # detections: noisy copies of some truths (true positives at IoU 0.5 or not) and random boxes
        near = g[rng.random(len(g)) < 0.7] + rng.normal(scale=3, size=(1, 4))
        d = np.concatenate([near, random_boxes(rng, int(rng.integers(1, 4)))])
        dl = rng.integers(0, 3, size=len(d))
        dl[: len(near)] = gl[: len(near)]
        detections.append({"boxes": d.astype(np.float32), "labels": dl, "scores": rng.random(len(d))})
        truths.append({"boxes": g.astype(np.float32), "labels": gl})
    s = tm.detection_scores(detections, truths, k)
    expected, ap50 = coco_ap50(detections, truths, k)
    assert np.isnan(s.ap[2]) and np.isnan(expected[2])
    assert s.ap[:2] == pytest.approx(expected[:2], abs=1e-12)
    assert s.map == pytest.approx(ap50, abs=1e-12) and s.classes == 2
    assert 0 < s.map < 1


def test_detection_hand_made_cases_perfect_duplicate_and_missed():
    box = np.array([[10.0, 10.0, 40.0, 40.0]])
    other = np.array([[50.0, 50.0, 90.0, 80.0]])
    truths = [{"boxes": box, "labels": [0]}, {"boxes": other, "labels": [1]}]
    perfect = [{"boxes": box, "labels": [0], "scores": [0.9]}, {"boxes": other, "labels": [1], "scores": [0.8]}]
    s = tm.detection_scores(perfect, truths, 2)
    assert s.ap == pytest.approx([1.0, 1.0], abs=1e-12) and s.map == pytest.approx(1.0, abs=1e-12)
    # a second, lower-scored box on the same object is a false positive (the truth is matched once); it ranks after
    # the true positive, so the precision at recall 1 is still 1
    duplicate = [{"boxes": np.concatenate([box, box + 1]), "labels": [0, 0], "scores": [0.9, 0.7]},
                 {"boxes": other, "labels": [1], "scores": [0.8]}]
    s = tm.detection_scores(duplicate, truths, 2)
    assert s.true_positives.tolist() == [1, 1] and s.detections.tolist() == [2, 1]
    assert s.ap[0] == pytest.approx(1.0, abs=1e-12)
    # the false positive scored above the true one: precision 1/2 at recall 1 -> AP 0.5
    first = [{"boxes": np.concatenate([box + 1, box]), "labels": [0, 0], "scores": [0.9, 0.7]},
             {"boxes": np.zeros((0, 4)), "labels": [], "scores": []}]
    first[0]["boxes"][0] += [40, 40, 40, 40]  # far from the truth
    s = tm.detection_scores(first, truths, 2)
    assert s.ap[0] == pytest.approx(0.5, abs=1e-12)
    assert s.ap[1] == 0.0 and s.map == pytest.approx(0.25)  # class 1's object is missed
    for case in (perfect, duplicate, first):
        expected, ap50 = coco_ap50(case, truths, 2)
        assert tm.detection_scores(case, truths, 2).ap == pytest.approx(expected, abs=1e-12)
    # IoU just below 0.5 is a miss, just above a hit
    shifted = box + [0, 10.5, 0, 10.5]  # overlap 30 x 19.5 = 585 of union 1215: IoU 0.48
    assert tm.box_iou(shifted, box)[0, 0] == pytest.approx(585 / 1215)
    assert tm.detection_scores([{"boxes": shifted, "labels": [0], "scores": [1.0]}], truths[:1], 1).ap[0] == 0.0


# --- retrieval ------------------------------------------------------------------------------------------------------


def brute_force_retrieval(x, labels, k):
    n = len(x)
    cos = np.array([[x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j]) for j in range(n)] for i in range(n)])
    hits, aps, neighbours = [], [], []
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: -cos[i, j])
        neighbours.append(others[:k])
        if labels[i] < 0:
            continue
        ranked = [j for j in others if labels[j] >= 0]
        rel = [labels[j] == labels[i] for j in ranked]
        if not any(rel):
            continue
        hits.append(any(rel[:k]))
        precisions = [sum(rel[: r + 1]) / (r + 1) for r in range(len(rel)) if rel[r]]
        aps.append(np.mean(precisions))
    return np.array(neighbours), float(np.mean(hits)), float(np.mean(aps)), len(hits)


def test_retrieval_equals_a_brute_force_double_loop_in_any_block_size():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=40)
    x = rng.normal(size=(40, 8)) + 1.5 * np.eye(8)[labels]
    labels[:3] = -1
    labels[3] = 7  # the only image of its class: nothing to find, not a query
    neighbours, recall3, mean_ap, queries = brute_force_retrieval(x, labels, 3)
    for block in (None, 7):
        s = tm.retrieval_scores(x, labels, k=3, recall_ks=(1, 3), block=block)
        assert s.neighbours.tolist() == neighbours.tolist()
        assert s.recall_at[3] == pytest.approx(recall3) and s.map == pytest.approx(mean_ap) and s.queries == queries
        assert 0 < s.recall_at[1] <= s.recall_at[3] <= 1
    none = tm.retrieval_scores(x, None, k=3)
    assert none.neighbours.tolist() == neighbours.tolist() and none.recall_at == {} and none.queries == 0


# --- the predictions page per task ----------------------------------------------------------------------------------


def page(task, logits, labels, names, samples=(), images=None, model=None, **fields):
    """The predictions analysis run on hand-made predictions of ``task`` (image i is row i)."""
    from types import SimpleNamespace

    from test_report_values import image_stub

    from reportgen.analyses.predictions import PredictionParams, Predictions
    from reportgen.context import Predictions as PredictionArrays

    n = len(logits)
    pred = PredictionArrays(np.arange(n), np.asarray(logits, dtype=np.float32), np.asarray(labels), task=task,
                            **fields)
    ctx = SimpleNamespace(predictions=pred, class_names=names, is_image_model=True, task=task, model=model,
                          images=images or image_stub(min(n, 25)), samples=list(samples), device="cpu",
                          rng=lambda name: np.random.default_rng(0))
    result = Predictions().run(ctx, PredictionParams(worst=2), {})
    return result, {i.key: i for i in result.items}


def test_multilabel_page_scores_the_labels_and_says_when_there_are_none():
    from sklearn.metrics import average_precision_score

    from reportgen.analyses.findings import task_score_findings

    rng = np.random.default_rng(4)
    labels = (rng.random((40, 3)) < 0.4).astype(np.int8)
    logits = rng.normal(size=(40, 3)) + 2 * labels
    result, items = page("multilabel", logits, labels, ["cat", "dog", "car"])
    expected = np.mean([average_precision_score(labels[:, j], logits[:, j]) for j in range(3)])
    assert result.metrics["mean average precision"] == pytest.approx(expected, abs=1e-6)
    assert result.items[0].key == "label-scores"  # the page leads with its figure
    assert [r[0] for r in items["per-label"].rows] == ["cat", "dog", "car"]
    (f,) = task_score_findings("multilabel", result.shared["headline"])
    assert f.severity == "info" and f.sentence.startswith(f"Mean average precision {expected:.3f} over 3 labels")
    result, items = page("multilabel", logits, np.full((40, 3), -1, np.int8), ["cat", "dog", "car"])
    assert list(items) == ["predicted-labels"] and "give --labels" in result.notes[0]
    assert items["predicted-labels"].data["values"] == (logits > 0).sum(axis=0).tolist()
    (f,) = task_score_findings("multilabel", None, result.shared["no score"])
    assert f.severity == "not checked" and "no labels were given" in f.sentence


def test_regression_page_r2_equals_scikit_learn():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(5)
    truth = rng.normal(size=(30, 1)).astype(np.float32)
    out = truth + rng.normal(scale=0.5, size=(30, 1))
    result, items = page("regress", out, truth, ["age"])
    assert result.metrics["R²"] == pytest.approx(r2_score(truth[:, 0], out[:, 0].astype(np.float32)), abs=1e-5)
    assert result.items[0].key == "predicted-vs-true" and items["per-output"].rows[0][:2] == ["age", 30]
    result, items = page("regress", out, np.full((30, 1), np.nan, np.float32), ["age"])
    assert list(items) == ["outputs"] and "R²" not in result.metrics


def test_segmentation_page_iou_masks_and_busiest_classes():
    """A hand-made pixel confusion matrix gives the page's mIoU; a 1x1-convolution model whose class is the
    brightest channel gives the sample masks; 150 classes draw the 30 busiest and keep each row's pixels."""
    import torch

    from test_report_values import image_stub

    conf = np.array([[8, 2, 0], [0, 5, 5], [0, 0, 0]])  # IoU 0.8, 5/12; class 2 predicted only: 0
    pixels = np.array([[9, 5, 2], [1, 2, 3]])
    images = image_stub(2)
    truth = np.array([[0, 1, 255, 2]] * 4, dtype=np.uint8)
    images.truth = type("Truth", (), {"masks": type("M", (), {"get": staticmethod(lambda i: truth)})()})()
    model = torch.nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3)[[2, 0, 1]].reshape(3, 3, 1, 1))  # class c = channel (c + 2) % 3
    result, items = page("segment", np.zeros((2, 3)), np.full(2, -1), ["sky", "road", "car"], samples=[1],
                         images=images, model=model, seg_confusion=conf, seg_pixels=pixels)
    assert result.metrics["mIoU"] == pytest.approx((0.8 + 5 / 12 + 0) / 3)
    assert result.metrics["pixel accuracy"] == pytest.approx(13 / 20)
    assert result.items[0].key == "class-iou"
    masks = items["masks-00"].data
    x = images.load_inputs([1])[0]  # the stub's image 1 is uniform: every pixel takes the same class
    assert (masks["pred"] == int(torch.argmax(x[[2, 0, 1], 0, 0]))).all() and masks["truth"] is truth
    assert items["predicted-areas"].data["values"] == pytest.approx((pixels.sum(0) / pixels.sum()).tolist())
    result, items = page("segment", np.zeros((2, 3)), np.full(2, -1), ["sky", "road", "car"], seg_pixels=pixels)
    assert list(items) == ["predicted-areas"] and "give --labels" in result.notes[0]
    k = 150
    big = np.random.default_rng(6).integers(0, 20, (k, k))
    result, items = page("segment", np.zeros((2, k)), np.full(2, -1), [f"c{i}" for i in range(k)],
                         seg_confusion=big, seg_pixels=np.ones((2, k), np.int64))
    drawn = items["confusion"].data
    assert len(drawn["class_names"]) == 30 and drawn["col_names"][-1] == "other"
    rows = [int(name[1:]) for name in drawn["class_names"]]
    assert np.asarray(drawn["matrix"]).sum(axis=1).tolist() == big[rows].sum(axis=1).tolist()


def test_detection_page_scores_a_perfect_detector_and_draws_the_samples():
    box = np.array([[1.0, 1.0, 3.0, 3.0]], np.float32)
    dets = [{"boxes": box, "labels": np.array([c]), "scores": np.array([0.9], np.float32)} for c in (0, 1)]
    truths = [{"boxes": box, "labels": np.array([c])} for c in (0, 1)]
    result, items = page("detect", np.eye(2), np.full(2, -1), ["cat", "dog"], samples=[0], detections=dets,
                         truth_boxes=truths)
    assert result.metrics["mAP@0.5"] == pytest.approx(1.0, abs=1e-9) and result.items[0].key == "class-ap"
    drawn = items["detections-00"].data
    assert drawn["boxes"].tolist() == box.tolist() and drawn["truth_boxes"].tolist() == box.tolist()
    # one image unlabelled (None): left unscored; the other's only detection is the wrong class
    wrong = [{"boxes": box, "labels": np.array([1]), "scores": np.array([0.9], np.float32)}, dets[1]]
    result, items = page("detect", np.eye(2), np.full(2, -1), ["cat", "dog"], detections=wrong,
                         truth_boxes=[truths[0], None])
    assert result.metrics["labelled images"] == 1 and result.metrics["mAP@0.5"] == 0.0
    result, items = page("detect", np.eye(2), np.full(2, -1), ["cat", "dog"], detections=dets)
    assert "give --labels" in result.notes[0] and "mAP@0.5" not in result.metrics
    # a detector that finds nothing (a random RetinaNet): one panel of counts, no empty score panel, and captions
    # that say so instead of describing boxes that are not there
    none = [{"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
             "scores": np.zeros(0, np.float32)} for _ in range(2)]
    result, items = page("detect", np.eye(2), np.full(2, -1), ["cat", "dog"], samples=[0], detections=none,
                         truth_boxes=truths)
    counts = items["detections-per-image"]
    assert [s["name"] for s in counts.data["series"]] == ["detections per image (score ≥ 0.5)"]
    assert counts.data["series"][0]["values"].tolist() == [0, 0] and "no detection at all on any of the 2" in \
        counts.caption
    assert items["detections-00"].caption.startswith("The model returns no detection for this image; dashed")
    assert result.metrics["mAP@0.5"] == 0.0


def test_embedding_page_recall_and_the_retrieval_strip():
    rng = np.random.default_rng(7)
    labels = np.repeat([0, 1, 2], 4)
    x = rng.normal(size=(12, 6)) + 2 * np.eye(6)[labels]
    result, items = page("embed", x, labels, ["a", "b", "c"], samples=[0, 5])
    _, recall5, mean_ap, queries = brute_force_retrieval(x, labels, 5)
    assert result.metrics["recall@5"] == pytest.approx(recall5) and result.metrics["retrieval mAP"] == pytest.approx(
        mean_ap) and queries == 12
    strip = items["neighbours"]
    assert strip.tiles.shape[0] == 2 * 6 and strip.cols == 6 and strip.tile_labels[0] == "query a"


def test_binary_page_is_the_two_class_page_with_the_binary_cross_entropy():
    z = np.array([[2.0], [-1.0], [0.5], [-3.0]])
    labels = np.array([1, 0, 0, 1])
    result, items = page("binary", z, labels, ["not cat", "cat"])
    p = 1 / (1 + np.exp(-z[:, 0]))
    bce = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert result.metrics["accuracy"] == 0.5 and result.metrics["loss"] == pytest.approx(bce, rel=1e-6)
    assert items["confusion"].data["matrix"] == [[1, 1], [1, 1]]
    # the findings read the same two-class logits: accuracy against the majority baseline, as on the page
    from reportgen.analyses.findings import accuracy_findings
    from reportgen.analyses.predictions import two_classes
    from reportgen.context import Predictions as PredictionArrays

    right = np.array([1, 0, 1, 0])  # every sigmoid on its side of 0.5 (the one logit's arg-max would say 0.5)
    two = two_classes(PredictionArrays(np.arange(4), z.astype(np.float32), right, task="binary"))
    assert accuracy_findings(two.logits, two.labels, ["not cat", "cat"])[0].numbers["accuracy"] == 1.0


def test_the_task_figures_lay_out_at_150_classes_and_80_labels():
    """ADE20K's 150 classes and 80 labels (COCO's): nothing cut off or overlapping, no warning (a few seconds of
    drawing: the 21-class figures were looked at by hand)."""
    from test_figure_layout import draw_checked

    rng = np.random.default_rng(8)
    k = 150
    names = [f"class {i} traffic light" for i in range(k)]
    conf = rng.integers(0, 9, (k, k)) + np.diag(rng.integers(50, 200, k))
    result, items = page("segment", np.zeros((2, k)), np.full(2, -1), names, seg_confusion=conf,
                         seg_pixels=np.ones((2, k), np.int64))
    assert len(draw_checked("class-scores", items["class-iou"].data).axes[0].patches) == 60  # 30 lowest, 30 highest
    draw_checked("pixel-confusion", items["confusion"].data)
    labels = (rng.random((60, 80)) < 0.2).astype(np.int8)
    result, items = page("multilabel", rng.normal(size=(60, 80)) + labels, labels, [f"label {i}" for i in range(80)])
    assert len(draw_checked("label-scores", items["label-scores"].data).axes[0].patches) == 120  # 60 rows of 2
