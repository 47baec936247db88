"""reportgen: a static-site interpretability report for PyTorch image models."""

__version__ = "0.1.0"
