"""RoBERTa, the reference: parameters by checkpoint name, the encoder's forward and hand-derived backward, and the
masked-LM head and its loss.

Read it top to bottom, as HuggingFace's module tree: embeddings; in each layer self-attention, self-output,
intermediate and output; the layer; the encoder; the masked-LM head; the model. Each stage is a forward that
returns (out, cache) and a backward that returns its input's gradient and writes its parameters' gradients.
A stage reads its own parameters by their short names, p["query.weight"]: `p` is a Scope, a window onto the
checkpoint-named dict under the stage's prefix. BERT's differences live in bert.py, the task heads and their
losses in heads.py, and the engine's faster forms of these computations in engine/.
"""

import dataclasses
from collections import namedtuple

import numpy as np

from . import backend, bert
from .dispatch import fast_form
from .errors import MinRobertaError
from .heads import classifier_forward, classifier_layout, classifier_shapes, qa_forward, qa_shapes
from .ops.checks import as_id_array
from .ops import (IGNORE_INDEX, attention_backward, attention_forward, cross_entropy_backward, cross_entropy_forward,
                  dropout_backward, dropout_forward, embedding_backward, embedding_forward, gelu_backward, gelu_forward,
                  layernorm_backward, layernorm_forward, linear_backward, linear_forward)

DTYPES = {"float32": np.float32, "float64": np.float64}
HEADS = ("mlm", "classification", "qa")   # or None: the bare encoder


class Scope:
    """The entries of a checkpoint-named dict under one prefix, read and written by the rest of their names.
    Scope(params, "roberta.encoder.layer.3.")["attention.self.query.weight"] is
    params["roberta.encoder.layer.3.attention.self.query.weight"]; scope("attention.self.") goes one module
    down. Nothing is copied: it is a window onto the same dict, for parameters and gradients alike."""

    def __init__(self, tensors, prefix=""):
        self.tensors, self.prefix = tensors, prefix

    def __getitem__(self, name):
        return self.tensors[self.prefix + name]

    def __setitem__(self, name, value):
        self.tensors[self.prefix + name] = value

    def get(self, name, default=None):
        return self.tensors.get(self.prefix + name, default)

    def __call__(self, prefix):
        return Scope(self.tensors, self.prefix + prefix)


# --- parameter names and shapes ------------------------------------------------------------------------

