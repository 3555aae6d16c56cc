"""Linear layer y = x @ W.T + b, with W stored (out, in) as checkpoints store it."""

from collections import namedtuple

from ..dispatch import fast_form
from .matmul import matmul
from .checks import require_last_dim, require_shape

LinearCache = namedtuple("LinearCache", "x weight has_bias")


def linear_forward(x, weight, bias=None):
    """x (..., I), weight (O, I), bias (O,) or None -> y (..., O).
    The leading dimensions are flattened so the BLAS sees one large (N, I) x (I, O) product rather than a loop
    of small ones; `matmul` is plain `@` (ops/matmul.py)."""
    require_last_dim("x", x, weight.shape[1], f"weight's input size, weight shape {tuple(weight.shape)}")
    if bias is not None:
        require_shape("bias", bias, (weight.shape[0],))
    if fast := fast_form("linear_forward", x):       # engine/rows.py: the bias added in place
        return fast(x, weight, bias)
    y = matmul(x.reshape(-1, x.shape[-1]), weight.T)     # (N, O)
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0]), LinearCache(x, weight, bias is not None)


def linear_backward(dy, cache):
    """y[n,o] = sum_i x[n,i] W[o,i] + b[o] over rows n of the flattened leading dims, so
    dx = dy @ W  (..., I);   dW[o,i] = sum_n dy[n,o] x[n,i] = dy.T @ x  (O, I);   db = sum_n dy[n]  (O,).
    Returns (dx, dweight, dbias); dbias is None when the layer has no bias."""
    x = cache.x
    dy2 = dy.reshape(-1, dy.shape[-1])                  # (N, O)
    x2 = x.reshape(-1, x.shape[-1])                     # (N, I)
    dx = matmul(dy2, cache.weight).reshape(x.shape)     # (..., I)
    dweight = matmul(dy2.T, x2)                         # (O, I)
    dbias = dy2.sum(axis=0) if cache.has_bias else None   # (O,)
    return dx, dweight, dbias
