"""Every registered fast form (minroberta/engine/) against the reference op it stands in for, on arrays drawn by
hypothesis. Registering a new form for an op listed in CASES is enough to have it checked here; a new op needs
its case. Row-wise and elementwise forms must give identical bits (with chunks forced small, so the threaded
path itself runs), and so must the in-place forms of rows.py on the device stand-in, where they run as on CuPy;
cut products, the fitted float32 erfc, the fused kernels and the inference layer are held to the stated
tolerances."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import minroberta
from minroberta import backend, dispatch, model, ops, optim
from minroberta.device_standin import DeviceArray
from minroberta.engine import fused, gelu32, inference, precision, products, rows, scored, threads
from minroberta.ops.matmul import matmul
from tests.test_fused import HostKernel, host_library  # noqa: F401  (the host-compiled kernels fixture)

EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])



def hidden_states(roberta, ids, key_mask, types):
    """Roberta.hidden_states as the reference computes it: the encoder with every cache kept."""
    mask = np.ones_like(ids) if key_mask is None else key_mask
    return model.encoder_forward(model.Scope(roberta.params, roberta.prefix), roberta.config, ids, mask, types,
                                 None)[0]


REFERENCES = {"matmul": matmul, "adamw_update": optim.adamw_update, "hidden_states": hidden_states,
              "encode_many": lambda roberta, batches: [hidden_states(roberta, ids, None, types) for ids, types in batches],
              "mlm_loss_and_grads": lambda roberta, *args: roberta.loss_and_grads(*args),
              "shifted_softmax": ops.cross_entropy.shifted_softmax}
CUPY_ONLY = {fused.erf, fused.normal_cdf_and_pdf}   # CuPy's own special functions: checked by tests/test_cupy.py
# (absolute, relative) tolerance by form; a form not named gives identical bits
TOLERANCES = {precision.matmul: {"float64": (0, 0), "float32": (0, 0)},   # float32 and float64 products are plain
              products.matmul: {"float64": (0, 1e-12), "float32": (0, 1e-5)},
              gelu32.normal_cdf_and_pdf: {"float32": (2.5e-7, 0)},
              # sums over rows rounded in another order (rows._row_sums, rows._column_sums)
              rows.layernorm_forward: {"float64": (0, 1e-12), "float32": (0, 1e-5)},
              rows.layernorm_backward: {"float64": (0, 1e-12), "float32": (0, 1e-5)},
              rows.softmax_forward: {"float64": (0, 1e-12), "float32": (0, 1e-6)},
              rows.softmax_backward: {"float64": (0, 1e-12), "float32": (0, 1e-5)},
              rows.masked_softmax: {"float64": (0, 1e-12), "float32": (0, 1e-6)},
              rows.masked_softmax_backward: {"float64": (0, 1e-12), "float32": (0, 1e-5)},
              rows.shifted_softmax: {"float64": (0, 1e-12), "float32": (0, 1e-6)},
              inference.hidden_states: {"float64": (0, 1e-11), "float32": (0, 2e-5)},
              inference.encode_many: {"float64": (0, 1e-11), "float32": (0, 2e-5)},
              # the last layer's products on the scored rows alone, and its gradients scattered back
              scored.mlm_loss_and_grads: {"float64": (0, 1e-11), "float32": (0, 2e-5)}}
FUSED = {"float64": (0, 1e-12), "float32": (1e-7, 2e-6)}
OVERWRITES = {"masked_softmax"}   # ops whose contract lets them use up an input; the others' inputs must end alike
# where each form is checked: NumPy, and the device stand-in for the forms that run on CuPy without --fused
BACKENDS = {form: ("numpy", "standin") if form.__module__ == rows.__name__ else ("numpy",)
            for forms in dispatch.registered().values() for form in forms}


def array(data, dtype, shape, low=-4.0, high=4.0):
    width = 32 if dtype == "float32" else 64
    return data.draw(hnp.arrays(dtype, shape, elements=st.floats(low, high, width=width)))


def dims(data, count, low=1, high=5):
    return [data.draw(st.integers(low, high)) for _ in range(count)]


def softmax_rows(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def linear_case(data, dtype):
    b, t, i, o = dims(data, 4)
    bias = array(data, dtype, (o,)) if data.draw(st.booleans()) else None
    return (array(data, dtype, (b, t, i)), array(data, dtype, (o, i)), bias)


def layernorm_case(data, dtype):
    n, t, c = dims(data, 3, high=6)
    return (array(data, dtype, (n, t, c)), array(data, dtype, (c,)), array(data, dtype, (c,)), 1e-5)


def layernorm_backward_case(data, dtype):
    x, gamma, beta, eps = layernorm_case(data, dtype)
    with dispatch.reference_only():
        _, cache = ops.layernorm_forward(x, gamma, beta, eps)
    return (array(data, dtype, x.shape), cache)


def scores_case(data, dtype):
    b, h, t = dims(data, 3)
    return array(data, dtype, (b, h, t, t))


def masked_softmax_case(data, dtype):
    scores = scores_case(data, dtype)
    lengths = np.array(data.draw(st.lists(st.integers(1, scores.shape[-1]), min_size=scores.shape[0],
                                          max_size=scores.shape[0])))
    key_mask = (np.arange(scores.shape[-1])[None, :] < lengths[:, None]).astype(np.int64)
    return (scores, ops.attention.padding_mask(key_mask, scores.dtype), 1.0 / math.sqrt(data.draw(st.integers(1, 9))))


def gelu_cache(data, dtype):
    x = array(data, dtype, tuple(dims(data, 2, high=8)), -6.0, 6.0)
    with dispatch.reference_only():
        return ops.gelu_forward(x)[1]


def matmul_case(data, dtype):
    if data.draw(st.booleans()):
        m, k, n = dims(data, 3, high=12)
        return (array(data, dtype, (m, k)), array(data, dtype, (k, n)))
    b, h, m, k, n = dims(data, 5)
    return (array(data, dtype, (b, h, m, k)), array(data, dtype, (b, h, k, n)))


def adamw_case(data, dtype):
    shape = tuple(dims(data, data.draw(st.integers(1, 2)), high=9))
    p, g, m = (array(data, dtype, shape) for _ in range(3))
    v = array(data, dtype, shape, 0.0, 4.0)
    decay = data.draw(st.sampled_from([1.0, 0.999]))
    return (p, g, m, v, decay, 0.9, 0.98, 1e-6, 1e-2, 0.3)


def tiny_roberta(data, dtype, **config):
    heads, head_dim = dims(data, 2, high=3)
    config = minroberta.Config(vocab_size=10, hidden_size=heads * head_dim,
                               num_hidden_layers=data.draw(st.integers(1, 2)), num_attention_heads=heads,
                               intermediate_size=data.draw(st.integers(1, 8)), max_position_embeddings=12, **config)
    return minroberta.Roberta(config, seed=data.draw(st.integers(0, 99)), dtype=dtype)


def hidden_states_case(data, dtype):
    roberta = tiny_roberta(data, dtype)
    batch, seq = dims(data, 2, high=4)
    ids = data.draw(hnp.arrays(np.int64, (batch, seq), elements=st.integers(2, 9)))
    key_mask = None
    if data.draw(st.booleans()):
        lengths = np.array(data.draw(st.lists(st.integers(1, seq), min_size=batch, max_size=batch)))
        key_mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return (roberta, ids, key_mask, np.zeros_like(ids))


def mlm_loss_case(data, dtype):
    """Without dropout: with it, the last layer's masks would be drawn over the scored rows alone (other draws)."""
    roberta, ids, key_mask, _ = hidden_states_case(data, dtype)
    scored = data.draw(hnp.arrays(np.bool_, ids.shape))
    labels = np.where(scored, ids, -100)
    return (roberta, ids, key_mask, labels, None, None, data.draw(st.sampled_from([1.0, 0.25])))


