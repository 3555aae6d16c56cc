"""How matrix products are computed (float32, TF32 on a GPU, or float16 mixed precision) and the loss scaler
that float16 gradients need.

Every matrix product of the model (the linear layers and attention's four batched products, forward and
backward) goes through ops/matmul.py, which the "fp16" form below stands in for. Everything else (layer norm,
softmax, GELU, cross-entropy, the optimizer) always runs on float32 values, and the parameters stay float32:
they are the master weights.

  "float32"  products in the operands' own dtype (float64 stays float64). The default.
  "tf32"     CuPy only: cuBLAS may round float32 operands to TF32 (10 mantissa bits) inside its tensor-core
             products, accumulating in float32. An NVIDIA GPU of compute capability 8.0 or newer.
  "fp16"     mixed precision: each product rounds its operands to float16, accumulates in float32 and rounds
             its result to float16 (what a tensor-core GEMM with a float16 output does), then carries on in
             float32. On NumPy the same arithmetic runs through float32 BLAS, for testing; it is meant for CuPy.
             Gradients pass through float16 too, so training scales the loss (`LossScaler`).

Choose with `precision.use(name)` (the command line's --precision).
"""

import numpy as np

from .. import backend, dispatch
from ..dispatch import register
from ..errors import MinRobertaError

MODES = ("float32", "tf32", "fp16")

_mode = "float32"


def use(name):
    """Select how matrix products are computed; call after choosing the backend."""
    global _mode
    if name not in MODES:
        raise MinRobertaError(f"unknown precision {name!r}; choose one of {', '.join(MODES)}")
    if name != "float32" and not dispatch.installed():
        raise MinRobertaError(f"precision {name!r} is {dispatch.ENGINE_OFF}")
    if name == "tf32" and backend.name() != "cupy":
        raise MinRobertaError("precision 'tf32' is a GPU matrix mode: it needs the cupy backend (--backend cupy)")
    if backend.name() == "cupy":
        _set_cublas_compute_types(name)
    _mode = name


def name():
    return _mode


def _set_cublas_compute_types(mode):
    """float32 products: cuBLAS's default (full float32) or TF32 tensor cores. float16 products: always
    accumulated in float32 (CuPy could otherwise be told to accumulate half products in half)."""
    import cupy
    from cupy._core import _routines_linalg as linalg
    if mode == "tf32":
        capability = int(cupy.cuda.Device().compute_capability)
        if capability < 80:
            raise MinRobertaError(f"precision 'tf32' needs a GPU of compute capability 8.0 or newer; this one is "
                                  f"{capability // 10}.{capability % 10}")
        cupy._core.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)
    else:
        cupy._core.set_compute_type(np.float32, linalg.COMPUTE_TYPE_DEFAULT)
    cupy._core.set_compute_type(np.float16, linalg.COMPUTE_TYPE_FP32)


def in_float16(*_):
    return _mode == "fp16"


@register("matmul", in_float16)
def matmul(a, b):
    """a @ b with float16 operands and result, returned in a's dtype (ops/matmul.py's product, in fp16)."""
    return product(a, b)


def product(a, b, out=None):
    """One product under the selected precision, on the calling thread alone, written into out when given
    (what the fp16 form and each chunk of the threads' form run)."""
    if _mode != "fp16":
        return backend.xp().matmul(a, b, out=out)
    xp = backend.xp()
    if backend.name() == "cupy":
        # cuBLAS: half operands, float32 accumulation (see above), half result
        return (a.astype(xp.float16) @ b.astype(xp.float16)).astype(a.dtype)
    # float16 values are exact in float32, so float32 BLAS on them accumulates exactly as the GPU does (up to
    # the order of the additions); the final cast is the GPU's rounding of its half output. A value past
    # 65504 becomes inf, as on the GPU, quietly: the loss scaler watches for it.
    with np.errstate(over="ignore", invalid="ignore"):
        a16, b16 = a.astype(xp.float16), b.astype(xp.float16)
        product = (a16.astype(xp.float32) @ b16.astype(xp.float32)).astype(xp.float16)
    if out is None:
        return product.astype(a.dtype)
    out[...] = product
    return out


class LossScaler:
    """Dynamic loss scaling. Float16 keeps values from 6e-8 (subnormal) to 65504; gradients of a few
    millionths lose most of their bits there and smaller ones become zero. Multiplying the loss by `scale`
    multiplies every gradient by it (the backward is linear in dloss), which lifts them into range; the
    float32 gradients are divided by it again before the update. A scale too large shows as an inf or NaN
    gradient: that update is skipped and the scale halved. After `growth_interval` good updates in a row
    the scale doubles, so it stays near the largest that fits. (The same policy and defaults as PyTorch's
    GradScaler.)"""

    def __init__(self, scale=2.0 ** 16, growth_interval=2000, growth_factor=2.0, backoff_factor=0.5):
        self.scale = float(scale)
        self.growth_interval = growth_interval
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.good_steps = 0

    def unscale(self, grads):
        """Divide the summed gradients by the scale, in place (in float32: no precision is lost)."""
        inverse = 1.0 / self.scale
        for g in grads.values():
            g *= inverse

    def update(self, finite):
        """After an update attempt: back off on overflow, grow after a run of good updates."""
        if not finite:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state(self):
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state(self, state):
        scale, good_steps = float(state["scale"]), int(state["good_steps"])
        if not (0.0 < scale < float("inf")) or good_steps < 0:
            raise ValueError(f"loss scale {scale} with {good_steps} good steps")
        self.scale, self.good_steps = scale, good_steps
