"""Byte-level BPE with RoBERTa's conventions, on the `tokenizers` library.

Special tokens `<s> <pad> </s> <unk>` are ids 0..3 and `<mask>` is the last id; texts are encoded as
`<s> A </s>` and pairs as `<s> A </s></s> B </s>`. A saved tokenizer is a directory that both
`Tokenizer.from_dir` and `transformers.AutoTokenizer` open.
"""

import contextlib
import json
import os
import tempfile
from collections import namedtuple

import numpy as np

from . import atomic
from .errors import MinRobertaError

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")   # ids 0, 1, 2, 3 in that order, as roberta-base
MASK = "<mask>"                                 # the last id
MIN_VOCAB_SIZE = 256 + len(SPECIALS) + 1        # every byte, the specials and <mask>: not one merge yet

Encoding = namedtuple("Encoding", "ids tokens offsets sequence_ids")   # sequence_ids: 0, 1 or None (special)


def _roberta_pipeline(raw):
    """Pre-tokenizer, decoder, post-processor and special tokens of RoBERTa, set on a tokenizers.Tokenizer
    whose vocabulary already holds `<s>` and `</s>`."""
    from tokenizers import AddedToken, decoders, pre_tokenizers, processors
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.post_processor = processors.RobertaProcessing(
        ("</s>", raw.token_to_id("</s>")), ("<s>", raw.token_to_id("<s>")), trim_offsets=True, add_prefix_space=False)
    # tokens already in the vocabulary keep their ids; a new <mask> gets the next id, the last one.
    # <mask> swallows the space before it, as roberta-base's does: "the <mask>" predicts "Ġword"
    raw.add_special_tokens([*SPECIALS, AddedToken(MASK, lstrip=True, special=True)])
    return raw


def train_tokenizer(texts, vocab_size, min_frequency=2):
    """Train a byte-level BPE on `texts` (any iterable of strings) with `vocab_size` ids, `<mask>` the last.

    The trainer puts its special tokens first, so it learns vocab_size - 1 ids with the four others and
    `<mask>` is added after. The vocabulary comes out smaller when the texts run out of pairs seen
    `min_frequency` times. The same texts give the same tokenizer (the trainer breaks ties by token ids)."""
    from tokenizers import Tokenizer as RawTokenizer, models, pre_tokenizers, trainers
    if vocab_size < MIN_VOCAB_SIZE:
        raise MinRobertaError(f"vocab_size {vocab_size} is too small for a byte-level BPE: it needs at least "
                              f"{MIN_VOCAB_SIZE} (256 bytes, {' '.join(SPECIALS)} and {MASK})")
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(_roberta_pipeline(raw), source="the trained tokenizer")


