"""Inverted dropout with an explicit generator: zero each element with probability p, scale the rest by 1/(1-p)."""


def dropout_forward(x, p, generator=None, training=True):
    """x (...) -> out (...). The identity (and no random draw) when p == 0 or not training."""
    if not training or p == 0.0:
        return x, None
    if generator is None:
        raise ValueError("dropout with p > 0 in training needs an explicit generator")
    keep = generator.random(x.shape, dtype=x.dtype) >= p
    scale = keep.astype(x.dtype) * (1.0 / (1.0 - p))    # (...) 0 or 1/(1-p)
    return x * scale, scale


def dropout_backward(dout, scale):
    """out = x * scale elementwise with scale fixed by the draw, so dx = dout * scale."""
    return dout if scale is None else dout * scale
