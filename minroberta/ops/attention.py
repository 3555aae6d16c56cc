"""Softmax and multi-head scaled dot-product self-attention with an additive padding mask on the keys."""

import math

from .. import backend, fused, threads
from ..errors import MinRobertaError
from ..precision import matmul
from .checks import require_shape


def softmax_forward(scores):
    """scores (..., K) -> probs over the last axis, computed after subtracting the row max.
    Plainly: e = exp(scores - max); probs = e / sum(e); here in one buffer, in place, rows over the threads."""
    xp = backend.xp()
    scores2 = scores.reshape(-1, scores.shape[-1])                          # (N, K) rows
    probs = xp.empty(scores2.shape, scores.dtype)

    def rows(r):   # one thread's rows (threads.py)
        p = probs[r]
        xp.subtract(scores2[r], scores2[r].max(axis=-1, keepdims=True), out=p)
        xp.exp(p, out=p)
        p /= p.sum(axis=-1, keepdims=True)
    threads.over_rows(rows, *scores2.shape)
    probs = probs.reshape(scores.shape)
    return probs, probs


def softmax_backward(dprobs, probs):
    """p_i = e^{s_i} / sum_j e^{s_j} gives dp_i/ds_k = p_i ([i = k] - p_k), so
    ds_k = sum_i dp_i p_i ([i = k] - p_k) = p_k (dp_k - sum_i dp_i p_i).
    Plainly: dscores = probs * (dprobs - sum(dprobs * probs)); here in one buffer, rows over the threads."""
    xp = backend.xp()
    dprobs2, probs2 = dprobs.reshape(-1, dprobs.shape[-1]), probs.reshape(-1, probs.shape[-1])   # (N, K)
    dscores = xp.empty(dprobs2.shape, xp.result_type(dprobs, probs))

    def rows(r):
        d = dscores[r]
        xp.multiply(dprobs2[r], probs2[r], out=d)
        xp.subtract(dprobs2[r], d.sum(axis=-1, keepdims=True), out=d)
        d *= probs2[r]
    threads.over_rows(rows, *dprobs2.shape)
    return dscores.reshape(dprobs.shape)


def _split_heads(x, num_heads):
    """(B, T, C) -> (B, nh, T, hd), made contiguous: the batched matrix multiplies below reach the BLAS only
    for contiguous operands (a strided view fell back to a loop 30x slower, measured)."""
    batch, seq, channels = x.shape
    xp = backend.xp()
    return xp.ascontiguousarray(x.reshape(batch, seq, num_heads, channels // num_heads).transpose(0, 2, 1, 3))


def _merge_heads(x):
    batch, heads, seq, head_dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, seq, heads * head_dim)                 # (B, T, C)


def attention_forward(q, k, v, key_mask, num_heads, dropout_p=0.0, generator=None, training=False):
    """q, k, v (B, T, C) projected queries/keys/values; key_mask (B, T), 1 for real tokens, 0 for padding.
    Heads are the C channels cut into num_heads slices of hd = C / num_heads, head-major (channel h*hd + d).
    scores = q k^T / sqrt(hd) + (1 - mask) * finfo.min; probs = softmax(scores); ctx = dropout(probs) v."""
    xp = backend.xp()
    batch, seq, channels = q.shape
    require_shape("k", k, q.shape)
    require_shape("v", v, q.shape)
    require_shape("key_mask", key_mask, (batch, seq))
    if channels % num_heads:
        raise MinRobertaError(f"hidden size {channels} is not divisible by num_heads {num_heads}")
    head_dim = channels // num_heads
    qh, kh, vh = (_split_heads(t, num_heads) for t in (q, k, v))           # (B, nh, T, hd)
    scores = matmul(qh, kh.transpose(0, 1, 3, 2))                           # (B, nh, T, T)
    additive = (1.0 - key_mask.astype(q.dtype)) * xp.finfo(q.dtype).min    # (B, T)
    scale = 1.0 / math.sqrt(head_dim)
    if fused.enabled():   # scale, mask and exponentiate in two CUDA kernels
        probs = fused.masked_softmax(scores, additive[:, None, None, :], scale)
    else:
        def scale_and_mask(b):   # one thread's sequences (threads.py)
            scores_b = scores[b]
            scores_b *= scale
            scores_b += additive[b, None, None, :]
        threads.over_rows(scale_and_mask, batch, scores.size // max(1, batch))
        probs, _ = softmax_forward(scores)                                  # (B, nh, T, T)
    if training and dropout_p > 0.0:
        from .dropout import dropout_forward
        probs_used, drop_scale = dropout_forward(probs, dropout_p, generator, training)
    else:
        probs_used, drop_scale = probs, None
    ctx = _merge_heads(matmul(probs_used, vh))                              # (B, T, C)
    return ctx, (qh, kh, vh, probs, probs_used, drop_scale, head_dim)


def attention_backward(dctx, cache):
    """ctx = P' v with P' = dropout(P): dv = P'^T dctx, dP' = dctx v^T, dP = dP' * scale.
    softmax backward gives dS; the mask is a constant added to S, so it passes dS unchanged;
    S = q k^T / sqrt(hd): dq = dS k / sqrt(hd), dk = dS^T q / sqrt(hd). Heads are merged back like ctx."""
    qh, kh, vh, probs, probs_used, drop_scale, head_dim = cache
    batch, heads, seq, _ = qh.shape
    dctx_h = _split_heads(dctx, heads)                                      # (B, nh, T, hd)
    dvh = matmul(probs_used.transpose(0, 1, 3, 2), dctx_h)                  # (B, nh, T, hd)
    dprobs = matmul(dctx_h, vh.transpose(0, 1, 3, 2))                       # (B, nh, T, T)
    if drop_scale is not None:
        dprobs = dprobs * drop_scale
    dscores = softmax_backward(dprobs, probs)                               # (B, nh, T, T)
    scale = 1.0 / math.sqrt(head_dim)
    threads.elementwise(lambda d: backend.xp().multiply(d, scale, out=d), dscores)   # dscores *= scale
    dqh = matmul(dscores, kh)
    dkh = matmul(dscores.transpose(0, 1, 3, 2), qh)
    return _merge_heads(dqh), _merge_heads(dkh), _merge_heads(dvh)
