"""minroberta: a complete RoBERTa in plain NumPy (or CuPy), every forward and backward pass written by hand.

Importing it runs nothing fast: the reference core runs exactly as written until `minroberta.engine.install()`."""

from .checkpoint import load_pretrained, load_tokenizer, save_pretrained
from .config import Config
from .errors import MinRobertaError
from .model import ModelOutput, Roberta

__all__ = ["Config", "MinRobertaError", "ModelOutput", "Roberta", "load_pretrained", "load_tokenizer",
           "save_pretrained"]
__version__ = "0.1.0"
