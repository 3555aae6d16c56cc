"""Linear layer y = x @ W.T + b, with W stored (out, in) as checkpoints store it."""

from .. import backend, threads
from ..precision import matmul
from .checks import require_last_dim, require_shape


def linear_forward(x, weight, bias=None):
    """x (..., I), weight (O, I), bias (O,) or None -> y (..., O).
    The leading dimensions are flattened first so the BLAS sees one large (N, I) x (I, O) product
    rather than a loop of small ones. Its products (here and in the backward) are `precision.matmul`: plain
    `@` unless a lower precision was chosen."""
    require_last_dim("x", x, weight.shape[1], f"weight's input size, weight shape {tuple(weight.shape)}")
    if bias is not None:
        require_shape("bias", bias, (weight.shape[0],))
    y = matmul(x.reshape(-1, x.shape[-1]), weight.T)     # (N, O)
    if bias is not None:   # y += bias, its rows cut over the threads (threads.py)
        threads.over_rows(lambda rows: backend.xp().add(y[rows], bias, out=y[rows]), y.shape[0], y.shape[1])
    return y.reshape(*x.shape[:-1], weight.shape[0]), (x, weight, bias is not None)


def linear_backward(dy, cache):
    """y[n,o] = sum_i x[n,i] W[o,i] + b[o] over rows n of the flattened leading dims, so
    dx = dy @ W  (..., I);   dW[o,i] = sum_n dy[n,o] x[n,i] = dy.T @ x  (O, I);   db = sum_n dy[n]  (O,).
    Returns (dx, dweight, dbias); dbias is None when the layer has no bias."""
    x, weight, has_bias = cache
    dy2 = dy.reshape(-1, dy.shape[-1])                  # (N, O)
    x2 = x.reshape(-1, x.shape[-1])                     # (N, I)
    dx = matmul(dy2, weight).reshape(x.shape)           # (..., I)
    dweight = matmul(dy2.T, x2)                         # (O, I)
    dbias = dy2.sum(axis=0) if has_bias else None       # (O,)
    return dx, dweight, dbias
