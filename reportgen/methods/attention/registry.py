"""The attention families this report reads, in the order they are tried: the first whose `recognizes` accepts a
module reads it. Where one family's test also accepts another's modules, the more specific family comes first:
timm's BEiT attention has every attribute timm's Swin ``WindowAttention`` has (and its own q / v biases), and
Hugging Face's Swin attention every attribute of its ViT attention (and a relative position bias); both orders
are checked by ``tests/test_attention_families.py``. A new family is a new module of this package with its
`AttentionFamily` subclass, one entry here, and its known-answer test."""

from __future__ import annotations

from typing import Optional

from torch import nn

from .base import AttentionFamily
from .hf_legacy import HuggingFaceLegacy
from .hf_swin import HuggingFaceSwin
from .hf_vit import HuggingFaceViT
from .timm_beit import TimmBEiT
from .timm_swin import TimmSwin
from .timm_vit import TimmViT
from .torch_mha import TorchMultiheadAttention
from .torchvision_swin import TorchvisionSwin

FAMILIES: tuple[type[AttentionFamily], ...] = (
    TorchMultiheadAttention,
    TorchvisionSwin,
    TimmViT,
    TimmBEiT,  # before TimmSwin
    TimmSwin,
    HuggingFaceSwin,  # before HuggingFaceViT
    HuggingFaceViT,
    HuggingFaceLegacy,
)


def family_of(module: nn.Module) -> Optional[type[AttentionFamily]]:
    """The family that reads ``module``: the first of `FAMILIES` that recognizes it, or None."""
    return next((family for family in FAMILIES if family.recognizes(module)), None)