def encode_many_case(data, dtype):
    roberta = tiny_roberta(data, dtype, type_vocab_size=2)
    batches = []
    for b, t in data.draw(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 9)), min_size=1, max_size=4)):
        ids = data.draw(hnp.arrays(np.int64, (b, t), elements=st.integers(0, 9)))
        batches.append((ids, data.draw(hnp.arrays(np.int64, (b, t), elements=st.integers(0, 1)))))
    return (roberta, batches)


def shifted_softmax_case(data, dtype):
    n, v = dims(data, 2, high=9)
    labels = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, v - 1)))
    return (array(data, dtype, (n, v), -20.0, 20.0), labels)


CASES = {   # op -> draw(data, dtype) -> the op's arguments (host arrays)
    "linear_forward": linear_case,
    "layernorm_forward": layernorm_case,
    "layernorm_backward": layernorm_backward_case,
    "softmax_forward": lambda data, dtype: (scores_case(data, dtype),),
    "softmax_backward": lambda data, dtype: (lambda s: (array(data, dtype, s.shape), softmax_rows(s)))(
        scores_case(data, dtype)),
    "masked_softmax": masked_softmax_case,
    "masked_softmax_backward": lambda data, dtype: (lambda s: (array(data, dtype, s.shape), softmax_rows(s), 0.25))(
        scores_case(data, dtype)),
    "gelu_forward": lambda data, dtype: (gelu_cache(data, dtype).x,),
    "gelu_backward": lambda data, dtype: (lambda c: (array(data, dtype, c.x.shape), c))(gelu_cache(data, dtype)),
    "gelu_output": lambda data, dtype: (gelu_cache(data, dtype),),
    "normal_cdf_and_pdf": lambda data, dtype: (array(data, dtype, tuple(dims(data, 2, high=40)), -9.0, 9.0),),
    "erf": lambda data, dtype: (array(data, dtype, tuple(dims(data, 2, high=40)), -9.0, 9.0),),
    "matmul": matmul_case,
    "adamw_update": adamw_case,
    "hidden_states": hidden_states_case,
    "encode_many": encode_many_case,
    "mlm_loss_and_grads": mlm_loss_case,
    "shifted_softmax": shifted_softmax_case,
}

