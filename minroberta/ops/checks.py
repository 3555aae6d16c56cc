"""Argument checks shared by the ops: one-line ValueErrors that name the argument and the shapes involved."""

import numpy as np

from .. import backend
from ..errors import MinRobertaError


def require_last_dim(name, array, expected, other_name):
    if array.shape[-1] != expected:
        raise MinRobertaError(
            f"{name} has shape {tuple(array.shape)}: last dimension {array.shape[-1]} does not match "
            f"{other_name} ({expected})")


def require_shape(name, array, expected):
    if tuple(array.shape) != tuple(expected):
        raise MinRobertaError(f"{name} has shape {tuple(array.shape)}, expected {tuple(expected)}")


def require_ids_in_range(name, ids, size, allowed_negative=None):
    """Token ids must lie in [0, size); `allowed_negative` (the ignore index) may appear as well.
    Reads two scalars back from the device: an explicit, deliberate synchronisation."""
    xp = backend.xp()
    if ids.size == 0:
        return
    if ids.dtype.kind not in "iu":
        raise MinRobertaError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    valid = ids if allowed_negative is None else xp.where(ids == allowed_negative, 0, ids)
    low, high = (int(v) for v in backend.to_host(xp.stack([valid.min(), valid.max()])))
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        allowed = f" (or {allowed_negative})" if allowed_negative is not None else ""
        raise MinRobertaError(f"{name} holds id {bad}, outside [0, {size}){allowed}; shape {tuple(ids.shape)}")


def as_id_array(name, values, expected_shape=None, ndim=2):
    """Lists, host arrays or device arrays of integer ids -> an int64 device array of `ndim` dimensions
    ((batch, sequence) by default), or a clear error."""
    xp = backend.xp()
    if isinstance(values, xp.ndarray) and not isinstance(values, np.ndarray):
        array = values
    else:
        host = np.asarray(values)
        # an empty list arrives as float64 and is let through; any other non-integer dtype is refused
        if host.dtype == object or (host.dtype.kind not in "iub" and not (host.size == 0 and host.dtype.kind == "f")):
            raise MinRobertaError(f"{name} must hold integers, got dtype {host.dtype}")
        array = backend.to_device(host.astype(np.int64))
    if array.ndim != ndim:
        expected = "(batch, sequence)" if ndim == 2 else "(batch,)"
        raise MinRobertaError(f"{name} must have shape {expected}, got shape {tuple(array.shape)}")
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise MinRobertaError(f"{name} has shape {tuple(array.shape)}, expected {tuple(expected_shape)}")
    return array.astype(xp.int64)