def encoder_shapes(config, prefix):
    """Checkpoint name -> shape for the embeddings and encoder layers, under `prefix` ("roberta.", "bert.", "")."""
    C, F = config.hidden_size, config.intermediate_size
    shapes = {
        f"{prefix}embeddings.word_embeddings.weight": (config.vocab_size, C),
        f"{prefix}embeddings.position_embeddings.weight": (config.max_position_embeddings, C),
        f"{prefix}embeddings.token_type_embeddings.weight": (config.type_vocab_size, C),
        f"{prefix}embeddings.LayerNorm.weight": (C,),
        f"{prefix}embeddings.LayerNorm.bias": (C,),
    }
    for i in range(config.num_hidden_layers):
        layer = f"{prefix}encoder.layer.{i}."
        for name, (out_size, in_size) in {"attention.self.query": (C, C), "attention.self.key": (C, C),
                                          "attention.self.value": (C, C), "attention.output.dense": (C, C),
                                          "intermediate.dense": (F, C), "output.dense": (C, F)}.items():
            shapes[layer + name + ".weight"] = (out_size, in_size)
            shapes[layer + name + ".bias"] = (out_size,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[layer + norm + ".weight"] = (C,)
            shapes[layer + norm + ".bias"] = (C,)
    return shapes


def lm_head_names(config):
    """The masked-LM head's dense, layer norm and output bias: RobertaForMaskedLM's names, or BERT's."""
    if config.model_type == "bert":
        return bert.LM_HEAD_NAMES
    return "lm_head.dense", "lm_head.layer_norm", "lm_head.bias"


def lm_head_shapes(config):
    """The masked-LM head; its decoder matrix is the word-embedding table (tied), so only its bias is here."""
    C = config.hidden_size
    dense, norm, bias = lm_head_names(config)
    return {f"{dense}.weight": (C, C), f"{dense}.bias": (C,), f"{norm}.weight": (C,), f"{norm}.bias": (C,),
            bias: (config.vocab_size,)}


def head_shapes(config, head, prefix):
    """The named head's parameters ("mlm", "classification", "qa"; None: none). BERT's classifier includes
    the pooler under `prefix`."""
    if head == "mlm":
        return lm_head_shapes(config)
    if head == "classification":
        return classifier_shapes(config, config.num_labels, prefix)
    return qa_shapes(config) if head == "qa" else {}


def init_params(shapes, config, seed, dtype):
    """As the reference initialises: weights and embeddings ~ N(0, initializer_range), biases zero,
    LayerNorm weight one, the padding rows of the word (and RoBERTa position) tables zero."""
    generator = np.random.default_rng(seed)
    params = {}
    for name, shape in shapes.items():
        if "LayerNorm" in name or "layer_norm" in name:
            value = np.ones(shape) if name.endswith(".weight") else np.zeros(shape)
        elif name.endswith(".bias"):
            value = np.zeros(shape)
        else:
            value = generator.normal(0.0, config.initializer_range, size=shape)
        if name.endswith("word_embeddings.weight") or (
                name.endswith("position_embeddings.weight") and config.model_type == "roberta"):
            value[config.pad_token_id] = 0.0
        params[name] = backend.to_device(value.astype(dtype))
    return params


@dataclasses.dataclass
class ModelOutput:
    hidden_states: object          # (B, T, C) last layer
    logits: object = None          # (B, T, V) with the MLM head; (B, num_labels) with the classifier
    start_logits: object = None    # (B, T) with the QA head
    end_logits: object = None      # (B, T) with the QA head


# --- dropout ------------------------------------------------------------------------------------------

class Dropout:
    """The dropout switch for one forward: probabilities from the config and one generator drawn in order.
    `None` in place of a Dropout means evaluation mode (no dropout, no draws)."""

    def __init__(self, config, generator):
        self.hidden_p = config.hidden_dropout_prob
        self.attention_p = config.attention_probs_dropout_prob
        classifier_p = config.extra.get("classifier_dropout")   # the classifier's own, as transformers reads it
        self.classifier_p = self.hidden_p if classifier_p is None else float(classifier_p)
        self.generator = generator


def uses_dropout(config):
    """Whether training draws dropout masks: any of the config's rates above zero (the classifier's too)."""
    rates = (config.hidden_dropout_prob, config.attention_probs_dropout_prob, config.extra.get("classifier_dropout"))
    return any(rate is not None and float(rate) > 0 for rate in rates)


def hidden_dropout(dropout, x):
    return (x, None) if dropout is None else dropout_forward(x, dropout.hidden_p, dropout.generator)


# --- embeddings (RobertaEmbeddings) -------------------------------------------------------------------

EmbeddingsCache = namedtuple("EmbeddingsCache", "words positions token_types norm dropout")


def position_ids(config, input_ids):
    """RoBERTa: pad + cumsum(ids != pad) on real tokens, pad on padding (real tokens start at pad + 1).
    (B, T) -> (B, T). BERT counts 0..T-1 (bert.py)."""
    if config.model_type == "bert":
        return bert.position_ids(input_ids)
    xp = backend.xp()
    is_token = (input_ids != config.pad_token_id).astype(xp.int64)
    return xp.cumsum(is_token, axis=1) * is_token + config.pad_token_id


def embeddings_forward(p, config, input_ids, token_type_ids, dropout):
    """word + position + token type, then LayerNorm and dropout. (B, T) ids -> (B, T, C). p: "embeddings."."""
    roberta = config.model_type == "roberta"
    words, c_words = embedding_forward(input_ids, p["word_embeddings.weight"], config.pad_token_id)
    positions, c_positions = embedding_forward(position_ids(config, input_ids), p["position_embeddings.weight"],
                                               config.pad_token_id if roberta else None)
    types, c_types = embedding_forward(token_type_ids, p["token_type_embeddings.weight"])
    x, c_norm = layernorm_forward(words + positions + types, p["LayerNorm.weight"], p["LayerNorm.bias"],
                                  config.layer_norm_eps)                                      # (B, T, C)
    x, c_drop = hidden_dropout(dropout, x)
    return x, EmbeddingsCache(c_words, c_positions, c_types, c_norm, c_drop)


def embeddings_backward(dx, cache, g):
    """The three lookups are summed, so each table receives the same upstream gradient, scattered to its rows."""
    dsum, g["LayerNorm.weight"], g["LayerNorm.bias"] = layernorm_backward(dropout_backward(dx, cache.dropout),
                                                                          cache.norm)
    # the tied decoder's share of the word table's gradient may be there already
    g["word_embeddings.weight"] = embedding_backward(dsum, cache.words, into=g.get("word_embeddings.weight"))
    g["position_embeddings.weight"] = embedding_backward(dsum, cache.positions)
    g["token_type_embeddings.weight"] = embedding_backward(dsum, cache.token_types)


# --- self-attention (RobertaSelfAttention: query, key, value, the attention itself) -------------------

SelfAttentionCache = namedtuple("SelfAttentionCache", "projection attention")


def query_key_value(p, x):
    """The query, key and value projections done as one product: x (B, T, C) times the three weights stacked
    (3C, C), plus the three biases stacked (3C,). HuggingFace runs three linears. This is an optimisation kept in
    the reference (one pass over x, one large matrix multiply instead of three); three products could round
    the last bit differently. p: "attention.self.".
    -> q, k, v (B, T, C) views into one array, and the product's cache."""
    xp = backend.xp()
    qkv_weight = xp.concatenate([p["query.weight"], p["key.weight"], p["value.weight"]])          # (3C, C)
    qkv_bias = xp.concatenate([p["query.bias"], p["key.bias"], p["value.bias"]])                  # (3C,)
    qkv, cache = linear_forward(x, qkv_weight, qkv_bias)                                          # (B, T, 3C)
    C = x.shape[-1]
    return qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:], cache


