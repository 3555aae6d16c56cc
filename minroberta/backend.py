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
        _keep_freed_memory()
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


def _keep_freed_memory():
    """Ask glibc to keep freed blocks up to 64 MiB in the heap instead of returning them to the OS. A training
    step allocates and frees the same large temporaries every time; returned memory must be page-faulted in
    again on the next step. Measured on a tiny-model step: median 0.50 s with this, 0.60 s without
    (5 processes each, alternating). A no-op where glibc's mallopt is absent."""
    import ctypes
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 1 << 26)      # blocks below 64 MiB come from the heap
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)    # and the heap's free top is never handed back


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
    """target[indices] += values for indices (N,) and values (N, ...), accumulating repeated indices (plain
    fancy-index `+=` would keep only one of them). Off CuPy the values are sorted by index and each run of equal
    indices is summed in one add.reduceat: the sums of np.add.at (up to the order of addition), which adds one
    row at a time and took 275 ms against 11 ms for 1024 rows into a 50265 x 768 table (measured)."""
    if _name == "cupy":
        import cupyx
        cupyx.scatter_add(target, indices, values)
        return
    if indices.shape[0] == 0:
        return
    module = xp()
    order = module.argsort(indices, kind="stable")                                    # (N,)
    sorted_indices = indices[order]
    run_starts = module.flatnonzero(module.concatenate(
        [module.ones(1, dtype=bool), sorted_indices[1:] != sorted_indices[:-1]]))      # (U,) where each run begins
    target[sorted_indices[run_starts]] += module.add.reduceat(values[order], run_starts, axis=0)


def generator(*key):
    """A random generator on the active device, fully determined by the integer key, e.g. (seed, step, 7)."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0])
    return xp().random.default_rng(seed)


# --- erf and the normal CDF ----------------------------------------------------------------------------
# NumPy has no erf. erf and the float64 normal CDF use a series / continued-fraction evaluation that agrees with
# math.erf to about 1e-15; erf of float32 input is evaluated in float64 and rounded, so it is within half a
# float32 ulp (3e-8). GELU's float32 gate, the hot path, gets a short fitted form instead: the normal CDF within
# 2.5e-7 absolute (2.24e-7 the largest of a million points measured, close to Phi = 0.5, where the float32
# spacing is 3e-8 to 6e-8). That is above the 5e-8 that a 1e-7 erf error would mean for Phi, on purpose: the fit
# itself is good to 8e-9 and the rest is the rounding of a dozen float32 operations, which only a float64
# evaluation would remove, at a cost in speed; the float32 GELU agrees with its float64 form to 1e-5 relative
# (tests/test_ops_precision.py), well inside the rounding of the float32 matrix products around it. CuPy has
# native erf and ndtr and uses them.

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# erfc(z) ~= t P(t) exp(-z^2), t = 1/(1 + p z), z >= 0; a degree-5 near-minimax fit to math.erfc on [0, 9]
# (absolute error 8e-9) made by scripts/fit_erf.py.
_ERFC_P = 0.39
_ERFC_POLY = (0.23532543152432492, 0.09138708190275746, 0.6495627199230736, -0.6354043902556812,
              0.8866668985659777, -0.2275377433672787)   # lowest degree first
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
    return _erf_float64(x.astype(module.float64), module).astype(x.dtype)   # off the hot path: exact to rounding


def normal_cdf_and_pdf(x):
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2 and phi(x) = exp(-x^2 / 2) / sqrt(2 pi), elementwise: GELU's gate
    and the other half of its derivative. float32 gets both from one erfc evaluation (exp(-x^2/2) is the
    exp(-z^2) of erfc at z = |x|/sqrt 2), and goes through erfc of |x| so the negative half, where Phi is
    small, loses nothing to the cancellation in 1 + erf."""
    module = xp()
    if _name == "cupy":
        import cupyx.scipy.special
        return cupyx.scipy.special.ndtr(x), _INV_SQRT_2PI * module.exp(-0.5 * x * x)
    if x.dtype == module.float64:
        return 0.5 * (1.0 + _erf_float64(x * _INV_SQRT2, module)), _INV_SQRT_2PI * module.exp(-0.5 * x * x)
    # block by block: each block's temporaries stay in the CPU cache instead of making some twenty passes
    # over memory (12 ms instead of 17.6 ms for a (2048, 1024) float32 array on this machine)
    flat = module.ascontiguousarray(x).reshape(-1)
    cdf, pdf = module.empty_like(flat), module.empty_like(flat)

    def block(part, scratch):
        _normal_cdf_and_pdf_block(flat[part], cdf[part], pdf[part], scratch[:2], module)
    _blockwise(flat, 2, block)
    return cdf.reshape(x.shape), pdf.reshape(x.shape)


