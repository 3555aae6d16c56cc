"""Fast forms for inference alone, where no backward pass needs a cache: each computes what its reference's
forward returns as `out`, in place or block by block, and keeps nothing else. The encoder made of them is
registered as the fast form of Roberta.hidden_states, and over several batches of texts at once as that of
Roberta.outputs' loop; tests/test_inference.py and tests/test_kernels.py hold every one to its reference."""

import itertools
import math

from .. import backend
from ..dispatch import always, register
from ..model import Scope, embeddings_forward, layer_forward, query_key_value
from ..ops.attention import merge_heads, padding_mask, split_heads
from ..ops.linear import linear_forward
from .precision import product
from . import fused, threads
from .gelu32 import gelu_in_place

# attention scores (float32 elements) made and used in one go: a few (sequence, head) pairs' (T, T) blocks,
# which stay in the CPU cache between the product that makes them and the one that uses them
SCORES_BLOCK = 1 << 18


def attention_inference(q, k, v, key_mask, num_heads, out=None):
    """attention_forward's ctx (B, T, C), written into out (B, T, C) when given. key_mask (B, T), or None when no
    key is padding (no mask to add). The scale 1/sqrt(hd) multiplies q (T x hd numbers per head) instead of the
    scores (T x T), which can round the last bit differently; then, a few (sequence, head) pairs at a time (so
    the threads share even one long sequence), scores = q k^T (+ mask), exp(scores - row max) in place while
    the scores are in the cache, and ctx = exp(...) v divided by the row sums, the softmax's division done on
    the T x hd product rather than the T x T weights."""
    xp = backend.xp()
    batch, seq, channels = q.shape
    head_dim = channels // num_heads
    pairs = batch * num_heads
    qh, kh, vh = (split_heads(t, num_heads).reshape(pairs, seq, head_dim) for t in (q, k, v))   # (B*nh, T, hd)
    qh *= 1.0 / math.sqrt(head_dim)
    additive = None if key_mask is None else \
        xp.repeat(padding_mask(key_mask, q.dtype), num_heads, axis=0)      # (B*nh, T): a row per (sequence, head)
    ctx = xp.empty(qh.shape, q.dtype)                                       # (B*nh, T, hd)
    step = max(1, SCORES_BLOCK // max(1, seq * seq))

    def blocks(rows):   # one thread's (sequence, head) pairs (threads.py), a block at a time
        for start in range(rows.start, rows.stop, step):
            r = slice(start, min(start + step, rows.stop))
            scores = product(qh[r], kh[r].transpose(0, 2, 1))               # (n, T, T)
            if additive is not None:
                scores += additive[r, None, :]
            scores -= scores.max(axis=-1, keepdims=True)
            xp.exp(scores, out=scores)
            product(scores, vh[r], out=ctx[r])
            ctx[r] /= scores.sum(axis=-1, keepdims=True)                    # normalised after: T x hd, not T x T
    threads.over_rows(blocks, pairs, seq * seq * head_dim)
    ctx = ctx.reshape(batch, num_heads, seq, head_dim)
    if out is None:
        return merge_heads(ctx)                                             # (B, T, C)
    out.reshape(batch, seq, num_heads, head_dim)[...] = ctx.transpose(0, 2, 1, 3)   # merged straight into out
    return out


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


def layer_rows(p, config, x, shapes, key_mask=None):
    """model.layer_forward's y over the tokens of several batches as rows x (N, C), batch after batch; shapes:
    each batch's (b, T, C), b T rows of x each. Attention runs batch by batch (key_mask (b, T) for a single
    batch, or None); everything else is per token, so it runs on all N rows at once. p: the layer's. -> (N, C)."""
    q, k, v, _ = query_key_value(p("attention.self."), x)                                        # (N, C) each
    ctx = backend.xp().empty(q.shape, q.dtype)                                                   # (N, C)
    for shape, rows in zip(shapes, row_slices(shapes)):
        attention_inference(*(t[rows].reshape(shape) for t in (q, k, v)), key_mask, config.num_attention_heads,
                            out=ctx[rows].reshape(shape))
    a, _ = linear_forward(ctx, p["attention.output.dense.weight"], p["attention.output.dense.bias"])
    a += x
    h = layernorm_in_place(a, p["attention.output.LayerNorm.weight"], p["attention.output.LayerNorm.bias"],
                           config.layer_norm_eps)                                                # (N, C)
    g = gelu_in_place(linear_forward(h, p["intermediate.dense.weight"], p["intermediate.dense.bias"])[0])
    o, _ = linear_forward(g, p["output.dense.weight"], p["output.dense.bias"])                   # (N, C)
    o += h
    return layernorm_in_place(o, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"], config.layer_norm_eps)


@register("hidden_states", always)
def hidden_states(model, ids, key_mask, types):
    """Roberta.hidden_states: the embeddings, then each layer with nothing kept (with the fused CUDA kernels on,
    the layer's own ops run as their fused forms; else layer_rows). key_mask (B, T), or None where no token is
    padding. (B, T) ids -> (B, T, C)."""
    p = Scope(model.params, model.prefix)
    x, _ = embeddings_forward(p("embeddings."), model.config, ids, types, None)                 # (B, T, C)
    if fused.enabled():   # layer_forward's attention takes a mask whether or not a key is padding
        mask = backend.xp().ones(ids.shape, dtype=ids.dtype) if key_mask is None else key_mask   # (B, T)
        for i in range(model.config.num_hidden_layers):
            x, _ = layer_forward(p(f"encoder.layer.{i}."), model.config, x, mask, None)
        return x
    rows = x.reshape(-1, x.shape[-1])                                                            # (B*T, C)
    for i in range(model.config.num_hidden_layers):
        rows = layer_rows(p(f"encoder.layer.{i}."), model.config, rows, [x.shape], key_mask)
    return rows.reshape(x.shape)


def fused_kernels_off(*_):
    return not fused.enabled()   # with them on, the layers' own ops run the GPU's fused forms


@register("encode_many", fused_kernels_off)
def encode_many(model, batches):
    """Roberta.outputs' hidden states: each batch's embeddings, then every layer over all the batches' tokens at
    once (layer_rows), so the products, norms and GELU see one large array however short the texts are.
    batches: [(input_ids (b, T), token_type_ids (b, T))], no padding. -> [(b, T, C)]."""
    xp = backend.xp()
    p = Scope(model.params, model.prefix)
    embedded = [embeddings_forward(p("embeddings."), model.config, ids, types, None)[0]
                for ids, types in batches]                                                       # (b, T, C) each
    shapes = [x.shape for x in embedded]
    x = xp.concatenate([e.reshape(-1, e.shape[-1]) for e in embedded])                          # (N, C)
    for i in range(model.config.num_hidden_layers):
        x = layer_rows(p(f"encoder.layer.{i}."), model.config, x, shapes)
    return [x[rows].reshape(shape) for shape, rows in zip(shapes, row_slices(shapes))]


def row_slices(shapes):
    """Where each batch's tokens lie in the rows (N, C) of several batches of shapes (b, T, C), in order."""
    bounds = list(itertools.accumulate((b * t for b, t, _ in shapes), initial=0))
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]