def self_attention_forward(p, config, x, key_mask, dropout):
    """x (B, T, C) -> ctx (B, T, C): every token's mix of the values of the tokens it attends to."""
    q, k, v, c_projection = query_key_value(p, x)
    training = dropout is not None
    ctx, c_attention = attention_forward(q, k, v, key_mask, config.num_attention_heads,
                                         dropout.attention_p if training else 0.0,
                                         dropout.generator if training else None, training)
    return ctx, SelfAttentionCache(c_projection, c_attention)


def self_attention_backward(dctx, cache, g):
    """The fused projection's weight gradient (3C, C) is cut back into the query, key and value gradients."""
    xp = backend.xp()
    dqkv = xp.concatenate(attention_backward(dctx, cache.attention), axis=-1)       # (B, T, 3C)
    dx, dqkv_weight, dqkv_bias = linear_backward(dqkv, cache.projection)
    C = dctx.shape[-1]
    for n, name in enumerate(("query", "key", "value")):
        g[name + ".weight"], g[name + ".bias"] = dqkv_weight[n * C:(n + 1) * C], dqkv_bias[n * C:(n + 1) * C]
    return dx


# --- self-output and output (RobertaSelfOutput, RobertaOutput): dense, dropout, LayerNorm(. + residual) ---

DenseNormCache = namedtuple("DenseNormCache", "dense dropout norm")


def dense_norm_forward(p, config, x, residual, dropout):
    """LN(drop(dense(x)) + residual): how both halves of a post-LN layer end. p: "attention.output." or
    "output.". x (B, T, I), residual (B, T, C) -> (B, T, C)."""
    a, c_dense = linear_forward(x, p["dense.weight"], p["dense.bias"])
    a, c_drop = hidden_dropout(dropout, a)
    y, c_norm = layernorm_forward(a + residual, p["LayerNorm.weight"], p["LayerNorm.bias"], config.layer_norm_eps)
    return y, DenseNormCache(c_dense, c_drop, c_norm)


