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


def zero_head_cnn() -> nn.Module:
    """`tiny_cnn` with its classifier zeroed (as torchvision initializes a ViT head): every logit is 0."""
    model = tiny_cnn()
    nn.init.zeros_(model[-1].weight)
    nn.init.zeros_(model[-1].bias)
    return model


def constant_layer_cnn() -> nn.Module:
    """`tiny_cnn` whose second conv has zero weights and bias 0.5: that layer (and all after it) is constant over
    any image set, the logits included."""
    model = tiny_cnn()
    nn.init.zeros_(model[3].weight)
    nn.init.constant_(model[3].bias, 0.5)
    return model


class NanOutput(nn.Module):
    """`tiny_cnn` whose logits are NaN for every image after the first two (the probe), as a diverged checkpoint's
    would be on real data; and +inf in one class for the probe, so the check cannot refuse it by its output."""

    def __init__(self):
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x):
        out = self.net(x)
        return out * float("nan")


def nan_output_cnn() -> nn.Module:
    return NanOutput()


def tiny_vit() -> nn.Module:
    """torchvision's VisionTransformer, 3x32x32 -> 3 classes: 8-px patches (a 4x4 grid + the class token), 2
    encoder blocks of 2 heads, width 16. Seeded, with a random (not zero) head so the logits vary."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=3)
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


def tiny_swin() -> nn.Module:
    """torchvision's SwinTransformer, 3x32x32 -> 3 classes: 4-px patches, windows of 4x4, two stages of 2 blocks
    (8x8 then 4x4 maps, channels last), width 16. Seeded."""
    from torchvision.models import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                            num_classes=3)
    nn.init.normal_(model.head.weight, std=0.5)
    return model
