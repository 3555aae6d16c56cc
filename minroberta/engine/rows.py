"""In-place forms of the row-wise and elementwise ops, on every backend: the reference's arithmetic, in the same
order (so the same bits; sums over rows excepted, see _row_sums), written into preallocated buffers
instead of fresh temporaries. On NumPy the rows are cut into chunks over the threads (threads.py); on CuPy each
pass is one kernel over the whole array, and the fused kernels of fused.py, registered first, win when they are
on. tests/test_kernels.py holds each to its reference on NumPy and on the device stand-in."""

from .. import backend
from ..dispatch import register
from ..ops.layernorm import LayerNormCache
from ..ops.linear import LinearCache
from ..ops import attention
from ..ops.matmul import matmul
from . import threads


# array modules whose arrays take `out=` and write through views: the same in-place code runs on each
IN_PLACE_BACKENDS = ("numpy", "cupy", "standin")


def in_place(*_):
    return backend.name() in IN_PLACE_BACKENDS


@register("linear_forward", in_place)
def linear_forward(x, weight, bias=None):
    """The product whole (it has its own fast form), then y += bias in place (y's rows over the threads on NumPy)."""
    xp = backend.xp()
    y = matmul(x.reshape(-1, x.shape[-1]), weight.T)     # (N, O)
    if bias is not None:
        threads.over_rows(lambda rows: xp.add(y[rows], bias, out=y[rows]), y.shape[0], y.shape[1])
    return y.reshape(*x.shape[:-1], weight.shape[0]), LinearCache(x, weight, bias is not None)


def _row_sums(a, b=None):
    """Each row's sum of a (n, K), or of a * b (b (n, K) or (K,)) without making the product -> (n, 1), by
    np.einsum's loops: two to five times faster than NumPy's sum over rows as short as a hidden size, and a row's
    sum the same whatever rows come with it (the same bits on any thread count). The sums round in another order
    than the reference's, so the forms that use this match it to float32 rounding, not bit for bit."""
    xp = backend.xp()
    if b is None:
        return xp.einsum("ij->i", a)[:, None]
    return xp.einsum("ij,ij->i" if b.ndim == 2 else "ij,j->i", a, b)[:, None]


def _column_sums(a):
    """Sums over all the rows of a (N, K) -> (K,): ones (1, N) @ a, the BLAS's kernel, faster than NumPy's sum
    over rows. Always over the whole array: the same bits on any thread count."""
    xp = backend.xp()
    return xp.matmul(xp.ones((1, a.shape[0]), a.dtype), a).reshape(-1)


@register("layernorm_forward", in_place)
def layernorm_forward(x, gamma, beta, eps):
    xp = backend.xp()
    channels = x.shape[-1]
    x2 = x.reshape(-1, channels)                                           # (N, C) rows
    y = xp.empty(x2.shape, xp.result_type(x.dtype, gamma.dtype, beta.dtype))
    xhat = xp.empty(x2.shape, x.dtype)
    rstd = xp.empty((x2.shape[0], 1), x.dtype)

    def normalise(rows):   # one thread's rows; rows are independent
        xhat_r = xhat[rows]
        # the mean as the reference sums it: centring cancels, and for a row of near-equal values rstd (up to
        # 1/sqrt(eps)) would magnify a last-bit difference in the mean
        xp.subtract(x2[rows], x2[rows].mean(axis=-1, keepdims=True), out=xhat_r)   # normalised in place below
        rstd[rows] = 1.0 / (_row_sums(xhat_r, xhat_r) / channels + eps) ** 0.5    # (n, 1)
        xhat_r *= rstd[rows]
        y_r = y[rows]
        xp.multiply(xhat_r, gamma, out=y_r)
        y_r += beta
    threads.over_rows(normalise, x2.shape[0], channels)
    shape = x.shape
    return y.reshape(shape), LayerNormCache(xhat.reshape(shape), rstd.reshape(shape[:-1] + (1,)), gamma)


@register("layernorm_backward", in_place)
def layernorm_backward(dy, cache):
    """With g = dy * gamma: mean(g) is the row sums of dy * gamma and mean(g xhat) those of (dy xhat) * gamma,
    neither product made (dy xhat is wanted for dgamma anyway)."""
    xp = backend.xp()
    xhat, rstd, gamma = cache
    channels = xhat.shape[-1]
    dy2, xhat2, rstd2 = dy.reshape(-1, channels), xhat.reshape(-1, channels), rstd.reshape(-1, 1)   # (N, C) rows
    dx = xp.empty(dy2.shape, xp.result_type(dy.dtype, gamma.dtype))
    dy_xhat = xp.empty(dy2.shape, xp.result_type(dy.dtype, xhat.dtype))    # summed over rows into dgamma below

    def dx_rows(rows):   # one thread's rows
        dx_r = dx[rows]
        xp.multiply(dy2[rows], xhat2[rows], out=dy_xhat[rows])
        g_mean = _row_sums(dy2[rows], gamma) / channels                    # (n, 1)
        g_xhat_mean = _row_sums(dy_xhat[rows], gamma) / channels           # (n, 1)
        xp.multiply(xhat2[rows], g_xhat_mean, out=dx_r)
        dx_r += g_mean
        xp.subtract(dy2[rows] * gamma, dx_r, out=dx_r)                     # g - mean(g) - xhat mean(g xhat)
        dx_r *= rstd2[rows]
    threads.over_rows(dx_rows, dy2.shape[0], channels)
    return dx.reshape(dy.shape), _column_sums(dy_xhat), _column_sums(dy2)   # dx, dgamma (C,), dbeta (C,)


@register("softmax_forward", in_place)
def softmax_forward(scores):
    """In one buffer, in place (rows over the threads on NumPy)."""
    xp = backend.xp()
    scores2 = scores.reshape(-1, scores.shape[-1])                          # (N, K) rows
    probs = xp.empty(scores2.shape, scores.dtype)

    def rows(r):
        p = probs[r]
        xp.subtract(scores2[r], scores2[r].max(axis=-1, keepdims=True), out=p)
        xp.exp(p, out=p)
        p /= _row_sums(p)
    threads.over_rows(rows, *scores2.shape)
    probs = probs.reshape(scores.shape)
    return probs, probs


@register("softmax_backward", in_place)
def softmax_backward(dprobs, probs):
    xp = backend.xp()
    dprobs2, probs2 = dprobs.reshape(-1, dprobs.shape[-1]), probs.reshape(-1, probs.shape[-1])   # (N, K)
    dscores = xp.empty(dprobs2.shape, xp.result_type(dprobs.dtype, probs.dtype))

    def rows(r):
        d = dscores[r]
        xp.subtract(dprobs2[r], _row_sums(dprobs2[r], probs2[r]), out=d)   # dp - sum(dp p)
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
        sum_exp[r] = _row_sums(p)
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
