"""The array module, chosen in one place: NumPy on the CPU, CuPy on an NVIDIA GPU, or a device stand-in.

Model code asks `backend.xp()` for the module and never imports numpy or cupy for computation. The few things
NumPy and CuPy spell differently live here: `erf`, scatter-add, moving arrays between host and device, and a
seeded random generator made from an explicit key (never a global one).

Choose with `backend.use("numpy" | "cupy" | "standin")` or the environment variable MINROBERTA_BACKEND.
"standin" is NumPy dressed as a device library (see `device_standin.py`): it refuses every implicit
conversion to host arrays or Python scalars, so tests on a CPU catch hidden host round-trips.
"""

import math
import os

import numpy as np

from .errors import MinRobertaError

BACKENDS = ("numpy", "cupy", "standin")

_name = None
_xp = None


def use(name):
    """Select the array module by name and return it."""
    global _name, _xp
    if name not in BACKENDS:
        raise MinRobertaError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "numpy":
        module = np
    elif name == "cupy":
        try:
            import cupy
            cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # ImportError, or a CUDA runtime error when no GPU is present
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MinRobertaError(f"backend 'cupy' is not usable here: {first_line}") from None
        module = cupy
    else:
        from . import device_standin
        module = device_standin.module
    _name, _xp = name, module
    return module


def xp():
    """The active array module (selected from MINROBERTA_BACKEND on first use, default numpy)."""
    if _xp is None:
        use(os.environ.get("MINROBERTA_BACKEND", "numpy"))
    return _xp


def name():
    xp()
    return _name


def to_host(a):
    """Copy an array to a host NumPy array; the one sanctioned way off the device."""
    if isinstance(a, np.ndarray):
        return a
    if _name == "cupy":
        return a.get()
    if _name == "standin":
        from . import device_standin
        return device_standin.to_host(a)
    return np.asarray(a)


def to_device(a, dtype=None):
    """Copy host data (array, list, scalar) onto the active device; a device array passes through."""
    return xp().asarray(a, dtype=dtype)


def scalar(a):
    """A 0-d device array as a Python float, at the edges (logging, metrics)."""
    return float(to_host(a))


def scatter_add(target, indices, values):
    """target[indices] += values, accumulating repeated indices (plain fancy-index `+=` would drop repeats)."""
    if _name == "cupy":
        import cupyx
        cupyx.scatter_add(target, indices, values)
    else:
        xp().add.at(target, indices, values)


def generator(*key):
    """A random generator on the active device, fully determined by the integer key, e.g. (seed, step, 7)."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0])
    return xp().random.default_rng(seed)


# --- erf -----------------------------------------------------------------------------------------------
# NumPy has no erf. float64 (the reference precision of the gradient checks and the parity tests) gets a
# series / continued-fraction evaluation that agrees with math.erf to about 1e-15; float32 (the speed path)
# gets a short fitted form, maximum absolute error 1.2e-7 over the float32 line, i.e. two float32 ulps
# at erf = 0.7 and 6e-8 in GELU's Phi = (1 + erf)/2. CuPy has a native erf and uses it.

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)

# log(erfc(z) / t) + z^2 as a polynomial in t = 1 / (1 + z/2), z >= 0: a least-squares Chebyshev fit of
# degree 10 to math.erfc on z in [0, 10], made by scripts/fit_erf.py (lowest degree first).
_ERFC_LOG_POLY = (
    -1.2655706705554082, 1.0016272903178018, 0.35531455021583913, 0.2197502562668679,
    -0.6847947746487187, 1.5894876982073443, -3.407485610183714, 4.065553095686309,
    -2.6601595912528118, 0.9184641918991896, -0.13218641170268358,
)
_ERF32_TAYLOR_TERMS = 8     # Taylor series below |x| = 0.75, where 1 - erfc would lose bits in float32
_ERF32_SPLIT = 0.75
_ERF64_SERIES_TERMS = 50    # positive-term series below |x| = 3: no cancellation
_ERF64_FRACTION_TERMS = 60  # continued fraction for erfc above |x| = 3
_ERF64_SPLIT = 3.0


def erf(x):
    """The error function, elementwise, in the dtype of x (float32 or float64)."""
    module = xp()
    if _name == "cupy":
        import cupyx.scipy.special
        return cupyx.scipy.special.erf(x)
    if x.dtype == module.float64:
        return _erf_float64(x, module)
    return _erf_float32(x, module)


def normal_cdf(x):
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2, the standard normal CDF, elementwise (GELU's gate).
    float32 goes through erfc of |x| so the negative half, where Phi is small, loses no bits to the
    cancellation in 1 + erf; its maximum absolute error is 3e-7 (near x = 0, where the fitted polynomial's
    float32 rounding shows), i.e. a GELU output error below 1e-6 relative. float64 and CuPy use erf (or ndtr)."""
    module = xp()
    if _name == "cupy":
        import cupyx.scipy.special
        return cupyx.scipy.special.ndtr(x)
    if x.dtype == module.float64:
        return 0.5 * (1.0 + _erf_float64(x * (1.0 / math.sqrt(2.0)), module))
    half_erfc = _erfc_abs_float32(x * x.dtype.type(1.0 / math.sqrt(2.0)), module)
    half_erfc *= x.dtype.type(0.5)                      # Phi(-|x|) = erfc(|x| / sqrt 2) / 2
    upper = x.dtype.type(1.0) - half_erfc               # Phi(|x|) = 1 - Phi(-|x|)
    module.copyto(half_erfc, upper, where=x >= 0)       # in place: where(x >= 0, upper, half_erfc)
    return half_erfc


