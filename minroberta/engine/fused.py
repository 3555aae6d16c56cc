"""Fused elementwise kernels for CuPy: each does in one pass over GPU memory what the plain op does in several
array operations (each a kernel launch and a full read and write of its arrays). Opt-in with `fused.use(True)`
(the command line's --fused) on the cupy backend; the plain ops in ops/ and optim.py stay the reference, and
each op sends its work here only when fused kernels are on. Also here: CuPy's own erf and normal CDF, which
stand in for the series of ops/gelu.py on the GPU whether or not the fused kernels are on.

The kernels are `cupy.ElementwiseKernel`s: a few lines of CUDA C applied at every element, with inputs
broadcast against each other and outputs written through references (an output may also be read: that is how
the in-place kernels update their arrays). T is the arrays' element type (float32 or float64).
Reductions (a row's max, sum, mean) stay CuPy's own.
"""

import math

from .. import backend, dispatch
from ..dispatch import register
from ..errors import MinRobertaError
from ..ops.layernorm import LayerNormCache
from ..ops.gelu import GeluCache

# name -> (inputs, outputs, CUDA C body); tests/test_fused.py compiles these same bodies for the CPU and for
# the GPU (nvcc) and checks them against the plain ops
KERNELS = {
    # x -> GELU(x) and the cache the backward needs: Phi(x) and phi(x) (ops/gelu.py)
    "gelu_forward": ("T x", "T y, T cdf, T pdf", f"""
        cdf = (T)0.5 * erfc(-x * (T){1.0 / math.sqrt(2.0)!r});
        pdf = exp((T)-0.5 * x * x) * (T){1.0 / math.sqrt(2.0 * math.pi)!r};
        y = x * cdf;"""),
    # dx = dout * (Phi(x) + x phi(x))
    "gelu_backward": ("T dout, T x, T cdf, T pdf", "T dx", "dx = dout * (cdf + x * pdf);"),
    # layer norm after its row statistics: xhat = (x - mean) * rstd, y = gamma * xhat + beta (ops/layernorm.py)
    "layernorm_normalize": ("T x, T mean, T rstd, T gamma, T beta", "T xhat, T y", """
        xhat = (x - mean) * rstd;
        y = xhat * gamma + beta;"""),
    # layer norm's dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma, after the two means
    "layernorm_dx": ("T g, T xhat, T rstd, T g_mean, T g_xhat_mean", "T dx",
                     "dx = rstd * (g - g_mean - xhat * g_xhat_mean);"),
    # attention scores: scaled and masked in place (ops/attention.py)
    "scale_and_mask": ("T scale, T additive", "T scores", "scores = scores * scale + additive;"),
    # softmax numerator in place, after the row max
    "exp_shifted": ("T row_max", "T scores", "scores = exp(scores - row_max);"),
    # one AdamW update of a whole tensor in place (optim.py, same order of operations)
    "adamw": ("T g, T decay, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T step_size, "
              "T bias_correction2_sqrt", "T p, T m, T v", """
        p = p * decay;
        m = m * beta1 + g * one_minus_beta1;
        v = v * beta2 + (g * g) * one_minus_beta2;
        p = p - m / (sqrt(v) / bias_correction2_sqrt + eps) * step_size;"""),
}

_enabled = False
_compiled = {}


def use(on):
    """Turn the fused kernels on or off; on needs the cupy backend."""
    global _enabled
    if on and backend.name() != "cupy":
        raise MinRobertaError("fused kernels are CUDA code: they need the cupy backend (--backend cupy)")
    if on and not dispatch.installed():
        raise MinRobertaError(f"fused kernels are {dispatch.ENGINE_OFF}")
    _enabled = bool(on)


def enabled():
    return _enabled


def kernel(name):
    """The compiled ElementwiseKernel (CuPy compiles on first call and caches on disk)."""
    if name not in _compiled:
        import cupy
        inputs, outputs, body = KERNELS[name]
        _compiled[name] = cupy.ElementwiseKernel(inputs, outputs, body, f"minroberta_{name}")
    return _compiled[name]


def when_enabled(*_):
    return _enabled


@register("gelu_forward", when_enabled)
def gelu_forward(x):
    y, cdf, pdf = kernel("gelu_forward")(x)
    return y, GeluCache(x, cdf, pdf)


@register("gelu_backward", when_enabled)
def gelu_backward(dout, cache):
    x, cdf, pdf = cache
    return kernel("gelu_backward")(dout, x, cdf, pdf)


@register("layernorm_forward", when_enabled)
def layernorm_forward(x, gamma, beta, eps):
    xp = backend.xp()
    mean = x.mean(axis=-1, keepdims=True)                          # (..., 1)
    rstd = 1.0 / xp.sqrt(x.var(axis=-1, keepdims=True) + eps)      # (..., 1), biased variance
    xhat, y = kernel("layernorm_normalize")(x, mean, rstd, gamma, beta)
    return y, LayerNormCache(xhat, rstd, gamma)


@register("layernorm_backward", when_enabled)
def layernorm_backward(dy, cache):
    """The row means as CuPy reductions, then the last line of the formula in one kernel."""
    xhat, rstd, gamma = cache
    channels = xhat.shape[-1]
    g = dy * gamma                                                 # (..., C)
    g_mean = g.mean(axis=-1, keepdims=True)                        # (..., 1)
    g_xhat_mean = (g * xhat).mean(axis=-1, keepdims=True)
    dx = kernel("layernorm_dx")(g, xhat, rstd, g_mean, g_xhat_mean)
    dgamma = (dy * xhat).reshape(-1, channels).sum(axis=0)         # (C,)
    dbeta = dy.reshape(-1, channels).sum(axis=0)                   # (C,)
    return dx, dgamma, dbeta


@register("masked_softmax", when_enabled)
def masked_softmax(scores, additive, scale):
    """softmax(scores * scale + additive) over the last axis, computed in the scores' buffer."""
    kernel("scale_and_mask")(scores.dtype.type(scale), additive[:, None, None, :], scores)
    kernel("exp_shifted")(scores.max(axis=-1, keepdims=True), scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


@register("adamw_update", when_enabled)
def adamw_update(p, g, m, v, decay, beta1, beta2, eps, step_size, bias_correction2_sqrt):
    """The plain update's arithmetic (its scalars rounded to p's dtype as NumPy rounds them), one kernel."""
    f = p.dtype.type
    kernel("adamw")(g, f(decay), f(beta1), f(1.0 - beta1), f(beta2), f(1.0 - beta2), f(eps), f(step_size),
                    f(bias_correction2_sqrt), p, m, v)


def on_cupy(*_):
    return backend.name() == "cupy"


@register("erf", on_cupy)
def erf(x):
    import cupyx.scipy.special
    return cupyx.scipy.special.erf(x)


@register("normal_cdf_and_pdf", on_cupy)
def normal_cdf_and_pdf(x):
    import cupyx.scipy.special
    return cupyx.scipy.special.ndtr(x), _INV_SQRT_2PI * backend.xp().exp(-0.5 * x * x)


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
