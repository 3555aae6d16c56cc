"""The matrix product that every op uses: plain `a @ b` here. The engine may stand in for it (float16 products in
mixed precision, or one product cut over the CPU threads)."""

from ..dispatch import fast_form


def matmul(a, b):
    """(..., M, K) x (..., K, N) -> (..., M, N), in the operands' dtype."""
    if fast := fast_form("matmul", a, b):    # engine: float16 products, or one product per thread
        return fast(a, b)
    return a @ b
