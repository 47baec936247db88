"""Findings (issue 28): the ECE against a direct computation, each finding fired on data built so that it must and
kept quiet where it must not, the manifest's typed findings, and one small build whose model card leads with them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from reportgen.analyses import findings as fd
from reportgen.api import Report
from reportgen.manifest import Finding, Manifest
from reportgen.methods.calibration import BINS, expected_calibration_error, reliability, softmax

NAMES = ["a", "b", "c", "d"]


def direct_ece(conf, correct, bins=15):
    """Guo et al.'s ECE written out bin by bin: B_m = {i: (m-1)/M < conf_i <= m/M}, sum |B_m|/n |acc - conf|."""
    n = len(conf)
    total = 0.0
    for m in range(1, bins + 1):
        lo, hi = (m - 1) / bins, m / bins
        members = [i for i in range(n) if (lo < conf[i] <= hi) or (m == 1 and conf[i] == 0)]
        if members:
            acc = sum(bool(correct[i]) for i in members) / len(members)
            avg = sum(float(conf[i]) for i in members) / len(members)
            total += len(members) / n * abs(acc - avg)
    return total


def logits_for(preds, conf, k):
    """Logits (M, k) whose arg-max is ``preds`` with top-1 softmax probability ``conf`` (the rest spread evenly)."""
    preds, conf = np.asarray(preds), np.broadcast_to(np.asarray(conf, dtype=np.float64), (len(preds),))
    p = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)
    p[np.arange(len(preds)), preds] = conf
    return np.log(p)


# --- calibration ---------------------------------------------------------------------------------------------------


def test_ece_equals_a_direct_computation_and_the_diagram_its_bins():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 5)) * rng.uniform(0.2, 4.0, size=(500, 1))
    labels = rng.integers(0, 5, size=500)
    probs = softmax(logits)
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    assert BINS == 15
    assert expected_calibration_error(logits, labels) == pytest.approx(direct_ece(conf, correct), abs=1e-6)
    rel = reliability(conf, correct)
    for m in range(15):
        members = [(c, ok) for c, ok in zip(conf, correct) if m / 15 < c <= (m + 1) / 15]
        assert rel.count[m] == len(members)
        if members:
            assert rel.accuracy[m] == pytest.approx(np.mean([ok for _, ok in members]), abs=1e-6)
            assert rel.confidence[m] == pytest.approx(np.mean([c for c, _ in members]), abs=1e-6)
        else:
            assert np.isnan(rel.accuracy[m])


def test_ece_known_answers():
    # every prediction at confidence 0.7, 70 of 100 right: calibrated
    preds = np.zeros(100, dtype=int)
    labels = np.where(np.arange(100) < 70, 0, 1)
    assert expected_calibration_error(logits_for(preds, 0.7, 2), labels) == pytest.approx(0.0, abs=1e-9)
    # every prediction at confidence 0.99, half right: the gap is 0.49
    assert expected_calibration_error(logits_for(preds, 0.99, 2), np.arange(100) % 2) == pytest.approx(0.49)


def test_the_reliability_diagram_draws_the_bins():
    from reportgen.imaging import PLOT_KINDS, _load_plot_kinds

    _load_plot_kinds()
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.3, 1.0, size=200)
    rel = reliability(conf, rng.uniform(size=200) < conf)
    fig = PLOT_KINDS["reliability"]({"lower": rel.lower.tolist(), "upper": rel.upper.tolist(),
                                      "count": rel.count.tolist(), "ece": rel.ece,
                                      "accuracy": [None if np.isnan(v) else v for v in rel.accuracy],
                                      "confidence": [None if np.isnan(v) else v for v in rel.confidence]})
    bars = [p for p in fig.axes[0].patches if p.get_fill()]
    full = rel.count > 0
    assert [b.get_height() for b in bars] == pytest.approx(rel.accuracy[full].tolist(), abs=1e-6)
    assert [b.get_x() for b in bars] == pytest.approx(rel.lower[full].tolist(), abs=1e-9)


