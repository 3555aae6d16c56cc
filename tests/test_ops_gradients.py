"""Every op's backward against float64 central differences, on shapes and values drawn by hypothesis."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minroberta import backend, ops
from tests.gradcheck import check_gradients

EXAMPLES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

dims = st.integers(1, 4)
seeds = st.integers(0, 2**32 - 1)


def values(seed, *shape, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


@EXAMPLES
@given(batch=dims, seq=dims, out=dims, inp=dims, seed=seeds, with_bias=st.booleans())
def test_linear(xp, batch, seq, out, inp, seed, with_bias):
    inputs = {"x": values(seed, batch, seq, inp), "weight": values(seed + 1, out, inp),
              "bias": values(seed + 2, out) if with_bias else None}

    def backward(dy, cache):
        dx, dweight, dbias = ops.linear_backward(dy, cache)
        return {"x": dx, "weight": dweight, "bias": dbias}
    check_gradients(ops.linear_forward, backward, inputs, ["x", "weight"] + (["bias"] if with_bias else []))


@EXAMPLES
@given(rows=dims, channels=st.integers(1, 6), seed=seeds, shift=st.floats(-3, 3), spread=st.floats(0.1, 3))
def test_layernorm(xp, rows, channels, seed, shift, spread):
    inputs = {"x": values(seed, rows, 2, channels, scale=spread) + shift,
              "gamma": values(seed + 1, channels), "beta": values(seed + 2, channels), "eps": 1e-5}

    def backward(dy, cache):
        dx, dgamma, dbeta = ops.layernorm_backward(dy, cache)
        return {"x": dx, "gamma": dgamma, "beta": dbeta}
    check_gradients(ops.layernorm_forward, backward, inputs, ["x", "gamma", "beta"])


@EXAMPLES
@given(rows=dims, cols=dims, seed=seeds, scale=st.floats(0.1, 6))
def test_gelu(xp, rows, cols, seed, scale):
    check_gradients(ops.gelu_forward, lambda d, c: {"x": ops.gelu_backward(d, c)},
                    {"x": values(seed, rows, cols, scale=scale)}, ["x"])


@EXAMPLES
@given(rows=dims, cols=dims, seed=seeds, scale=st.floats(0.1, 4))
def test_tanh(xp, rows, cols, seed, scale):
    check_gradients(ops.tanh_forward, lambda d, c: {"x": ops.tanh_backward(d, c)},
                    {"x": values(seed, rows, cols, scale=scale)}, ["x"])


@EXAMPLES
@given(rows=dims, cols=st.integers(1, 6), seed=seeds, scale=st.floats(0.1, 5))
def test_softmax(xp, rows, cols, seed, scale):
    check_gradients(lambda x: ops.softmax_forward(x), lambda d, c: {"x": ops.softmax_backward(d, c)},
                    {"x": values(seed, rows, 2, cols, scale=scale)}, ["x"])


@EXAMPLES
@given(batch=st.integers(1, 2), seq=st.integers(1, 4), heads=st.sampled_from([1, 2]),
       head_dim=st.integers(1, 3), seed=seeds, data=st.data())
def test_attention(xp, batch, seq, heads, head_dim, seed, data):
    channels = heads * head_dim
    # padding masks with at least one real key per row; "all padding but one" is drawn often
    lengths = data.draw(st.lists(st.integers(1, seq), min_size=batch, max_size=batch))
    key_mask = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    inputs = {"q": values(seed, batch, seq, channels), "k": values(seed + 1, batch, seq, channels),
              "v": values(seed + 2, batch, seq, channels), "key_mask": key_mask, "num_heads": heads}

    def backward(dctx, cache):
        dq, dk, dv = ops.attention_backward(dctx, cache)
        return {"q": dq, "k": dk, "v": dv}
    check_gradients(ops.attention_forward, backward, inputs, ["q", "k", "v"])


@EXAMPLES
@given(seq=st.integers(1, 3), heads=st.sampled_from([1, 2]), seed=seeds, p=st.floats(0.05, 0.9))
def test_attention_with_dropout(xp, seq, heads, seed, p):
    """The dropout mask is redrawn identically from the same key at every forward of the check."""
    channels = 2 * heads
    inputs = {"q": values(seed, 1, seq, channels), "k": values(seed + 1, 1, seq, channels),
              "v": values(seed + 2, 1, seq, channels), "key_mask": np.ones((1, seq), dtype=np.int64)}

    def forward(q, k, v, key_mask):
        return ops.attention_forward(q, k, v, key_mask, heads, dropout_p=p,
                                     generator=backend.generator(seed), training=True)

    def backward(dctx, cache):
        dq, dk, dv = ops.attention_backward(dctx, cache)
        return {"q": dq, "k": dk, "v": dv}
    check_gradients(forward, backward, inputs, ["q", "k", "v"])


@EXAMPLES
@given(rows=dims, cols=dims, seed=seeds, p=st.floats(0.0, 0.9))
def test_dropout(xp, rows, cols, seed, p):
    def forward(x):
        return ops.dropout_forward(x, p, backend.generator(seed), training=True)
    check_gradients(forward, lambda d, c: {"x": ops.dropout_backward(d, c)},
                    {"x": values(seed, rows, cols)}, ["x"])


@EXAMPLES
@given(batch=dims, seq=dims, vocab=st.integers(2, 6), channels=dims, seed=seeds, data=st.data())
def test_embedding(xp, batch, seq, vocab, channels, seed, data):
    ids = np.array(data.draw(st.lists(st.integers(0, vocab - 1), min_size=batch * seq, max_size=batch * seq)))
    padding_idx = data.draw(st.one_of(st.none(), st.integers(0, vocab - 1)))
    inputs = {"ids": ids.reshape(batch, seq), "weight": values(seed, vocab, channels), "padding_idx": padding_idx}
    if padding_idx is None:
        check_gradients(ops.embedding_forward, lambda d, c: {"weight": ops.embedding_backward(d, c)},
                        inputs, ["weight"])
    else:
        # the padding row is held fixed: its gradient is zero, the others are the true derivative
        out, cache = ops.embedding_forward(**{k: backend.to_device(v) if isinstance(v, np.ndarray) else v
                                              for k, v in inputs.items()})
        dweight = backend.to_host(ops.embedding_backward(xp.ones(out.shape), cache))
        assert np.all(dweight[padding_idx] == 0)
        counts = np.bincount(ids, minlength=vocab).astype(float)
        counts[padding_idx] = 0
        np.testing.assert_array_equal(dweight, np.repeat(counts[:, None], channels, axis=1))
    # into: another path's gradient (a tied decoder's) is added to, and its padding row is left as it was
    out, cache = ops.embedding_forward(backend.to_device(inputs["ids"]), backend.to_device(inputs["weight"]),
                                       padding_idx)
    dout = values(seed + 1, batch, seq, channels)
    other = values(seed + 2, vocab, channels)
    alone = backend.to_host(ops.embedding_backward(backend.to_device(dout), cache))
    summed = backend.to_host(ops.embedding_backward(backend.to_device(dout), cache,
                                                    into=backend.to_device(other.copy())))
    np.testing.assert_allclose(summed, other + alone, rtol=1e-12, atol=1e-12)


@EXAMPLES
@given(rows=dims, vocab=st.integers(2, 6), seed=seeds, scale=st.floats(0.1, 10), data=st.data())
def test_cross_entropy(xp, rows, vocab, seed, scale, data):
    labels = np.array(data.draw(st.lists(st.sampled_from([-100] + list(range(vocab))), min_size=rows, max_size=rows)))
    if data.draw(st.booleans()):  # all labels ignored but one
        labels[:] = -100
        labels[data.draw(st.integers(0, rows - 1))] = data.draw(st.integers(0, vocab - 1))
    inputs = {"logits": values(seed, rows, vocab, scale=scale), "labels": labels}
    check_gradients(ops.cross_entropy_forward, lambda d, c: {"logits": ops.cross_entropy_backward(d, c)},
                    inputs, ["logits"])


def test_cross_entropy_all_ignored_is_zero(xp):
    loss, cache = ops.cross_entropy_forward(xp.ones((3, 4)), xp.asarray(np.full(3, -100)))
    assert backend.scalar(loss) == 0.0
    assert np.all(backend.to_host(ops.cross_entropy_backward(1.0, cache)) == 0)


def test_checker_catches_a_wrong_backward(numpy_backend):
    """A layer norm backward missing the mean(g * xhat) term must fail the check."""
    def wrong_backward(dy, cache):
        xhat, rstd, gamma = cache
        g = dy * gamma
        return {"x": rstd * (g - g.mean(axis=-1, keepdims=True))}
    inputs = {"x": values(0, 3, 5), "gamma": values(1, 5), "beta": values(2, 5), "eps": 1e-5}
    with pytest.raises(AssertionError, match="gradient of x"):
        check_gradients(ops.layernorm_forward, wrong_backward, inputs, ["x"])


def test_checker_catches_a_transposed_weight_gradient(numpy_backend):
    def wrong_backward(dy, cache):
        x, weight, _ = cache
        return {"weight": x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])}   # (I, O), not (O, I)
    inputs = {"x": values(5, 2, 3), "weight": values(1, 3, 3), "bias": None}
    with pytest.raises(AssertionError, match="gradient of weight"):
        check_gradients(ops.linear_forward, wrong_backward, inputs, ["weight"])


# --- arrays drawn whole by hypothesis (they shrink to a small failing tensor), and the threaded forms ----------

def drawn(data, shape, low=-3.0, high=3.0):
    return data.draw(hnp.arrays(np.float64, tuple(shape), elements=st.floats(low, high)))


def drawn_linear(data):
    b, t, i, o = (data.draw(st.integers(1, 4)) for _ in range(4))
    return (ops.linear_forward, lambda d, c: dict(zip(("x", "weight", "bias"), ops.linear_backward(d, c))),
            {"x": drawn(data, (b, t, i)), "weight": drawn(data, (o, i)), "bias": drawn(data, (o,))},
            ["x", "weight", "bias"])


def drawn_layernorm(data):
    n, c = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 6))
    return (ops.layernorm_forward, lambda d, cache: dict(zip(("x", "gamma", "beta"), ops.layernorm_backward(d, cache))),
            {"x": drawn(data, (n, 3, c)), "gamma": drawn(data, (c,)), "beta": drawn(data, (c,)), "eps": 1e-5},
            ["x", "gamma", "beta"])


def drawn_gelu(data):
    return (ops.gelu_forward, lambda d, c: {"x": ops.gelu_backward(d, c)},
            {"x": drawn(data, (data.draw(st.integers(1, 6)), 5), -5.0, 5.0)}, ["x"])


def drawn_softmax(data):
    return (lambda x: ops.softmax_forward(x), lambda d, c: {"x": ops.softmax_backward(d, c)},
            {"x": drawn(data, (data.draw(st.integers(1, 4)), 3, data.draw(st.integers(1, 6))))}, ["x"])


def drawn_attention(data):
    batch, seq, heads, head_dim = (data.draw(st.integers(1, 3)) for _ in range(4))
    lengths = np.array(data.draw(st.lists(st.integers(1, seq), min_size=batch, max_size=batch)))
    key_mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    shape = (batch, seq, heads * head_dim)
    return (ops.attention_forward, lambda d, c: dict(zip("qkv", ops.attention_backward(d, c))),
            {"q": drawn(data, shape), "k": drawn(data, shape), "v": drawn(data, shape), "key_mask": key_mask,
             "num_heads": heads}, ["q", "k", "v"])


DRAWN = {"linear": drawn_linear, "layernorm": drawn_layernorm, "gelu": drawn_gelu, "softmax": drawn_softmax,
         "attention": drawn_attention}


@pytest.fixture
def threaded_chunks(numpy_backend, monkeypatch):
    """The fast CPU forms on two threads, their chunks cut so small that these arrays are split."""
    from minroberta.engine import gelu32, products, threads
    monkeypatch.setattr(threads, "MIN_CHUNK", 8)
    monkeypatch.setattr(products, "PRODUCT_MIN_CHUNK", 16)
    monkeypatch.setattr(gelu32, "BLOCK", 7)
    threads.use(2)


@pytest.fixture(params=["reference", "numpy", "standin", "threaded"])
def where(request):
    """The reference ops as written; then, with the engine installed, each backend as it runs (the stand-in
    through rows.py's in-place forms, as CuPy), and the NumPy backend's fast forms on small chunks over two
    threads."""
    from minroberta import engine
    if request.param == "reference":
        yield request.param
        return
    engine.install()
    if request.param == "threaded":
        request.getfixturevalue("threaded_chunks")
        yield request.param
        return
    previous = backend.name()
    backend.use(request.param)
    yield request.param
    backend.use(previous)


@pytest.mark.parametrize("op", sorted(DRAWN))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_drawn_arrays(where, op, data):
    forward, backward, inputs, wrt = DRAWN[op](data)
    out, _ = forward(**{k: backend.to_device(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()})
    dout = drawn(data, np.shape(backend.to_host(out)))
    check_gradients(forward, backward, inputs, wrt, dout=dout)


def test_checker_catches_a_backward_that_writes_into_dout(numpy_backend):
    def overwriting_backward(dout, cache):
        dout *= cache.cdf + cache.x * cache.pdf
        return {"x": dout}
    with pytest.raises(AssertionError, match="the backward changed dout"):
        check_gradients(ops.gelu_forward, overwriting_backward, {"x": values(0, 3, 4)}, ["x"])


@EXAMPLES
@given(batch=st.integers(1, 2), seq=st.integers(1, 4), seed=seeds, data=st.data())
def test_layer_on_chosen_rows(xp, batch, seq, seed, data):
    """The engine's last layer on the scored rows (engine/scored.py): attention over every token, the token-wise
    half on the chosen flat positions only, y (N, C); its backward against central differences in x and in
    weights on both sides of the cut (the query projection before it, the FFN after it)."""
    from minroberta import Config, model
    from minroberta.engine import scored
    config = Config(vocab_size=5, hidden_size=4, num_hidden_layers=1, num_attention_heads=2, intermediate_size=6,
                    max_position_embeddings=8)
    layer = "encoder.layer.0."
    params = model.init_params(model.encoder_shapes(config, ""), config, seed % 1000, np.float64)
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, batch * seq - 1), min_size=1))))
    lengths = data.draw(st.lists(st.integers(1, seq), min_size=batch, max_size=batch))
    key_mask = backend.to_device((np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.int64))
    query_name, ffn_name = layer + "attention.self.query.weight", layer + "intermediate.dense.weight"
    inputs = {"x": values(seed, batch, seq, 4), "query": values(seed + 1, 4, 4) * 0.5,
              "ffn": values(seed + 2, 6, 4) * 0.5}

    def forward(x, query, ffn):
        chosen = {**params, query_name: query, ffn_name: ffn}
        return scored.scored_layer_forward(model.Scope(chosen, layer), config, x, key_mask, None,
                                           backend.to_device(rows))

    def backward(dy, cache):
        grads = {}
        dx = scored.scored_layer_backward(dy, cache, model.Scope(grads, layer))
        return {"x": dx, "query": grads[query_name], "ffn": grads[ffn_name]}
    check_gradients(forward, backward, inputs, ["x", "query", "ffn"])