def dense_norm_backward(dy, cache, g):
    """-> (dx, dresidual). The residual sum sends the layer norm's input gradient down both branches."""
    dsum, g["LayerNorm.weight"], g["LayerNorm.bias"] = layernorm_backward(dy, cache.norm)    # d(a + residual)
    dx, g["dense.weight"], g["dense.bias"] = linear_backward(dropout_backward(dsum, cache.dropout), cache.dense)
    return dx, dsum


# --- the feed-forward half (RobertaIntermediate, RobertaOutput): dense, GELU, dense, LayerNorm(. + h) ---

FeedForwardCache = namedtuple("FeedForwardCache", "intermediate gelu output")


def feed_forward(p, config, h, dropout):
    """y = LN(h + drop(dense2(gelu(dense1(h))))). p: the layer's. (B, T, C) -> (B, T, C), through (B, T, F)."""
    i, c_intermediate = linear_forward(h, p["intermediate.dense.weight"], p["intermediate.dense.bias"])   # (B, T, F)
    a, c_gelu = gelu_forward(i)                                                                           # (B, T, F)
    y, c_output = dense_norm_forward(p("output."), config, a, h, dropout)                                # (B, T, C)
    return y, FeedForwardCache(c_intermediate, c_gelu, c_output)


def feed_forward_backward(dy, cache, g):
    """h reaches y through the FFN and through the skip, so its gradient is the sum of the two."""
    da, dh_skip = dense_norm_backward(dy, cache.output, g("output."))
    dh, g["intermediate.dense.weight"], g["intermediate.dense.bias"] = linear_backward(
        gelu_backward(da, cache.gelu), cache.intermediate)
    return dh_skip + dh


# --- the layer (RobertaLayer) and the encoder (RobertaEncoder) ---------------------------------------

LayerCache = namedtuple("LayerCache", "attention attention_output feed_forward")


def layer_forward(p, config, x, key_mask, dropout):
    """h = LN(x + drop(dense(attention(x))));  y = LN(h + drop(dense2(gelu(dense1(h))))).  (B, T, C) -> (B, T, C).
    p: "encoder.layer.i." under the model's prefix; key_mask (B, T), 1 for real tokens, 0 for padding."""
    ctx, c_attention = self_attention_forward(p("attention.self."), config, x, key_mask, dropout)    # (B, T, C)
    h, c_attention_output = dense_norm_forward(p("attention.output."), config, ctx, x, dropout)      # (B, T, C)
    y, c_feed_forward = feed_forward(p, config, h, dropout)                                          # (B, T, C)
    return y, LayerCache(c_attention, c_attention_output, c_feed_forward)


def layer_backward(dy, cache, g):
    """The forward in reverse. x reaches h through attention and through the skip: the two gradients add."""
    dh = feed_forward_backward(dy, cache.feed_forward, g)
    dctx, dx_skip = dense_norm_backward(dh, cache.attention_output, g("attention.output."))
    return dx_skip + self_attention_backward(dctx, cache.attention, g("attention.self."))


EncoderCache = namedtuple("EncoderCache", "embeddings layers")   # layers: a LayerCache each, used up by the backward


def encoder_forward(p, config, input_ids, key_mask, token_type_ids, dropout):
    """Embeddings, then every layer in turn. p: the model's prefix ("roberta."). (B, T) ids -> (B, T, C)."""
    x, c_embeddings = embeddings_forward(p("embeddings."), config, input_ids, token_type_ids, dropout)
    layers = []
    for i in range(config.num_hidden_layers):
        x, c_layer = layer_forward(p(f"encoder.layer.{i}."), config, x, key_mask, dropout)
        layers.append(c_layer)
    return x, EncoderCache(c_embeddings, layers)


def encoder_backward(dx, cache, g):
    """The layers in reverse, then the embeddings. It uses up `cache`: each layer's activations are let go as soon
    as that layer's gradients exist, so the activations shrink while the gradients grow."""
    for i in reversed(range(len(cache.layers))):
        dx = layer_backward(dx, cache.layers.pop(), g(f"encoder.layer.{i}."))
    embeddings_backward(dx, cache.embeddings, g("embeddings."))


# --- the masked-LM head (RobertaLMHead) ---------------------------------------------------------------

