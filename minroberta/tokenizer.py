"""Byte-level BPE with RoBERTa's conventions, on the `tokenizers` library.

Special tokens `<s> <pad> </s> <unk>` are ids 0..3 and `<mask>` is the last id; texts are encoded as
`<s> A </s>` and pairs as `<s> A </s></s> B </s>`. A saved tokenizer is a directory that both
`Tokenizer.from_dir` and `transformers.AutoTokenizer` open.
"""

import json
import os
import tempfile
from collections import namedtuple

import numpy as np

from . import atomic
from .errors import MinRobertaError

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"

Encoding = namedtuple("Encoding", "ids tokens offsets sequence_ids")   # sequence_ids: 0, 1 or None (special)


def _roberta_pipeline(tokenizer):
    """Pre-tokenizer, decoder and post-processor of RoBERTa, set on a tokenizers.Tokenizer."""
    from tokenizers import AddedToken, decoders, pre_tokenizers, processors
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=False)
    # <mask> swallows the space before it, as roberta-base's does: "the <mask>" predicts "Ġword"
    tokenizer.add_special_tokens([*SPECIALS, AddedToken(MASK, lstrip=True, special=True)])
    return tokenizer


def train_tokenizer(texts, vocab_size, min_frequency=2):
    """Train a byte-level BPE of `vocab_size` ids (fewer if the text runs out of merges), `<mask>` last."""
    from tokenizers import Tokenizer as RawTokenizer, models, pre_tokenizers, trainers
    if vocab_size < 300:
        raise MinRobertaError(f"vocab_size {vocab_size} is too small for a byte-level BPE (256 bytes + specials)")
    raw = RawTokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(_roberta_pipeline(raw))


class Tokenizer:
    """A RoBERTa tokenizer: encode texts and pairs, decode ids, save and load."""

    def __init__(self, raw):
        self.raw = raw
        missing = [t for t in (*SPECIALS, MASK) if raw.token_to_id(t) is None]
        if missing:
            raise MinRobertaError(f"tokenizer has no {missing[0]} token (RoBERTa needs {' '.join(SPECIALS)} {MASK})")
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = (raw.token_to_id(t) for t in SPECIALS)
        self.mask_id = raw.token_to_id(MASK)
        self.special_ids = tuple(sorted({self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id}))

    @property
    def vocab_size(self):
        return self.raw.get_vocab_size(with_added_tokens=True)

    # --- loading
    @classmethod
    def from_dir(cls, path):
        from tokenizers import Tokenizer as RawTokenizer, models
        tokenizer_json = os.path.join(path, "tokenizer.json")
        vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        if os.path.exists(tokenizer_json):
            try:
                raw = RawTokenizer.from_file(tokenizer_json)
            except Exception as exc:   # the library raises bare Exceptions for malformed files
                raise MinRobertaError(f"{tokenizer_json}: not a tokenizer file ({str(exc).splitlines()[0][:200]})") from None
            return cls(raw)
        if os.path.exists(vocab) and os.path.exists(merges):
            try:
                raw = RawTokenizer(models.BPE.from_file(vocab, merges))
            except Exception as exc:
                raise MinRobertaError(f"{vocab}, {merges}: not a BPE vocabulary ({str(exc).splitlines()[0][:200]})") from None
            if any(raw.token_to_id(t) is None for t in (*SPECIALS, MASK)):
                raise MinRobertaError(f"{vocab}: lacks RoBERTa's special tokens {' '.join(SPECIALS)} {MASK}")
            return cls(_roberta_pipeline(raw))
        raise MinRobertaError(f"{path}: no tokenizer.json, nor vocab.json + merges.txt")

    # --- encoding
    def encode(self, text, pair=None, max_length=None):
        """One text (or pair) with special tokens; truncated to max_length tokens when given."""
        if max_length is not None:
            self.raw.enable_truncation(max_length)
        try:
            encoding = self.raw.encode(text, pair) if pair is not None else self.raw.encode(text)
        finally:
            if max_length is not None:
                self.raw.no_truncation()
        return Encoding(encoding.ids, encoding.tokens, encoding.offsets, encoding.sequence_ids)

    def encode_plain(self, texts):
        """Token ids of each text with no special tokens (the pieces of pretraining sequences)."""
        return [e.ids for e in self.raw.encode_batch(list(texts), add_special_tokens=False)]

    def encode_batch(self, texts, pairs=None, max_length=None):
        """-> input_ids, attention_mask: (B, T) int64 arrays padded with <pad> to the longest."""
        encodings = [self.encode(t, None if pairs is None else pairs[i], max_length) for i, t in enumerate(texts)]
        longest = max(len(e.ids) for e in encodings)
        input_ids = np.full((len(encodings), longest), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(encodings), longest), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            input_ids[row, :len(encoding.ids)] = encoding.ids
            attention_mask[row, :len(encoding.ids)] = 1
        return input_ids, attention_mask

    def decode(self, ids, skip_special_tokens=True):
        return self.raw.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token):
        return self.raw.token_to_id(token)

    def id_to_token(self, token_id):
        return self.raw.id_to_token(int(token_id))

    # --- saving
    def save(self, directory, model_max_length=None):
        """tokenizer.json, vocab.json + merges.txt, and the small config files transformers reads; each atomic."""
        os.makedirs(directory, exist_ok=True)
        atomic.write_text(os.path.join(directory, "tokenizer.json"), self.raw.to_str())
        vocab = self.raw.get_vocab(with_added_tokens=True)     # <mask> included, as roberta-base's vocab.json
        atomic.write_text(os.path.join(directory, "vocab.json"),
                          json.dumps(dict(sorted(vocab.items(), key=lambda item: item[1])), ensure_ascii=False))
        with tempfile.TemporaryDirectory() as scratch:
            self.raw.model.save(scratch)
            with open(os.path.join(scratch, "merges.txt"), "rb") as handle:
                atomic.write_bytes(os.path.join(directory, "merges.txt"), handle.read())
        tokens = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                  "cls_token": "<s>", "pad_token": "<pad>",
                  "mask_token": {"content": MASK, "lstrip": True, "rstrip": False, "normalized": False,
                                 "single_word": False}}
        config = {"tokenizer_class": "RobertaTokenizer", "add_prefix_space": False, "trim_offsets": True,
                  "errors": "replace", **tokens}
        if model_max_length:
            config["model_max_length"] = model_max_length
        atomic.write_json(os.path.join(directory, "tokenizer_config.json"), config)
        atomic.write_json(os.path.join(directory, "special_tokens_map.json"), tokens)
