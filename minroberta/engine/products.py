"""Matrix products on several CPU threads: one product per thread, each `precision.product` (the reference) on
a slice. A product cut this way can round a row differently in the last bit from the whole product (where the
BLAS's kernels place it), so tests/test_kernels.py holds it to the reference at float32 rounding."""

from .. import backend
from ..dispatch import register
from .precision import product
from . import threads

# multiply-adds below which a product's chunk is not worth a thread (a few microseconds of BLAS work)
PRODUCT_MIN_CHUNK = 1 << 20


def on_several_threads(*_):
    return backend.name() == "numpy" and threads.count() > 1


@register("matmul", on_several_threads)
def matmul(a, b):
    """A 2-D product cut by the rows of a or the columns of b, whichever operand is larger (each thread reads all
    of the other one: the MLM decoder's table is read once, not once per thread); a batched one along its
    leading batch axis."""
    K = a.shape[-1]
    if a.ndim == 2 and b.ndim == 2:
        M, N = a.shape[0], b.shape[1]
        if b.size > a.size:
            work, parts, cost = (lambda cols: product(a, b[:, cols], out[:, cols])), N, M * K
        else:
            work, parts, cost = (lambda rows: product(a[rows], b, out[rows])), M, K * N
    elif a.ndim > 2 and a.shape[:-2] == b.shape[:-2]:   # attention's: both operands carry the same batch axes
        batch = a.shape[0]
        per_entry = a.size // max(1, batch) * b.shape[-1]                   # multiply-adds per batch entry
        work, parts, cost = (lambda rows: product(a[rows], b[rows], out[rows])), batch, per_entry
    else:
        return product(a, b)
    out = backend.xp().empty(a.shape[:-1] + b.shape[-1:], dtype=a.dtype)   # the chunks write into it
    threads.over_rows(work, parts, cost, min_chunk=PRODUCT_MIN_CHUNK)
    return out