def test_calibration_fires_on_an_over_confident_model_and_not_on_a_calibrated_one():
    preds = np.zeros(100, dtype=int)
    labels = np.where(np.arange(100) < 60, 0, 1)
    over, _ = fd.calibration_findings(logits_for(preds, 0.999, 4), labels)
    by_id = {f.id: f for f in over}
    assert by_id["calibration"].severity == "alert"
    assert by_id["calibration"].numbers["ece"] == pytest.approx(0.399, abs=1e-6)
    assert "over-confident" in by_id["calibration"].sentence
    assert by_id["confident-mistakes"].severity == "warning"
    assert by_id["confident-mistakes"].numbers["error when confident"] == pytest.approx(0.4)
    calibrated, rel = fd.calibration_findings(logits_for(preds, 0.6, 4), labels)
    by_id = {f.id: f for f in calibrated}
    assert by_id["calibration"].severity == "info" and by_id["calibration"].numbers["ece"] < 1e-9
    assert by_id["confident-mistakes"].severity == "info"
    assert by_id["confident-mistakes"].numbers["confident predictions"] == 0
    assert rel.count.sum() == 100
    # confident and right as often as it says (95% at 0.95): its mistakes are no warning
    sure, _ = fd.calibration_findings(logits_for(preds, 0.95, 4), np.where(np.arange(100) < 95, 0, 1))
    assert {f.id: f for f in sure}["confident-mistakes"].severity == "info"


# --- accuracy, classes, confusions, balance -------------------------------------------------------------------------


def test_accuracy_against_a_planted_majority_class():
    labels = np.array([0] * 80 + [1] * 10 + [2] * 10)
    always_major = logits_for(np.zeros(100, dtype=int), 0.9, 3)
    acc = {f.id: f for f in fd.accuracy_findings(always_major, labels, NAMES[:3])}["accuracy"]
    assert acc.severity == "alert"
    assert acc.numbers["accuracy"] == pytest.approx(0.8) and acc.numbers["baseline"] == pytest.approx(0.8)
    assert acc.numbers["majority class"] == "a"
    right = logits_for(labels, 0.9, 3)
    assert {f.id: f for f in fd.accuracy_findings(right, labels, NAMES[:3])}["accuracy"].severity == "info"
    # balanced, 40% right against a 25% baseline: less than half-way to 100%
    balanced = np.arange(100) % 4
    preds = np.where(np.arange(100) < 40, balanced, (balanced + 1) % 4)
    got = {f.id: f for f in fd.accuracy_findings(logits_for(preds, 0.9, 4), balanced, NAMES)}["accuracy"]
    assert got.severity == "warning" and got.numbers["baseline"] == pytest.approx(0.25)


def test_per_class_gap_fires_on_one_bad_class_only():
    labels = np.repeat(np.arange(4), 20)
    preds = labels.copy()
    preds[40:52] = 3  # class 'c': 8 of 20 right
    gaps = {f.id: f for f in fd.accuracy_findings(logits_for(preds, 0.9, 4), labels, NAMES)}["class-gaps"]
    assert gaps.severity == "alert"
    assert gaps.numbers["worst class"] == "c" and gaps.numbers["worst accuracy"] == pytest.approx(0.4)
    assert gaps.numbers["gap"] == pytest.approx(0.85 - 0.4)
    even = labels.copy()
    even[::10] = (labels[::10] + 1) % 4  # 2 of 20 wrong in every class
    quiet = {f.id: f for f in fd.accuracy_findings(logits_for(even, 0.9, 4), labels, NAMES)}["class-gaps"]
    assert quiet.severity == "info" and quiet.numbers["gap"] == pytest.approx(0.0)
    few = {f.id: f for f in fd.accuracy_findings(logits_for(labels[:8], 0.9, 4), labels[:8], NAMES)}
    assert few["class-gaps"].severity == "not checked"


def test_the_most_confused_pair_is_named():
    labels = np.repeat(np.arange(4), 10)
    preds = labels.copy()
    preds[10:15] = 2  # 'b' taken for 'c' 5 times
    preds[30] = 0  # one 'd' taken for 'a'
    (f,) = fd.confusion_findings(logits_for(preds, 0.9, 4), labels, NAMES)
    assert f.severity == "warning"
    assert f.numbers["pairs"][0] == ["b", "c", 5, 0.5] and f.numbers["pairs"][1] == ["d", "a", 1, 0.1]
    assert len(f.numbers["pairs"]) == 2
    (one,) = fd.confusion_findings(logits_for(np.r_[preds[:10], labels[10:]], 0.9, 4), labels, NAMES)
    assert one.severity == "info" and one.numbers["mistakes"] == 0


