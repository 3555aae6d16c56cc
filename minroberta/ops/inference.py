"""Fast forms of the ops for inference alone, where no backward pass needs a cache: each computes what its
reference's forward returns as `out`, in place or block by block, and keeps nothing else (GELU's is
backend.gelu_in_place, beside the erfc it shares). tests/test_inference.py holds every one to its reference.
"""

import math

from .. import backend, threads
from ..precision import product
from .attention import _merge_heads, _split_heads

# attention scores (float32 elements) made and used in one go: a few sequences' (heads, T, T) blocks, which
# stay in the CPU cache between the product that makes them and the one that uses them
SCORES_BLOCK = 1 << 18


def attention_inference(q, k, v, key_mask, num_heads):
    """attention_forward's ctx (B, T, C). key_mask (B, T), or None when no key is padding (no mask to add).
    The scale 1/sqrt(hd) multiplies q (T x hd numbers per head) instead of the scores (T x T), which can
    round the last bit differently; then, a few sequences at a time, scores = q k^T (+ mask), the softmax in
    place while the scores are in the cache, and ctx = probs v."""
    xp = backend.xp()
    batch, seq, channels = q.shape
    head_dim = channels // num_heads
    qh, kh, vh = (_split_heads(t, num_heads) for t in (q, k, v))            # (B, nh, T, hd) fresh copies
    qh *= 1.0 / math.sqrt(head_dim)
    additive = None if key_mask is None else (1.0 - key_mask.astype(q.dtype)) * xp.finfo(q.dtype).min   # (B, T)
    ctx = xp.empty(qh.shape, q.dtype)                                       # (B, nh, T, hd)
    step = max(1, SCORES_BLOCK // max(1, num_heads * seq * seq))

    def sequences(rows):   # one thread's sequences (threads.py), a block at a time
        for start in range(rows.start, rows.stop, step):
            b = slice(start, min(start + step, rows.stop))
            scores = product(qh[b], kh[b].transpose(0, 1, 3, 2))           # (n, nh, T, T)
            if additive is not None:
                scores += additive[b, None, None, :]
            scores -= scores.max(axis=-1, keepdims=True)
            xp.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            product(scores, vh[b], out=ctx[b])
    threads.over_rows(sequences, batch, num_heads * seq * seq * head_dim)
    return _merge_heads(ctx)


def layernorm_in_place(x, gamma, beta, eps):
    """layernorm_forward's y written over x (..., C), which must be C-contiguous and is used up; no xhat or
    rstd is kept."""
    xp = backend.xp()
    x2 = x.reshape(-1, x.shape[-1])                                         # (N, C) rows

    def normalise(rows):   # one thread's rows (threads.py)
        x_r = x2[rows]
        x_r -= x_r.mean(axis=-1, keepdims=True)
        var = xp.einsum("nc,nc->n", x_r, x_r)[:, None] / x_r.shape[-1]    # (n, 1) without an x * x array
        x_r *= 1.0 / (var + eps) ** 0.5
        x_r *= gamma
        x_r += beta
    threads.over_rows(normalise, *x2.shape)
    return x

