"""Factories for `reportgen build sweep_factories:ARCH` (``module:factory`` specs, with benchmarks/ on PYTHONPATH):
torchvision's RetinaNet and FCOS built with ``min_size = max_size = 320`` instead of their 800, so that their
transform resizes every input to 320 px. The parameters are those of the 800-px model (the size is the transform's
setting, not a weight), so the sweep's seeded state dict loads into either; a forward pass costs about a sixth as
much (20 GMAC instead of 128), and ``--budget 0`` then runs every analysis on the real architecture in minutes
instead of hours on the 2-core CPU."""

from __future__ import annotations

CLASSES = 5  # the sweep's: background + cat, dog, car, tree
SIZE = 320


def _small(arch: str):
    import torchvision

    return torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=CLASSES,
                                        min_size=SIZE, max_size=SIZE)


def retinanet_resnet50_fpn():
    return _small("retinanet_resnet50_fpn")


def fcos_resnet50_fpn():
    return _small("fcos_resnet50_fpn")
