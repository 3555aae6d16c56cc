"""A device library made of NumPy, for proving device discipline on a machine without a GPU.

`module` looks like numpy (and like cupy): every numpy function is there, taking and returning `DeviceArray`s.
What it refuses is what makes code slow or wrong on a real GPU: implicit conversion of a device array to a host
NumPy array (`np.asarray(a)`, numpy functions applied to it), to a Python scalar (`float(a)`, `int(a)`,
`a.item()`, `if a:`), and mixing host NumPy arrays into device math. The explicit `backend.to_host` is the one
way off the device; `module.asarray(host)` is the way on, as with cupy.asarray.
"""

import numpy as np


class HostConversionError(TypeError):
    """Raised where code silently moves a device array to the host."""


def _refuse(what):
    raise HostConversionError(f"device stand-in: implicit {what} of a device array; use backend.to_host")


def _unwrap(value):
    if isinstance(value, DeviceArray):
        return value._a
    if isinstance(value, np.ndarray):
        raise HostConversionError(
            f"device stand-in: a host numpy array of shape {value.shape} was mixed into device math; "
            "move it with backend.to_device first")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _wrap(value):
    if isinstance(value, np.ndarray):
        return DeviceArray(value)
    if isinstance(value, np.generic):  # reductions give 0-d device arrays, as on cupy
        return DeviceArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _device_call(function):
    def call(*args, **kwargs):
        return _wrap(function(*_unwrap(args), **_unwrap(kwargs)))
    call.__name__ = getattr(function, "__name__", "call")
    return call


class DeviceArray:
    """A NumPy array that behaves like a device array: arithmetic works, host conversion does not."""

    __slots__ = ("_a",)
    __array_ufunc__ = None      # numpy ufuncs given a DeviceArray raise TypeError (as cupy arrays do)

    def __init__(self, a):
        self._a = a

    # --- the refusals
    def __array__(self, *args, **kwargs):
        _refuse("conversion to a numpy array")

    def __float__(self):
        _refuse("float()")

    def __int__(self):
        _refuse("int()")

    def __index__(self):
        _refuse("use as a Python index")

    def __bool__(self):
        _refuse("bool() (an `if` on a device value)")

    def __iter__(self):
        _refuse("iteration")

    def item(self, *args):
        _refuse(".item()")

    def tolist(self):
        _refuse(".tolist()")

    # --- metadata, which lives on the host on a real device too
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: DeviceArray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    # --- every other ndarray method, with device arrays in and out
    def __getattr__(self, attribute):
        if attribute.startswith("__"):   # __array_interface__ and friends would be a back door to the host
            raise AttributeError(attribute)
        return _device_call(getattr(self._a, attribute))

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index)])

    def __setitem__(self, index, value):
        self._a[_unwrap(index)] = _unwrap(value)


def _operator(name):
    def method(self, *args):
        result = getattr(self._a, name)(*_unwrap(args))
        if result is NotImplemented:
            return result
        return self if name.startswith("__i") and result is self._a else _wrap(result)
    method.__name__ = name
    return method


for _name in ("add radd sub rsub mul rmul truediv rtruediv floordiv rfloordiv mod rmod pow rpow matmul "
              "rmatmul neg pos abs invert and rand or ror xor rxor lt le gt ge eq ne "
              "iadd isub imul itruediv ipow imatmul iand ior").split():
    setattr(DeviceArray, f"__{_name}__", _operator(f"__{_name}__"))
DeviceArray.__hash__ = None


class _Generator:
    """numpy.random.Generator whose draws land on the device."""

    def __init__(self, seed):
        self._generator = np.random.default_rng(seed)

    def __getattr__(self, attribute):
        return _device_call(getattr(self._generator, attribute))


class _Random:
    default_rng = staticmethod(_Generator)


class _Module:
    """The stand-in for `cupy`: numpy's namespace with device arrays in and out."""

    random = _Random()
    ndarray = DeviceArray

    def asarray(self, a, dtype=None):
        if isinstance(a, DeviceArray):
            return a if dtype is None or a.dtype == dtype else a.astype(dtype)
        return DeviceArray(np.array(a, dtype=dtype))   # host -> device is an explicit copy, as in cupy

    array = asarray

    def __getattr__(self, attribute):
        value = getattr(np, attribute)
        if callable(value) and not isinstance(value, type):
            return _device_call(value)
        return value  # dtypes, constants, finfo, newaxis


module = _Module()


def to_host(a):
    """The explicit transfer: a copy, so later device writes do not show through."""
    return a._a.copy() if isinstance(a, DeviceArray) else np.asarray(a)
