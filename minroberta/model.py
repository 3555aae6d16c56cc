"""The RoBERTa encoder and its masked-LM head: parameters by checkpoint name, forward, and full backward.

Read top to bottom, as HuggingFace's module tree: embeddings; in each layer self-attention, self-output,
intermediate and output; the layer; the encoder (Roberta.encode); the MLM head (the task heads: heads.py).
Each stage is a forward that returns (out, cache), the cache a named tuple, and a backward that adds its
parameters' gradients to a dict keyed like the parameters. The same
code serves BERT-family checkpoints (positions 0..T-1, token types, BERT's names for the heads), selected by
`config.model_type`.
"""

import dataclasses
from collections import namedtuple

import numpy as np

from . import backend
from .dispatch import fast_form
from .errors import MinRobertaError
from .heads import (classifier_backward, classifier_forward, classifier_layout, classifier_shapes, qa_backward,
                    qa_forward, qa_shapes)
from .ops import (IGNORE_INDEX, attention_backward, attention_forward, cross_entropy_backward, cross_entropy_forward,
                  dropout_backward, dropout_forward, embedding_backward, embedding_forward, gelu_backward, gelu_forward,
                  gelu_output, layernorm_backward, layernorm_forward, linear_backward, linear_forward, mse_backward,
                  mse_forward)

DTYPES = {"float32": np.float32, "float64": np.float64}
HEADS = ("mlm", "classification", "qa")   # or None: the bare encoder


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


# The masked-LM head's dense, layer norm and output bias, by family: RobertaForMaskedLM and BertForMaskedLM
# compute the same thing under these names.
LM_HEADS = {"roberta": ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),
            "bert": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias")}


def lm_head_shapes(config):
    """The masked-LM head; its decoder matrix is the word-embedding table (tied), so only its bias is here."""
    C = config.hidden_size
    dense, norm, bias = LM_HEADS[config.model_type]
    return {f"{dense}.weight": (C, C), f"{dense}.bias": (C,), f"{norm}.weight": (C,), f"{norm}.bias": (C,),
            bias: (config.vocab_size,)}


def pooler_shapes(config, prefix):
    """BERT's pooler (dense + tanh over token 0): loaded and saved for BERT checkpoints; BERT's classifier
    runs on it (heads.py), nothing else does."""
    C = config.hidden_size
    return {f"{prefix}pooler.dense.weight": (C, C), f"{prefix}pooler.dense.bias": (C,)}


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


# --- inputs -------------------------------------------------------------------------------------------

def as_id_array(name, values, expected_shape=None, ndim=2):
    """Lists, host arrays or device arrays of integer ids -> an int64 device array of `ndim` dimensions
    ((batch, sequence) by default), or a clear error."""
    xp = backend.xp()
    if isinstance(values, xp.ndarray) and not isinstance(values, np.ndarray):
        array = values
    else:
        host = np.asarray(values)
        # an empty list arrives as float64 and is let through; any other non-integer dtype is refused
        if host.dtype == object or (host.dtype.kind not in "iub" and not (host.size == 0 and host.dtype.kind == "f")):
            raise MinRobertaError(f"{name} must hold integers, got dtype {host.dtype}")
        array = backend.to_device(host.astype(np.int64))
    if array.ndim != ndim:
        expected = "(batch, sequence)" if ndim == 2 else "(batch,)"
        raise MinRobertaError(f"{name} must have shape {expected}, got shape {tuple(array.shape)}")
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise MinRobertaError(f"{name} has shape {tuple(array.shape)}, expected {tuple(expected_shape)}")
    return array.astype(xp.int64)


def as_value_array(name, values, expected_shape, dtype):
    """Regression targets: numbers -> a float device array of the model's dtype."""
    xp = backend.xp()
    array = values if isinstance(values, xp.ndarray) and not isinstance(values, np.ndarray) else \
        backend.to_device(np.asarray(values, dtype=np.float64))
    if tuple(array.shape) != tuple(expected_shape):
        raise MinRobertaError(f"{name} has shape {tuple(array.shape)}, expected {tuple(expected_shape)}")
    return array.astype(dtype)


class Dropout:
    """The dropout switch for one forward: probabilities from the config and one generator drawn in order.
    `None` in place of a Dropout means evaluation mode (no dropout, no draws)."""

    def __init__(self, config, generator):
        self.hidden_p = config.hidden_dropout_prob
        self.attention_p = config.attention_probs_dropout_prob
        classifier_p = config.extra.get("classifier_dropout")   # the classifier's own, as transformers reads it
        self.classifier_p = self.hidden_p if classifier_p is None else float(classifier_p)
        self.generator = generator

    def hidden(self, x):
        return dropout_forward(x, self.hidden_p, self.generator)


