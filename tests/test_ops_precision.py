"""float32 forwards agree with float64 ones (documented tolerances), and bad input is a clear error.

Tolerances: relative to max(1, |float64 output|), float32 outputs agree within 1e-5 for linear, layer norm,
GELU, tanh, softmax, attention and cross-entropy on the unit-scale inputs used here: a few float32 ulps of
accumulated rounding, well below any modelling effect."""

import numpy as np
import pytest

from minroberta import backend, ops
from minroberta.errors import MinRobertaError

FLOAT32_TOLERANCE = 1e-5


def _rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


CASES = {
    "linear": (lambda a: ops.linear_forward(a["x"], a["w"], a["b"]), {"x": (4, 5, 16), "w": (8, 16), "b": (8,)}),
    "layernorm": (lambda a: ops.layernorm_forward(a["x"], a["g"], a["b"], 1e-5), {"x": (4, 5, 16), "g": (16,), "b": (16,)}),
    "gelu": (lambda a: ops.gelu_forward(a["x"] * 3), {"x": (4, 64)}),
    "tanh": (lambda a: ops.tanh_forward(a["x"]), {"x": (4, 64)}),
    "softmax": (lambda a: ops.softmax_forward(a["x"] * 4), {"x": (4, 3, 16)}),
    "attention": (lambda a: ops.attention_forward(a["q"], a["k"], a["v"], a["m"], 4),
                  {"q": (2, 6, 16), "k": (2, 6, 16), "v": (2, 6, 16), "m": None}),
    "cross_entropy": (lambda a: ops.cross_entropy_forward(a["z"] * 3, a["y"]), {"z": (6, 11), "y": None}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_float32_forward_agrees_with_float64(xp, case):
    forward, shapes = CASES[case]
    host = {name: _rand(i, *shape) for i, (name, shape) in enumerate(shapes.items()) if shape is not None}
    extras = {"m": np.array([[1] * 6, [1, 1, 1, 0, 0, 0]]), "y": np.array([0, 3, -100, 10, 2, 5])}

    def run(dtype):
        arrays = {k: xp.asarray(v.astype(dtype)) for k, v in host.items()}
        arrays.update({k: xp.asarray(v) for k, v in extras.items()})
        out, _ = forward(arrays)
        assert out.dtype == dtype, f"{case} returned {out.dtype} for {dtype.__name__} inputs"
        return backend.to_host(out).astype(np.float64)
    exact, single = run(np.float64), run(np.float32)
    scale = max(1.0, float(np.max(np.abs(exact))))
    assert np.max(np.abs(single - exact)) <= FLOAT32_TOLERANCE * scale


def test_linear_rejects_mismatched_shapes(xp):
    with pytest.raises(ValueError, match=r"x has shape \(2, 5\): last dimension 5 .*weight shape \(3, 4\)"):
        ops.linear_forward(xp.ones((2, 5)), xp.ones((3, 4)), xp.ones(3))
    with pytest.raises(ValueError, match=r"bias has shape \(4,\), expected \(3,\)"):
        ops.linear_forward(xp.ones((2, 4)), xp.ones((3, 4)), xp.ones(4))


def test_layernorm_rejects_mismatched_shapes(xp):
    with pytest.raises(ValueError, match=r"x has shape \(2, 5\)"):
        ops.layernorm_forward(xp.ones((2, 5)), xp.ones(4), xp.zeros(4), 1e-5)


def test_embedding_rejects_out_of_range_ids(xp):
    with pytest.raises(ValueError, match=r"ids holds id 7, outside \[0, 5\); shape \(1, 3\)"):
        ops.embedding_forward(xp.asarray([[0, 7, 1]]), xp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"ids holds id -1"):
        ops.embedding_forward(xp.asarray([[0, -1, 1]]), xp.ones((5, 2)))


def test_cross_entropy_rejects_bad_labels(xp):
    logits = xp.ones((3, 4))
    with pytest.raises(ValueError, match=r"labels holds id 4, outside \[0, 4\) \(or -100\)"):
        ops.cross_entropy_forward(logits, xp.asarray([0, 4, -100]))
    with pytest.raises(ValueError, match=r"labels holds id -5"):
        ops.cross_entropy_forward(logits, xp.asarray([0, -5, -100]))
    with pytest.raises(ValueError, match=r"labels has shape \(2,\), expected \(3,\)"):
        ops.cross_entropy_forward(logits, xp.asarray([0, 1]))


def test_attention_rejects_bad_shapes(xp):
    with pytest.raises(MinRobertaError, match="hidden size 6 is not divisible by num_heads 4"):
        ops.attention_forward(xp.ones((1, 2, 6)), xp.ones((1, 2, 6)), xp.ones((1, 2, 6)), xp.ones((1, 2)), 4)
    with pytest.raises(ValueError, match=r"key_mask has shape \(1, 3\), expected \(1, 2\)"):
        ops.attention_forward(xp.ones((1, 2, 4)), xp.ones((1, 2, 4)), xp.ones((1, 2, 4)), xp.ones((1, 3)), 2)
