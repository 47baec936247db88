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


class TinyPiT(nn.Module):
    """A PiT-like transformer, 3x32x32 -> 3 classes: 8-px patches (class token + 4x4), one attention block, the
    patch tokens pooled to 2x2 by a stride-2 conv, a second block (class token + 2x2), the head on the class token.
    Like PiT's last stage, ``last`` maps the final patch tokens but the head never reads it."""

    def __init__(self, d: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, d, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.attn1 = nn.MultiheadAttention(d, 2, batch_first=True)
        self.pool = nn.Conv2d(d, d, 2, stride=2)
        self.attn2 = nn.MultiheadAttention(d, 2, batch_first=True)
        self.last = nn.Conv2d(d, d, 1)
        self.head = nn.Linear(d, 3)
        self.d = d

    def forward(self, x):
        n, d = len(x), self.d
        t = torch.cat([self.cls.expand(n, -1, -1), self.embed(x).flatten(2).transpose(1, 2)], dim=1)
        t = t + self.attn1(t, t, t, need_weights=False)[0]
        m = self.pool(t[:, 1:].transpose(1, 2).reshape(n, d, 4, 4))
        t = torch.cat([t[:, :1], m.flatten(2).transpose(1, 2)], dim=1)
        t = t + self.attn2(t, t, t, need_weights=False)[0]
        self.last(t[:, 1:].transpose(1, 2).reshape(n, d, 2, 2))
        return self.head(t[:, 0])


def tiny_pit() -> nn.Module:
    return TinyPiT()


class Folding(nn.Module):
    """3x32x32 -> 3 classes; like MobileViT, ``mix`` runs on the 2x2 pixel positions folded into the batch: its
    output has 4 rows per image, (N * 4, 256, 4)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        n = len(x)
        m = self.conv(x)
        p = m.reshape(n, 4, 16, 2, 16, 2).permute(0, 3, 5, 2, 4, 1).reshape(n * 4, 256, 4)
        m = self.mix(p).reshape(n, 2, 2, 16, 16, 4).permute(0, 5, 3, 1, 4, 2).reshape(n, 4, 32, 32)
        return self.head(m.mean(dim=(2, 3)))


def folding() -> nn.Module:
    return Folding()


class Where(nn.Module):
    """``[sum(w^2 * a), c]`` for ``a`` (N, 16, 16): w^2 is each pixel's weight, >= 0 whatever w is."""

    def __init__(self, w: torch.Tensor, c: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.reshape(-1).clone())
        self.register_buffer("c", torch.tensor(float(c)))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        s = (a.flatten(1) * self.w ** 2).sum(dim=1)
        return torch.stack([s, self.c.expand_as(s)], dim=1)


class PixelSet(nn.Module):
    """3x16x16 -> 2 classes ("set", "other") whose decision depends on a known set of pixels only: logits
    ``[sum of channel 0 over the 4x4 block S = rows 6-9, cols 6-9, 4]``. ``features`` (parameter-free, the image
    itself) is the layer a Grad-CAM can be asked for; ``head`` owns the one parameter, w (16x16), 1 on S and 0
    elsewhere, whose square weighs each pixel. So the gradient is exactly the indicator of S (channel 0), and
    Grad-CAM, whose weight is the mean gradient (1/16 > 0), is ReLU(channel 0 / 16): the image, not S. Re-initialized
    (normal with w's own mean and std), w^2 is a random positive pattern: the gradient becomes it, and Grad-CAM
    keeps its weight positive and so its map's order of pixels."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.zeros(16, 16)
        w[6:10, 6:10] = 1.0
        self.features = nn.Identity()
        self.head = Where(w, 4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[:, 0])


def pixel_set() -> nn.Module:
    return PixelSet()
