"""In-place forms of the row-wise and elementwise ops, on every backend: the reference's arithmetic, in the same
order (so the same bits; most sums over rows excepted, see _row_means), written into preallocated buffers
instead of fresh temporaries. On NumPy the rows are cut into chunks over the threads (threads.py); on CuPy each
pass is one kernel over the whole array, and the fused kernels of fused.py, registered first, win when they are
on. tests/test_kernels.py holds each to its reference on NumPy and on the device stand-in."""

from .. import backend
from ..dispatch import register
from ..ops.gelu import GeluCache
from ..ops.layernorm import LayerNormCache
from ..ops.linear import LinearCache
from ..ops import attention
from ..precision import matmul
from . import threads


# array modules whose arrays take `out=` and write through views: the same in-place code runs on each
IN_PLACE_BACKENDS = ("numpy", "cupy", "standin")


def in_place(*_):
    return backend.name() in IN_PLACE_BACKENDS


@register("linear_forward", in_place)
def linear_forward(x, weight, bias=None, keep_input=True):
    """The product whole (it has its own fast form), then y += bias in place (y's rows over the threads on NumPy)."""
    xp = backend.xp()
    y = matmul(x.reshape(-1, x.shape[-1]), weight.T)     # (N, O)
    if bias is not None:
        threads.over_rows(lambda rows: xp.add(y[rows], bias, out=y[rows]), y.shape[0], y.shape[1])
    return y.reshape(*x.shape[:-1], weight.shape[0]), LinearCache(x if keep_input else None, weight, bias is not None)


@register("linear_backward", in_place)
def linear_backward(dy, cache, x=None):
    """The reference's products, and db as ones (1, N) @ dy: the column sums by the BLAS, faster than NumPy's
    sum over rows (the same sums, rounded in another order)."""
    xp = backend.xp()
    x = cache.x if x is None else x
    dy2 = dy.reshape(-1, dy.shape[-1])                  # (N, O)
    dx = matmul(dy2, cache.weight).reshape(x.shape)     # (..., I)
    dweight = matmul(dy2.T, x.reshape(-1, x.shape[-1]))   # (O, I)
    dbias = xp.matmul(xp.ones((1, dy2.shape[0]), dy2.dtype), dy2).reshape(-1) if cache.has_bias else None   # (O,)
    return dx, dweight, dbias


def _row_means(x, weights):
    """x (n, C) @ weights (C, 1) / C -> (n, 1): each row's weighted mean, its sum made by the BLAS's dot kernel,
    several times faster than NumPy's reduction over rows as short as a hidden size (the one place here that
    does not repeat the reference's bits: the sums round in another order)."""
    return backend.xp().matmul(x, weights) / x.shape[-1]


@register("layernorm_forward", in_place)
def layernorm_forward(x, gamma, beta, eps):
    xp = backend.xp()
    channels = x.shape[-1]
    x2 = x.reshape(-1, channels)                                           # (N, C) rows
    y = xp.empty(x2.shape, xp.result_type(x.dtype, gamma.dtype, beta.dtype))
    xhat = xp.empty(x2.shape, x.dtype)
    rstd = xp.empty((x2.shape[0], 1), x.dtype)
    ones = xp.ones((channels, 1), dtype=x.dtype)                          # (C, 1)

    def normalise(rows):   # one thread's rows; rows are independent
        xhat_r, y_r = xhat[rows], y[rows]
        # the mean as the reference sums it: centring cancels, and for a row of near-equal values rstd (up to
        # 1/sqrt(eps)) would magnify a last-bit difference in the mean
        xp.subtract(x2[rows], x2[rows].mean(axis=-1, keepdims=True), out=xhat_r)   # normalised in place below
        xp.multiply(xhat_r, xhat_r, out=y_r)                               # y's buffer holds the squares first
        rstd[rows] = 1.0 / (_row_means(y_r, ones) + eps) ** 0.5             # (n, 1)
        xhat_r *= rstd[rows]
        xp.multiply(xhat_r, gamma, out=y_r)
        y_r += beta
    threads.over_rows(normalise, x2.shape[0], channels)
    shape = x.shape
    return y.reshape(shape), LayerNormCache(xhat.reshape(shape), rstd.reshape(shape[:-1] + (1,)), gamma)