def _erfc_abs_float32(z, module):
    """erfc(|z|) = t exp(-z^2 + P(t)), t = 1/(1 + |z|/2), relative error about 3e-8. In place on fresh
    buffers: on the CPU each avoided temporary is a pass over memory saved."""
    dtype = z.dtype.type
    a = module.abs(z, out=z)                            # z is a fresh temporary of the caller's
    t = a * dtype(0.5)
    t += dtype(1.0)
    module.reciprocal(t, out=t)
    poly = t * dtype(_ERFC_LOG_POLY[-1])
    for c in _ERFC_LOG_POLY[-2:0:-1]:
        poly += dtype(c)
        poly *= t
    poly += dtype(_ERFC_LOG_POLY[0])
    a *= a
    poly -= a
    module.exp(poly, out=poly)
    poly *= t
    return poly


def _erf_float64(x, module):
    """erf(x) = 2/sqrt(pi) x e^{-x^2} sum_n (2x^2)^n / (1*3*...*(2n+1))          for |x| < 3,
    erf(x) = 1 - e^{-x^2} / (sqrt(pi) (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))))   for |x| >= 3.
    Both forms are evaluated from the innermost term outwards, on clamped inputs, then selected."""
    a = module.abs(x)
    small = module.minimum(a, _ERF64_SPLIT)
    y = 2.0 * small * small
    series = module.ones_like(x)
    for k in range(_ERF64_SERIES_TERMS, 0, -1):
        series = 1.0 + y / (2 * k + 1) * series
    erf_small = _TWO_OVER_SQRT_PI * small * module.exp(-small * small) * series
    large = module.maximum(a, _ERF64_SPLIT)
    fraction = large.copy()
    for k in range(_ERF64_FRACTION_TERMS, 0, -1):
        fraction = large + (k / 2.0) / fraction
    erf_large = 1.0 - module.exp(-large * large) / (math.sqrt(math.pi) * fraction)
    return module.sign(x) * module.where(a < _ERF64_SPLIT, erf_small, erf_large)


def _erf_float32(x, module):
    """Taylor series 2/sqrt(pi) sum_n (-1)^n x^(2n+1) / (n! (2n+1)) near zero; elsewhere
    erf = 1 - t exp(-x^2 + P(t)), t = 1/(1 + |x|/2), with the fitted polynomial P above."""
    dtype = x.dtype
    a = module.abs(x)
    y = a * a
    taylor = module.zeros_like(x)
    for n in range(_ERF32_TAYLOR_TERMS, -1, -1):
        taylor = taylor * y + dtype.type((-1) ** n / (math.factorial(n) * (2 * n + 1)))
    erf_small = dtype.type(_TWO_OVER_SQRT_PI) * a * taylor
    erf_large = dtype.type(1.0) - _erfc_abs_float32(a.copy(), module)
    return module.sign(x) * module.where(a < _ERF32_SPLIT, erf_small, erf_large)