def _first_line(exc):
    """The library's message cut to one short line (its errors can span lines and name Rust types)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


class Tokenizer:
    """A RoBERTa tokenizer: encode texts and pairs, decode ids, save and load.

    `raw` is the underlying tokenizers.Tokenizer; truncation is set on it only for the length of one call."""

    def __init__(self, raw, source="tokenizer"):
        missing = [token for token in (*SPECIALS, MASK) if raw.token_to_id(token) is None]
        if missing:
            raise MinRobertaError(f"{source}: has no {missing[0]} token (RoBERTa needs {' '.join(SPECIALS)} {MASK})")
        raw.no_truncation()   # a loaded tokenizer.json may carry its own; lengths are per call here
        raw.no_padding()
        self.raw = raw
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = (raw.token_to_id(t) for t in SPECIALS)
        self.mask_id = raw.token_to_id(MASK)
        self.special_ids = tuple(sorted({self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id}))

    @property
    def vocab_size(self):
        return self.raw.get_vocab_size(with_added_tokens=True)

    # --- loading
    @classmethod
    def from_dir(cls, path):
        """Open a saved tokenizer: `path`/tokenizer.json, or else `path`/vocab.json + merges.txt (what
        roberta-base ships), given RoBERTa's pre- and post-processing. `path` may also be a tokenizer.json."""
        path = os.fspath(path)
        if os.path.isfile(path):
            return cls.from_json(_read_text(path, "a tokenizer file"), source=path)
        if not os.path.isdir(path):
            raise MinRobertaError(f"{path}: no such tokenizer directory")
        tokenizer_json = os.path.join(path, "tokenizer.json")
        vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        if os.path.exists(tokenizer_json):
            return cls.from_json(_read_text(tokenizer_json, "a tokenizer file"), source=tokenizer_json)
        if os.path.exists(vocab) and os.path.exists(merges):
            return cls.from_vocab_and_merges(vocab, merges)
        raise MinRobertaError(f"{path}: holds no tokenizer.json, nor vocab.json + merges.txt")

    @classmethod
    def from_json(cls, text, source="tokenizer JSON"):
        """A tokenizer from the text of a tokenizer.json (also how the ranks of a distributed run share one)."""
        from tokenizers import Tokenizer as RawTokenizer
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise MinRobertaError(f"{source}: not a tokenizer file (not JSON: {exc})") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise MinRobertaError(f"{source}: not a tokenizer file (JSON without a \"model\" object)")
        try:
            raw = RawTokenizer.from_str(text)
        except Exception as exc:   # the library raises bare Exceptions for malformed files
            raise MinRobertaError(f"{source}: not a tokenizer file ({_first_line(exc)})") from None
        return cls(raw, source=source)

    @classmethod
    def from_vocab_and_merges(cls, vocab_path, merges_path):
        """roberta-base's files: vocab.json (token -> id) and merges.txt (one `left right` pair a line)."""
        from tokenizers import Tokenizer as RawTokenizer, models
        try:
            vocab = json.loads(_read_text(vocab_path, "a BPE vocabulary"))
        except ValueError as exc:
            raise MinRobertaError(f"{vocab_path}: not a BPE vocabulary (not JSON: {exc})") from None
        if not isinstance(vocab, dict) or not all(isinstance(i, int) and i >= 0 for i in vocab.values()):
            raise MinRobertaError(f"{vocab_path}: not a BPE vocabulary (expected a JSON object of token -> id)")
        merges = []
        for number, line in enumerate(_read_text(merges_path, "a BPE merges file").splitlines(), start=1):
            if (number == 1 and line.startswith("#version")) or not line.strip():
                continue
            pair = line.split(" ")
            if len(pair) != 2 or not all(pair):
                raise MinRobertaError(f"{merges_path}: line {number} is not a merge of two tokens: {line[:80]!r}")
            merges.append(tuple(pair))
        try:
            raw = RawTokenizer(models.BPE(vocab, merges))
        except Exception as exc:
            raise MinRobertaError(f"{merges_path}: does not fit {vocab_path} ({_first_line(exc)})") from None
        for token in ("<s>", "</s>"):   # the post-processor needs these ids before the check in __init__
            if raw.token_to_id(token) is None:
                raise MinRobertaError(f"{vocab_path}: has no {token} token (RoBERTa needs {' '.join(SPECIALS)} {MASK})")
        return cls(_roberta_pipeline(raw), source=vocab_path)

    def to_json(self):
        return self.raw.to_str()

    # --- encoding
    @contextlib.contextmanager
    def _truncation(self, max_length, is_pair):
        """Truncate to max_length tokens (the longer text first, specials kept) inside the `with` block."""
        if max_length is None:
            yield
            return
        specials = self.raw.num_special_tokens_to_add(is_pair)
        if max_length < specials:   # the library would silently return more than max_length tokens
            raise MinRobertaError(f"max_length {max_length} cannot hold even the {specials} special tokens of a "
                                  f"{'pair' if is_pair else 'text'}")
        self.raw.enable_truncation(max_length)
        try:
            yield
        finally:
            self.raw.no_truncation()

    def encode(self, text, pair=None, max_length=None):
        """One text (or pair) with special tokens -> Encoding(ids, tokens, offsets, sequence_ids); offsets
        are (start, end) character spans in the text their sequence_id names, (0, 0) for specials."""
        with self._truncation(max_length, pair is not None):
            encoding = self.raw.encode(text, pair) if pair is not None else self.raw.encode(text)
        return Encoding(encoding.ids, encoding.tokens, encoding.offsets, encoding.sequence_ids)

    def encode_batch(self, texts, pairs=None, max_length=None):
        """-> input_ids, attention_mask: (B, T) int64 arrays padded with <pad> to the longest (T = 0 when
        B = 0)."""
        texts = list(texts)
        if pairs is not None:
            pairs = list(pairs)
            if len(pairs) != len(texts):
                raise MinRobertaError(f"{len(texts)} texts but {len(pairs)} pairs")
        with self._truncation(max_length, pairs is not None):
            encodings = self.raw.encode_batch(texts if pairs is None else list(zip(texts, pairs)))
        longest = max((len(e.ids) for e in encodings), default=0)
        input_ids = np.full((len(encodings), longest), self.pad_id, dtype=np.int64)       # (B, T)
        attention_mask = np.zeros((len(encodings), longest), dtype=np.int64)             # (B, T)
        for row, encoding in enumerate(encodings):
            input_ids[row, :len(encoding.ids)] = encoding.ids
            attention_mask[row, :len(encoding.ids)] = 1
        return input_ids, attention_mask

    def encode_plain(self, text):
        """Token ids of one text with no special tokens added (a piece of a pretraining sequence)."""
        return self.encode_plain_batch([text])[0]

    def encode_plain_batch(self, texts):
        """encode_plain of many texts at once, on all cores. A `<mask>` or `</s>` written in the text is
        text here, not the special token: corpus text must never smuggle specials into training data."""
        self.raw.encode_special_tokens = True   # (tokenizers >= 0.15.1)
        try:
            return [e.ids for e in self.raw.encode_batch(list(texts), add_special_tokens=False)]
        finally:
            self.raw.encode_special_tokens = False

    def decode(self, ids, skip_special_tokens=True):
        return self.raw.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token):
        return self.raw.token_to_id(token)

    def id_to_token(self, token_id):
        return self.raw.id_to_token(int(token_id))

    # --- saving
    def save(self, directory, model_max_length=None):
        """tokenizer.json, vocab.json + merges.txt (roberta-base's layout, `<mask>` in vocab.json), and the
        small config files transformers reads; each written atomically."""
        os.makedirs(directory, exist_ok=True)
        atomic.write_text(os.path.join(directory, "tokenizer.json"), self.to_json())
        vocab = self.raw.get_vocab(with_added_tokens=True)
        atomic.write_text(os.path.join(directory, "vocab.json"),
                          json.dumps(dict(sorted(vocab.items(), key=lambda item: item[1])), ensure_ascii=False))
        with tempfile.TemporaryDirectory() as scratch:   # the library writes merges.txt only by itself
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


def _read_text(path, what):
    """A file's text, or an error naming it when it cannot be read or is not UTF-8 (so not `what`)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise MinRobertaError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MinRobertaError(f"{path}: not {what} (invalid UTF-8 at byte {exc.start})") from None