@register("layernorm_backward", in_place)
def layernorm_backward(dy, cache):
    """mean(g) = dy @ gamma / C and mean(g xhat) = (dy xhat) @ gamma / C: both means are products with one
    vector, and dy xhat is wanted for dgamma anyway."""
    xp = backend.xp()
    xhat, rstd, gamma = cache
    channels = xhat.shape[-1]
    dy2, xhat2, rstd2 = dy.reshape(-1, channels), xhat.reshape(-1, channels), rstd.reshape(-1, 1)   # (N, C) rows
    dx = xp.empty(dy2.shape, xp.result_type(dy.dtype, gamma.dtype))
    dy_xhat = xp.empty(dy2.shape, xp.result_type(dy.dtype, xhat.dtype))    # summed over rows into dgamma below
    gamma_column = gamma.reshape(channels, 1).astype(dx.dtype)             # (C, 1)

    def dx_rows(rows):   # one thread's rows
        dx_r = dx[rows]
        xp.multiply(dy2[rows], xhat2[rows], out=dy_xhat[rows])
        g_mean = _row_means(dy2[rows], gamma_column)                       # (n, 1) mean(g)
        g_xhat_mean = _row_means(dy_xhat[rows], gamma_column)              # (n, 1) mean(g xhat)
        xp.multiply(xhat2[rows], g_xhat_mean, out=dx_r)
        dx_r += g_mean
        xp.subtract(dy2[rows] * gamma, dx_r, out=dx_r)                     # g - mean(g) - xhat mean(g xhat)
        dx_r *= rstd2[rows]
    threads.over_rows(dx_rows, dy2.shape[0], channels)
    # sums over every row, whole: the same on any thread count
    dgamma = xp.matmul(xp.ones((1, dy2.shape[0]), dy_xhat.dtype), dy_xhat).reshape(channels)   # (C,)
    dbeta = xp.matmul(xp.ones((1, dy2.shape[0]), dy2.dtype), dy2).reshape(channels)            # (C,)
    return dx.reshape(dy.shape), dgamma, dbeta


@register("softmax_forward", in_place)
def softmax_forward(scores):
    """In one buffer, in place (rows over the threads on NumPy)."""
    xp = backend.xp()
    scores2 = scores.reshape(-1, scores.shape[-1])                          # (N, K) rows
    probs = xp.empty(scores2.shape, scores.dtype)

    ones = xp.ones((scores2.shape[1], 1), scores.dtype)                      # (K, 1)

    def rows(r):
        p = probs[r]
        xp.subtract(scores2[r], scores2[r].max(axis=-1, keepdims=True), out=p)
        xp.exp(p, out=p)
        p /= xp.matmul(p, ones)                                             # the row sums (as in _row_means)
    threads.over_rows(rows, *scores2.shape)
    probs = probs.reshape(scores.shape)
    return probs, probs


@register("softmax_backward", in_place)
def softmax_backward(dprobs, probs):
    xp = backend.xp()
    dprobs2, probs2 = dprobs.reshape(-1, dprobs.shape[-1]), probs.reshape(-1, probs.shape[-1])   # (N, K)
    dscores = xp.empty(dprobs2.shape, xp.result_type(dprobs.dtype, probs.dtype))

    ones = xp.ones((dprobs2.shape[1], 1), dscores.dtype)                     # (K, 1)

    def rows(r):
        d = dscores[r]
        xp.multiply(dprobs2[r], probs2[r], out=d)
        xp.subtract(dprobs2[r], xp.matmul(d, ones), out=d)                  # the row sums (as in _row_means)
        d *= probs2[r]
    threads.over_rows(rows, *dprobs2.shape)
    return dscores.reshape(dprobs.shape)


