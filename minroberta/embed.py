"""Contextual vectors: pooled sentence embeddings and per-token vectors aligned with the text.

    model, tokenizer = minroberta.load_pretrained(directory), minroberta.load_tokenizer(directory)
    vectors = sentence_embeddings(model, tokenizer, ["first text", "second"], pooling="mean")   # (N, C)
    word_vector(model, tokenizer, "The quick brown fox jumps.", "fox")                       # (C,)

A sentence-transformers directory says how its model pools and normalises (modules.json, 1_Pooling/config.json)
and how many tokens it reads (sentence_bert_config.json); `sentence_setup` reads those files.
"""

import dataclasses
import os
import re

import numpy as np

from . import backend, collection, guards
from .errors import MinRobertaError

POOLINGS = ("cls", "max", "mean")
# 1_Pooling/config.json's older form: a switch per mode (sentence-transformers' order for several), and the
# modes minroberta does not compute
POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
                "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
MODULES = ("Transformer", "Pooling", "Normalize")   # the sentence-transformers modules a directory may list


@dataclasses.dataclass
class SentenceSetup:
    """How a model directory turns texts into vectors: pooling modes, unit length or not, tokens per text
    (None: the model's limit)."""
    pooling: tuple = ("mean",)
    normalize: bool = False
    max_length: int = None


def sentence_setup(directory):
    """The sentence-transformers files of `directory`, read as SentenceSetup; the defaults where it has none.
    A module or pooling mode minroberta does not compute is a one-line error naming the file."""
    modules_path = os.path.join(directory, "modules.json")
    if not os.path.lexists(modules_path):
        return SentenceSetup()
    modules = guards.load_json(modules_path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str)
                                                for m in modules):
        raise MinRobertaError(f"{modules_path}: expected a list of modules, each with a \"type\"")
    setup = SentenceSetup()
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        if kind not in MODULES:
            raise MinRobertaError(f"{modules_path}: module {module['type']} is not supported (minroberta runs "
                                  f"{', '.join(MODULES)})")
        folder = os.path.join(directory, str(module.get("path", "")))
        if kind == "Transformer":
            setup.max_length = _max_seq_length(os.path.join(folder, "sentence_bert_config.json"))
        elif kind == "Pooling":
            setup.pooling = _pooling_modes(os.path.join(folder, "config.json"))
        else:
            setup.normalize = True
    return setup


def _max_seq_length(path):
    if not os.path.lexists(path):
        return None
    value = guards.load_json(path)
    length = value.get("max_seq_length") if isinstance(value, dict) else None
    if length is None:
        return None
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise MinRobertaError(f"{path}: max_seq_length must be a positive integer, got {length!r}")
    return length


def _pooling_modes(path):
    """The modes of a Pooling module's config.json: "pooling_mode" (a name or a list, in output order), or
    the older pooling_mode_* switches; mean when it names none, as sentence-transformers reads it."""
    config = guards.load_json(path)
    if not isinstance(config, dict):
        raise MinRobertaError(f"{path}: expected a JSON object")
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in POOLING_KEYS.items() if config.get(key)]
    modes = [modes] if isinstance(modes, str) else modes
    if not isinstance(modes, list) or not all(isinstance(mode, str) for mode in modes):
        raise MinRobertaError(f"{path}: pooling_mode must be a name or a list of names, got {modes!r}")
    try:
        return check_pooling(modes or ["mean"])
    except MinRobertaError as exc:
        raise MinRobertaError(f"{path}: {exc}") from None


def pool(hidden, modes, normalize=False):
    """hidden (B, T, C) of texts without padding -> (B, C * len(modes)): token 0's state ("cls"), the
    channel-wise max ("max") or mean ("mean") over the tokens, side by side; optionally scaled to unit length."""
    xp = backend.xp()
    parts = {"cls": lambda: hidden[:, 0], "max": lambda: hidden.max(axis=1), "mean": lambda: hidden.mean(axis=1)}
    vectors = xp.concatenate([parts[mode]() for mode in modes], axis=1)          # (B, C * modes)
    if normalize:
        vectors /= xp.maximum(xp.sqrt((vectors * vectors).sum(axis=1, keepdims=True)), 1e-12)
    return vectors


def check_pooling(modes):
    """Pooling modes as a tuple (in the order given: the order of the output), or a one-line error."""
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    unknown = [mode for mode in modes if mode not in POOLINGS]
    if unknown or not modes:
        raise MinRobertaError(f"pooling {unknown[0] if unknown else 'mode'} is not supported (minroberta pools by "
                              f"{', '.join(POOLINGS)})")
    return modes


