"""The masked-LM loss and gradients with less work and memory: the fast form of Roberta.loss_and_grads.

Two changes, the same numbers:
- The loss reads the last layer's states at the scored tokens alone. Attention must still see every token,
  but everything after it works token by token, so the last layer's second half runs on the scored rows only
  (on the default run, half the tokens: a sixth less matrix work a step).
- No layer keeps the output dense's input a = gelu(i) (B, T, F): the backward rebuilds it from GELU's cache
  with one multiply, so the activations held at the peak are F floats a token smaller.
The model's own stages (model.py) do all the math; this file only chooses the rows and what stays cached.
"""

from collections import namedtuple

from .. import backend
from ..dispatch import always, register
from ..model import (LayerCache, Scope, dense_norm_backward, dense_norm_forward, embeddings_backward,
                     embeddings_forward, feed_forward, feed_forward_backward, layer_backward, layer_forward,
                     self_attention_backward, self_attention_forward)
from ..ops import gelu_output

ScoredLayerCache = namedtuple("ScoredLayerCache", "layer rows shape")


def without_gelu_output(cache):
    """A LayerCache that lets go of the output dense's input (B, T, F)."""
    ffn = cache.feed_forward
    dense = ffn.output.dense._replace(x=None)
    return cache._replace(feed_forward=ffn._replace(output=ffn.output._replace(dense=dense)))


def with_gelu_output(cache):
    """The LayerCache again whole, its output dense's input rebuilt from GELU's cache (the same bits)."""
    ffn = cache.feed_forward
    dense = ffn.output.dense._replace(x=gelu_output(ffn.gelu))
    return cache._replace(feed_forward=ffn._replace(output=ffn.output._replace(dense=dense)))


def scored_layer_forward(p, config, x, key_mask, dropout, rows):
    """layer_forward's y at the flat positions rows (N,) alone: x (B, T, C) -> (N, C)."""
    shape = x.shape
    channels = shape[-1]
    ctx, c_attention = self_attention_forward(p("attention.self."), config, x, key_mask, dropout)    # (B, T, C)
    ctx, x = ctx.reshape(-1, channels)[rows], x.reshape(-1, channels)[rows]                         # (N, C) each
    h, c_attention_output = dense_norm_forward(p("attention.output."), config, ctx, x, dropout)      # (N, C)
    y, c_feed_forward = feed_forward(p, config, h, dropout)                                          # (N, C)
    layer = without_gelu_output(LayerCache(c_attention, c_attention_output, c_feed_forward))
    return y, ScoredLayerCache(layer, rows, shape)


def scored_layer_backward(dy, cache, g):
    """dy (N, C) -> dx (B, T, C). The tokens left out get no gradient from the token-wise half: zeros go into
    attention's backward there, and only the scored rows receive the skip's gradient."""
    layer = with_gelu_output(cache.layer)
    dh = feed_forward_backward(dy, layer.feed_forward, g)                                            # (N, C)
    dctx, dx_skip = dense_norm_backward(dh, layer.attention_output, g("attention.output."))
    batch, seq, channels = cache.shape
    dctx_all = backend.xp().zeros((batch * seq, channels), dtype=dctx.dtype)
    dctx_all[cache.rows] = dctx                                                     # positions are distinct
    dx = self_attention_backward(dctx_all.reshape(cache.shape), layer.attention, g("attention.self."))
    dx = dx.reshape(-1, channels)
    dx[cache.rows] += dx_skip
    return dx.reshape(cache.shape)                                                  # (B, T, C)


@register("mlm_loss_and_grads", always)
def mlm_loss_and_grads(model, input_ids, attention_mask=None, labels=None, token_type_ids=None, dropout_key=None,
                       loss_scale=1.0):
    """Roberta.loss_and_grads: the same loss and gradients, the last layer on the scored rows."""
    ids, mask, types, scored, targets = model.mlm_inputs(input_ids, attention_mask, labels, token_type_ids)
    dropout = model.dropout(dropout_key)
    config, p = model.config, Scope(model.params, model.prefix)
    last = config.num_hidden_layers - 1
    x, c_embeddings = embeddings_forward(p("embeddings."), config, ids, types, dropout)              # (B, T, C)
    layers = []
    for i in range(last):
        x, c_layer = layer_forward(p(f"encoder.layer.{i}."), config, x, mask, dropout)
        layers.append(without_gelu_output(c_layer))
    rows, c_last = scored_layer_forward(p(f"encoder.layer.{last}."), config, x, mask, dropout, scored)   # (N, C)
    grads = {}
    loss, drows = model.mlm_head_loss(rows, targets, grads, loss_scale)
    g = Scope(grads, model.prefix)
    dx = scored_layer_backward(drows, c_last, g(f"encoder.layer.{last}."))
    for i in reversed(range(last)):       # each layer's activations go as soon as its gradients exist
        dx = layer_backward(dx, with_gelu_output(layers.pop()), g(f"encoder.layer.{i}."))
    embeddings_backward(dx, c_embeddings, g("embeddings."))
    return loss, model.complete(grads)