@register("masked_softmax", in_place)
def masked_softmax(scores, additive, scale):
    """Scale and mask in the scores' own buffer (a thread's sequences at a time on NumPy), then the softmax."""
    batch = scores.shape[0]

    def scale_and_mask(b):
        scores_b = scores[b]
        scores_b *= scale
        scores_b += additive[b, None, None, :]
    threads.over_rows(scale_and_mask, batch, scores.size // max(1, batch))
    probs, _ = attention.softmax_forward(scores)
    return probs


@register("masked_softmax_backward", in_place)
def masked_softmax_backward(dprobs, probs, scale):
    xp = backend.xp()
    dscores = attention.softmax_backward(dprobs, probs)
    return threads.elementwise(lambda d: xp.multiply(d, scale, out=d), dscores)


@register("shifted_softmax", in_place)
def shifted_softmax(logits, labels):
    """The shifted logits, their exp and the probabilities all in one (N, V) buffer, rows over the threads; the
    label's shifted logit is read before the exp overwrites it."""
    xp = backend.xp()
    probs = xp.empty(logits.shape, logits.dtype)                        # (N, V)
    sum_exp = xp.empty((logits.shape[0], 1), logits.dtype)
    shifted_true = xp.empty(logits.shape[:1], logits.dtype)

    def rows(r):
        p = probs[r]
        xp.subtract(logits[r], logits[r].max(axis=1, keepdims=True), out=p)
        shifted_true[r] = p[xp.arange(p.shape[0]), labels[r]]
        xp.exp(p, out=p)
        sum_exp[r] = p.sum(axis=1, keepdims=True)
        p /= sum_exp[r]
    threads.over_rows(rows, *logits.shape)
    return shifted_true, sum_exp, probs


@register("gelu_backward", in_place)
def gelu_backward(dout, cache):
    """In one buffer, in place (in parts over the threads on NumPy)."""
    xp = backend.xp()
    x, cdf, pdf = cache

    def compute(dx, x, cdf, pdf, dout):
        xp.multiply(x, pdf, out=dx)
        dx += cdf
        dx *= dout
    return threads.elementwise(compute, xp.empty(x.shape, xp.result_type(x.dtype, dout.dtype)), x, cdf, pdf, dout)


@register("gelu_output", in_place)
def gelu_output(cache):
    xp = backend.xp()
    return threads.elementwise(lambda y, x, cdf: xp.multiply(x, cdf, out=y), xp.empty(cache.x.shape, cache.x.dtype),
                               cache.x, cache.cdf)


# elements per block of the AdamW update: 512 KiB in float32, large enough that two threads do not queue for the
# interpreter lock (docs/performance.md)
ADAMW_BLOCK = 131072


@register("adamw_update", in_place)
def adamw_update(p, g, m, v, decay, beta1, beta2, eps, step_size, bias_correction2_sqrt):
    """On NumPy the tensor's rows cut over the threads, each thread's rows block by block along the first axis
    (slices are views, so the updates land in p, m and v): a block's arithmetic stays in the CPU cache instead
    of streaming the whole tensor a dozen times. On CuPy (and the stand-in) the tensor is one block: each step
    one kernel over all of it, through one scratch buffer of its size, as small blocks would only add launches."""
    xp = backend.xp()
    per_row = max(1, p.size // max(1, p.shape[0]))

    def rows(part):
        p_part = p[part]
        if decay != 1.0:
            p_part *= decay
        block_rows = max(1, ADAMW_BLOCK // per_row if backend.name() == "numpy" else part.stop - part.start)
        scratch = xp.empty_like(p_part[:block_rows])
        for start in range(part.start, part.stop, block_rows):
            block = slice(start, min(start + block_rows, part.stop))
            _adam_block(xp, p[block], g[block], m[block], v[block], scratch[:block.stop - block.start], beta1,
                        beta2, eps, step_size, bias_correction2_sqrt)
    threads.over_rows(rows, p.shape[0], per_row)


def _adam_block(xp, p, g, m, v, scratch, beta1, beta2, eps, step_size, bias_correction2_sqrt):
    """The Adam update of one block, every step in place through the one scratch buffer."""
    m *= beta1
    xp.multiply(g, 1.0 - beta1, out=scratch)
    m += scratch                                     # m = b1 m + (1 - b1) g
    v *= beta2
    xp.multiply(g, g, out=scratch)
    scratch *= 1.0 - beta2
    v += scratch                                     # v = b2 v + (1 - b2) g^2
    xp.sqrt(v, out=scratch)
    scratch /= bias_correction2_sqrt
    scratch += eps                                   # denom = sqrt(v) / sqrt(1 - b2^t) + eps
    xp.divide(m, scratch, out=scratch)
    scratch *= step_size
    p -= scratch                                     # p -= lr / (1 - b1^t) * m / denom