def _hidden_dropout(dropout, x):
    return (x, None) if dropout is None else dropout.hidden(x)


# --- embeddings (RobertaEmbeddings) -------------------------------------------------------------------

EmbeddingsCache = namedtuple("EmbeddingsCache", "words positions token_types norm dropout")


def position_ids_for(config, input_ids):
    """RoBERTa: pad + cumsum(ids != pad) on real tokens, pad on padding (real tokens start at pad + 1).
    BERT: 0..T-1."""
    xp = backend.xp()
    batch, seq = input_ids.shape
    if config.model_type == "roberta":
        is_token = (input_ids != config.pad_token_id).astype(xp.int64)
        return xp.cumsum(is_token, axis=1) * is_token + config.pad_token_id
    return xp.broadcast_to(xp.arange(seq, dtype=xp.int64)[None, :], (batch, seq))


def embeddings_forward(params, config, prefix, input_ids, token_type_ids, dropout):
    """word + position + token type, then LayerNorm and dropout. (B, T) ids -> (B, T, C)."""
    p = prefix + "embeddings."
    roberta = config.model_type == "roberta"
    words, c_words = embedding_forward(input_ids, params[p + "word_embeddings.weight"], config.pad_token_id)
    positions, c_positions = embedding_forward(position_ids_for(config, input_ids),
                                               params[p + "position_embeddings.weight"],
                                               config.pad_token_id if roberta else None)
    types, c_types = embedding_forward(token_type_ids, params[p + "token_type_embeddings.weight"])
    x, c_norm = layernorm_forward(words + positions + types, params[p + "LayerNorm.weight"],
                                  params[p + "LayerNorm.bias"], config.layer_norm_eps)
    x, c_drop = _hidden_dropout(dropout, x)
    return x, EmbeddingsCache(c_words, c_positions, c_types, c_norm, c_drop)


def embeddings_backward(dx, cache, prefix, grads):
    """The three lookups are summed, so each table receives the same upstream gradient, scattered to its rows."""
    p = prefix + "embeddings."
    dsum, grads[p + "LayerNorm.weight"], grads[p + "LayerNorm.bias"] = layernorm_backward(
        dropout_backward(dx, cache.dropout), cache.norm)
    key = p + "word_embeddings.weight"
    grads[key] = embedding_backward(dsum, cache.words, into=grads.get(key))   # the tied decoder's share may be there
    grads[p + "position_embeddings.weight"] = embedding_backward(dsum, cache.positions)
    grads[p + "token_type_embeddings.weight"] = embedding_backward(dsum, cache.token_types)


def _put(grads, name, dweight, dbias):
    grads[name + ".weight"], grads[name + ".bias"] = dweight, dbias


# --- self-attention (RobertaSelfAttention: query, key, value, the attention itself) -------------------

SelfAttentionCache = namedtuple("SelfAttentionCache", "projection attention")


def query_key_value(params, layer, x):
    """The query, key and value projections as one (B*T, C) x (C, 3C) product: the same numbers as three
    linears, one pass over x and one large matrix multiply instead of three smaller ones.
    -> q, k, v (B, T, C) views into one array, and the product's cache."""
    xp = backend.xp()
    projections = [f"{layer}attention.self.{name}" for name in ("query", "key", "value")]
    qkv_weight = xp.concatenate([params[name + ".weight"] for name in projections])                # (3C, C)
    qkv_bias = xp.concatenate([params[name + ".bias"] for name in projections])                    # (3C,)
    qkv, cache = linear_forward(x, qkv_weight, qkv_bias)                                           # (B, T, 3C)
    C = x.shape[-1]
    return qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:], cache


def self_attention_forward(params, config, layer, x, key_mask, dropout):
    """x (B, T, C) -> ctx (B, T, C): every token's mix of the values of the tokens it attends to."""
    q, k, v, c_projection = query_key_value(params, layer, x)
    training = dropout is not None
    ctx, c_attention = attention_forward(q, k, v, key_mask, config.num_attention_heads,
                                         dropout.attention_p if training else 0.0,
                                         dropout.generator if training else None, training)
    return ctx, SelfAttentionCache(c_projection, c_attention)