LMHeadCache = namedtuple("LMHeadCache", "dense gelu norm decoder")


def lm_head_forward(p, config, prefix, rows):
    """rows (N, C) -> logits (N, V) = LN(gelu(dense(rows))) @ word_embeddings.T + bias. p: every parameter
    (the head's names are top-level; the word table is under the encoder's `prefix`)."""
    dense, norm, bias = lm_head_names(config)
    d, c_dense = linear_forward(rows, p[dense + ".weight"], p[dense + ".bias"])                    # (N, C)
    a, c_gelu = gelu_forward(d)
    n, c_norm = layernorm_forward(a, p[norm + ".weight"], p[norm + ".bias"], config.layer_norm_eps)
    logits, c_decoder = linear_forward(n, p[prefix + "embeddings.word_embeddings.weight"], p[bias])  # (N, V)
    return logits, LMHeadCache(c_dense, c_gelu, c_norm, c_decoder)


def lm_head_backward(dlogits, cache, config, prefix, g):
    """The decoder's weight is the word-embedding table, so its gradient lands under that name (the lookup's
    gradient is added to it in the embeddings' backward)."""
    dense, norm, bias = lm_head_names(config)
    dn, g[prefix + "embeddings.word_embeddings.weight"], g[bias] = linear_backward(dlogits, cache.decoder)
    da, g[norm + ".weight"], g[norm + ".bias"] = layernorm_backward(dn, cache.norm)
    drows, g[dense + ".weight"], g[dense + ".bias"] = linear_backward(gelu_backward(da, cache.gelu), cache.dense)
    return drows


# --- the model ----------------------------------------------------------------------------------------

