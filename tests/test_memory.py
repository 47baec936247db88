"""Batch sizes that follow the model's activation size (`Context.batch_size`), and batching that does not change
results."""

from types import SimpleNamespace

import torch
from torch import nn

from reportgen.config import BuildConfig
from reportgen.context import Context
from reportgen.layers import rows_from_probe
from reportgen.plan import ModelFacts, activation_bytes


class Reuses(nn.Module):
    """conv (1 -> 2 channels, 8x8) -> the same ReLU twice -> flatten -> linear (128 -> 3)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(128, 3)

    def forward(self, x):
        return self.fc(self.relu(self.relu(self.conv(x))).flatten(1))


def test_activation_bytes_counts_every_leaf_output_per_call():
    from reportgen.capture import capture, layer_names

    model = Reuses().eval()
    with capture(model, layer_names(model)) as rec, torch.no_grad():
        model(torch.randn(2, 1, 8, 8))
    rows = rows_from_probe(model, rec.acts, rec.calls)
    # by hand, float32: conv 2*8*8, relu twice 2*8*8, fc 3 (the root module is not a leaf)
    assert activation_bytes(rows) == 4 * (128 + 2 * 128 + 3)


def context(image_bytes: int, memory: float, batch_size: int = 64) -> Context:
    facts = ModelFacts(layers=[], selected=[], input_shape=(3, 8, 8), image_bytes=image_bytes)
    return Context(config=BuildConfig(memory=memory, batch_size=batch_size), loaded=None, images=None,
                   device="cpu", facts=facts)


def test_batch_size_fits_the_memory_budget():
    gib = 2**30
    ctx = context(image_bytes=gib, memory=2.0)
    assert ctx.batch_size(grad=True) == 1  # 2 GiB / (1.5 GiB per image with gradients)
    assert ctx.batch_size(grad=False) == 8  # 2 GiB / 0.25 GiB
    assert context(image_bytes=gib // 1024, memory=2.0).batch_size(grad=True) == 64  # capped by batch_size
    assert context(image_bytes=gib, memory=0.5).batch_size(grad=True) == 1  # never below one image
    assert context(image_bytes=0, memory=2.0, batch_size=5).batch_size(grad=True) == 5  # unknown size


def test_adversarial_in_batches_equals_one_batch():
    from reportgen.analyses.optimized import _adversarial
    from reportgen.methods.adversarial import adversarial

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = torch.randn(5, 3, 10, 10)
    common = dict(steps=6, step_size=0.5, norm="l2", stop_at_change=True, clamp=None)
    whole = adversarial(model, x, **common)
    ctx = SimpleNamespace(model=model, batch_size=lambda grad: 2,  # batches of 2, 2 and 1 images
                          map_chunks=lambda fn, chunks, label: [fn(c) for c in chunks])
    for target in (None, torch.tensor([1, 2, 0, 1, 2])):
        whole = adversarial(model, x, target=target, **common)
        parts = _adversarial(ctx, x, target, common)
        for name in ("adv", "labels", "probs", "steps_taken", "success", "rel_norm", "original", "final"):
            assert torch.allclose(getattr(parts, name).float(), getattr(whole, name).float(), atol=1e-6), name
        assert parts.labels.shape == whole.labels.shape