def self_attention_backward(dctx, cache, layer, grads):
    """The fused projection's weight gradient (3C, C) is cut back into the query, key and value gradients."""
    xp = backend.xp()
    dqkv = xp.concatenate(attention_backward(dctx, cache.attention), axis=-1)     # (B, T, 3C)
    dx, dqkv_weight, dqkv_bias = linear_backward(dqkv, cache.projection)
    C = dctx.shape[-1]
    for n, name in enumerate(("query", "key", "value")):
        _put(grads, f"{layer}attention.self.{name}", dqkv_weight[n * C:(n + 1) * C], dqkv_bias[n * C:(n + 1) * C])
    return dx


# --- self-output and output (RobertaSelfOutput, RobertaOutput): dense, dropout, LayerNorm(. + residual) ---

DenseNormCache = namedtuple("DenseNormCache", "dense dropout norm")


def dense_norm_forward(params, config, name, x, residual, dropout, keep_input=True):
    """LN(drop(dense(x)) + residual): how both halves of a post-LN layer end. `name` is the module
    ("attention.output" or "output" under the layer). x (B, T, I), residual (B, T, C) -> (B, T, C)."""
    a, c_dense = linear_forward(x, params[name + ".dense.weight"], params[name + ".dense.bias"], keep_input)
    a, c_drop = _hidden_dropout(dropout, a)
    y, c_norm = layernorm_forward(a + residual, params[name + ".LayerNorm.weight"], params[name + ".LayerNorm.bias"],
                                  config.layer_norm_eps)
    return y, DenseNormCache(c_dense, c_drop, c_norm)


def dense_norm_backward(dy, cache, name, grads, x=None):
    """-> (dx, dresidual). The residual sum sends the layer norm's input gradient down both branches.
    x: the forward's input, when the cache was made with keep_input=False."""
    dsum, *norm = layernorm_backward(dy, cache.norm)                          # d(a + residual)
    _put(grads, name + ".LayerNorm", *norm)
    dx, *dense = linear_backward(dropout_backward(dsum, cache.dropout), cache.dense, x)
    _put(grads, name + ".dense", *dense)
    return dx, dsum


# --- intermediate (RobertaIntermediate): dense, GELU ------------------------------------------------

IntermediateCache = namedtuple("IntermediateCache", "dense gelu")


def intermediate_forward(params, layer, h):
    """h (B, T, C) -> gelu(dense(h)) (B, T, F)."""
    name = layer + "intermediate.dense"
    i, c_dense = linear_forward(h, params[name + ".weight"], params[name + ".bias"])           # (B, T, F)
    g, c_gelu = gelu_forward(i)
    return g, IntermediateCache(c_dense, c_gelu)


def intermediate_output(cache):
    """The forward's output again, from its cache: the layer does not keep it (F floats a token less)."""
    return gelu_output(cache.gelu)


def intermediate_backward(dg, cache, layer, grads):
    dh, *dense = linear_backward(gelu_backward(dg, cache.gelu), cache.dense)
    _put(grads, layer + "intermediate.dense", *dense)
    return dh


# --- the layer (RobertaLayer) and the encoder (RobertaEncoder) ---------------------------------------

LayerCache = namedtuple("LayerCache", "attention attention_output intermediate output rows shape")


def layer_forward(params, config, layer, x, key_mask, dropout, rows=None):
    """h = LN(x + drop(dense(attention(x))));  y = LN(h + drop(dense2(gelu(dense1(h))))).  (B, T, C) -> (B, T, C).
    rows (N,): flat positions of the only tokens whose y is wanted (the last layer under the MLM loss, which
    reads the scored tokens alone). Everything after attention works token by token, so it runs on those rows
    only, and y is (N, C): on the default run, half the tokens, a sixth less matrix work a step."""
    shape = x.shape
    ctx, c_attention = self_attention_forward(params, config, layer, x, key_mask, dropout)          # (B, T, C)
    if rows is not None:
        channels = shape[-1]
        ctx, x = ctx.reshape(-1, channels)[rows], x.reshape(-1, channels)[rows]                   # (N, C) each
    h, c_attention_output = dense_norm_forward(params, config, layer + "attention.output", ctx, x, dropout)
    g, c_intermediate = intermediate_forward(params, layer, h)                                      # (B, T, F)
    # g is not kept by the output's dense: the backward rebuilds it from the intermediate's cache
    y, c_output = dense_norm_forward(params, config, layer + "output", g, h, dropout, keep_input=False)
    return y, LayerCache(c_attention, c_attention_output, c_intermediate, c_output, rows, shape)