class Roberta:
    """A RoBERTa (or BERT-family) encoder with an optional head: masked LM, classifier or QA.

    model = Roberta(config, seed=0)                    a fresh model, initialised as the reference does
    out = model(input_ids, attention_mask, token_type_ids)     out.hidden_states (B,T,C), out.logits (B,T,V)
    loss, grads = model.loss_and_grads(input_ids, attention_mask, labels)
    """

    def __init__(self, config, seed=0, dtype="float32", params=None, prefix=None, head="default", pooler=None):
        if dtype not in DTYPES:
            raise MinRobertaError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if head == "default":
            head = "mlm" if config.model_type == "roberta" else None
        if head is not None and head not in HEADS:
            raise MinRobertaError(f"head must be one of {', '.join(HEADS)} or None, got {head!r}")
        self.config = config
        self.dtype = dtype
        self.prefix = prefix if prefix is not None else f"{config.model_type}."
        self.head = head
        shapes = self.param_shapes(pooler=config.model_type == "bert" if pooler is None else pooler)
        self.params = params if params is not None else init_params(shapes, config, seed, DTYPES[dtype])

    @property
    def has_lm_head(self):
        return self.head == "mlm"

    def param_shapes(self, pooler=False):
        shapes = encoder_shapes(self.config, self.prefix)
        if pooler:
            shapes.update(bert.pooler_shapes(self.config, self.prefix))
        shapes.update(head_shapes(self.config, self.head, self.prefix))
        return shapes

    def with_head(self, head, seed=0, **config_changes):
        """This encoder under a new head (fresh weights for the head, as the reference initialises them):
        how a pretrained encoder becomes a classifier or a QA model. The encoder's names take the prefix
        transformers' head models use ("roberta.", "bert."), so the result saves in their layout. BERT's
        classifier keeps the pretrained pooler it runs on, when there is one. config_changes are Config fields
        (num_labels among them): `model.with_head("classification", num_labels=2)`."""
        config = self.config.replace(**config_changes) if config_changes else self.config
        prefix = f"{config.model_type}."
        fresh = Roberta(config, seed=seed, dtype=self.dtype, prefix=prefix, head=head, pooler=False)
        kept = {**encoder_shapes(config, self.prefix), **bert.pooler_shapes(config, self.prefix)}
        for name in kept:
            renamed = prefix + name[len(self.prefix):]
            if name in self.params and renamed in fresh.params:
                fresh.params[renamed] = self.params[name]
        return fresh

    # --- forward
    def inputs(self, input_ids, attention_mask=None, token_type_ids=None):
        """The three id arrays as (B, T) int64 device arrays, checked; the mask all ones and the token types all
        zeros when not given."""
        xp = backend.xp()
        ids = as_id_array("input_ids", input_ids)
        batch, seq = ids.shape
        if seq > self.config.max_sequence_length:
            raise MinRobertaError(f"sequence length {seq} exceeds the model's {self.config.max_sequence_length} "
                                  f"positions (max_position_embeddings {self.config.max_position_embeddings})")
        mask = xp.ones((batch, seq), dtype=xp.int64) if attention_mask is None else \
            as_id_array("attention_mask", attention_mask, ids.shape)
        types = xp.zeros((batch, seq), dtype=xp.int64) if token_type_ids is None else \
            as_id_array("token_type_ids", token_type_ids, ids.shape)
        return ids, mask, types

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, dropout=None):
        """Embeddings and encoder layers: -> hidden (B, T, C), and the cache for `encode_backward`."""
        ids, mask, types = self.inputs(input_ids, attention_mask, token_type_ids)
        return encoder_forward(Scope(self.params, self.prefix), self.config, ids, mask, types, dropout)

    def encode_backward(self, dhidden, cache, grads):
        """The backward of `encode`: adds every encoder parameter's gradient to `grads`. Uses up `cache`."""
        encoder_backward(dhidden, cache, Scope(grads, self.prefix))
        return grads

    def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None):
        """encode's hidden states alone (B, T, C), for inference. Without an attention mask no key is padding."""
        ids, mask, types = self.inputs(input_ids, attention_mask, token_type_ids)
        return self.checked_hidden_states(ids, mask, types, padded=attention_mask is not None)

    def checked_hidden_states(self, ids, mask, types, padded=True):
        """hidden_states of ids, mask and types that `inputs` has checked (no input is checked twice).
        padded=False: the mask is all ones, no key is padding."""
        if fast := fast_form("hidden_states"):            # engine/inference.py: nothing kept for a backward
            return fast(self, ids, mask if padded else None, types)
        return encoder_forward(Scope(self.params, self.prefix), self.config, ids, mask, types, None)[0]

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        """The model in evaluation mode (no dropout): its hidden states and what its head makes of them."""
        return self.head_output(self.hidden_states(input_ids, attention_mask, token_type_ids))

    def outputs(self, batches, head=True):
        """The model on each of several batches of texts without padding, [(input_ids (b, T), token_type_ids
        (b, T) or None)], the lengths T free to differ: a list of what self(input_ids, None, token_type_ids)
        gives for each (with head=False, the hidden states alone: no MLM logits made to be thrown away)."""
        if not batches:
            return []
        inputs = [self.inputs(ids, None, types) for ids, types in batches]                    # (ids, mask, types)
        if fast := fast_form("encode_many"):              # engine/inference.py: all the batches' tokens at once
            hiddens = fast(self, [(ids, types) for ids, _, types in inputs])
        else:
            hiddens = [self.checked_hidden_states(ids, mask, types, padded=False) for ids, mask, types in inputs]
        return [self.head_output(hidden) if head else ModelOutput(hidden_states=hidden) for hidden in hiddens]

    def head_output(self, hidden):
        """ModelOutput of the encoder's hidden (B, T, C): the states and what this model's head makes of them."""
        out = ModelOutput(hidden_states=hidden)
        if self.head == "mlm":
            batch, seq, channels = hidden.shape
            logits, _ = lm_head_forward(Scope(self.params), self.config, self.prefix, hidden.reshape(-1, channels))
            out.logits = logits.reshape(batch, seq, -1)
        elif self.head == "classification":
            out.logits, _ = classifier_forward(self.params, hidden, None, classifier_layout(self.config, self.prefix))
        elif self.head == "qa":
            out.start_logits, out.end_logits, _ = qa_forward(self.params, hidden)
        return out

    # --- losses and gradients
    def require_head(self, head):
        if self.head != head:
            raise MinRobertaError(f"this model has {'no' if self.head is None else 'a ' + self.head} head; "
                                  f"the loss asked for needs the {head} head")

    def dropout(self, dropout_key):
        """Dropout drawn from a generator seeded by the key, such as (seed, step, micro_batch); None: none."""
        return None if dropout_key is None else Dropout(self.config, backend.generator(*dropout_key))

    def complete(self, grads):
        """Parameters off the loss's path (BERT's pooler) get an explicit zero gradient."""
        xp = backend.xp()
        for name in self.params:
            if name not in grads:
                grads[name] = xp.zeros_like(self.params[name])
        return grads

    def mlm_inputs(self, input_ids, attention_mask, labels, token_type_ids=None):
        """The checked inputs of the MLM loss: ids, mask, types (B, T), the flat positions whose label is not
        IGNORE_INDEX (N,), and those labels (N,)."""
        self.require_head("mlm")
        if labels is None:
            raise MinRobertaError(f"the MLM loss needs labels ({IGNORE_INDEX} where no prediction is scored)")
        xp = backend.xp()
        ids, mask, types = self.inputs(input_ids, attention_mask, token_type_ids)
        labels = as_id_array("labels", labels, ids.shape).reshape(-1)                          # (B*T,)
        scored = xp.nonzero(labels != IGNORE_INDEX)[0]                                         # (N,)
        return ids, mask, types, scored, labels[scored]

    def mlm_logits(self, input_ids, attention_mask=None, labels=None, token_type_ids=None):
        """Logits (N, V) at the N positions whose label is not IGNORE_INDEX, and those labels (N,); no dropout."""
        ids, mask, types, scored, targets = self.mlm_inputs(input_ids, attention_mask, labels, token_type_ids)
        hidden = self.checked_hidden_states(ids, mask, types)                                  # (B, T, C)
        rows = hidden.reshape(-1, hidden.shape[-1])[scored]                                    # (N, C)
        return lm_head_forward(Scope(self.params), self.config, self.prefix, rows)[0], targets

    def mlm_head_loss(self, rows, targets, grads, loss_scale=1.0):
        """The head and the loss on the scored rows (N, C): -> the loss, and d(loss_scale x loss)/d rows (N, C);
        the head's gradients go into `grads`."""
        p = Scope(self.params)
        logits, head_cache = lm_head_forward(p, self.config, self.prefix, rows)               # (N, V)
        loss, ce_cache = cross_entropy_forward(logits, targets)
        drows = lm_head_backward(cross_entropy_backward(loss_scale, ce_cache), head_cache, self.config, self.prefix,
                                 Scope(grads))
        return loss, drows

    def loss_and_grads(self, input_ids, attention_mask=None, labels=None, token_type_ids=None, dropout_key=None,
                       loss_scale=1.0):
        """Masked-LM loss (mean cross-entropy over positions whose label is not IGNORE_INDEX) and the gradient of
        every parameter, keyed like `params`. `dropout_key`, a tuple of ints such as (seed, step, micro_batch),
        switches dropout on with a generator drawn from it; None means no dropout (evaluation numerics).
        The gradients are those of loss_scale x loss (the loss returned is not scaled): float16 products
        need the scaling to keep small gradients from vanishing (engine/precision.py)."""
        if fast := fast_form("mlm_loss_and_grads"):      # engine/scored.py: the last layer on the scored rows
            return fast(self, input_ids, attention_mask, labels, token_type_ids, dropout_key, loss_scale)
        ids, mask, types, scored, targets = self.mlm_inputs(input_ids, attention_mask, labels, token_type_ids)
        hidden, cache = encoder_forward(Scope(self.params, self.prefix), self.config, ids, mask, types,
                                        self.dropout(dropout_key))                                # (B, T, C)
        batch, seq, channels = hidden.shape
        grads = {}
        loss, drows = self.mlm_head_loss(hidden.reshape(-1, channels)[scored], targets, grads, loss_scale)
        dhidden = backend.xp().zeros((batch * seq, channels), dtype=hidden.dtype)
        dhidden[scored] = drows                                       # the unscored positions get no gradient
        self.encode_backward(dhidden.reshape(batch, seq, channels), cache, grads)
        return loss, self.complete(grads)