def sentence_embeddings(model, tokenizer, texts, pooling="mean", batch_size=None, normalize=False, max_length=None,
                        max_tokens=collection.MAX_TOKENS, on_batch=None, on_truncated=None):
    """One vector per text, pooled as `pooling` says (a mode of POOLINGS, or several side by side), optionally
    scaled to unit length. Texts are cut to max_length tokens (default: the model's limit) and run in packs of
    batches of one length (at most max_tokens tokens or batch_size texts a pack); on_truncated(count) hears how
    many were cut. -> float32 host array (N, C * modes)."""
    modes = check_pooling(pooling)
    encodings = tokenizer.encode_many(texts, max_length=max_length or model.config.max_sequence_length)
    if on_truncated is not None:
        on_truncated(sum(e.truncated for e in encodings))
    return collection.infer(model, encodings, lambda out: pool(out.hidden_states, modes, normalize),
                            model.config.hidden_size * len(modes), max_tokens, batch_size, on_batch, hidden_only=True)


def token_embeddings(model, tokenizer, text):
    """[(token, (start, end), vector)] for every token of `text` the model reads (specials included, with offsets
    (0, 0)); a text longer than the model's positions is cut to them."""
    encoding = tokenizer.encode(text, max_length=model.config.max_sequence_length)
    hidden = backend.to_host(model(np.array([encoding.ids]), None, np.array([encoding.type_ids])).hidden_states)[0]
    return [(token, tuple(offset), hidden[i]) for i, (token, offset) in enumerate(zip(encoding.tokens, encoding.offsets))]


def word_vector(model, tokenizer, text, word, occurrence=0):
    """The contextual vector of `word` in `text`: the mean of the last hidden states of its tokens (a word the
    tokenizer cuts into pieces gets the average of its pieces). The word is matched whole and as written
    ("he" is not in "The", nor "ox" in "fox"), at its first occurrence or the `occurrence`-th (from 0), and
    its tokens are found by their character offsets. An empty or absent word, or one past the model's
    positions, is a one-line error. -> (C,) host array."""
    if not isinstance(word, str) or not word.strip():
        raise MinRobertaError(f"word_vector needs a word, got {word!r}")
    if isinstance(occurrence, bool) or not isinstance(occurrence, int) or occurrence < 0:
        raise MinRobertaError(f"occurrence must be an index from 0, got {occurrence!r}")
    found = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text)]
    if not found:
        raise MinRobertaError(f"{word!r} does not occur as a whole word in {_shown(text)}")
    if occurrence >= len(found):
        raise MinRobertaError(f"{word!r} occurs {len(found)} time{'s' * (len(found) != 1)} in {_shown(text)}; "
                              f"occurrence {occurrence} (counted from 0) is not there")
    start, end = found[occurrence], found[occurrence] + len(word)
    covers = lambda offset: offset[0] < end and offset[1] > start and offset[1] > offset[0]   # the word's tokens
    encoding = tokenizer.encode(text)
    whole = [i for i, offset in enumerate(encoding.offsets) if covers(offset)]
    if not whole:
        raise MinRobertaError(f"no token of {_shown(text)} holds {word!r} (the tokenizer drops its characters)")
    limit = model.config.max_sequence_length
    if len(encoding.ids) > limit:   # the model reads the first `limit` tokens, special tokens included
        encoding = tokenizer.encode(text, max_length=limit)
    pieces = [i for i, offset in enumerate(encoding.offsets) if covers(offset)]
    if len(pieces) < len(whole):
        raise MinRobertaError(f"{word!r} ends at token {whole[-1]} of {_shown(text)}, past the model's {limit} "
                              "positions (special tokens included); cut the text")
    if min(encoding.offsets[i][0] for i in pieces) < start or max(encoding.offsets[i][1] for i in pieces) > end:
        raise MinRobertaError(f"{word!r} shares a token with the text around it in {_shown(text)}")
    hidden = model(np.array([encoding.ids]), None, np.array([encoding.type_ids])).hidden_states[0]   # (T, C)
    return backend.to_host(hidden[pieces].mean(axis=0))                                            # (C,)


def _shown(text, width=60):
    """A text for a one-line message: quoted, newlines escaped, long ones cut."""
    return repr(text if len(text) <= width else text[:width] + "...")
