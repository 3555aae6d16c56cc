"""Layer normalisation over the last axis, biased variance, eps from the config."""

from collections import namedtuple

from ..dispatch import fast_form
from .checks import require_last_dim

LayerNormCache = namedtuple("LayerNormCache", "xhat rstd gamma")


def layernorm_forward(x, gamma, beta, eps):
    """x (..., C), gamma (C,), beta (C,) -> y = gamma * (x - mean) * rstd + beta, rstd = 1/sqrt(var + eps)."""
    require_last_dim("x", x, gamma.shape[0], f"layer norm size, gamma shape {tuple(gamma.shape)}")
    if fast := fast_form("layernorm_forward", x):    # engine/: rows over the threads, or one CUDA kernel
        return fast(x, gamma, beta, eps)
    mean = x.mean(axis=-1, keepdims=True)                # (..., 1)
    centred = x - mean                                   # (..., C)
    var = (centred * centred).mean(axis=-1, keepdims=True)   # (..., 1) biased
    rstd = 1.0 / (var + eps) ** 0.5                      # (..., 1)
    xhat = centred * rstd                                # (..., C)
    y = xhat * gamma + beta                              # (..., C)
    return y, LayerNormCache(xhat, rstd, gamma)


def layernorm_backward(dy, cache):
    """With xhat = (x - mean) * rstd and y = gamma * xhat + beta:
    dgamma = sum over rows of dy * xhat;  dbeta = sum over rows of dy;  g = dy * gamma.
    xhat depends on x directly and through mean and var; d var/dx_j = 2 (x_j - mean) / C and the
    mean's path cancels in the variance, which gives the standard form
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))        (means over the C channels)."""
    if fast := fast_form("layernorm_backward", dy):
        return fast(dy, cache)
    xhat, rstd, gamma = cache
    channels = xhat.shape[-1]
    g = dy * gamma                                                   # (..., C)
    g_mean = g.mean(axis=-1, keepdims=True)                          # (..., 1)
    g_xhat_mean = (g * xhat).mean(axis=-1, keepdims=True)            # (..., 1)
    dx = (g - g_mean - xhat * g_xhat_mean) * rstd                    # (..., C)
    dgamma = (dy * xhat).reshape(-1, channels).sum(axis=0)           # (C,)
    dbeta = dy.reshape(-1, channels).sum(axis=0)                     # (C,)
    return dx, dgamma, dbeta