def layer_backward(dy, cache, layer, grads):
    """The forward in reverse. Each residual sum sends its gradient down both branches, so the gradient
    of h is the FFN branch's plus the skip's, and that of x is the projections' plus the skip's. With rows,
    the tokens left out get no gradient from the token-wise half: zeros go into attention's backward there."""
    g = intermediate_output(cache.intermediate)                                                   # (B, T, F)
    dg, dh_skip = dense_norm_backward(dy, cache.output, layer + "output", grads, x=g)
    dh = dh_skip + intermediate_backward(dg, cache.intermediate, layer, grads)
    dctx, dx_skip = dense_norm_backward(dh, cache.attention_output, layer + "attention.output", grads)
    if cache.rows is None:
        return dx_skip + self_attention_backward(dctx, cache.attention, layer, grads)
    batch, seq, channels = cache.shape
    dctx_all = backend.xp().zeros((batch * seq, channels), dtype=dctx.dtype)
    dctx_all[cache.rows] = dctx                                                     # positions are distinct
    dx = self_attention_backward(dctx_all.reshape(cache.shape), cache.attention, layer, grads).reshape(-1, channels)
    dx[cache.rows] += dx_skip
    return dx.reshape(cache.shape)                                                  # (B, T, C)


def layer_output(params, config, layer, x, key_mask):
    """layer_forward's y alone, for inference: nothing kept for a backward. key_mask (B, T), or None where no
    token is padding."""
    if fast := fast_form("layer_output"):             # kernels/inference.py: blocked attention, in-place norms
        return fast(params, config, layer, x, key_mask)
    if key_mask is None:
        key_mask = backend.xp().ones(x.shape[:2], dtype=backend.xp().int64)
    y, _ = layer_forward(params, config, layer, x, key_mask, None)
    return y


def encode_many(model, batches):
    """model.encode without a cache on each of batches, [(input_ids (b, T), token_type_ids (b, T))] of texts
    without padding: -> [hidden (b, T, C)]."""
    if fast := fast_form("encode_many"):              # kernels/inference.py: all the batches' tokens in one array
        return fast(model, batches)
    return [model.encode(ids, None, types, keep_cache=False)[0] for ids, types in batches]


EncoderCache = namedtuple("EncoderCache", "embeddings layers")   # layers: a LayerCache each, used up by the backward


# --- the masked-LM head (RobertaLMHead) ---------------------------------------------------------------

LMHeadCache = namedtuple("LMHeadCache", "dense gelu norm decoder names")


def lm_head_forward(params, config, prefix, rows):
    """rows (N, C) -> logits (N, V) = LN(gelu(dense(rows))) @ word_embeddings.T + bias (names: LM_HEADS)."""
    dense, norm, bias = LM_HEADS[config.model_type]
    d, c_dense = linear_forward(rows, params[dense + ".weight"], params[dense + ".bias"])
    g, c_gelu = gelu_forward(d)
    n, c_norm = layernorm_forward(g, params[norm + ".weight"], params[norm + ".bias"], config.layer_norm_eps)
    logits, c_decoder = linear_forward(n, params[prefix + "embeddings.word_embeddings.weight"], params[bias])
    return logits, LMHeadCache(c_dense, c_gelu, c_norm, c_decoder, LM_HEADS[config.model_type])


