"""Shared fixtures: every op and model test runs on NumPy and on the device stand-in."""

import pytest

from minroberta import backend, precision
from minroberta.kernels import fused, threads


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
    """Precision, fused kernels and the thread count are process-wide switches (a command-line run sets them):
    every test leaves them as it found them for the next."""
    thread_count = threads.count()
    yield
    precision.use("float32")
    fused.use(False)
    threads.use(thread_count)
