"""Shared fixtures: every op and model test runs on NumPy and on the device stand-in."""

import pytest

from minroberta import backend


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
