"""Task heads on the encoder: RoBERTa's sequence classifier and the extractive question-answering head.

Names and layout follow RobertaForSequenceClassification (`classifier.dense`, `classifier.out_proj`) and
RobertaForQuestionAnswering (`qa_outputs`), so checkpoints move between minroberta and transformers.
"""

from . import backend
from .ops import (dropout_backward, dropout_forward, linear_backward, linear_forward, tanh_backward,
                  tanh_forward)


def classifier_shapes(config, num_labels):
    C = config.hidden_size
    return {"classifier.dense.weight": (C, C), "classifier.dense.bias": (C,),
            "classifier.out_proj.weight": (num_labels, C), "classifier.out_proj.bias": (num_labels,)}


def qa_shapes(config):
    return {"qa_outputs.weight": (2, config.hidden_size), "qa_outputs.bias": (2,)}


def _drop(dropout, x):
    return (x, None) if dropout is None else dropout_forward(x, dropout.hidden_p, dropout.generator)


def classifier_forward(params, hidden, dropout):
    """hidden (B, T, C) -> logits (B, L): the state of <s> (token 0), dropout, dense, tanh, dropout, out_proj."""
    first = hidden[:, 0]                                                            # (B, C)
    x, c_drop1 = _drop(dropout, first)
    x, c_dense = linear_forward(x, params["classifier.dense.weight"], params["classifier.dense.bias"])
    x, c_tanh = tanh_forward(x)
    x, c_drop2 = _drop(dropout, x)
    logits, c_out = linear_forward(x, params["classifier.out_proj.weight"], params["classifier.out_proj.bias"])
    return logits, (hidden.shape, hidden.dtype, c_drop1, c_dense, c_tanh, c_drop2, c_out)


def classifier_backward(dlogits, cache, grads):
    """The forward in reverse; only token 0's hidden state receives a gradient, the others get zero."""
    shape, dtype, c_drop1, c_dense, c_tanh, c_drop2, c_out = cache
    dx, grads["classifier.out_proj.weight"], grads["classifier.out_proj.bias"] = linear_backward(dlogits, c_out)
    dx = tanh_backward(dropout_backward(dx, c_drop2), c_tanh)
    dx, grads["classifier.dense.weight"], grads["classifier.dense.bias"] = linear_backward(dx, c_dense)
    dhidden = backend.xp().zeros(shape, dtype=dtype)                                # (B, T, C)
    dhidden[:, 0] = dropout_backward(dx, c_drop1)
    return dhidden


def qa_forward(params, hidden):
    """hidden (B, T, C) -> start_logits, end_logits (B, T): one linear to two scores per token."""
    logits, cache = linear_forward(hidden, params["qa_outputs.weight"], params["qa_outputs.bias"])   # (B, T, 2)
    return logits[..., 0], logits[..., 1], cache


def qa_backward(dstart, dend, cache, grads):
    dlogits = backend.xp().stack([dstart, dend], axis=-1)                           # (B, T, 2)
    dhidden, grads["qa_outputs.weight"], grads["qa_outputs.bias"] = linear_backward(dlogits, cache)
    return dhidden
