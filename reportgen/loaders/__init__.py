"""Model sources beyond the zoo and ``module:factory``: every torchvision classifier, timm architectures, local
Hugging Face image-classification folders and ``torch.export`` programs (``.pt2``).

Each form is a `Loader` adapter in a module of its own (`torchvision_models`, `timm_models`, `hf`, `exported`),
tried in the order of `reportgen.loaders.registry.LOADERS`; `reportgen.models.load_model` asks the registry which
one claims a spec. A loader returns a `Source`: the model (not yet in eval mode, on the CPU) and what it says about
its own input (size, mean, std, class names), which `load_model` merges with the user's flags. Optional libraries
(timm, transformers) are imported inside the loader that needs them, through `require`. The weights helpers the
loaders share are in `reportgen.loaders.weights`; no loader imports `reportgen.models`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ModelError

# What a model spec may be, for messages.
SPEC_HELP = ("a zoo name (`reportgen zoo list`), torchvision:ARCH, timm:NAME, a Hugging Face model folder, "
             "a .pt2 file (torch.export), a TorchScript file, or package.module:factory")

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
    weights: str | None = None  # the file the weights came from when it is not --weights (a folder's, a .pt2)
    side: dict | None = None  # input facts from a model.json the loader found itself (else those beside --weights)
    task: str | None = None  # the task the model states itself (`reportgen.tasks`), None: the output decides
    task_source: str = ""  # how it states it, for the page (e.g. "its config's problem_type")


class Loader:
    """One model form. `claims` says, from the spec string alone (and the file system), whether the spec names a
    model of this form; `load` builds it (``cfg``: the config, for ``weights``, ``input_size``...; ``side``: the
    facts of a model.json beside the weights). A new form is a module with its subclass, one entry in
    `reportgen.loaders.registry.LOADERS`, and its tests."""

    form: ClassVar[str] = ""  # `reportgen.models.LoadedModel.form`

    @classmethod
    def claims(cls, spec: str) -> bool:
        raise NotImplementedError  # pragma: no cover - interface

    @classmethod
    def load(cls, spec: str, cfg: Any, side: dict) -> Source:
        raise NotImplementedError  # pragma: no cover - interface


def require(module: str, what: str) -> Any:
    """Import the optional library ``module``; a `ModelError` naming the extra to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS[module]
        raise ModelError(f"{what} needs the optional package '{module}', which is not installed: "
                         f"pip install 'reportgen-vision[{extra}]'") from None
