"""Shared fixtures: every op and model test runs on NumPy and on the device stand-in."""

import pytest

from minroberta import backend, dispatch, engine
from minroberta.engine import fused, precision, threads


@pytest.fixture(params=["numpy", "standin"])
def xp(request):
    """The array module under test; the stand-in fails any hidden host round-trip."""
    previous = backend.name()
    module = backend.use(request.param)
    yield module
    backend.use(previous)


@pytest.fixture
def numpy_backend():
    previous = backend.name()
    module = backend.use("numpy")
    yield module
    backend.use(previous)


@pytest.fixture(autouse=True)
def float32_products_afterwards():
    """Precision, fused kernels, the thread count and whether the engine is installed are process-wide switches
    (a command-line run or a trainer sets them): every test leaves them as it found them for the next, and the
    engine uninstalled, so each test starts on the reference core."""
    thread_count = threads.count()
    yield
    precision.use("float32")
    fused.use(False)
    threads.use(thread_count)
    engine.reference(False)
    dispatch.install(False)
