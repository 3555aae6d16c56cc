"""Layer normalisation over the last axis, biased variance, eps from the config."""

from .. import backend, fused, threads
from .checks import require_last_dim


def layernorm_forward(x, gamma, beta, eps):
    """x (..., C), gamma (C,), beta (C,) -> y = gamma * (x - mean) * rstd + beta, rstd = 1/sqrt(var + eps)."""
    require_last_dim("x", x, gamma.shape[0], f"layer norm size, gamma shape {tuple(gamma.shape)}")
    if fused.enabled():
        return fused.layernorm_forward(x, gamma, beta, eps)   # normalise and scale in one CUDA kernel
    xp = backend.xp()
    channels = x.shape[-1]
    x2 = x.reshape(-1, channels)                                           # (N, C) rows
    y = xp.empty(x2.shape, xp.result_type(x, gamma, beta))
    xhat = xp.empty(x2.shape, x.dtype)
    rstd = xp.empty((x2.shape[0], 1), x.dtype)

    def normalise(rows):   # one thread's rows (threads.py); rows are independent
        xhat_r = xhat[rows]
        mean = x2[rows].mean(axis=-1, keepdims=True)                       # (n, 1)
        xp.subtract(x2[rows], mean, out=xhat_r)                            # centred, normalised in place below
        var = (xhat_r * xhat_r).mean(axis=-1, keepdims=True)
        rstd[rows] = 1.0 / (var + eps) ** 0.5                              # (n, 1)
        xhat_r *= rstd[rows]
        y_r = y[rows]
        xp.multiply(xhat_r, gamma, out=y_r)
        y_r += beta
    threads.over_rows(normalise, x2.shape[0], channels)
    shape = x.shape
    return y.reshape(shape), (xhat.reshape(shape), rstd.reshape(shape[:-1] + (1,)), gamma)


def layernorm_backward(dy, cache):
    """With xhat = (x - mean) * rstd and y = gamma * xhat + beta:
    dgamma = sum over rows of dy * xhat;  dbeta = sum over rows of dy;  g = dy * gamma.
    xhat depends on x directly and through mean and var; d var/dx_j = 2 (x_j - mean) / C and the
    mean's path cancels in the variance, which gives the standard form
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))        (means over the C channels)."""
    xp = backend.xp()
    xhat, rstd, gamma = cache
    channels = xhat.shape[-1]
    dy2, xhat2, rstd2 = dy.reshape(-1, channels), xhat.reshape(-1, channels), rstd.reshape(-1, 1)   # (N, C) rows
    dx = xp.empty(dy2.shape, xp.result_type(dy, gamma))
    dy_xhat = xp.empty(dy2.shape, xp.result_type(dy, xhat))    # summed over rows into dgamma below

    def dx_rows(rows):   # one thread's rows (threads.py)
        xp.multiply(dy2[rows], xhat2[rows], out=dy_xhat[rows])
        g = dy2[rows] * gamma                                    # (n, C)
        g_mean = g.mean(axis=-1, keepdims=True)                  # (n, 1)
        g_xhat_mean = (g * xhat2[rows]).mean(axis=-1, keepdims=True)
        if fused.enabled():   # the last line of the formula in one CUDA kernel
            fused.layernorm_dx(g, xhat2[rows], rstd2[rows], g_mean, g_xhat_mean, dx[rows])
            return
        dx_r = dx[rows]
        xp.subtract(g, g_mean, out=dx_r)
        dx_r -= xhat2[rows] * g_xhat_mean
        dx_r *= rstd2[rows]
    threads.over_rows(dx_rows, dy2.shape[0], channels)
    dgamma = dy_xhat.sum(axis=0)                                 # (C,) whole: the same sums on any thread count
    dbeta = dy2.sum(axis=0)                                      # (C,)
    return dx.reshape(dy.shape), dgamma, dbeta
