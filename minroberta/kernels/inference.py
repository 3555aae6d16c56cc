"""Fast forms for inference alone, where no backward pass needs a cache: each computes what its reference's
forward returns as `out`, in place or block by block, and keeps nothing else. `layer_output`, the encoder layer
made of them, is registered as the fast form of model.layer_output; tests/test_inference.py holds every one to
its reference."""

import math

from .. import backend
from ..dispatch import register
from ..model import query_key_value
from ..ops.attention import merge_heads, padding_mask, split_heads
from ..ops.linear import linear_forward
from ..precision import product
from . import fused, threads
from .gelu32 import gelu_in_place

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
    qh, kh, vh = (split_heads(t, num_heads) for t in (q, k, v))             # (B, nh, T, hd) fresh copies
    qh *= 1.0 / math.sqrt(head_dim)
    additive = None if key_mask is None else padding_mask(key_mask, q.dtype)   # (B, T)
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
    return merge_heads(ctx)


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


def fused_kernels_off(*_):
    return not fused.enabled()   # with them on, the layer's own ops run the GPU's fused forms


@register("layer_output", fused_kernels_off)
def layer_output(params, config, layer, x, key_mask):
    """model.layer_forward's y alone: the same equations with attention blocked in the cache and layer norm
    and GELU in place. key_mask (B, T), or None where no token is padding. (B, T, C) -> (B, T, C)."""
    P = lambda name: params[layer + name]
    q, k, v, _ = query_key_value(params, layer, x)                                               # (B, T, C) each
    ctx = attention_inference(q, k, v, key_mask, config.num_attention_heads)                     # (B, T, C)
    a, _ = linear_forward(ctx, P("attention.output.dense.weight"), P("attention.output.dense.bias"))
    a += x
    h = layernorm_in_place(a, P("attention.output.LayerNorm.weight"), P("attention.output.LayerNorm.bias"),
                           config.layer_norm_eps)                                                # (B, T, C)
    g = gelu_in_place(linear_forward(h, P("intermediate.dense.weight"), P("intermediate.dense.bias"))[0])
    o, _ = linear_forward(g, P("output.dense.weight"), P("output.dense.bias"))                   # (B, T, C)
    o += h
    return layernorm_in_place(o, P("output.LayerNorm.weight"), P("output.LayerNorm.bias"), config.layer_norm_eps)
