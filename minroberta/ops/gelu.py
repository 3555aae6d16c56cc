"""GELU in its exact form, x * Phi(x) with Phi the standard normal CDF (the erf form, not the tanh one)."""

import math

from .. import backend

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_forward(x):
    """x (...) -> x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2."""
    cdf = backend.normal_cdf(x)                         # (...)
    return x * cdf, (x, cdf)                            # Phi is kept: the backward needs it and erf is dear


def gelu_backward(dout, cache):
    """d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) the normal density.
    Plainly: dx = dout * (cdf + x * exp(-x*x/2) / sqrt(2 pi)); computed in one buffer, in place."""
    x, cdf = cache
    xp = backend.xp()
    dx = x * x
    dx *= -0.5
    xp.exp(dx, out=dx)
    dx *= x
    dx *= _INV_SQRT_2PI
    dx += cdf
    dx *= dout
    return dx
