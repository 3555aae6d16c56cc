"""The one gradient checker every op test uses: analytic backward vs float64 central differences.

For an op out = f(inputs), draw a random projection dout and compare the backward's gradient of
L = sum(out * dout) with (L(x + h e_i) - L(x - h e_i)) / 2h for every element of every input checked.
With h = 1e-6 in float64 the estimate is good to about 1e-9 relative, so the default tolerance,
max |analytic - numeric| <= 1e-6 * max(1, max |numeric|), lets no missing term or wrong transpose through.
"""

import numpy as np

from minroberta import backend

STEP = 1e-6
TOLERANCE = 1e-6


def numerical_gradient(loss_of, array):
    """Central differences of the scalar function loss_of() w.r.t. each element of the host array `array`,
    which loss_of reads (it is perturbed in place and restored)."""
    grad = np.zeros_like(array)
    flat, flat_grad = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + STEP
        plus = loss_of()
        flat[i] = saved - STEP
        minus = loss_of()
        flat[i] = saved
        flat_grad[i] = (plus - minus) / (2 * STEP)
    return grad


def host_leaves(value):
    """Host copies of every array in a value (tuples, named tuples, lists flattened; other leaves as they are)."""
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in host_leaves(item)]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return [backend.to_host(value).copy()]
    return [value]


def assert_unchanged(before, after, what):
    for i, (a, b) in enumerate(zip(before, after)):
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b), f"the backward changed {what} (item {i})"


def check_gradients(forward, backward, inputs, wrt, seed=0, tolerance=TOLERANCE, dout=None):
    """forward(**device_inputs) -> (out, cache); backward(dout, cache) -> dict name -> gradient.
    `inputs` holds host float64 arrays (and any non-differentiable extras); `wrt` names those to check.
    dout: the projection (host array of out's shape); drawn from `seed` when None. The backward must change
    neither the inputs, nor dout, nor the cache.
    Returns the worst error found, and raises AssertionError naming the input when it exceeds tolerance."""
    def device_inputs():
        return {k: backend.to_device(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}

    given = device_inputs()
    out, cache = forward(**given)
    if dout is None:
        dout = np.random.default_rng(seed).standard_normal(np.shape(backend.to_host(out)))
    dout_device = backend.to_device(dout)
    before = (host_leaves(list(given.values())), host_leaves(dout_device), host_leaves(cache))
    analytic = backward(dout_device, cache)
    for was, now, what in zip(before, (host_leaves(list(given.values())), host_leaves(dout_device), host_leaves(cache)),
                              ("its inputs", "dout", "the cache")):
        assert_unchanged(was, now, what)

    def loss():
        value, _ = forward(**device_inputs())
        return float(np.sum(backend.to_host(value) * dout))

    worst = 0.0
    for name in wrt:
        numeric = numerical_gradient(loss, inputs[name])
        got = backend.to_host(analytic[name])
        assert got.shape == numeric.shape, f"{name}: gradient shape {got.shape} != {numeric.shape}"
        error = float(np.max(np.abs(got - numeric), initial=0.0))
        scale = max(1.0, float(np.max(np.abs(numeric), initial=0.0)))
        worst = max(worst, error / scale)
        assert error <= tolerance * scale, (
            f"gradient of {name} off by {error:.3e} (scale {scale:.3e}, tolerance {tolerance:.0e})")
    return worst
