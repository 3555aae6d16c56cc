"""Tokenizers on the `tokenizers` library: a model directory's own tokenizer (WordPiece for the BERT family,
byte-level BPE for RoBERTa), and training RoBERTa's byte-level BPE from text.

A loaded tokenizer keeps what its files say: the template that adds special tokens (`[CLS] A [SEP]`,
`<s> A </s></s> B </s>`) and token types, the special tokens themselves, and how to truncate and pad. Every
command goes through the one `Tokenizer` class; what a command needs and a tokenizer lacks (a mask token for
fill-mask) is a one-line error naming it. A trained tokenizer follows roberta-base: `<s> <pad> </s> <unk>` are
ids 0..3 and `<mask>` is the last id. A saved tokenizer is a directory that both `Tokenizer.from_dir` and
`transformers.AutoTokenizer` open.
"""

import contextlib
import json
import os
import tempfile
from collections import namedtuple

import numpy as np

from . import atomic, guards
from .errors import MinRobertaError

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")   # ids 0, 1, 2, 3 in that order, as roberta-base
MASK = "<mask>"                                 # the last id
MIN_VOCAB_SIZE = 256 + len(SPECIALS) + 1        # every byte, the specials and <mask>: not one merge yet

# The special tokens a command may need, by role. bos opens a sequence and eos closes it (RoBERTa's <s> and </s>,
# which also serve as its CLS and SEP; BERT's [CLS] and [SEP]). Each is found, in order: in the tokenizer's own
# template (bos, eos), its padding or model settings (pad, unk), the directory's special_tokens_map.json and
# tokenizer_config.json under these keys, and last by the two families' spellings.
ROLES = ("bos", "eos", "pad", "unk", "mask")
DECLARED_KEYS = {"bos": ("cls_token", "bos_token"), "eos": ("sep_token", "eos_token"), "pad": ("pad_token",),
                 "unk": ("unk_token",), "mask": ("mask_token",)}
SPELLINGS = {"bos": ("<s>", "[CLS]"), "eos": ("</s>", "[SEP]"), "pad": ("<pad>", "[PAD]"), "unk": ("<unk>", "[UNK]"),
             "mask": ("<mask>", "[MASK]")}
SPECIAL_TOKEN_FILES = ("special_tokens_map.json", "tokenizer_config.json")   # the first names a role first

# sequence_ids: 0, 1 or None (special); truncated: max_length cut tokens off
Encoding = namedtuple("Encoding", "ids tokens offsets sequence_ids type_ids truncated", defaults=(False,))
Ids = namedtuple("Ids", "ids type_ids truncated", defaults=(False,))   # one unpadded text: what the model reads


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


def _template_ends(raw, source):
    """The ids the tokenizer's own template puts first and last around one text (None where it adds none):
    [CLS] and [SEP] for BERT, <s> and </s> for RoBERTa."""
    try:
        encoding = raw.encode("a")
    except Exception as exc:   # a file that parses can still fail to encode (a model without its vocabulary)
        raise MinRobertaError(f"{source}: cannot encode a text ({_first_line(exc)})") from None
    ids, sides = encoding.ids, encoding.sequence_ids
    text = [i for i, side in enumerate(sides) if side is not None]
    if not text:   # the probe left no token of its own: every id is the template's
        return (ids[0], ids[-1]) if len(ids) >= 2 else (None, None)
    before, after = ids[:text[0]], ids[text[-1] + 1:]
    return (before[0] if before else None), (after[-1] if after else None)


