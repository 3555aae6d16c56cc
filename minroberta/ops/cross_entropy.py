"""Softmax cross-entropy over rows of logits, ignoring label IGNORE_INDEX (-100), averaged over the counted rows."""

from collections import namedtuple

from .. import backend
from ..dispatch import fast_form
from .checks import require_ids_in_range, require_shape

IGNORE_INDEX = -100   # a label that scores nothing (padding, unmasked tokens), as in the reference

# probs (N, V); safe_labels (N,) with ignored rows pointed at 0; counted (N,) bool; count, a 0-d array >= 1
CrossEntropyCache = namedtuple("CrossEntropyCache", "probs safe_labels counted count")


def cross_entropy_forward(logits, labels):
    """logits (N, V), labels (N,) ints in [0, V) or IGNORE_INDEX -> loss, a 0-d array.
    loss = mean over counted rows n of  logsumexp(logits[n]) - logits[n, labels[n]].
    With no counted row the loss is 0 (and so is the gradient), not NaN."""
    xp = backend.xp()
    require_shape("labels", labels, logits.shape[:1])
    require_ids_in_range("labels", labels, logits.shape[1], allowed_negative=IGNORE_INDEX)
    counted = labels != IGNORE_INDEX                                    # (N,)
    safe_labels = xp.where(counted, labels, 0)                          # (N,)
    shifted_true, sum_exp, probs = shifted_softmax(logits, safe_labels)  # (N,), (N, 1), (N, V)
    log_probs_true = shifted_true - xp.log(sum_exp[:, 0])               # (N,)
    count = xp.maximum(counted.sum(), 1).astype(logits.dtype)
    loss = -(log_probs_true * counted).sum() / count
    return loss, CrossEntropyCache(probs, safe_labels, counted, count)   # probs kept for the backward


def shifted_softmax(logits, labels):
    """The row softmax of logits (N, V) after subtracting each row's max (stable: the max entry is 0), and what
    the loss takes from it: -> the label's shifted logit z_y - max z (N,), the row sums of exp(z - max z) (N, 1),
    the probabilities (N, V). labels (N,) in [0, V)."""
    if fast := fast_form("shifted_softmax", logits):   # engine/rows.py: in one buffer, rows over the threads
        return fast(logits, labels)
    xp = backend.xp()
    shifted = logits - logits.max(axis=1, keepdims=True)                # (N, V)
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)                            # (N, 1)
    return shifted[xp.arange(labels.shape[0]), labels], sum_exp, exp / sum_exp


def cross_entropy_backward(dloss, cache):
    """For one row, d/dz_v [logsumexp(z) - z_y] = softmax(z)_v - [v = y]; the mean divides by the count
    and ignored rows contribute nothing: dlogits = dloss * counted * (probs - onehot(label)) / count."""
    probs, safe_labels, counted, count = cache
    xp = backend.xp()
    dlogits = probs.copy()
    dlogits[xp.arange(probs.shape[0]), safe_labels] -= 1.0
    dlogits *= (dloss * counted / count)[:, None].astype(probs.dtype)
    return dlogits
