"""The loader registry (`reportgen.loaders.registry.LOADERS`): which loader claims which spec, in which order, and
that no loader depends on `reportgen.models` (which asks the registry). Each loader's own known answers (class
counts read from the weights, input facts, strict loading, refusals) are in test_sources.py and test_export.py."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import torch

from reportgen.loaders import Loader
from reportgen.loaders.exported import ExportLoader
from reportgen.loaders.hf import HuggingFaceLoader
from reportgen.loaders.registry import LOADERS, loader_for
from reportgen.loaders.timm_models import TimmLoader
from reportgen.loaders.torchvision_models import TorchvisionLoader


def test_each_spec_form_is_claimed_by_its_loader_and_the_others_by_none(tmp_path):
    folder = tmp_path / "vit"
    folder.mkdir()
    program = tmp_path / "net.pt2"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(torch.zeros(2, 3, 8, 8))
    torch.export.save(torch.export.export(net.eval(), (torch.zeros(2, 3, 8, 8),)), str(program))
    script = tmp_path / "net.ts"
    with warnings.catch_warnings():  # its deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(torch.nn.Conv2d(3, 2, 3)).save(str(script))
    expected = {"torchvision:resnet18": TorchvisionLoader, "timm:vit_tiny_patch16_224": TimmLoader,
                str(folder): HuggingFaceLoader, str(program): ExportLoader,
                str(script): None, "lenet-digits": None, "tiny_models:tiny_cnn": None, "nothing-here": None}
    assert {spec: loader_for(spec) for spec in expected} == expected
    # every claim is exclusive: the order of LOADERS decides nothing today, and a new loader that overlaps must say
    for spec, loader in expected.items():
        assert [other for other in LOADERS if other.claims(spec)] == ([loader] if loader else [])


def test_loaders_are_loader_adapters_with_distinct_forms():
    assert all(issubclass(loader, Loader) and loader.form for loader in LOADERS)
    assert len({loader.form for loader in LOADERS}) == len(LOADERS)


def test_no_loader_imports_the_models_module():
    """reportgen.models asks the registry; a loader importing it back (even inside a function) is a cycle."""
    root = Path(__file__).resolve().parent.parent / "reportgen" / "loaders"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                assert target not in ("..models", "reportgen.models"), path.name
