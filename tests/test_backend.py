"""The backend and the erf it lacks (ops/gelu.py): erf accuracy, scatter-add, seeded generators, and the stand-in's refusals."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minroberta import backend, dispatch
import minroberta.engine  # noqa: F401  (registers its forms, off until installed)
from minroberta.ops import erf, normal_cdf_and_pdf
from minroberta.device_standin import HostConversionError
from minroberta.errors import MinRobertaError

GRID = np.concatenate([np.linspace(-9, 9, 200_001), [0.0, 1e-30, -1e-30, 1e-8, 40.0, -40.0]])
ERF_REFERENCE = np.array([math.erf(v) for v in GRID])


def test_erf_float64_agrees_with_math_erf(xp):
    got = backend.to_host(erf(xp.asarray(GRID)))
    assert np.max(np.abs(got - ERF_REFERENCE)) <= 2e-15
    nonzero = ERF_REFERENCE != 0
    assert np.max(np.abs(got - ERF_REFERENCE)[nonzero] / np.abs(ERF_REFERENCE[nonzero])) <= 2e-15


# a million float32 points, dense where erf and Phi bend most
DENSE32 = np.concatenate([np.linspace(-9, 9, 400_001), np.linspace(-1, 1, 600_001)]).astype(np.float32)


def test_erf_float32_error_is_within_documented_bound(xp):
    reference = np.array([math.erf(float(v)) for v in DENSE32])
    got = backend.to_host(erf(xp.asarray(DENSE32)))
    assert got.dtype == np.float32
    assert np.max(np.abs(got.astype(np.float64) - reference)) <= 3.0e-8     # half a float32 ulp below 1


def test_scatter_add_accumulates_repeated_indices(xp):
    target = xp.zeros((4, 2))
    backend.scatter_add(target, xp.asarray([1, 1, 3]), xp.asarray([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    np.testing.assert_array_equal(backend.to_host(target), [[0, 0], [4, 6], [0, 0], [5, 6]])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([1, 6]).flatmap(lambda rows: st.tuples(st.just(rows), st.lists(st.integers(0, rows - 1),
                                                                                       max_size=20))),
       st.integers(0, 2**32 - 1))
def test_scatter_add_matches_a_row_by_row_loop(xp, rows_and_indices, seed):
    rows, indices = rows_and_indices        # a one-row table takes a shortcut
    values = np.random.default_rng(seed).standard_normal((len(indices), 3))
    expected = np.ones((rows, 3))
    for i, row in zip(indices, values):
        expected[i] += row
    target = xp.ones((rows, 3))
    backend.scatter_add(target, xp.asarray(np.array(indices, dtype=np.int64)), xp.asarray(values))
    np.testing.assert_allclose(backend.to_host(target), expected, rtol=1e-12, atol=1e-12)


def test_generator_is_determined_by_its_key(xp):
    a = backend.to_host(backend.generator(3, 1, 4).random((5,)))
    b = backend.to_host(backend.generator(3, 1, 4).random((5,)))
    c = backend.to_host(backend.generator(3, 1, 5).random((5,)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(MinRobertaError, match="unknown backend 'tpu'"):
        backend.use("tpu")


def test_standin_refuses_every_implicit_host_conversion():
    previous = backend.name()
    xp = backend.use("standin")
    try:
        a = xp.ones((2, 3))
        for sneaky in (lambda: np.asarray(a), lambda: float(a.sum()), lambda: int(a[0, 0]),
                       lambda: a.sum().item(), lambda: a.tolist(), lambda: bool(a.any()),
                       lambda: np.exp(a), lambda: a + np.ones(3), lambda: list(a)):
            with pytest.raises((HostConversionError, TypeError)):
                sneaky()
        assert backend.to_host(a * 2 + 1).sum() == 18   # the explicit way off the device still works
    finally:
        backend.use(previous)


def test_standin_catches_a_hidden_round_trip_inside_an_op():
    """An op that reads a value back to the host in the middle of the math fails on the stand-in."""
    def leaky_scale(x):
        return x / float(x.max())
    previous = backend.name()
    xp = backend.use("standin")
    try:
        with pytest.raises(HostConversionError):
            leaky_scale(xp.ones(3))
    finally:
        backend.use(previous)


def test_normal_cdf_and_pdf_match_references(xp):
    grid = np.linspace(-12, 12, 100_001)
    reference_cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in grid])
    reference_pdf = np.exp(-grid * grid / 2) / math.sqrt(2 * math.pi)
    cdf, pdf = (backend.to_host(a) for a in normal_cdf_and_pdf(xp.asarray(grid)))
    assert np.max(np.abs(cdf - reference_cdf)) <= 1e-15
    assert np.max(np.abs(pdf - reference_pdf)) <= 1e-16
    reference32 = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2)) for v in DENSE32])
    grid32_64 = DENSE32.astype(np.float64)
    for installed in (False, True):   # the reference, then the engine's float32 form (engine/gelu32.py)
        dispatch.install(installed)
        cdf32, pdf32 = (backend.to_host(a) for a in normal_cdf_and_pdf(xp.asarray(DENSE32)))
        assert cdf32.dtype == np.float32 and pdf32.dtype == np.float32
        assert np.max(np.abs(cdf32.astype(np.float64) - reference32)) <= 2.5e-7   # the bound gelu32.py states
        assert np.max(np.abs(pdf32 - np.exp(-grid32_64 * grid32_64 / 2) / math.sqrt(2 * math.pi))) <= 1e-7


def test_cupy_without_a_gpu_is_a_one_line_error():
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        pytest.skip("a GPU is present: the refusal cannot be shown here")
    except ImportError:
        pass
    except Exception:
        pass
    previous = backend.name()
    with pytest.raises(MinRobertaError, match="backend 'cupy' is not usable here: "):
        backend.use("cupy")
    assert backend.name() == previous