FORMS = [(op, form, where) for op, forms in dispatch.registered().items() for form in forms
         for where in BACKENDS[form]]


def test_every_registered_op_has_a_case():
    assert set(dispatch.registered()) <= set(CASES), sorted(set(dispatch.registered()) - set(CASES))


def mapped(move, value):
    """value with move(a) for each of its arrays (in tuples, namedtuples, lists and dicts)."""
    if isinstance(value, (np.ndarray, DeviceArray)):
        return move(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(mapped(move, x) for x in value))
    if isinstance(value, (tuple, list)):
        return type(value)(mapped(move, x) for x in value)
    if isinstance(value, dict):
        return {k: mapped(move, v) for k, v in value.items()}
    return value


def copies(args):
    """Fresh copies of every array (some fast forms write over their inputs, and AdamW updates in place)."""
    return mapped(np.copy, tuple(args))


def run_on(where, form, args):
    """form(*args) on the backend `where`, its arguments copied there: (result, the arguments afterwards), on
    the host."""
    if where == "numpy":
        return form(*args), args
    previous = backend.name()
    backend.use(where)
    try:
        device_args = mapped(backend.to_device, args)
        return mapped(backend.to_host, form(*device_args)), mapped(backend.to_host, device_args)
    finally:
        backend.use(previous)


def leaves(value):
    """The arrays and plain values of a result, in order (namedtuples and tuples flattened)."""
    if isinstance(value, dict):
        return leaves([value[k] for k in sorted(value)])
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


