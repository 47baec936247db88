"""reportgen: a static-site interpretability report for PyTorch image models.

From Python: ``reportgen.build_report(model, images, out="site")`` (`reportgen.api`), ``reportgen.Snapshots`` for
a training loop (`reportgen.snapshots`) and ``reportgen.imaging.show(maps, images)`` for one method's output. They
are imported on first use, so that ``reportgen --help`` does not load torch.
"""

__version__ = "0.1.0"

_LAZY = {"build_report": "api", "Report": "api", "Snapshots": "snapshots", "lightning_callback": "snapshots"}


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name == "imaging":
        return importlib.import_module(f"{__name__}.imaging")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted([*globals(), *_LAZY, "imaging"])
