"""Task heads on the encoder: the sequence classifier of each family and the extractive question-answering head.

Names and layout follow RobertaForSequenceClassification (`classifier.dense`, `classifier.out_proj`),
BertForSequenceClassification (`bert.pooler.dense`, `classifier`) and *ForQuestionAnswering (`qa_outputs`), so
checkpoints move between minroberta and transformers.
"""

from collections import namedtuple

from . import backend
from .ops import (dropout_backward, dropout_forward, linear_backward, linear_forward, tanh_backward,
                  tanh_forward)

# Where a classifier's two linears live, and whether token 0's state is dropped out before the first.
Classifier = namedtuple("Classifier", "dense out drop_first")
ROBERTA_CLASSIFIER = Classifier("classifier.dense", "classifier.out_proj", True)


def classifier_layout(config, prefix="roberta."):
    """RoBERTa's head runs dropout, dense, tanh, dropout, out_proj on token 0's state. BERT's is the same
    computation with the dense and tanh in its pooler (under the encoder's `prefix`, pretrained with it) and
    the out_proj called `classifier`; it drops out only between the two."""
    if config.model_type == "bert":
        return Classifier(f"{prefix}pooler.dense", "classifier", False)
    return ROBERTA_CLASSIFIER


def classifier_shapes(config, num_labels, prefix="roberta."):
    C = config.hidden_size
    layout = classifier_layout(config, prefix)
    return {f"{layout.dense}.weight": (C, C), f"{layout.dense}.bias": (C,),
            f"{layout.out}.weight": (num_labels, C), f"{layout.out}.bias": (num_labels,)}


def qa_shapes(config):
    return {"qa_outputs.weight": (2, config.hidden_size), "qa_outputs.bias": (2,)}


def _drop(dropout, x):
    return (x, None) if dropout is None else dropout_forward(x, dropout.classifier_p, dropout.generator)


def classifier_forward(params, hidden, dropout, layout=ROBERTA_CLASSIFIER):
    """hidden (B, T, C) -> logits (B, L): the state of token 0 (<s> or [CLS]), dropout (RoBERTa only), dense,
    tanh, dropout, out."""
    first = hidden[:, 0]                                                            # (B, C)
    x, c_drop1 = _drop(dropout if layout.drop_first else None, first)
    x, c_dense = linear_forward(x, params[layout.dense + ".weight"], params[layout.dense + ".bias"])
    x, c_tanh = tanh_forward(x)
    x, c_drop2 = _drop(dropout, x)
    logits, c_out = linear_forward(x, params[layout.out + ".weight"], params[layout.out + ".bias"])
    return logits, (hidden.shape, hidden.dtype, layout, c_drop1, c_dense, c_tanh, c_drop2, c_out)


def classifier_backward(dlogits, cache, grads):
    """The forward in reverse; only token 0's hidden state receives a gradient, the others get zero."""
    shape, dtype, layout, c_drop1, c_dense, c_tanh, c_drop2, c_out = cache
    dx, grads[layout.out + ".weight"], grads[layout.out + ".bias"] = linear_backward(dlogits, c_out)
    dx = tanh_backward(dropout_backward(dx, c_drop2), c_tanh)
    dx, grads[layout.dense + ".weight"], grads[layout.dense + ".bias"] = linear_backward(dx, c_dense)
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