class Tokenizer:
    """A model's tokenizer: encode texts and pairs, decode ids, save and load.

    `raw` is the underlying tokenizers.Tokenizer; truncation and padding are set on it only for the length of
    one call (a file's own settings, such as a fixed padding to 128, would waste compute on padding). `declared`
    maps roles to the tokens a directory's special_tokens_map.json names; `companions` are that directory's
    other tokenizer files (name -> bytes), written back by `save`."""

    def __init__(self, raw, source="tokenizer", declared=None, companions=None):
        self.source = source
        self._truncation_settings = dict(raw.truncation or {})   # the file's strategy and direction are kept
        self._padding_settings = dict(raw.padding or {})         # its direction and pad type id too
        raw.no_truncation()
        raw.no_padding()
        self.raw = raw
        self.companions = dict(companions or {})
        declared = declared or {}
        first, last = _template_ends(raw, source)

        def find(role, *own):
            for token in (*own, declared.get(role), *SPELLINGS[role]):
                if token is not None and raw.token_to_id(token) is not None:
                    return raw.token_to_id(token)
            return None
        self.bos_id = first if first is not None else find("bos")
        self.eos_id = last if last is not None else find("eos")
        self.pad_id = find("pad", self._padding_settings.get("pad_token"))
        self.unk_id = find("unk", getattr(raw.model, "unk_token", None))
        self.mask_id = find("mask")
        if self.follows_roberta:   # a tokenizer of RoBERTa's spelling without all of them is a damaged one
            missing = [token for token in (*SPECIALS, MASK) if raw.token_to_id(token) is None]
            if missing:
                raise MinRobertaError(f"{source}: has no {missing[0]} token (RoBERTa needs {' '.join(SPECIALS)} {MASK})")
        flagged = {i for i, token in raw.get_added_tokens_decoder().items() if token.special}
        roles = {getattr(self, f"{role}_id") for role in ROLES}
        self.special_ids = tuple(sorted((flagged | roles) - {None}))

    @property
    def vocab_size(self):
        return self.raw.get_vocab_size(with_added_tokens=True)

    @property
    def follows_roberta(self):
        """Whether the template opens with <s>: roberta-base's conventions, and its files when saved."""
        return self.bos_id is not None and self.raw.id_to_token(self.bos_id) == SPECIALS[0]

    def require(self, role, purpose):
        """The id of the special token `role` (one of ROLES) that `purpose` needs, or a one-line error."""
        token_id = getattr(self, f"{role}_id")
        if token_id is None:
            raise MinRobertaError(f"{self.source}: has no {role} token, which {purpose} needs (looked for "
                                  f"{DECLARED_KEYS[role][0]} in {' / '.join(SPECIAL_TOKEN_FILES)}, then "
                                  f"{' and '.join(SPELLINGS[role])})")
        return token_id

    # --- loading
    @classmethod
    def from_dir(cls, path):
        """Open a saved tokenizer: `path`/tokenizer.json, or else `path`/vocab.json + merges.txt (what
        roberta-base ships), given RoBERTa's pre- and post-processing. `path` may also be a tokenizer.json.
        The directory's special_tokens_map.json and tokenizer_config.json say which tokens play which role."""
        path = os.fspath(path)
        if os.path.lexists(path) and not os.path.isdir(path):   # a tokenizer.json (or a FIFO, said so)
            return cls.from_json(_read_text(path, "a tokenizer file"), source=path)
        if not os.path.isdir(path):
            raise MinRobertaError(f"{path}: no such tokenizer directory")
        tokenizer_json = os.path.join(path, "tokenizer.json")
        vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        declared, companions = _special_token_files(path)
        if os.path.lexists(tokenizer_json):
            return cls.from_json(_read_text(tokenizer_json, "a tokenizer file"), source=tokenizer_json,
                                 declared=declared, companions=companions)
        if os.path.lexists(vocab) and os.path.lexists(merges):
            return cls.from_vocab_and_merges(vocab, merges)
        raise MinRobertaError(f"{path}: holds no tokenizer.json, nor vocab.json + merges.txt")

    @classmethod
    def from_json(cls, text, source="tokenizer JSON", declared=None, companions=None):
        """A tokenizer from the text of a tokenizer.json (also how the ranks of a distributed run share one)."""
        from tokenizers import Tokenizer as RawTokenizer
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise MinRobertaError(f"{source}: not a tokenizer file (not JSON: {exc})") from None
        except RecursionError:
            raise MinRobertaError(f"{source}: not a tokenizer file (JSON nested too deeply)") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise MinRobertaError(f"{source}: not a tokenizer file (JSON without a \"model\" object)")
        try:
            raw = RawTokenizer.from_str(text)
        except Exception as exc:   # the library raises bare Exceptions for malformed files
            raise MinRobertaError(f"{source}: not a tokenizer file ({_first_line(exc)})") from None
        return cls(raw, source=source, declared=declared, companions=companions)

    @classmethod
    def from_vocab_and_merges(cls, vocab_path, merges_path):
        """roberta-base's files: vocab.json (token -> id) and merges.txt (one `left right` pair a line)."""
        from tokenizers import Tokenizer as RawTokenizer, models
        text = _read_text(vocab_path, "a BPE vocabulary")
        try:
            vocab = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise MinRobertaError(f"{vocab_path}: not a BPE vocabulary (not JSON: {str(exc) or 'nested too deeply'})") \
                from None
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
        """Truncate to max_length tokens (the file's strategy: by default the longer text first; specials
        kept) inside the `with` block."""
        if max_length is None:
            yield
            return
        specials = self.raw.num_special_tokens_to_add(is_pair)
        if max_length < specials:   # the library would silently return more than max_length tokens
            raise MinRobertaError(f"max_length {max_length} cannot hold even the {specials} special tokens of a "
                                  f"{'pair' if is_pair else 'text'}")
        settings = self._truncation_settings
        self.raw.enable_truncation(max_length, strategy=settings.get("strategy", "longest_first"),
                                   direction=settings.get("direction", "right"))
        try:
            yield
        finally:
            self.raw.no_truncation()

    def _encode_raw(self, texts, pairs, max_length):
        texts = list(texts)
        if pairs is not None:
            pairs = list(pairs)
            if len(pairs) != len(texts):
                raise MinRobertaError(f"{len(texts)} texts but {len(pairs)} pairs")
        with self._truncation(max_length, pairs is not None):
            return self.raw.encode_batch(texts if pairs is None else list(zip(texts, pairs)))

    def encode(self, text, pair=None, max_length=None):
        """One text (or pair) with special tokens -> Encoding(ids, tokens, offsets, sequence_ids, type_ids,
        truncated); offsets are (start, end) character spans in the text their sequence_id names, (0, 0) for
        specials."""
        with self._truncation(max_length, pair is not None):
            encoding = self.raw.encode(text, pair) if pair is not None else self.raw.encode(text)
        return Encoding(encoding.ids, encoding.tokens, encoding.offsets, encoding.sequence_ids, encoding.type_ids,
                        bool(encoding.overflowing))

    def encode_many(self, texts, pairs=None, max_length=None):
        """Each text (or pair) with special tokens, unpadded: [Ids(ids, type_ids, truncated)], all in one call on
        every core. Length-bucketed batches are cut from these."""
        return [Ids(e.ids, e.type_ids, bool(e.overflowing)) for e in self._encode_raw(texts, pairs, max_length)]

    def encode_batch(self, texts, pairs=None, max_length=None, with_types=False):
        """-> input_ids, attention_mask (and token_type_ids with `with_types`): (B, T) int64 arrays padded to
        the longest as the file says (pad token, side, pad type id); T = 0 when B = 0."""
        encodings = self._encode_raw(texts, pairs, max_length)
        longest = max((len(e.ids) for e in encodings), default=0)
        if any(len(e.ids) != longest for e in encodings):
            settings = self._padding_settings
            pad_id = self.require("pad", "a batch of texts of different lengths")
            for e in encodings:
                e.pad(longest, direction=settings.get("direction", "right"), pad_id=pad_id,
                      pad_type_id=settings.get("pad_type_id", 0), pad_token=self.raw.id_to_token(pad_id))
        fields = ("ids", "attention_mask", "type_ids") if with_types else ("ids", "attention_mask")
        return tuple(np.array([getattr(e, field) for e in encodings], dtype=np.int64).reshape(len(encodings), longest)
                     for field in fields)

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
        """tokenizer.json and the files of the model's own format, each written atomically. A RoBERTa
        tokenizer writes roberta-base's layout (vocab.json with `<mask>`, merges.txt) and the small config
        files transformers reads; another keeps the special-token files it was loaded with."""
        os.makedirs(directory, exist_ok=True)
        atomic.write_text(os.path.join(directory, "tokenizer.json"), self.to_json())
        if not self.follows_roberta:
            for name, data in self._model_files().items():
                atomic.write_bytes(os.path.join(directory, name), data)
            companions = self.companions or self._special_token_configs(model_max_length)
            for name, data in companions.items():
                atomic.write_bytes(os.path.join(directory, name), data)
            return
        vocab = self.raw.get_vocab(with_added_tokens=True)
        atomic.write_text(os.path.join(directory, "vocab.json"),
                          json.dumps(dict(sorted(vocab.items(), key=lambda item: item[1])), ensure_ascii=False))
        atomic.write_bytes(os.path.join(directory, "merges.txt"), self._model_files()["merges.txt"])
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

    def _model_files(self):
        """name -> bytes of what the tokenizer's model writes by itself (merges.txt, vocab.txt, ...)."""
        files = {}
        with tempfile.TemporaryDirectory() as scratch:
            for path in self.raw.model.save(scratch):
                with open(path, "rb") as handle:
                    files[os.path.basename(path)] = handle.read()
        return files

    def _special_token_configs(self, model_max_length):
        """special_tokens_map.json and tokenizer_config.json naming this tokenizer's special tokens by role."""
        keys = {"bos": "cls_token", "eos": "sep_token", "pad": "pad_token", "unk": "unk_token", "mask": "mask_token"}
        tokens = {key: self.raw.id_to_token(getattr(self, f"{role}_id")) for role, key in keys.items()
                  if getattr(self, f"{role}_id") is not None}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **tokens}
        if model_max_length:
            config["model_max_length"] = model_max_length
        as_bytes = lambda value: (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")
        return {"special_tokens_map.json": as_bytes(tokens), "tokenizer_config.json": as_bytes(config)}


def _special_token_files(directory):
    """-> (role -> token named by the directory's special_tokens_map.json or tokenizer_config.json, name -> bytes
    of those files). transformers writes them; tokenizer.json itself does not say which token masks."""
    declared, companions = {}, {}
    for name in SPECIAL_TOKEN_FILES:
        path = os.path.join(directory, name)
        if not os.path.lexists(path):
            continue
        text = _read_text(path, "a JSON file")
        try:
            values = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise MinRobertaError(f"{path}: not valid JSON ({str(exc) or 'nested too deeply'})") from None
        if not isinstance(values, dict):
            raise MinRobertaError(f"{path}: expected a JSON object, got {type(values).__name__}")
        companions[name] = text.encode("utf-8")
        for role, keys in DECLARED_KEYS.items():
            for key in keys:
                token = values.get(key)
                token = token.get("content") if isinstance(token, dict) else token
                if isinstance(token, str) and role not in declared:
                    declared[role] = token
    return declared, companions


def _read_text(path, what):
    """A file's text, or an error naming it when it cannot be read or is not UTF-8 (so not `what`)."""
    data = guards.read_regular_file(path, guards.TOKENIZER_LIMIT)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MinRobertaError(f"{path}: not {what} (invalid UTF-8 at byte {exc.start})") from None
