"""Model sources beyond the zoo and ``module:factory``: every torchvision classifier, timm architectures, local
Hugging Face image-classification folders and ``torch.export`` programs (``.pt2``).

Each loader returns a `Source`: the model (not yet in eval mode, on the CPU) and what it says about its own input
(size, mean, std, class names), which `reportgen.models.load_model` merges with the user's flags. Optional
libraries (timm, transformers) are imported inside the loader that needs them, through `require`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelError

# The pip extra that brings each optional library (pyproject.toml [project.optional-dependencies]).
EXTRAS = {"timm": "timm", "transformers": "hf"}


@dataclass
class Source:
    """A loaded model and its own facts. ``defaults``: input facts the model states itself (``input_size``,
    ``channels``, ``mean``, ``std``), overridden by the user's flags; ``fixed_size``: an input size the
    architecture cannot change (ViT position embeddings), checked against ``--input-size``."""

    model: Any
    defaults: dict = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fixed_size: tuple[int, int] | None = None


def require(module: str, what: str) -> Any:
    """Import the optional library ``module``; a `ModelError` naming the extra to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS[module]
        raise ModelError(f"{what} needs the optional package '{module}', which is not installed: "
                         f"pip install 'reportgen-vision[{extra}]'") from None
