"""Softmax and multi-head scaled dot-product self-attention with an additive padding mask on the keys."""

import math
from collections import namedtuple

from .. import backend
from ..dispatch import fast_form
from ..errors import MinRobertaError
from .matmul import matmul
from .checks import require_shape
from .dropout import dropout_backward, dropout_forward

# per head (B, nh, T, hd): queries, keys, values; probs (B, nh, T, T) before dropout, probs_used after it;
# drop_scale the dropout's cache (None without dropout)
AttentionCache = namedtuple("AttentionCache", "qh kh vh probs probs_used drop_scale head_dim")


def softmax_forward(scores):
    """scores (..., K) -> probs over the last axis, computed after subtracting the row max (exp cannot
    overflow; the max entry becomes exp(0) = 1). The cache is probs."""
    if fast := fast_form("softmax_forward", scores):   # engine/rows.py: in one buffer
        return fast(scores)
    e = backend.xp().exp(scores - scores.max(axis=-1, keepdims=True))     # (..., K)
    probs = e / e.sum(axis=-1, keepdims=True)
    return probs, probs


def softmax_backward(dprobs, probs):
    """p_i = e^{s_i} / sum_j e^{s_j} gives dp_i/ds_k = p_i ([i = k] - p_k), so
    ds_k = sum_i dp_i p_i ([i = k] - p_k) = p_k (dp_k - sum_i dp_i p_i)."""
    if fast := fast_form("softmax_backward", dprobs):
        return fast(dprobs, probs)
    return (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True)) * probs


def masked_softmax(scores, additive, scale):
    """softmax(scores * scale + additive) over the last axis: scores (B, nh, T, T), which it may overwrite;
    additive (B, T), one value per key."""
    if fast := fast_form("masked_softmax", scores):    # engine/: in place, or two CUDA kernels
        return fast(scores, additive, scale)
    probs, _ = softmax_forward(scores * scale + additive[:, None, None, :])
    return probs


def masked_softmax_backward(dprobs, probs, scale):
    """The mask is a constant added to the scores, so it passes the gradient unchanged; the scale multiplies it."""
    if fast := fast_form("masked_softmax_backward", dprobs):
        return fast(dprobs, probs, scale)
    return softmax_backward(dprobs, probs) * scale


def split_heads(x, num_heads):
    """(B, T, C) -> (B, nh, T, hd), a view (no copy): each head's (T, hd) matrix has unit stride along hd, which
    is all the BLAS needs of the batched products' operands."""
    batch, seq, channels = x.shape
    return x.reshape(batch, seq, num_heads, channels // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, nh, T, hd) -> (B, T, C), head-major channels."""
    batch, heads, seq, head_dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, seq, heads * head_dim)


def padding_mask(key_mask, dtype):
    """key_mask (B, T) of 1 (real) and 0 (padding) -> the additive mask (B, T): 0, or the dtype's most negative
    finite value, which the softmax turns into a weight of exactly 0."""
    xp = backend.xp()
    return (1.0 - key_mask.astype(dtype)) * xp.finfo(dtype).min


def attention_forward(q, k, v, key_mask, num_heads, dropout_p=0.0, generator=None, training=False):
    """q, k, v (B, T, C) projected queries/keys/values; key_mask (B, T), 1 for real tokens, 0 for padding.
    Heads are the C channels cut into num_heads slices of hd = C / num_heads, head-major (channel h*hd + d).
    scores = q k^T / sqrt(hd) + (1 - mask) * finfo.min; probs = softmax(scores); ctx = dropout(probs) v."""
    batch, seq, channels = q.shape
    require_shape("k", k, q.shape)
    require_shape("v", v, q.shape)
    require_shape("key_mask", key_mask, (batch, seq))
    if channels % num_heads:
        raise MinRobertaError(f"hidden size {channels} is not divisible by num_heads {num_heads}")
    head_dim = channels // num_heads
    qh, kh, vh = (split_heads(t, num_heads) for t in (q, k, v))            # (B, nh, T, hd)
    scores = matmul(qh, kh.transpose(0, 1, 3, 2))                           # (B, nh, T, T)
    probs = masked_softmax(scores, padding_mask(key_mask, q.dtype), 1.0 / math.sqrt(head_dim))
    if training and dropout_p > 0.0:
        probs_used, drop_scale = dropout_forward(probs, dropout_p, generator, training)
    else:
        probs_used, drop_scale = probs, None
    ctx = merge_heads(matmul(probs_used, vh))                               # (B, T, C)
    return ctx, AttentionCache(qh, kh, vh, probs, probs_used, drop_scale, head_dim)


def attention_backward(dctx, cache):
    """ctx = P' v with P' = dropout(P): dv = P'^T dctx, dP' = dctx v^T, dP = dropout's backward of dP'.
    The masked softmax's backward gives dS; S = q k^T / sqrt(hd) (the scale went into the softmax's backward):
    dq = dS k, dk = dS^T q. Heads are merged back like ctx."""
    c = cache
    dctx_h = split_heads(dctx, c.qh.shape[1])                               # (B, nh, T, hd)
    dvh = matmul(c.probs_used.transpose(0, 1, 3, 2), dctx_h)                # (B, nh, T, hd)
    dprobs = dropout_backward(matmul(dctx_h, c.vh.transpose(0, 1, 3, 2)), c.drop_scale)   # (B, nh, T, T)
    dscores = masked_softmax_backward(dprobs, c.probs, 1.0 / math.sqrt(c.head_dim))      # (B, nh, T, T)
    dqh = matmul(dscores, c.kh)
    dkh = matmul(dscores.transpose(0, 1, 3, 2), c.qh)
    return merge_heads(dqh), merge_heads(dkh), merge_heads(dvh)
