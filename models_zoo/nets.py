"""The four zoo architectures, with named sub-modules so that every layer has a readable dotted name."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn


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
        # imported here: torchvision's import pulls in torch._dynamo (about 2 s), which the other zoo nets never need
        from torchvision.models.resnet import BasicBlock

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


# --- The task models (issue 30): multi-label, counting, binary, segmentation, detection and embedding heads on the
# generated scenes. Multi-label and counting reuse `ShapesCNN` as it is (8 outputs).


def shapes_binary() -> ShapesCNN:
    """`ShapesCNN` with one output: (N, 3, 64, 64) -> logit (N, 1) of "the scene holds a triangle"."""
    return ShapesCNN(num_classes=1)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) + BN + ReLU, the unit of the small encoder-decoders below."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            bn=nn.BatchNorm2d(c_out),
            relu=nn.ReLU(),
        )
    )


class _Encoder(nn.Module):
    """Strided 3x3 convs: 64 px -> 32 (``enc1``, 16 ch) -> 16 (``enc2``, 32 ch) -> 8 (``enc3``, 64 ch, two convs
    whose receptive field covers a whole 64 px scene). Returns the three stages' features for skip connections."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(_conv(3, 16, 2), _conv(16, 16))
        self.enc2 = nn.Sequential(_conv(16, 32, 2), _conv(32, 32))
        self.enc3 = nn.Sequential(_conv(32, 64, 2), _conv(64, 64), _conv(64, 64))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f1 = self.enc1(x)
        f2 = self.enc2(f1)
        return f1, f2, self.enc3(f2)


