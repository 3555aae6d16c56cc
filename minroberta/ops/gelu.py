"""GELU in its exact form, x * Phi(x) with Phi the standard normal CDF (the erf form, not the tanh one)."""

from .. import backend, fused, threads


def gelu_forward(x):
    """x (...) -> x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2.
    The cache keeps Phi and the normal density phi as well as x: the backward needs both, and on the
    float32 path phi falls out of computing Phi, so keeping it saves recomputing an exp."""
    if fused.enabled():
        return fused.gelu_forward(x)                    # the same in one CUDA kernel
    cdf, pdf = backend.normal_cdf_and_pdf(x)            # (...), (...)
    cache = (x, cdf, pdf)
    return gelu_output(cache), cache


def gelu_backward(dout, cache):
    """d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) the normal density.
    Plainly: dx = dout * (cdf + x * pdf); computed in one buffer, in place (in parts over the threads)."""
    if fused.enabled():
        return fused.gelu_backward(dout, cache)
    x, cdf, pdf = cache
    xp = backend.xp()

    def compute(dx, x, cdf, pdf, dout):
        xp.multiply(x, pdf, out=dx)
        dx += cdf
        dx *= dout
    return threads.elementwise(compute, xp.empty(x.shape, xp.result_type(x, dout)), x, cdf, pdf, dout)


def gelu_output(cache):
    """The forward's output x * Phi(x) again, from its cache: a caller can drop the output and rebuild it
    with one multiply instead of keeping another array of the input's size alive."""
    x, cdf, _ = cache
    xp = backend.xp()
    return threads.elementwise(lambda y, x, cdf: xp.multiply(x, cdf, out=y), xp.empty(x.shape, x.dtype), x, cdf)
