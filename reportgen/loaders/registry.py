"""The model forms read by `reportgen.loaders`, in the order they are asked: the first whose `Loader.claims`
accepts a spec loads it. Prefixed forms first (``torchvision:``, ``timm:``), then the paths: a folder is a Hugging
Face model, a file laid out by ``torch.export.save`` a program. Zoo names, ``package.module:factory`` and
TorchScript files are read by `reportgen.models` itself."""

from __future__ import annotations

from typing import Optional

from . import Loader
from .exported import ExportLoader
from .hf import HuggingFaceLoader
from .timm_models import TimmLoader
from .torchvision_models import TorchvisionLoader

LOADERS: tuple[type[Loader], ...] = (TorchvisionLoader, TimmLoader, HuggingFaceLoader, ExportLoader)


def loader_for(spec: str) -> Optional[type[Loader]]:
    """The loader that claims ``spec``, or None (a zoo name, a factory, a TorchScript file, or nothing)."""
    return next((loader for loader in LOADERS if loader.claims(spec)), None)