class ShapesSegNet(nn.Module):
    """A small U-Net-style encoder-decoder: (N, 3, 64, 64) -> logits (N, 9, 64, 64), background + the 8 shapes.

    `_Encoder` to 8x8, then two decoder stages (bilinear 2x upsampling, concatenation with the encoder stage of the
    same resolution, a 3x3 conv: ``dec2`` at 16 px, ``dec1`` at 32 px), a 1x1 classifier ``head`` at 32 px and a
    bilinear 2x upsampling of the logits to the input size. Ronneberger et al. 2015, https://arxiv.org/abs/1505.04597.
    """

    def __init__(self, num_classes: int = 9) -> None:
        super().__init__()
        self.encoder = _Encoder()
        self.dec2 = _conv(64 + 32, 32)
        self.dec1 = _conv(32 + 16, 32)
        self.head = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        import torch.nn.functional as F
        from torch import cat

        f1, f2, f3 = self.encoder(x)
        up = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        d2 = self.dec2(cat([up, f2], 1))
        up = F.interpolate(d2, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        d1 = self.dec1(cat([up, f1], 1))
        return F.interpolate(self.head(d1), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ShapesCenterNet(nn.Module):
    """A small CenterNet ("Objects as Points", Zhou et al. 2019, https://arxiv.org/abs/1904.07850) on the scenes.

    `_Encoder` to 8x8, one decoder stage to a 16x16 grid (stride 4) and three 1x1 heads on a shared 3x3 conv:
    ``heatmap`` (8 class-centre logits per cell), ``size`` (log width and height in pixels) and ``offset`` (the
    centre's position inside its cell, in cells). `maps` returns them for training.

    ``forward`` (train and eval mode alike) decodes them into torchvision's detection output: a list of N dicts
    {'boxes': float32 (j, 4) xyxy in input pixels, 'labels': int64 (j,) class indices into the 8 shape classes
    (0 = disk: no background id, unlike torchvision's detectors), 'scores': float32 (j,) in (0, 1)}, sorted by
    score, j <= ``max_detections``. Decoding as in the paper: the sigmoid heatmap's 3x3 local maxima, the top
    ``max_detections`` per image, those above ``score_threshold``, then class-wise NMS at IoU ``nms_iou``
    (torchvision.ops.batched_nms; the peaks alone leave few duplicates). Scores and boxes are gathered from the
    maps with differentiable indexing, so a box's score has a gradient w.r.t. the input (Grad-CAM on a detection).
    """

    stride = 4

    def __init__(self, num_classes: int = 8, max_detections: int = 20, score_threshold: float = 0.1,
                 nms_iou: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.encoder = _Encoder()
        self.dec2 = _conv(64 + 32, 48)
        self.neck = _conv(48, 48)
        self.heatmap = nn.Conv2d(48, num_classes, 1)
        self.size = nn.Conv2d(48, 2, 1)
        self.offset = nn.Conv2d(48, 2, 1)
        # Focal-loss prior (Lin et al. 2017, https://arxiv.org/abs/1708.02002): centres start at probability 0.01.
        nn.init.constant_(self.heatmap.bias, -4.6)

    def maps(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(heatmap logits (N, 8, H/4, W/4), log sizes (N, 2, H/4, W/4) as (w, h), offsets (N, 2, ...) as (x, y))."""
        import torch.nn.functional as F
        from torch import cat

        _, f2, f3 = self.encoder(x)
        up = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        feat = self.neck(self.dec2(cat([up, f2], 1)))
        return self.heatmap(feat), self.size(feat), self.offset(feat)

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        import torch
        import torch.nn.functional as F
        from torchvision.ops import batched_nms

        heat, size, offset = self.maps(x)
        n, k, h, w = heat.shape
        scores = torch.sigmoid(heat)
        # Local maxima: a 3x3 max pool keeps each peak once (the paper's NMS-free decoding). The comparison carries
        # no gradient; the kept scores do.
        peaks = (scores == F.max_pool2d(scores, 3, stride=1, padding=1)).to(scores.dtype)
        top, idx = (scores * peaks).flatten(1).topk(min(self.max_detections, k * h * w), dim=1)
        labels = idx // (h * w)
        cell = idx % (h * w)
        cy, cx = (cell // w).to(scores.dtype), (cell % w).to(scores.dtype)
        off = offset.flatten(2).gather(2, cell[:, None, :].expand(-1, 2, -1))  # (N, 2, top)
        wh = size.flatten(2).gather(2, cell[:, None, :].expand(-1, 2, -1)).exp()
        centre_x = (cx + off[:, 0]) * self.stride
        centre_y = (cy + off[:, 1]) * self.stride
        boxes = torch.stack([centre_x - wh[:, 0] / 2, centre_y - wh[:, 1] / 2,
                             centre_x + wh[:, 0] / 2, centre_y + wh[:, 1] / 2], dim=-1)
        out = []
        for i in range(n):
            keep = torch.nonzero(top[i] > self.score_threshold).flatten()
            keep = keep[batched_nms(boxes[i, keep].detach(), top[i, keep].detach(), labels[i, keep], self.nms_iou)]
            out.append({"boxes": boxes[i, keep], "labels": labels[i, keep], "scores": top[i, keep]})
        return out


class ShapesEmbedNet(nn.Module):
    """`ShapesCNN`'s features, global average pooling and a linear projection ``fc`` to ``dim``, L2-normalized:
    (N, 3, 64, 64) -> unit embeddings (N, dim), trained with a supervised contrastive loss (Khosla et al. 2020,
    https://arxiv.org/abs/2004.11362) so that same-class images are near in cosine similarity."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        backbone = ShapesCNN()
        self.features = backbone.features
        self.avgpool = backbone.avgpool
        self.flatten = backbone.flatten
        self.fc = nn.Linear(backbone.fc.in_features, dim)

    def forward(self, x: Tensor) -> Tensor:
        import torch.nn.functional as F

        return F.normalize(self.fc(self.flatten(self.avgpool(self.features(x)))), dim=1)



class ShapesCounter(ShapesCNN):
    """`ShapesCNN` whose linear layer is called ``count``: (N, 3, 64, 64) -> (N, 8) real outputs, the number of
    shapes of each class. Its own name keeps shapes-cnn's classifier out of its initialization (`Recipe.init`
    copies the features only): class logits are no starting point for counts."""

    def __init__(self, num_outputs: int = 8) -> None:
        super().__init__(num_classes=num_outputs)
        self.count = self.fc
        del self.fc

    def forward(self, x: Tensor) -> Tensor:
        return self.count(self.flatten(self.avgpool(self.features(x))))
