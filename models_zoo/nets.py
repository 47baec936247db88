"""The four zoo architectures, with named sub-modules so that every layer has a readable dotted name."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock


class MLP2d(nn.Module):
    """Linear(2, 20) -> ReLU -> Linear(20, 2): a classifier of points in the plane; (N, 2) -> logits (N, 2)."""

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def lenet(num_classes: int = 10) -> nn.Sequential:
    """LeNet-style CNN for (N, 1, 28, 28) inputs -> logits (N, num_classes).

    LeCun et al. 1998, http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf (with ReLU and max pooling).
    """
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 32, 5),  # 28 -> 24
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),  # -> 12
            conv2=nn.Conv2d(32, 64, 5),  # -> 8
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),  # -> 4
            flatten=nn.Flatten(),
            fc1=nn.Linear(64 * 4 * 4, 128),
            relu3=nn.ReLU(),
            fc2=nn.Linear(128, num_classes),
        )
    )


class ShapesCNN(nn.Module):
    """VGG-style 3x3 conv + BN + ReLU stacks, global average pooling and ONE linear layer (CAM applies).

    Three conv + pool stages (64 -> 8 pixels) then two convs at 8x8, whose receptive field (54 px) covers the
    largest shapes; the last conv is ``features.conv5`` (its activation ``features.relu5``, 8x8).

    (N, 3, 64, 64) -> logits (N, num_classes). Simonyan & Zisserman 2014, https://arxiv.org/abs/1409.1556; the
    GAP + linear head follows Zhou et al. 2016 (CAM), https://arxiv.org/abs/1512.04150.
    """

    def __init__(self, num_classes: int = 8, channels: tuple[int, ...] = (16, 32, 64, 64, 64), pools: int = 3) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in = 3
        for i, c_out in enumerate(channels, start=1):
            layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            # Batch norm (as in torchvision's vgg*_bn) makes this small net converge in a few CPU epochs.
            layers[f"bn{i}"] = nn.BatchNorm2d(c_out)
            # Not in place: in-place ReLUs after a watched conv would overwrite what a hook saw without cloning.
            layers[f"relu{i}"] = nn.ReLU()
            if i <= pools:  # the last convs keep an 8x8 resolution for class activation maps
                layers[f"pool{i}"] = nn.MaxPool2d(2)
            c_in = c_out
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.avgpool(self.features(x))))


class ShapesResNet(nn.Module):
    """A small ResNet from torchvision's ``BasicBlock`` (its one in-place ReLU runs twice per block, on purpose).

    (N, 3, 64, 64) -> logits (N, num_classes). Stem conv (stride 2) + bn + relu, then stages of BasicBlocks at
    16/32/64 channels, each later stage halving the resolution with a conv1x1 + bn shortcut, then GAP and a linear
    layer; torchvision's names (conv1, bn1, relu, layer1..3, avgpool, fc), last conv ``layer3.0.conv2``.
    He et al. 2016, https://arxiv.org/abs/1512.03385.
    """

    def __init__(self, num_classes: int = 8, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False)  # 64 -> 32
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c_in = widths[0]
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            stage = []
            for b in range(blocks):
                down = None
                if b == 0 and (stride != 1 or c_in != width):
                    down = nn.Sequential(nn.Conv2d(c_in, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
                stage.append(BasicBlock(c_in, width, stride if b == 0 else 1, down))
                c_in = width
            setattr(self, f"layer{i}", nn.Sequential(*stage))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.avgpool(x).flatten(1))
