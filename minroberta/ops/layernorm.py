"""Layer normalisation over the last axis, biased variance, eps from the config."""

from .. import fused
from .checks import require_last_dim


def layernorm_forward(x, gamma, beta, eps):
    """x (..., C), gamma (C,), beta (C,) -> y = gamma * (x - mean) * rstd + beta, rstd = 1/sqrt(var + eps)."""
    require_last_dim("x", x, gamma.shape[0], f"layer norm size, gamma shape {tuple(gamma.shape)}")
    if fused.enabled():
        return fused.layernorm_forward(x, gamma, beta, eps)   # normalise and scale in one CUDA kernel
    mean = x.mean(axis=-1, keepdims=True)               # (..., 1)
    xhat = x - mean                                     # (..., C) centred, normalised in place below
    var = (xhat * xhat).mean(axis=-1, keepdims=True)
    rstd = 1.0 / (var + eps) ** 0.5                     # (..., 1)
    xhat *= rstd
    y = xhat * gamma
    y += beta
    return y, (xhat, rstd, gamma)


def layernorm_backward(dy, cache):
    """With xhat = (x - mean) * rstd and y = gamma * xhat + beta:
    dgamma = sum over rows of dy * xhat;  dbeta = sum over rows of dy;  g = dy * gamma.
    xhat depends on x directly and through mean and var; d var/dx_j = 2 (x_j - mean) / C and the
    mean's path cancels in the variance, which gives the standard form
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))        (means over the C channels)."""
    xhat, rstd, gamma = cache
    channels = xhat.shape[-1]
    dgamma = (dy * xhat).reshape(-1, channels).sum(axis=0)       # (C,)
    dbeta = dy.reshape(-1, channels).sum(axis=0)                 # (C,)
    g = dy * gamma                                               # (..., C)
    g_mean = g.mean(axis=-1, keepdims=True)                      # (..., 1)
    g_xhat_mean = (g * xhat).mean(axis=-1, keepdims=True)        # (..., 1)
    if fused.enabled():   # the last line of the formula in one CUDA kernel
        return fused.layernorm_dx(g, xhat, rstd, g_mean, g_xhat_mean), dgamma, dbeta
    dx = g - g_mean
    dx -= xhat * g_xhat_mean
    dx *= rstd
    return dx, dgamma, dbeta
