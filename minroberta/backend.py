"""The array module, chosen in one place: NumPy on the CPU, CuPy on an NVIDIA GPU, or a device stand-in.

Model code asks `backend.xp()` for the module and never imports numpy or cupy for computation. The few things
NumPy and CuPy spell differently live here: scatter-add, moving arrays between host and device, and a seeded
random generator made from an explicit key (never a global one). The math itself lives in ops/.

Choose with `backend.use("numpy" | "cupy" | "standin")` or the environment variable MINROBERTA_BACKEND.
"standin" is NumPy dressed as a device library (see `device_standin.py`): it refuses every implicit
conversion to host arrays or Python scalars, so tests on a CPU catch hidden host round-trips.
"""

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
    """Ask glibc to keep freed blocks up to 64 MiB in the heap instead of returning them to the OS: a training
    step allocates and frees the same large temporaries every time, and returned memory must be page-faulted in
    again on the next step (docs/performance.md). A no-op where glibc's mallopt is absent."""
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
    fancy-index `+=` would keep only one of them). CuPy has it built in; NumPy's np.add.at is slow, so here each
    (row, column) of the target is one bin of a weighted np.bincount over all the values at once, summed in
    float64 (the same sums as a row-by-row loop up to rounding, several times faster: docs/performance.md)."""
    if _name == "cupy":
        import cupyx
        cupyx.scatter_add(target, indices, values)
        return
    if indices.shape[0] == 0:
        return
    if target.shape[0] == 1:            # a one-row table (RoBERTa's token types): every index is 0
        target[0] += values.sum(axis=0)
        return
    module = xp()
    width = target[0].size                                                         # numbers per row
    bins = (indices[:, None] * width + module.arange(width)).reshape(-1)           # (N * width,) flat positions
    sums = module.bincount(bins, weights=values.reshape(-1), minlength=target.size)    # (target.size,) float64
    target += sums.reshape(target.shape).astype(target.dtype)


def generator(*key):
    """A random generator on the active device, fully determined by the integer key, e.g. (seed, step, 7)."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0])
    return xp().random.default_rng(seed)
