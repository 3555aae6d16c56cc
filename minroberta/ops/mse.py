"""Mean squared error, the loss of a one-output regression head."""

from .checks import require_shape


def mse_forward(predictions, targets):
    """predictions (N,), targets (N,) -> loss = mean((predictions - targets)^2), a 0-d array."""
    require_shape("targets", targets, predictions.shape)
    diff = predictions - targets
    return (diff * diff).mean(), (diff,)


def mse_backward(dloss, cache):
    """d/dp_n of (1/N) sum (p - y)^2 = 2 (p_n - y_n) / N."""
    (diff,) = cache
    return dloss * 2.0 * diff / diff.shape[0]
