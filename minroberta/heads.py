"""Task heads on the encoder and their losses: the sequence classifier of each family (cross-entropy over classes,
or mean squared error for one output) and the extractive question-answering head (start and end cross-entropy).

Names and layout follow RobertaForSequenceClassification (`classifier.dense`, `classifier.out_proj`),
BertForSequenceClassification (`bert.pooler.dense`, `classifier`) and *ForQuestionAnswering (`qa_outputs`), so
checkpoints move between minroberta and transformers.
"""

from collections import namedtuple

import numpy as np

from . import backend
from .errors import MinRobertaError
from .ops.checks import as_id_array
from .ops import (IGNORE_INDEX, cross_entropy_backward, cross_entropy_forward, dropout_backward, dropout_forward,
                  linear_backward, linear_forward, mse_backward, mse_forward, tanh_backward, tanh_forward)

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


# --- the losses: a model with the head, its batch -> (loss, every parameter's gradient) ---------------------

def as_value_array(name, values, expected_shape, dtype):
    """Regression targets: numbers -> a float device array of the model's dtype."""
    xp = backend.xp()
    array = values if isinstance(values, xp.ndarray) and not isinstance(values, np.ndarray) else \
        backend.to_device(np.asarray(values, dtype=np.float64))
    if tuple(array.shape) != tuple(expected_shape):
        raise MinRobertaError(f"{name} has shape {tuple(array.shape)}, expected {tuple(expected_shape)}")
    return array.astype(dtype)


def classification_loss_and_grads(model, input_ids, attention_mask=None, labels=None, token_type_ids=None,
                                  dropout_key=None, loss_scale=1.0):
    """Cross-entropy over classes (labels (B,) ints) or, with one output, mean squared error (labels (B,)
    floats); and every parameter's gradient (of loss_scale x the loss, as Roberta.loss_and_grads)."""
    model.require_head("classification")
    if labels is None:
        raise MinRobertaError("the classification loss needs labels")
    dropout = model.dropout(dropout_key)
    hidden, enc_cache = model.encode(input_ids, attention_mask, token_type_ids, dropout)
    logits, head_cache = classifier_forward(model.params, hidden, dropout,
                                            classifier_layout(model.config, model.prefix))      # (B, L)
    batch = (logits.shape[0],)
    if model.config.num_labels == 1:
        targets = as_value_array("labels", labels, batch, logits.dtype)
        loss, loss_cache = mse_forward(logits[:, 0], targets)
        dlogits = mse_backward(loss_scale, loss_cache)[:, None]
    else:
        targets = as_id_array("labels", labels, batch, ndim=1)
        loss, loss_cache = cross_entropy_forward(logits, targets)
        dlogits = cross_entropy_backward(loss_scale, loss_cache)
    grads = {}
    model.encode_backward(classifier_backward(dlogits, head_cache, grads), enc_cache, grads)
    return loss, model.complete(grads)


def qa_loss_and_grads(model, input_ids, attention_mask=None, start_positions=None, end_positions=None,
                      token_type_ids=None, dropout_key=None, loss_scale=1.0):
    """Mean of the start and end cross-entropies over token positions (positions at or past the sequence
    end are ignored, as in the reference); and every parameter's gradient (of loss_scale x the loss)."""
    model.require_head("qa")
    if start_positions is None or end_positions is None:
        raise MinRobertaError("the QA loss needs start_positions and end_positions")
    xp = backend.xp()
    hidden, enc_cache = model.encode(input_ids, attention_mask, token_type_ids, model.dropout(dropout_key))
    seq = hidden.shape[1]
    start_logits, end_logits, head_cache = qa_forward(model.params, hidden)                  # (B, T) each
    dstart_end = []
    loss = 0.0
    for logits, positions in ((start_logits, start_positions), (end_logits, end_positions)):
        positions = as_id_array("positions", positions, (hidden.shape[0],), ndim=1)
        positions = xp.where((positions < 0) | (positions >= seq), IGNORE_INDEX, positions)
        part, cache = cross_entropy_forward(logits, positions)
        loss = loss + 0.5 * part
        dstart_end.append(cross_entropy_backward(0.5 * loss_scale, cache))
    grads = {}
    model.encode_backward(qa_backward(*dstart_end, head_cache, grads), enc_cache, grads)
    return loss, model.complete(grads)