def lm_head_backward(dlogits, cache, prefix, grads):
    """The decoder's weight is the word-embedding table, so its gradient lands under that name (the lookup's
    gradient is added to it in the embeddings backward)."""
    dense, norm, bias = cache.names
    dn, grads[prefix + "embeddings.word_embeddings.weight"], grads[bias] = linear_backward(dlogits, cache.decoder)
    dg, grads[norm + ".weight"], grads[norm + ".bias"] = layernorm_backward(dn, cache.norm)
    dd = gelu_backward(dg, cache.gelu)
    drows, grads[dense + ".weight"], grads[dense + ".bias"] = linear_backward(dd, cache.dense)
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
            shapes.update(pooler_shapes(self.config, self.prefix))
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
        kept = {**encoder_shapes(config, self.prefix), **pooler_shapes(config, self.prefix)}
        for name in kept:
            renamed = prefix + name[len(self.prefix):]
            if name in self.params and renamed in fresh.params:
                fresh.params[renamed] = self.params[name]
        return fresh

    # --- forward pieces
    def _inputs(self, input_ids, attention_mask, token_type_ids):
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

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, dropout=None, keep_cache=True, rows=None):
        """Embeddings and encoder layers: -> hidden (B, T, C), cache for `encode_backward` (None with
        keep_cache=False: inference runs the layers' fast forms, which keep nothing; without an attention
        mask no key counts as padding). rows (N,): flat positions whose last-layer states alone are wanted;
        hidden is then (N, C) (see layer_forward)."""
        ids, mask, types = self._inputs(input_ids, attention_mask, token_type_ids)
        x, c_embeddings = embeddings_forward(self.params, self.config, self.prefix, ids, types, dropout)
        layer_caches = []
        last = self.config.num_hidden_layers - 1
        for i in range(self.config.num_hidden_layers):
            layer = f"{self.prefix}encoder.layer.{i}."
            if keep_cache or dropout is not None or rows is not None:
                x, c_layer = layer_forward(self.params, self.config, layer, x, mask, dropout,
                                           rows if i == last else None)
                if keep_cache:
                    layer_caches.append(c_layer)
            else:
                x = layer_output(self.params, self.config, layer, x, None if attention_mask is None else mask)
        return x, EncoderCache(c_embeddings, layer_caches) if keep_cache else None

    def encode_backward(self, dhidden, cache, grads):
        """The backward of `encode`. It uses up `cache`: each layer's activations are let go as soon as that
        layer's gradients exist, so the activations shrink while the gradients grow (a lower peak: see
        docs/performance.md)."""
        for i in reversed(range(self.config.num_hidden_layers)):
            dhidden = layer_backward(dhidden, cache.layers.pop(), f"{self.prefix}encoder.layer.{i}.", grads)
        embeddings_backward(dhidden, cache.embeddings, self.prefix, grads)
        return grads

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        hidden, _ = self.encode(input_ids, attention_mask, token_type_ids, keep_cache=False)
        return self.head_output(hidden)

    def outputs(self, batches, head=True):
        """The model on each of several batches of texts without padding, [(input_ids (b, T), token_type_ids
        (b, T) or None)], the lengths T free to differ: a list of what self(input_ids, None, token_type_ids)
        gives for each (with head=False, the hidden states alone: no MLM logits made to be thrown away)."""
        if not batches:
            return []
        hiddens = encode_many(self, [self._inputs(ids, None, types)[::2] for ids, types in batches])
        return [self.head_output(hidden) if head else ModelOutput(hidden_states=hidden) for hidden in hiddens]

    def head_output(self, hidden):
        """ModelOutput of the encoder's hidden (B, T, C): the states and what this model's head makes of them."""
        out = ModelOutput(hidden_states=hidden)
        if self.head == "mlm":
            batch, seq, channels = hidden.shape
            logits, _ = lm_head_forward(self.params, self.config, self.prefix, hidden.reshape(-1, channels))
            out.logits = logits.reshape(batch, seq, -1)
        elif self.head == "classification":
            out.logits, _ = classifier_forward(self.params, hidden, None, classifier_layout(self.config, self.prefix))
        elif self.head == "qa":
            out.start_logits, out.end_logits, _ = qa_forward(self.params, hidden)
        return out

    def _require_head(self, head):
        if self.head != head:
            raise MinRobertaError(f"this model has {'no' if self.head is None else 'a ' + self.head} head; "
                                  f"the loss asked for needs the {head} head")

    def _dropout(self, dropout_key):
        return None if dropout_key is None else Dropout(self.config, backend.generator(*dropout_key))

    def _complete(self, grads):
        """Parameters off the loss's path (BERT's pooler) get an explicit zero gradient."""
        xp = backend.xp()
        for name in self.params:
            if name not in grads:
                grads[name] = xp.zeros_like(self.params[name])
        return grads

    def classification_loss_and_grads(self, input_ids, attention_mask=None, labels=None, token_type_ids=None,
                                      dropout_key=None, loss_scale=1.0):
        """Cross-entropy over classes (labels (B,) ints) or, with one output, mean squared error (labels (B,)
        floats); and every parameter's gradient (of loss_scale x the loss: see `loss_and_grads`)."""
        self._require_head("classification")
        if labels is None:
            raise MinRobertaError("the classification loss needs labels")
        dropout = self._dropout(dropout_key)
        hidden, enc_cache = self.encode(input_ids, attention_mask, token_type_ids, dropout)
        logits, head_cache = classifier_forward(self.params, hidden, dropout,
                                                classifier_layout(self.config, self.prefix))   # (B, L)
        batch = (logits.shape[0],)
        if self.config.num_labels == 1:
            targets = as_value_array("labels", labels, batch, logits.dtype)
            loss, loss_cache = mse_forward(logits[:, 0], targets)
            dlogits = mse_backward(loss_scale, loss_cache)[:, None]
        else:
            targets = as_id_array("labels", labels, batch, ndim=1)
            loss, loss_cache = cross_entropy_forward(logits, targets)
            dlogits = cross_entropy_backward(loss_scale, loss_cache)
        grads = {}
        self.encode_backward(classifier_backward(dlogits, head_cache, grads), enc_cache, grads)
        return loss, self._complete(grads)

    def qa_loss_and_grads(self, input_ids, attention_mask=None, start_positions=None, end_positions=None,
                          token_type_ids=None, dropout_key=None, loss_scale=1.0):
        """Mean of the start and end cross-entropies over token positions (positions at or past the sequence
        end are ignored, as in the reference); and every parameter's gradient (of loss_scale x the loss)."""
        self._require_head("qa")
        if start_positions is None or end_positions is None:
            raise MinRobertaError("the QA loss needs start_positions and end_positions")
        xp = backend.xp()
        hidden, enc_cache = self.encode(input_ids, attention_mask, token_type_ids, self._dropout(dropout_key))
        seq = hidden.shape[1]
        start_logits, end_logits, head_cache = qa_forward(self.params, hidden)               # (B, T) each
        dstart_end = []
        loss = 0.0
        for logits, positions in ((start_logits, start_positions), (end_logits, end_positions)):
            positions = as_id_array("positions", positions, (hidden.shape[0],), ndim=1)
            positions = xp.where((positions < 0) | (positions >= seq), IGNORE_INDEX, positions)
            part, cache = cross_entropy_forward(logits, positions)
            loss = loss + 0.5 * part
            dstart_end.append(cross_entropy_backward(0.5 * loss_scale, cache))
        grads = {}
        self.encode_backward(qa_backward(*dstart_end, head_cache, grads), enc_cache, grads)
        return loss, self._complete(grads)

    def _scored_head(self, input_ids, attention_mask, labels, token_type_ids, dropout):
        """The MLM head on the labelled rows only, and the last layer's token-wise half too (attention still
        sees every token): the same loss for a fraction of the work (fairseq does the head's part)
        -> logits (N, V), targets (N,), cache for the backward."""
        self._require_head("mlm")
        if labels is None:
            raise MinRobertaError(f"the MLM loss needs labels ({IGNORE_INDEX} where no prediction is scored)")
        xp = backend.xp()
        ids, mask, types = self._inputs(input_ids, attention_mask, token_type_ids)
        labels = as_id_array("labels", labels, ids.shape).reshape(-1)                     # (B*T,)
        scored = xp.nonzero(labels != IGNORE_INDEX)[0]                                            # (N,) flat positions
        rows, enc_cache = self.encode(ids, mask, types, dropout, rows=scored)            # (N, C)
        logits, head_cache = lm_head_forward(self.params, self.config, self.prefix, rows)  # (N, V)
        return logits, labels[scored], (enc_cache, head_cache)

    def mlm_logits(self, input_ids, attention_mask=None, labels=None, token_type_ids=None):
        """Logits (N, V) at the N positions whose label is not IGNORE_INDEX, and those labels (N,); no dropout."""
        logits, targets, _ = self._scored_head(input_ids, attention_mask, labels, token_type_ids, None)
        return logits, targets

    def loss_and_grads(self, input_ids, attention_mask=None, labels=None, token_type_ids=None, dropout_key=None,
                       loss_scale=1.0):
        """Masked-LM loss (mean cross-entropy over positions whose label is not IGNORE_INDEX) and the gradient of
        every parameter, keyed like `params`. `dropout_key`, a tuple of ints such as (seed, step, micro_batch),
        switches dropout on with a generator drawn from it; None means no dropout (evaluation numerics).
        The gradients are those of loss_scale x loss (the loss returned is not scaled): float16 products
        need the scaling to keep small gradients from vanishing (see precision.LossScaler)."""
        dropout = self._dropout(dropout_key)
        logits, targets, (enc_cache, head_cache) = self._scored_head(input_ids, attention_mask, labels,
                                                                     token_type_ids, dropout)
        loss, ce_cache = cross_entropy_forward(logits, targets)
        grads = {}
        drows = lm_head_backward(cross_entropy_backward(loss_scale, ce_cache), head_cache, self.prefix, grads)
        self.encode_backward(drows, enc_cache, grads)                # (N, C): the last layer ran on these rows
        return loss, self._complete(grads)
