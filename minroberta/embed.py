"""Contextual vectors: pooled sentence embeddings and per-token vectors aligned with the text.

    vectors = sentence_embeddings(model, tokenizer, ["first text", "second"], pooling="mean")   # (N, C)
    word_vector(model, tokenizer, "The quick brown fox jumps.", "fox")                       # (C,)
"""

import numpy as np

from . import backend
from .errors import MinRobertaError

POOLINGS = ("cls", "mean")


def sentence_embeddings(model, tokenizer, texts, pooling="mean", batch_size=32, normalize=False):
    """One vector per text: the last layer's state of <s> ("cls") or the mean over real tokens ("mean"),
    optionally scaled to unit length. -> host array (N, C)."""
    if pooling not in POOLINGS:
        raise MinRobertaError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    rows = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer.encode_batch(texts[start:start + batch_size], max_length=model.config.max_sequence_length)
        hidden = backend.to_host(model(ids, mask).hidden_states).astype(np.float64)     # (B, T, C)
        if pooling == "cls":
            rows.append(hidden[:, 0])
        else:
            rows.append((hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True))
    vectors = np.concatenate(rows)
    if normalize:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def token_embeddings(model, tokenizer, text):
    """[(token, (start, end), vector)] for every token of `text` (specials included, with offsets (0, 0))."""
    encoding = tokenizer.encode(text, max_length=model.config.max_sequence_length)
    hidden = backend.to_host(model(np.array([encoding.ids])).hidden_states)[0]
    return [(token, tuple(offset), hidden[i]) for i, (token, offset) in enumerate(zip(encoding.tokens, encoding.offsets))]


def word_vector(model, tokenizer, text, word):
    """The contextual vector of the first occurrence of `word` in `text`: the mean of the vectors of the
    tokens that overlap its characters."""
    start = text.find(word)
    if start < 0:
        raise MinRobertaError(f"{word!r} does not occur in {text!r}")
    end = start + len(word)
    overlapping = [vector for token, (s, e), vector in token_embeddings(model, tokenizer, text)
                   if s < end and e > start and e > s]
    return np.mean(overlapping, axis=0)