def assert_close(got, expected, tolerance, where):
    got, expected = leaves(got), leaves(expected)
    assert len(got) == len(expected), where
    for i, (a, b) in enumerate(zip(got, expected)):
        if isinstance(b, np.generic):   # a 0-d result, such as a loss
            a, b = np.asarray(a), np.asarray(b)
        if not isinstance(b, np.ndarray):
            assert a == b or (a is None and b is None), f"{where}, item {i}: {a!r} != {b!r}"
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}, item {i}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        if tolerance is None:
            assert np.array_equal(a, b), f"{where}, item {i}: largest difference {np.abs(a - b).max()}"
        else:
            absolute, relative = tolerance
            bound = absolute + relative * max(1.0, float(np.abs(b).max(initial=0.0)))
            assert np.abs(a.astype(np.float64) - b).max(initial=0.0) <= bound, f"{where}, item {i}"


@pytest.fixture
def small_chunks(numpy_backend, monkeypatch):
    """Two threads, and chunks so small that the arrays drawn here are cut."""
    monkeypatch.setattr(threads, "MIN_CHUNK", 8)
    monkeypatch.setattr(products, "PRODUCT_MIN_CHUNK", 16)
    monkeypatch.setattr(gelu32, "BLOCK", 7)
    monkeypatch.setattr(inference, "SCORES_BLOCK", 1)
    threads.use(2)
    dispatch.install(True)   # the forms run as the engine runs them, each other's forms inside them


@pytest.fixture
def fused_kernels(request, monkeypatch):
    """For a fused form: the kernel bodies compiled for the CPU stand in for CuPy's."""
    calls = {}
    library = request.getfixturevalue("host_library")
    monkeypatch.setattr(fused, "_enabled", True)
    monkeypatch.setattr(fused, "kernel", lambda name: HostKernel(library, name, *fused.KERNELS[name][:2], calls))
    return calls


@pytest.mark.parametrize("op,form,where", FORMS,
                         ids=[f"{op}-{form.__module__.rsplit('.', 1)[-1]}-{where}" for op, form, where in FORMS])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_each_fast_form_equals_its_reference(small_chunks, request, op, form, where, dtype):
    if form in CUPY_ONLY:
        pytest.skip("CuPy's own special function: tests/test_cupy.py checks it on a GPU")
    if form.__module__ == fused.__name__:
        request.getfixturevalue("fused_kernels")
    if form is gelu32.normal_cdf_and_pdf and dtype == "float64":
        pytest.skip("the fitted erfc is a float32 form")
    reference = REFERENCES.get(op) or getattr(ops, op)
    tolerance = FUSED[dtype] if form.__module__ == fused.__name__ else TOLERANCES.get(form, {}).get(dtype)

    @EXAMPLES
    @given(data=st.data())
    def check(data):
        args = CASES[op](data, dtype)
        with dispatch.reference_only():
            expected_args = copies(args)
            expected = reference(*expected_args)
        got, got_args = run_on(where, form, copies(args))
        assert_close(got, expected, tolerance, f"{op} by {form.__module__} on {where}")
        if op not in OVERWRITES:
            assert_close(got_args, expected_args, tolerance, f"{op} by {form.__module__} on {where}: its inputs "
                                                             f"afterwards")
    check()


@pytest.mark.parametrize("where", ["numpy", "standin"])
def test_the_in_place_forms_run_on_every_backend_and_fused_kernels_first(where, monkeypatch):
    """The stand-in gets the forms CuPy would: rows.py's without --fused, fused.py's (registered first) with it."""
    previous = backend.name()
    xp = backend.use(where)
    dispatch.install(True)
    try:
        x = xp.ones((2, 3))
        for op, forms in dispatch.registered().items():
            in_place = [form for form in forms if form.__module__ == rows.__name__]
            if not in_place:
                continue
            assert dispatch.fast_form(op, x) is in_place[0], op
            monkeypatch.setattr(fused, "_enabled", True)
            fused_form = next((form for form in forms if form.__module__ == fused.__name__), in_place[0])
            assert dispatch.fast_form(op, x) is fused_form, op
            monkeypatch.setattr(fused, "_enabled", False)
    finally:
        backend.use(previous)
