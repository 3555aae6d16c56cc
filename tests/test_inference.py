"""The inference fast forms (engine/inference.py: attention, layer norm, GELU and the whole layer) held to the reference
ops they replace: the same outputs on drawn shapes, masks and backends, and the whole encoder without a cache
against the encoder that keeps one."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import minroberta
from minroberta import backend, engine
from minroberta.engine import threads
from minroberta.engine.inference import attention_inference, gelu_in_place, layernorm_in_place
from minroberta.ops import attention_forward, gelu_forward, layernorm_forward
from tests.reference import relative_error

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TOLERANCE = {"float64": 1e-12, "float32": 2e-6}


def drawn(seed, dtype, *shape, scale=1.0):
    return backend.to_device((np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype))


@EXAMPLES
@given(batch=st.integers(1, 4), seq=st.integers(1, 9), heads=st.integers(1, 3), head_dim=st.integers(1, 5),
       padded=st.booleans(), dtype=st.sampled_from(["float64", "float32"]), seed=st.integers(0, 2**32 - 1))
def test_blocked_attention_equals_the_reference(xp, batch, seq, heads, head_dim, padded, dtype, seed, monkeypatch):
    from minroberta.engine import inference
    monkeypatch.setattr(inference, "SCORES_BLOCK", 1)   # one sequence per block: the blocking is exercised
    q, k, v = (drawn(seed + i, dtype, batch, seq, heads * head_dim, scale=3.0) for i in range(3))
    lengths = np.random.default_rng(seed).integers(1, seq + 1, size=batch) if padded else np.full(batch, seq)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)                       # (B, T)
    expected, _ = attention_forward(q, k, v, backend.to_device(mask), heads)
    got = attention_inference(q, k, v, backend.to_device(mask) if padded else None, heads)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert relative_error(backend.to_host(got), backend.to_host(expected)) <= TOLERANCE[dtype]


@EXAMPLES
@given(rows=st.integers(1, 6), channels=st.integers(1, 12), dtype=st.sampled_from(["float64", "float32"]),
       seed=st.integers(0, 2**32 - 1))
def test_layer_norm_in_place_equals_the_reference(xp, rows, channels, dtype, seed):
    x = drawn(seed, dtype, rows, channels, scale=4.0) + 2.0
    gamma, beta = drawn(seed + 1, dtype, channels), drawn(seed + 2, dtype, channels)
    expected, _ = layernorm_forward(x, gamma, beta, 1e-5)
    got = layernorm_in_place(x.copy(), gamma, beta, 1e-5)
    assert relative_error(backend.to_host(got), backend.to_host(expected)) <= TOLERANCE[dtype]


def test_gelu_in_place_equals_the_exact_gelu(numpy_backend):
    """NumPy's float32 block form against the float64 reference on a fine grid and random values: as close as
    float32 allows, and closer than the float32 form training runs (the engine's)."""
    engine.install()
    grid = np.concatenate([np.linspace(-12, 12, 240001), np.random.default_rng(0).standard_normal(100000) * 3])
    grid = grid.astype(np.float32).astype(np.float64)                   # values float32 can hold
    exact, _ = gelu_forward(grid)                                       # float64
    x32 = grid.astype(np.float32)
    got, reference32 = gelu_in_place(x32.copy()), gelu_forward(x32)[0]
    assert got.dtype == np.float32
    error = np.abs(got - exact) / np.maximum(1.0, np.abs(grid))          # float32 rounding: 6e-8 of max(1, |x|)
    assert error.max() <= 3e-7
    assert error.max() <= (np.abs(reference32 - exact) / np.maximum(1.0, np.abs(grid))).max()
    large = np.abs(exact) > 1e-2
    assert (np.abs(got - exact)[large] / np.abs(exact[large])).max() <= 2e-6
    assert relative_error(gelu_in_place(grid.copy()), exact) <= 1e-15


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gelu_in_place_equals_gelu_forward_on_every_backend(xp, dtype):
    x = drawn(0, dtype, 64, 48, scale=4.0)
    expected = backend.to_host(gelu_forward(x)[0])
    assert relative_error(backend.to_host(gelu_in_place(x.copy())), expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize("model_type", ["roberta", "bert"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_encoder_without_a_cache_equals_the_one_with(xp, model_type, dtype):
    extra = dict(model_type="bert", pad_token_id=0, type_vocab_size=2, layer_norm_eps=1e-12) if model_type == "bert" \
        else {}
    config = minroberta.Config(vocab_size=40, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                               intermediate_size=20, max_position_embeddings=20, **extra)
    model = minroberta.Roberta(config, seed=3, dtype=dtype, head=None)
    rng = np.random.default_rng(1)
    ids = rng.integers(4, 40, size=(3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:], mask[2, 2:] = 0, 0
    ids = np.where(mask == 1, ids, config.pad_token_id)
    types = np.tile(np.arange(9) >= 5, (3, 1)).astype(np.int64) * (model_type == "bert")
    for args in ((ids, mask, types), (ids[:1], None, types[:1])):   # padded, and with no mask at all
        cached, _ = model.encode(*args)
        engine.install()
        fast = model.hidden_states(*args)
        engine.uninstall()
        assert relative_error(backend.to_host(fast), backend.to_host(cached)) <= TOLERANCE[dtype] * 10


def test_the_fast_forms_on_several_threads_equal_one(numpy_backend, monkeypatch):
    monkeypatch.setattr(threads, "MIN_CHUNK", 8)
    engine.install()
    config = minroberta.Config(vocab_size=40, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                               intermediate_size=20, max_position_embeddings=40)
    model = minroberta.Roberta(config, seed=3, head=None)
    ids = np.random.default_rng(2).integers(4, 40, size=(5, 30))
    previous = threads.count()
    try:
        threads.use(1)
        one = model(ids).hidden_states
        threads.use(2)
        two = model(ids).hidden_states
    finally:
        threads.use(previous)
    assert relative_error(two, one) <= 1e-6


@pytest.mark.parametrize("installed", [False, True])
def test_outputs_of_several_batches_equal_the_model_on_each_and_leave_the_weights_alone(xp, installed):
    if installed:
        engine.install()
    config = minroberta.Config(vocab_size=40, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                               intermediate_size=20, max_position_embeddings=40, type_vocab_size=2)
    model = minroberta.Roberta(config, seed=3)
    rng = np.random.default_rng(4)
    batches = [tuple(backend.to_device(rng.integers(low, high, size=(b, t))) for low, high in ((4, 40), (0, 2)))
               for b, t in ((3, 5), (1, 17), (2, 9))]
    weights = {name: backend.to_host(value).copy() for name, value in model.params.items()}
    outputs = model.outputs(batches)
    for (ids, types), out in zip(batches, outputs):
        alone = model(ids, None, types)
        for got, expected in ((out.hidden_states, alone.hidden_states), (out.logits, alone.logits)):
            assert relative_error(backend.to_host(got), backend.to_host(expected)) <= 2e-6
    assert model.outputs(batches, head=False)[1].logits is None
    assert all(np.array_equal(backend.to_host(model.params[name]), value) for name, value in weights.items())
    assert model.outputs([]) == []
