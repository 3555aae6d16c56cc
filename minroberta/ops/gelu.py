"""GELU in its exact form, x * Phi(x) with Phi the standard normal CDF (the erf form, not the tanh one), and the
erf that Phi needs (NumPy has none)."""

import math
from collections import namedtuple

from .. import backend
from ..dispatch import fast_form

GeluCache = namedtuple("GeluCache", "x cdf pdf")

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_ERF_SERIES_TERMS = 50      # positive-term series below |x| = 3: no cancellation
_ERF_FRACTION_TERMS = 60    # continued fraction for erfc above |x| = 3
_ERF_SPLIT = 3.0


def gelu_forward(x):
    """x (...) -> x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2.
    The cache keeps Phi and the normal density phi as well as x: the backward needs both, and a fast form that
    gets phi while computing Phi saves recomputing an exp."""
    if fast := fast_form("gelu_forward", x):         # engine/fused.py: one CUDA kernel
        return fast(x)
    cdf, pdf = normal_cdf_and_pdf(x)                    # (...), (...)
    cache = GeluCache(x, cdf, pdf)
    return gelu_output(cache), cache


def gelu_backward(dout, cache):
    """d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) the normal density."""
    if fast := fast_form("gelu_backward", dout):
        return fast(dout, cache)
    x, cdf, pdf = cache
    return (x * pdf + cdf) * dout


def gelu_output(cache):
    """The forward's output x * Phi(x) again, from its cache: a caller can drop the output and rebuild it
    with one multiply instead of keeping another array of the input's size alive."""
    if fast := fast_form("gelu_output", cache.x):
        return fast(cache)
    return cache.x * cache.cdf


def normal_cdf_and_pdf(x):
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2 and phi(x) = exp(-x^2 / 2) / sqrt(2 pi), elementwise: GELU's gate and
    the other half of its derivative. float32 input is computed in float64 and rounded."""
    if fast := fast_form("normal_cdf_and_pdf", x):   # engine/: a fitted erfc in float32 blocks; CuPy's own
        return fast(x)
    xp = backend.xp()
    if x.dtype != xp.float64:
        cdf, pdf = normal_cdf_and_pdf(x.astype(xp.float64))
        return cdf.astype(x.dtype), pdf.astype(x.dtype)
    return 0.5 * (1.0 + erf(x * _INV_SQRT2)), _INV_SQRT_2PI * xp.exp(-0.5 * x * x)


def erf(x):
    """The error function, elementwise, in the dtype of x; float32 is evaluated in float64 and rounded.
    erf(x) = 2/sqrt(pi) x e^{-x^2} sum_n (2x^2)^n / (1*3*...*(2n+1))          for |x| < 3,
    erf(x) = 1 - e^{-x^2} / (sqrt(pi) (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))))   for |x| >= 3.
    Both forms are evaluated from the innermost term outwards, on clamped inputs, then selected; they agree
    with math.erf to about 1e-15."""
    if fast := fast_form("erf", x):                  # engine/fused.py: CuPy's own
        return fast(x)
    xp = backend.xp()
    if x.dtype != xp.float64:
        return erf(x.astype(xp.float64)).astype(x.dtype)
    a = xp.abs(x)
    small = xp.minimum(a, _ERF_SPLIT)
    y = 2.0 * small * small
    series = xp.ones_like(x)
    for k in range(_ERF_SERIES_TERMS, 0, -1):
        series = 1.0 + y / (2 * k + 1) * series
    erf_small = 2.0 / math.sqrt(math.pi) * small * xp.exp(-small * small) * series
    large = xp.maximum(a, _ERF_SPLIT)
    fraction = large.copy()
    for k in range(_ERF_FRACTION_TERMS, 0, -1):
        fraction = large + (k / 2.0) / fraction
    erf_large = 1.0 - xp.exp(-large * large) / (math.sqrt(math.pi) * fraction)
    return xp.sign(x) * xp.where(a < _ERF_SPLIT, erf_small, erf_large)