def gelu_in_place(x):
    """x * Phi(x) written over x: GELU where nothing is kept for a backward (inference). float32 on NumPy
    goes block by block through the same erfc fit as normal_cdf_and_pdf, computing no density and keeping
    no Phi; elsewhere the plain form."""
    module = xp()
    if _name != "numpy" or x.dtype != module.float32 or not x.flags.c_contiguous:
        x *= normal_cdf_and_pdf(x)[0]
        return x
    flat = x.reshape(-1)
    _blockwise(flat, 2, lambda part, scratch: _gelu_block(flat[part], scratch, module))
    return x


def _blockwise(flat, buffers, work):
    """work(part, scratch) for consecutive slices `part` of _BLOCK elements of the 1-D array `flat`, a
    contiguous run of them per thread; scratch holds `buffers` rows as long as the part."""
    from . import threads

    def blocks(elements):
        scratch = xp().empty((buffers, min(_BLOCK, flat.size)), dtype=flat.dtype)
        for start in range(elements.start, elements.stop, _BLOCK):
            stop = min(start + _BLOCK, elements.stop)
            work(slice(start, stop), scratch[:, :stop - start])
    threads.over_rows(blocks, flat.size, 1, min_chunk=_BLOCK)


# float32 elements per block: 512 KiB per buffer. Alone, 32 Ki..128 Ki measured alike; two threads need the
# larger blocks, as each NumPy call takes the interpreter lock for a moment (32 Ki: no faster than one thread)
_BLOCK = 131072


def _normal_cdf_and_pdf_block(x, cdf, pdf, scratch, module):
    """normal_cdf_and_pdf of one float32 block, written into cdf and pdf, every step in place.
    Plainly: z = |x|/sqrt 2, t = 1/(1 + p z), h = t P(t) exp(-z^2) / 2 = Phi(-|x|),
    cdf = where(x >= 0, 1 - h, h) = 1/2 + sign(x) (1/2 - h) (a masked select costs numpy ten times the
    arithmetic), pdf = exp(-z^2) / sqrt(2 pi)."""
    f = x.dtype.type
    z, t = scratch[0], scratch[1]
    module.multiply(x, f(_INV_SQRT2), out=z)
    module.abs(z, out=z)
    module.multiply(z, z, out=pdf)
    module.negative(pdf, out=pdf)
    module.exp(pdf, out=pdf)                            # exp(-z^2) = exp(-x^2/2)
    module.multiply(z, f(_ERFC_P), out=t)
    t += f(1.0)
    module.reciprocal(t, out=t)
    _erfc_fit(t, cdf, module)                           # t P(t)
    cdf *= pdf
    cdf *= f(-0.5)                                      # -h
    cdf += f(0.5)                                       # 1/2 - h
    module.sign(x, out=z)
    cdf *= z
    cdf += f(0.5)
    pdf *= f(_INV_SQRT_2PI)


def _erfc_fit(t, out, module):
    """out = t P(t), the erfc fit's polynomial (Horner, highest coefficient first), in place."""
    f = t.dtype.type
    module.multiply(t, f(_ERFC_POLY[-1]), out=out)
    for c in _ERFC_POLY[-2:0:-1]:
        out += f(c)
        out *= t
    out += f(_ERFC_POLY[0])
    out *= t


def _gelu_block(x, scratch, module):
    """x * Phi(x) of one float32 block, over x: with h = Phi(-|x|) = t P(t) exp(-x^2/2) / 2 as in
    _normal_cdf_and_pdf_block, x Phi(x) = min(x, 0) h + max(x, 0) (1 - h), which keeps the small negative
    half whole (no 1/2 - h to cancel) and needs no sign."""
    f = x.dtype.type
    t, h = scratch[0], scratch[1]
    module.multiply(x, f(_ERFC_P * _INV_SQRT2), out=t)
    module.abs(t, out=t)
    t += f(1.0)
    module.reciprocal(t, out=t)                         # 1 / (1 + p |x| / sqrt 2)
    _erfc_fit(t, h, module)
    module.multiply(x, x, out=t)
    t *= f(-0.5)
    module.exp(t, out=t)                                # exp(-x^2 / 2)
    h *= t
    h *= f(0.5)                                         # Phi(-|x|)
    module.minimum(x, f(0.0), out=t)
    t *= h
    module.subtract(f(1.0), h, out=h)
    module.maximum(x, f(0.0), out=x)
    x *= h
    x += t


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
