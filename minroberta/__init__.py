"""minroberta: a complete RoBERTa in plain NumPy (or CuPy), every forward and backward pass written by hand."""

from .errors import MinRobertaError

__all__ = ["MinRobertaError"]
__version__ = "0.1.0"
