"""Snapshots during training (issue 17): a zoo model trained for 3 epochs gives an archive of 3 snapshots whose
index compares them; a rerun of the same seeded training reuses them; the Lightning adapter's logic."""

from __future__ import annotations

import json

import pytest
import torch

import reportgen
from reportgen import snapshots as snapshots_module
from reportgen.errors import ConfigError, ReportgenError

FAST = {"only": ["predictions", "filters", "embeddings"], "samples": 2, "layers": ["conv2"],
        "analysis": {"embeddings": {"max_points": 48, "perplexity": 5.0, "jobs": 1}}}


def digits():
    import models_zoo

    entry = models_zoo.get("lenet-digits")
    val = entry.load_dataset("test", n=48)
    images = [(torch.from_numpy(x).permute(2, 0, 1), int(y)) for x, y in zip(val.inputs, val.labels)]
    return entry, images


def train(entry, snap, epochs=3):
    """A seeded training loop that calls ``snap`` after every epoch; returns the snapshots' reports. One intra-op
    thread while it trains, whatever an earlier test left: the same seed then gives the same weights bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(entry, snap, epochs)
    finally:
        torch.set_num_threads(threads)


def _train(entry, snap, epochs):
    torch.manual_seed(0)
    model = entry.build_model()
    data = entry.load_dataset("train", n=192)
    x, y = entry.preprocess(data.inputs), torch.from_numpy(data.labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    reports = []
    for epoch in range(1, epochs + 1):
        model.train()
        for i in torch.randperm(len(y)).split(32):  # uses the global RNG: a snapshot must not reset it
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
            loss.backward()
            optimizer.step()
        reports.append(snap(model, epoch=epoch, metrics={"train loss": loss}))
        assert model.training  # left as it came: in train mode
    return reports


def test_three_epochs_give_an_archive_that_a_rerun_reuses(tmp_path, monkeypatch):
    entry, images = digits()
    root = tmp_path / "runs" / "exp1"

    def snapshots():
        return reportgen.Snapshots(root, images=images, class_names=list(entry.class_names), mean=entry.mean,
                                   std=entry.std, config=FAST)

    first = train(entry, snapshots())
    assert [r.out.name for r in first] == ["epoch-00001", "epoch-00002", "epoch-00003"]
    archive = json.loads((root / "report" / "manifest.json").read_text())
    assert archive["kind"] == "archive"
    rows = archive["snapshots"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["checkpoint"] for r in rows] == [f"epoch-0000{e}.safetensors" for e in (1, 2, 3)]
    # the index compares them: each snapshot's accuracy, the same as in the snapshot's own report
    assert [r["accuracy"] for r in rows] == [r.manifest.entry("predictions").metrics["accuracy"] for r in first]
    assert len({r["accuracy"] for r in rows}) > 1  # training changed the model
    html = (root / "report" / "index.html").read_text()
    for epoch in (1, 2, 3):
        assert f'snapshots/epoch-0000{epoch}/index.html">epoch {epoch}</a>' in html  # named as given
    # the metrics given to the snapshots: a column of the index, each snapshot's value in its row
    assert '<th scope="col">train loss</th>' in html
    assert [r["metrics"]["train loss"] for r in rows] == [r.manifest.snapshot["metrics"]["train loss"] for r in first]
    assert (root / "report" / "img" / "archive" / "knn.png").is_file()
    # each checkpoint holds its epoch's weights and says its epoch, as `reportgen archive` reads it
    from reportgen.models import read_safetensors_metadata, read_state_dict

    meta = read_safetensors_metadata(root / "checkpoints" / "epoch-00002.safetensors")
    assert meta["epoch"] == "2" and "train loss" in json.loads(meta["metrics"])
    restored = entry.build_model()
    restored.load_state_dict(read_state_dict(root / "checkpoints" / "epoch-00002.safetensors"))
    from reportgen.api import state_dict_sha256

    assert state_dict_sha256(restored) == first[1].manifest.model["weights_sha256"]
    recorded = json.loads(meta["metrics"])["train loss"]
    assert first[1].manifest.snapshot["metrics"]["train loss"] == pytest.approx(recorded)
    files = {p: p.read_bytes() for p in (root / "report" / "snapshots").rglob("*") if p.is_file()}

    # a rerun of the same seeded training: the same weights, so every snapshot is reused, none built
    built = []
    real = snapshots_module.build_site
    monkeypatch.setattr(snapshots_module, "build_site", lambda *a, **k: built.append(1) or real(*a, **k))
    recorded = snapshots_module.record_dynamics
    monkeypatch.setattr(snapshots_module, "record_dynamics", lambda *a, **k: built.append(2) or recorded(*a, **k))
    again = train(entry, snapshots())
    assert built == []
    assert [r.manifest.snapshot["fingerprint"] for r in again] == [r.manifest.snapshot["fingerprint"] for r in first]
    assert {p: p.read_bytes() for p in (root / "report" / "snapshots").rglob("*") if p.is_file()} == files
    assert [r["step"] for r in json.loads((root / "report" / "manifest.json").read_text())["snapshots"]] == [1, 2, 3]


def test_every_and_one_line_mistakes(tmp_path):
    entry, images = digits()
    snap = reportgen.Snapshots(tmp_path / "run", images=images[:8], every=2, mean=entry.mean, std=entry.std,
                               only=["predictions"], samples=1)
    model = entry.load_pretrained()
    assert snap(model, epoch=1) is None and not (tmp_path / "run" / "checkpoints").exists()
    assert snap(model, epoch=2).out.name == "epoch-00002"
    for kwargs, fragment in (({"every": 0}, "every=0"), ({"only": ["nope"]}, "unknown analysis 'nope'"),
                             ({"sampels": 2}, "did you mean 'samples'")):
        with pytest.raises(ConfigError, match=fragment):
            reportgen.Snapshots(tmp_path / "other", images=images, **kwargs)
    with pytest.raises(ConfigError, match="not a number"):
        snap(model, epoch=4, metrics={"loss": "low"})


class FakeTrainer:
    """The attributes of a Lightning Trainer the adapter reads (`reportgen.snapshots.on_epoch_end`)."""

    def __init__(self, epoch, sanity=False, rank_zero=True):
        self.current_epoch = epoch
        self.sanity_checking = sanity
        self.is_global_zero = rank_zero
        self.callback_metrics = {"val_loss": torch.tensor(0.25), "val_acc": 0.5, "per_class": torch.ones(3)}


def test_lightning_adapter_logic_with_a_fake_trainer():
    """The adapter's own logic (Lightning is not installed here): no snapshot during the sanity check or off rank
    zero; otherwise the epoch and the scalar metrics of the trainer."""
    calls = []

    def snap(model, epoch, metrics):
        calls.append((model, epoch, metrics))
        return "report"

    module = torch.nn.Linear(2, 2)
    assert snapshots_module.on_epoch_end(snap, FakeTrainer(0, sanity=True), module) is None
    assert snapshots_module.on_epoch_end(snap, FakeTrainer(1, rank_zero=False), module) is None
    assert snapshots_module.on_epoch_end(snap, FakeTrainer(2), module) == "report"
    assert calls == [(module, 2, {"val_loss": 0.25, "val_acc": 0.5})]


def test_lightning_callback_without_lightning_says_so():
    import importlib.util

    if importlib.util.find_spec("lightning") or importlib.util.find_spec("pytorch_lightning"):
        pytest.skip("Lightning is installed here")
    with pytest.raises(ReportgenError, match="needs PyTorch Lightning"):
        reportgen.lightning_callback(None)