def test_class_imbalance():
    def severity(counts):
        (f,) = fd.imbalance_findings(np.repeat(np.arange(len(counts)), counts), NAMES)
        return f

    assert severity([100, 10, 50, 50]).severity == "alert"
    assert severity([100, 10, 50, 50]).numbers["ratio"] == pytest.approx(10.0)
    assert severity([30, 10, 20, 20]).severity == "warning"
    assert severity([20, 20, 20, 20]).severity == "info" and "Balanced" in severity([20] * 4).sentence
    assert severity([20, 0, 0, 0]).severity == "alert"
    assert severity([20, 10, 0, 0]).numbers["classes without images"] == 2


def test_without_labels_nothing_is_made_up():
    logits = logits_for(np.zeros(10, dtype=int), 0.9, 4)
    unknown = -np.ones(10, dtype=int)
    found = (fd.accuracy_findings(logits, unknown, NAMES) + fd.calibration_findings(logits, unknown)[0]
             + fd.confusion_findings(logits, unknown, NAMES) + fd.imbalance_findings(unknown, NAMES))
    assert [f.severity for f in found] == ["not checked"] * 6
    assert all("no labels" in f.sentence for f in found)


# --- trust, evidence, robustness, units, budget ---------------------------------------------------------------------

DELETION = {"methods": {"good": {"deletion": 0.1, "insertion": 0.8}, "slow": {"deletion": 0.5, "insertion": 0.9},
                        "random-like": {"deletion": 0.2, "insertion": 0.7}},
            "random": {"deletion": 0.4, "insertion": 0.6}}
RANDOMIZATION = {"methods": {"good": 0.1, "slow": 0.2, "random-like": 0.9}, "threshold": 0.5, "left out": []}


def test_trust_names_the_methods_that_pass_every_check():
    verdicts = fd.trust_verdicts(DELETION, RANDOMIZATION)
    assert fd.trusted_methods(verdicts) == ["good"]
    (f,) = fd.trust_findings(DELETION, RANDOMIZATION, {})
    assert f.severity == "warning"
    assert f.numbers["trusted"] == ["good"]
    assert f.numbers["failed"] == {"slow": ["deletion"], "random-like": ["randomization"]}
    bad = {"methods": {k: 0.9 for k in RANDOMIZATION["methods"]}, "threshold": 0.5}
    assert fd.trust_findings(DELETION, bad, {})[0].severity == "alert"
    all_good = {"methods": {"good": DELETION["methods"]["good"]}, "random": DELETION["random"]}
    assert fd.trust_findings(all_good, {"methods": {"good": 0.0}, "threshold": 0.5}, {})[0].severity == "info"
    (none,) = fd.trust_findings(None, None, {"deletion-insertion": "over budget"})
    assert none.severity == "not checked" and "over budget" in none.sentence
    # one check only: nothing is trusted by both, and the finding says which were not judged
    (half,) = fd.trust_findings(DELETION, None, {"randomization-test": "not chosen"})
    assert half.numbers["trusted"] == [] and "not judged by both checks" in half.sentence


def scores(mass, area, n=4):
    return {i: (mass, 1.0 if mass > 0.5 else 0.0, area, f"shared-predicted-{i:05d}-0") for i in range(n)}


def test_evidence_outside_the_object_is_called_context():
    found = {"good": scores(0.2, 0.1), "untrusted": scores(0.9, 0.1)}
    (f,) = fd.evidence_findings(found, ["good"])
    assert f.severity == "warning" and "relies on context / background" in f.sentence
    assert f.numbers["mass on object"] == pytest.approx(0.2) and list(f.numbers["methods"]) == ["good"]
    (chance,) = fd.evidence_findings({"good": scores(0.08, 0.1)}, ["good"])
    assert chance.severity == "alert"
    (on,) = fd.evidence_findings({"good": scores(0.8, 0.1)}, ["good"])
    assert on.severity == "info" and on.numbers["pointing game"] == 1.0
    assert fd.evidence_findings(found, [])[0].severity == "not checked"
    assert fd.evidence_findings({}, None, why="no masks")[0].sentence == "Not checked: no masks."
    (unjudged,) = fd.evidence_findings(found, None)  # trust checks absent: every method, and it says so
    assert unjudged.numbers["mass on object"] == pytest.approx(0.55) and "did not run" in unjudged.sentence


