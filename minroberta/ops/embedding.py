"""Embedding lookup: rows of a table picked by integer ids (token, position and token-type embeddings)."""

from collections import namedtuple

from .. import backend
from .checks import require_ids_in_range

EmbeddingCache = namedtuple("EmbeddingCache", "ids table_shape padding_idx")   # the ids say where the gradient goes


def embedding_forward(ids, weight, padding_idx=None):
    """ids (B, T) integers in [0, V), weight (V, C) -> out (B, T, C) = weight[ids]."""
    require_ids_in_range("ids", ids, weight.shape[0])
    out = weight[ids]                                   # (B, T, C)
    return out, EmbeddingCache(ids, weight.shape, padding_idx)


def embedding_backward(dout, cache, into=None):
    """out[b,t] = W[ids[b,t]], so dL/dW[v] = sum over (b,t) with ids[b,t] = v of dout[b,t]: a scatter-add of
    the rows of dout onto the table (repeated ids accumulate). The padding row is held fixed, as in the
    reference (`nn.Embedding(padding_idx=...)`): the lookup adds nothing to it whatever it was looked up for.
    `into`, a (V, C) gradient that already holds another path's share (a tied decoder's), is added to in place
    and returned, which saves allocating and summing a second table."""
    ids, (vocab, channels), padding_idx = cache
    xp = backend.xp()
    dweight = xp.zeros((vocab, channels), dtype=dout.dtype) if into is None else into     # (V, C)
    if padding_idx is not None:
        padding_row = dweight[padding_idx].copy()                                         # (C,) the other path's
    backend.scatter_add(dweight, ids.reshape(-1), dout.reshape(-1, channels))
    if padding_idx is not None:
        dweight[padding_idx] = padding_row
    return dweight
