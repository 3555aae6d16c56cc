"""The ops, the reference math of the model: each a forward returning (out, cache) and a backward returning
gradients, derivation beside it. Read these first; their fast forms (minroberta/engine/) are machinery, off until the engine is installed."""

from .attention import (attention_backward, attention_forward, masked_softmax, masked_softmax_backward,
                        softmax_backward, softmax_forward)
from .cross_entropy import IGNORE_INDEX, cross_entropy_backward, cross_entropy_forward
from .dropout import dropout_backward, dropout_forward
from .embedding import embedding_backward, embedding_forward
from .gelu import erf, gelu_backward, gelu_forward, gelu_output, normal_cdf_and_pdf
from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .mse import mse_backward, mse_forward
from .tanh import tanh_backward, tanh_forward