def test_robustness_against_the_random_sphere_at_the_same_norm():
    fragile = {"change %": [0.5, 0.7, 0.9, 40.0], "changed": [True, True, True, False], "steps": 100,
               "sphere fraction": [0.0, 0.02, 0.01], "sphere changed": [0, 2, 1], "sphere drawn": [100, 100, 100],
               "sphere scale": 1.0}
    (f,) = fd.robustness_findings(fragile)
    assert f.severity == "alert" and f.numbers["median change %"] == pytest.approx(0.7)
    assert f.numbers["random flip share at the same norm"] == pytest.approx(0.01) and f.numbers["changed"] == 3
    # the ratio of flip rates at equal norm: 100% for the adversarial change against a mean 1% for random ones
    assert "random changes of the same norm" in f.sentence and "about 100 times as often" in f.sentence
    assert "3 of 300 points in all" in f.sentence
    (safe,) = fd.robustness_findings({**fragile, "sphere fraction": [0.0, 0.0, 0.0], "sphere changed": [0, 0, 0]})
    # 0 flips in 300 points: the 95% Wilson upper bound is z^2 / (n + z^2) = 1.3%, so at least 79 times as often
    bound = 1.959964 ** 2 / (300 + 1.959964 ** 2)
    assert safe.numbers["random flip share 95% upper bound"] == pytest.approx(bound)
    assert "no random change flipped the label" in safe.sentence and "95% upper bound 1.3%" in safe.sentence
    assert f"at least {1 / bound:,.0f} times as often" in safe.sentence
    # a sphere at another scale is named as such, and not compared as if it were like with like
    (twice,) = fd.robustness_findings({**fragile, "sphere scale": 2.0})
    assert twice.numbers["random flip share at 2x"] == pytest.approx(0.01)
    assert "2 times as large" in twice.sentence and "not at the same norm" in twice.sentence
    (sturdy,) = fd.robustness_findings({"change %": [12.0, 20.0], "changed": [True, True], "steps": 100})
    assert sturdy.severity == "info" and "did not run" in sturdy.sentence
    (never,) = fd.robustness_findings({"change %": [3.0], "changed": [False], "steps": 100})
    assert never.severity == "info" and never.numbers["changed"] == 0
    assert fd.robustness_findings(None, "'adversarial' was not chosen")[0].severity == "not checked"


def test_dead_and_constant_units():
    assert fd.unit_findings({"dead": {"r1": (0, 8)}, "constant": ["fc"]})[0].severity == "alert"
    (dead,) = fd.unit_findings({"dead": {"r1": (6, 8), "r2": (1, 8)}, "constant": []})
    assert dead.severity == "warning" and "r1 6 of 8" in dead.sentence and "r2" not in dead.sentence
    (fine,) = fd.unit_findings({"dead": {"r1": (0, 8)}, "constant": []})
    assert fine.severity == "info" and "no ReLU has a dead unit" in fine.sentence


def test_degenerate_maps():
    (bad,) = fd.degenerate_map_findings({"gradient": (3, 8), "cam": (0, 8)})
    assert bad.severity == "warning" and "gradient 3 of 8" in bad.sentence and "cam" not in bad.sentence
    assert bad.links == [{"page": "analyses/gradient.html", "anchor": "", "label": "gradient"}]
    (fine,) = fd.degenerate_map_findings({"gradient": (0, 8), "cam": (0, 8)})
    assert fine.severity == "info" and "None of the 16 maps of the 2 attribution methods" in fine.sentence
    assert fd.degenerate_map_findings({}, "no attribution method ran")[0].severity == "not checked"


def test_what_the_budget_left_out():
    (f,) = fd.budget_findings({"adversarial": "over the budget"})
    assert f.severity == "warning" and f.numbers["analyses"] == ["adversarial"]
    assert f.links == [{"page": "analyses/adversarial.html", "anchor": "", "label": "adversarial"}]
    assert fd.budget_findings({})[0].severity == "info"


def test_findings_sort_most_severe_first_and_round_trip_through_the_manifest():
    found = fd.by_severity(fd.budget_findings({}) + fd.unit_findings({"dead": {}, "constant": ["x"]})
                           + fd.robustness_findings(None, "no"))
    assert [f.severity for f in found] == ["alert", "info", "not checked"]
    data = {"generator": "reportgen", "schema": 2, "version": "0", "created_with": {}, "model": {}, "images": {},
            "config": {}, "seed": 0, "timings": {}, "build_seconds": 0.0, "analyses": []}
    assert Manifest.from_json(data).findings == []  # a manifest from before the findings
    manifest = Manifest.from_json({**data, "findings": [json.loads(json.dumps(f.__dict__)) for f in found]})
    assert all(isinstance(f, Finding) for f in manifest.findings) and manifest.findings == found
    # what reportgen.build_report returns carries them
    assert Report(out=Path("."), seconds=0.0, manifest=manifest).findings == found
    assert Report(out=Path("."), seconds=0.0).findings == []


