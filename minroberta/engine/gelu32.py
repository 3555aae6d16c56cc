"""GELU's normal CDF in float32 on the NumPy backend: a short fitted erfc evaluated block by block, so each
block's temporaries stay in the CPU cache instead of making some twenty passes over memory.

The fit (scripts/fit_erf.py): erfc(z) ~= t P(t) exp(-z^2), t = 1/(1 + p z), z >= 0, P a degree-5 near-minimax
polynomial, good to 8e-9 absolute on [0, 9]. With the rounding of a dozen float32 operations the CDF is within
2.5e-7 absolute of the exact one (a float64 evaluation would remove the rounding, at a cost in speed); the float32
GELU agrees with its float64 form to 1e-5 relative (tests/test_ops_precision.py), well inside the rounding of
the float32 matrix products around it. tests/test_kernels.py holds it to the reference in ops/gelu.py.
"""

import math

import numpy as np

from .. import backend
from ..dispatch import register
from ..ops import gelu
from . import threads

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_ERFC_P = 0.39
_ERFC_POLY = (0.23532543152432492, 0.09138708190275746, 0.6495627199230736, -0.6354043902556812,
              0.8866668985659777, -0.2275377433672787)   # lowest degree first
_HALF_ERFC_POLY = tuple(c / 2 for c in _ERFC_POLY)   # P / 2: erfc(z) / 2 = Phi(-|x|) without a pass to halve it
_MINUS_HALF_ERFC_POLY = tuple(-c / 2 for c in _ERFC_POLY)

# float32 elements per block: 512 KiB per buffer, large enough that two threads do not queue for the
# interpreter lock (docs/performance.md)
BLOCK = 131072


def float32_on_numpy(x):
    return backend.name() == "numpy" and x.dtype == np.float32


@register("normal_cdf_and_pdf", float32_on_numpy)
def normal_cdf_and_pdf(x):
    """Phi(x) and phi(x) from one erfc evaluation (exp(-x^2/2) is the exp(-z^2) of erfc at z = |x|/sqrt 2),
    through erfc of |x| so the negative half, where Phi is small, loses nothing to the cancellation in 1 + erf."""
    flat = np.ascontiguousarray(x).reshape(-1)
    cdf, pdf = np.empty_like(flat), np.empty_like(flat)

    def block(part, scratch):
        _normal_cdf_and_pdf_block(flat[part], cdf[part], pdf[part], scratch)
    _blockwise(flat, 2, block)
    return cdf.reshape(x.shape), pdf.reshape(x.shape)


def gelu_in_place(x):
    """x * Phi(x) written over x: GELU where nothing is kept for a backward (inference). float32 on NumPy
    goes block by block through the same erfc fit, computing no density and keeping no Phi; elsewhere the
    reference's Phi."""
    if not float32_on_numpy(x) or not x.flags.c_contiguous:
        x *= gelu.normal_cdf_and_pdf(x)[0]
        return x
    flat = x.reshape(-1)
    _blockwise(flat, 3, lambda part, scratch: _gelu_block(flat[part], scratch))
    return x


def _blockwise(flat, buffers, work):
    """work(part, scratch) for consecutive slices `part` of BLOCK elements of the 1-D array `flat`, a
    contiguous run of them per thread; scratch holds `buffers` rows as long as the part."""
    def blocks(elements):
        scratch = np.empty((buffers, min(BLOCK, flat.size)), dtype=flat.dtype)
        for start in range(elements.start, elements.stop, BLOCK):
            stop = min(start + BLOCK, elements.stop)
            work(slice(start, stop), scratch[:, :stop - start])
    threads.over_rows(blocks, flat.size, 1, min_chunk=BLOCK)


def _normal_cdf_and_pdf_block(x, cdf, pdf, scratch):
    """One float32 block, written into cdf and pdf, every step in place:
    t = 1/(1 + p |x|/sqrt 2), h = t P(t) exp(-x^2/2) / 2 = Phi(-|x|) (the erfc fit at z = |x|/sqrt 2),
    cdf = 1/2 + sign(x) (1/2 - h) (where(x >= 0, 1 - h, h), without a masked select), pdf = exp(-x^2/2) / sqrt(2 pi)."""
    f = x.dtype.type
    a, t = scratch[0], scratch[1]
    np.abs(x, out=a)
    np.multiply(a, f(_ERFC_P * _INV_SQRT2), out=t)
    t += f(1.0)
    np.divide(f(1.0), t, out=t)                         # 1 / (1 + p |x| / sqrt 2) (faster than np.reciprocal)
    np.multiply(x, x, out=pdf)
    pdf *= f(-0.5)
    np.exp(pdf, out=pdf)                                # exp(-x^2 / 2)
    _erfc_fit(t, cdf, _MINUS_HALF_ERFC_POLY)            # -t P(t) / 2
    cdf *= pdf                                          # -h
    cdf += f(0.5)                                       # 1/2 - h, never negative
    # sign(x) (1/2 - h) by giving 1/2 - h the sign bit of x: two integer passes instead of NumPy's slow sign
    bits = a.view(np.uint32)
    np.bitwise_and(x.view(np.uint32), np.uint32(0x80000000), out=bits)
    np.bitwise_or(cdf.view(np.uint32), bits, out=cdf.view(np.uint32))
    cdf += f(0.5)
    pdf *= f(_INV_SQRT_2PI)


def _erfc_fit(t, out, poly=_ERFC_POLY):
    """out = t P(t), the erfc fit's polynomial (Horner, highest coefficient first), in place."""
    f = t.dtype.type
    np.multiply(t, f(poly[-1]), out=out)
    for c in poly[-2:0:-1]:
        out += f(c)
        out *= t
    out += f(poly[0])
    out *= t


def _gelu_block(x, scratch):
    """x * Phi(x) of one float32 block, over x: with h = Phi(-|x|) as in _normal_cdf_and_pdf_block,
    x Phi(x) = max(x, 0) - |x| h (x (1 - h) above 0, x h below), which keeps the small negative half whole (no
    1/2 - h to cancel); max(x, 0) = (x + |x|) / 2, exact below half the float32 maximum, two cheap passes
    instead of NumPy's slower maximum."""
    f = x.dtype.type
    a, t, h = scratch[0], scratch[1], scratch[2]
    np.abs(x, out=a)                                    # |x|
    np.multiply(a, f(_ERFC_P * _INV_SQRT2), out=t)
    t += f(1.0)
    np.divide(f(1.0), t, out=t)                         # 1 / (1 + p |x| / sqrt 2)
    _erfc_fit(t, h, _HALF_ERFC_POLY)                    # t P(t) / 2
    np.multiply(a, a, out=t)
    t *= f(-0.5)
    np.exp(t, out=t)                                    # exp(-x^2 / 2)
    h *= t                                              # Phi(-|x|)
    h *= a
    x += a
    x *= f(0.5)                                         # max(x, 0)
    x -= h
