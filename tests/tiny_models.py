"""Tiny seeded models used as ``module:factory`` specs in the tests."""

import torch
from torch import nn


def tiny_cnn() -> nn.Module:
    """3x32x32 -> 3 classes; ends in global average pooling + one linear layer."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3),
    )


def raising_factory() -> nn.Module:
    raise RuntimeError("factory exploded on purpose")


def not_a_module():
    return 42


class BadOutput(nn.Module):
    def forward(self, x):
        return x  # (N, C, H, W), not (N, classes)


def bad_output() -> nn.Module:
    return BadOutput()


class FailsOnBigBatches(nn.Module):
    """Passes the two-image probe, then fails on the first real batch (as a model with a hidden size bug would)."""

    def __init__(self):
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x):
        if x.shape[0] > 2:
            raise RuntimeError("shape mismatch inside the model")
        return self.net(x)


def fails_on_big_batches() -> nn.Module:
    return FailsOnBigBatches()


class CountingCNN(nn.Module):
    """`tiny_cnn` that logs the batch size of every forward call in ``CountingCNN.calls`` (class-level, so that a
    test can read what a build did with it)."""

    calls: list = []

    def __init__(self):
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x):
        CountingCNN.calls.append(int(x.shape[0]))
        return self.net(x)


def counting_cnn() -> nn.Module:
    return CountingCNN()