# --- one small build ------------------------------------------------------------------------------------------------


def test_the_model_card_leads_with_the_findings_and_the_manifest_lists_them(tmp_path):
    from tests.conftest import run

    out = tmp_path / "site"
    result = run("build", "shapes-cnn", "--only", "findings,predictions,gradient", "--max-images", "48",
                 "--samples", "2", "--out", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    found = {f["id"]: f for f in manifest["findings"]}
    assert {"accuracy", "calibration", "confused-pairs", "imbalance", "evidence-location", "trust",
            "robustness"} <= set(found)
    assert found["trust"]["severity"] == "not checked" and "not chosen" in found["trust"]["sentence"]
    # the zoo's shapes have masks: the gradient maps are scored against them (no trust check ran: it says so)
    assert found["evidence-location"]["severity"] != "not checked"
    assert set(found["evidence-location"]["numbers"]["methods"]) == {"gradient"}
    links = [link for f in manifest["findings"] for link in f["links"]]
    assert any(link["anchor"] == "fig-reliability" for link in links)
    for link in links:
        page = (out / link["page"]).read_text()
        assert not link["anchor"] or f'id="{link["anchor"]}"' in page, link
    index = (out / "index.html").read_text()
    main = index[index.index('id="main"'):]
    assert main.index('id="findings"') < main.index('id="model"')
    for f in manifest["findings"]:
        if f["severity"] in ("alert", "warning"):
            assert f["sentence"] in result.output
            assert re.search(rf'id="finding-{f["id"]}"', index)


# --- a segmenter's or detector's collapsed output --------------------------------------------------------------------

def _recorded(task: str, outputs: list, k: int):
    """What the pass keeps of these outputs (`reportgen.tasks.TaskPass`, as the build records each batch)."""
    from reportgen.tasks import TaskPass

    rec = TaskPass(task, k, size=(4, 4), offset=1)
    start = 0
    for out in outputs:
        n = len(out) if task == "detect" else out.shape[0]
        rec.batch_scores(out, np.arange(start, start + n))
        start += n
    return SimpleNamespace(**rec.fields(np.arange(start)))


def test_a_segmenter_with_one_class_everywhere_is_an_alert():
    import torch

    names = ["background", "cat", "dog"]
    flat = torch.zeros(3, 3, 4, 4)
    flat[:, 2] = 1.0  # 'dog' wins at every pixel of the 3 images
    (f,) = fd.collapse_findings("segment", _recorded("segment", [flat[:2], flat[2:]], 3), names)
    assert f.severity == "alert" and "'dog' at every pixel of all 3 images" in f.sentence
    assert f.numbers["pixel share"] == 1.0
    mixed = flat.clone()
    mixed[1, 1, :2, :] = 5.0  # image 1: 'cat' in its top 8 pixels of 16: 'dog' at 40 of 48
    (f,) = fd.collapse_findings("segment", _recorded("segment", [mixed], 3), names)
    assert f.severity == "info" and f.numbers["pixel share"] == pytest.approx(40 / 48)
    assert f.numbers["class"] == "dog"


def test_a_detector_that_finds_nothing_or_ranks_nothing():
    import torch

    def dets(*scores):
        return {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]] * len(scores)).reshape(-1, 4),
                "labels": torch.ones(len(scores), dtype=torch.int64), "scores": torch.tensor(scores).reshape(-1)}

    names = ["cat", "dog"]
    (f,) = fd.collapse_findings("detect", _recorded("detect", [[dets(), dets()], [dets()]], 2), names)
    assert f.severity == "alert" and "no detection on any of the 3 images" in f.sentence
    assert f.numbers["images with a detection"] == 0
    (f,) = fd.collapse_findings("detect", _recorded("detect", [[dets(0.2, 0.2), dets(0.2)]], 2), names)
    assert f.severity == "warning" and "All 3 detections" in f.sentence and f.numbers["highest score"] == \
        pytest.approx(0.2)
    (f,) = fd.collapse_findings("detect", _recorded("detect", [[dets(0.9, 0.3), dets()]], 2), names)
    assert f.severity == "info" and f.numbers["images with a detection"] == 1 and f.numbers["detections"] == 2
    assert fd.collapse_findings("classify", SimpleNamespace(), names) == []
