"""The byte-level BPE: RoBERTa's special ids and layouts, save/load round trips, the same ids as transformers'
RoBERTa tokenizers, and one-line errors for files that are not tokenizers."""

import itertools
import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minroberta.corpus import stdlib_documents
from minroberta.errors import MinRobertaError
from minroberta.tokenizer import Tokenizer, train_tokenizer

VOCAB = 1000


@pytest.fixture(scope="module")
def texts():
    """A few hundred real docstrings, and short pieces of them to pair up."""
    return list(itertools.islice(stdlib_documents(), 300))


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_tokenizer(texts, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(str(directory), model_max_length=130)
    return directory


def pairs_of(texts):
    return [(a[:200], b[:100]) for a, b in zip(texts[::2], texts[1::2])]


def assert_same_ids(mine, reference, texts):
    for text in texts:
        assert mine.encode(text).ids == reference(text)["input_ids"], text[:60]
    for a, b in pairs_of(texts):
        assert mine.encode(a, b).ids == reference(a, b)["input_ids"], (a[:30], b[:30])


# --- training

def test_special_ids_come_first_and_mask_last(tokenizer):
    assert (tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert tokenizer.vocab_size == VOCAB and tokenizer.mask_id == VOCAB - 1
    assert tokenizer.special_ids == (0, 1, 2, 3, VOCAB - 1)
    assert [tokenizer.id_to_token(i) for i in tokenizer.special_ids] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert tokenizer.token_to_id("<mask>") == VOCAB - 1


def test_training_is_deterministic(texts, tokenizer):
    assert train_tokenizer(texts, vocab_size=VOCAB).to_json() == tokenizer.to_json()


def test_a_small_text_gives_a_smaller_vocabulary_with_mask_still_last():
    small = train_tokenizer(["abc abd abe"] * 3, vocab_size=VOCAB)
    assert small.vocab_size < VOCAB and small.mask_id == small.vocab_size - 1


def test_too_small_a_vocabulary_is_an_error():
    with pytest.raises(MinRobertaError, match="vocab_size 200"):
        train_tokenizer(["text"], vocab_size=200)


# --- encoding

def test_single_and_pair_layouts(tokenizer):
    a, b = "The first text.", "And the second one."
    single, pair = tokenizer.encode(a), tokenizer.encode(a, b)
    body_a, body_b = tokenizer.encode_plain(a), tokenizer.encode_plain(b)
    assert single.ids == [0, *body_a, 2]                         # <s> A </s>
    assert pair.ids == [0, *body_a, 2, 2, *body_b, 2]            # <s> A </s></s> B </s>
    assert pair.sequence_ids == [None, *[0] * len(body_a), None, None, *[1] * len(body_b), None]
    for token_id, (start, end), side in zip(pair.ids, pair.offsets, pair.sequence_ids):
        if side is None:
            assert (start, end) == (0, 0)
        else:   # trimmed offsets: the span is the token's text without its leading space
            assert (a, b)[side][start:end] == tokenizer.decode([token_id]).strip()


def test_mask_swallows_the_space_before_it_but_plain_encoding_keeps_it_text(tokenizer):
    encoding = tokenizer.encode("The <mask> of it.")
    assert encoding.ids.count(tokenizer.mask_id) == 1
    assert tokenizer.encode("The<mask> of it.").ids == encoding.ids
    for literal in ("a <mask> b", "<s>x</s>", "<pad><unk>"):   # corpus text never turns into special ids
        assert not set(tokenizer.encode_plain(literal)) & set(tokenizer.special_ids)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_decode_inverts_encode(tokenizer, text):
    text = text.replace("<", "(")   # keep special tokens' spellings out
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.decode(tokenizer.encode_plain(text)) == text


def test_truncation_keeps_the_special_tokens(tokenizer, texts):
    long_a, long_b = texts[0], texts[1]
    single = tokenizer.encode(long_a, max_length=10)
    assert len(single.ids) == 10 and single.ids[0] == 0 and single.ids[-1] == 2
    assert single.ids[1:-1] == tokenizer.encode(long_a).ids[1:9]
    pair = tokenizer.encode(long_a, long_b, max_length=12)
    assert len(pair.ids) == 12 and pair.ids.count(2) == 3 and pair.ids[0] == 0
    assert tokenizer.encode("short", max_length=50).ids == tokenizer.encode("short").ids
    assert len(tokenizer.encode(long_a).ids) > 10         # truncation does not outlive the call
    with pytest.raises(MinRobertaError, match="max_length 3"):
        tokenizer.encode("a", "b", max_length=3)


def test_encode_batch_pads_to_the_longest(tokenizer):
    texts = ["A short one.", "A somewhat longer text than the first one.", "x"]
    input_ids, attention_mask = tokenizer.encode_batch(texts)
    assert input_ids.dtype == np.int64 and attention_mask.dtype == np.int64
    lengths = [len(tokenizer.encode(t).ids) for t in texts]
    assert input_ids.shape == attention_mask.shape == (3, max(lengths))
    for row, (text, length) in enumerate(zip(texts, lengths)):
        assert list(input_ids[row, :length]) == tokenizer.encode(text).ids
        assert (input_ids[row, length:] == tokenizer.pad_id).all()
        assert list(attention_mask[row]) == [1] * length + [0] * (max(lengths) - length)
    ids, _ = tokenizer.encode_batch(texts, ["one", "two", "three"], max_length=6)
    assert ids.shape == (3, 6) and list(ids[2, :6]) == tokenizer.encode("x", "three", max_length=6).ids
    with pytest.raises(MinRobertaError, match="3 texts but 2 pairs"):
        tokenizer.encode_batch(texts, ["one", "two"])


# --- saving and loading

def test_save_writes_every_file_and_loads_back_identical(tokenizer, saved, texts):
    assert sorted(p.name for p in saved.iterdir()) == ["merges.txt", "special_tokens_map.json", "tokenizer.json",
                                                       "tokenizer_config.json", "vocab.json"]
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "RobertaTokenizer" and config["model_max_length"] == 130
    assert json.loads((saved / "vocab.json").read_text())["<mask>"] == VOCAB - 1
    loaded = Tokenizer.from_dir(str(saved))
    assert loaded.to_json() == tokenizer.to_json()
    for text in texts:
        assert loaded.encode(text).ids == tokenizer.encode(text).ids


def test_vocab_json_and_merges_txt_alone_load_the_same_tokenizer(tokenizer, saved, texts, tmp_path):
    for name in ("vocab.json", "merges.txt"):   # what roberta-base ships
        shutil.copy(saved / name, tmp_path / name)
    loaded = Tokenizer.from_dir(str(tmp_path))
    assert loaded.vocab_size == VOCAB and loaded.special_ids == tokenizer.special_ids
    for text in [*texts, "The <mask> of it."]:
        assert loaded.encode(text).ids == tokenizer.encode(text).ids
        assert loaded.encode(text).offsets == tokenizer.encode(text).offsets
    for a, b in pairs_of(texts):
        assert loaded.encode(a, b).ids == tokenizer.encode(a, b).ids


def test_transformers_autotokenizer_opens_the_directory_and_agrees(tokenizer, saved, texts):
    transformers = pytest.importorskip("transformers", reason="transformers is the reference for these ids")
    reference = transformers.AutoTokenizer.from_pretrained(str(saved))
    assert len(reference) == VOCAB and reference.mask_token_id == tokenizer.mask_id
    assert_same_ids(tokenizer, reference, [*texts, "The <mask> of it.", "Fill<mask> in."])


def test_transformers_roberta_tokenizer_from_vocab_and_merges_agrees(tokenizer, saved, texts):
    transformers = pytest.importorskip("transformers", reason="transformers is the reference for these ids")
    vocab, merges = str(saved / "vocab.json"), str(saved / "merges.txt")
    if int(transformers.__version__.split(".")[0]) >= 5:   # v5 takes the files as vocab=, merges=
        reference = transformers.RobertaTokenizerFast(vocab=vocab, merges=merges)
    else:
        reference = transformers.RobertaTokenizerFast(vocab_file=vocab, merges_file=merges)
    assert len(reference) == VOCAB         # (v5 ignores vocab_file= and builds a 5-token vocabulary)
    # no <mask> in these texts: built this way, v5 does not let <mask> swallow the space before it
    assert_same_ids(tokenizer, reference, texts)


# --- files that are not tokenizers

@pytest.mark.parametrize("name, content", [
    ("tokenizer.json", "{not a tokenizer"),
    ("tokenizer.json", b"\x89PNG\r\n\x1a\n\x00\x00"),
    ("tokenizer.json", "[1, 2, 3]"),
    ("tokenizer.json", '{"model": {"type": "Nonsense"}}'),
    ("vocab.json", "not json"),
    ("vocab.json", '["<s>", "<pad>"]'),
    ("merges.txt", "#version: 0.2\nĠ t\nthree tokens here\n"),
    ("merges.txt", "#version: 0.2\nqq zz\n"),
])
def test_a_file_that_is_not_a_tokenizer_is_named(saved, tmp_path, name, content):
    if name != "tokenizer.json":   # spoil one of vocab.json + merges.txt, keep the other
        for other in ("vocab.json", "merges.txt"):
            shutil.copy(saved / other, tmp_path / other)
    (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(MinRobertaError) as caught:
        Tokenizer.from_dir(str(tmp_path))
    message = str(caught.value)
    assert str(tmp_path / name) in message and "\n" not in message, message


def test_a_tokenizer_without_roberta_special_tokens_is_named(saved, tmp_path):
    spec = json.loads((saved / "tokenizer.json").read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<mask>"]
    spec["model"]["vocab"].pop("<mask>", None)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(MinRobertaError, match=r"tokenizer.json: has no <mask> token"):
        Tokenizer.from_dir(str(tmp_path))


def test_missing_directory_or_files_are_named(tmp_path):
    with pytest.raises(MinRobertaError, match="no such tokenizer directory"):
        Tokenizer.from_dir(str(tmp_path / "absent"))
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(MinRobertaError, match="no tokenizer.json, nor vocab.json"):
        Tokenizer.from_dir(str(tmp_path))


# --- other families: a model directory's own tokenizer.json (BERT's WordPiece here)

@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from tests.bert import write_wordpiece_tokenizer
    directory = tmp_path_factory.mktemp("wordpiece")
    write_wordpiece_tokenizer(directory)
    return directory


def assert_same_bert_encodings(mine, reference, texts):
    """ids and token types of single texts, pairs, truncated pairs and a padded batch, against transformers."""
    pairs = pairs_of(texts)
    for text in texts:
        expected = reference(text)
        got = mine.encode(text)
        assert (got.ids, got.type_ids) == (expected["input_ids"], expected["token_type_ids"]), text[:60]
    for a, b in pairs:
        expected = reference(a, b)
        assert mine.encode(a, b).type_ids == expected["token_type_ids"], (a[:30], b[:30])
        cut = reference(a, b, truncation=True, max_length=24)
        got = mine.encode(a, b, max_length=24)
        assert (got.ids, got.type_ids) == (cut["input_ids"], cut["token_type_ids"]), (a[:30], b[:30])
    batch = [a for a, _ in pairs[:5]]
    expected = reference(batch, [b for _, b in pairs[:5]], padding=True, truncation=True, max_length=40)
    got = mine.encode_batch(batch, [b for _, b in pairs[:5]], max_length=40, with_types=True)
    for array, key in zip(got, ("input_ids", "attention_mask", "token_type_ids")):
        assert array.tolist() == expected[key], key


def test_a_wordpiece_tokenizer_keeps_its_own_template_specials_and_types(bert_dir, texts):
    transformers = pytest.importorskip("transformers", reason="transformers is the reference for these ids")
    mine = Tokenizer.from_dir(str(bert_dir))
    token = lambda role: mine.id_to_token(getattr(mine, f"{role}_id"))
    assert [token(role) for role in ("bos", "eos", "pad", "unk", "mask")] == ["[CLS]", "[SEP]", "[PAD]", "[UNK]",
                                                                              "[MASK]"]
    assert not mine.follows_roberta and set(mine.special_ids) == {mine.token_to_id(t) for t in
                                                                  ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    pair = mine.encode("An open file.", "It closes.")
    assert pair.tokens[0] == "[CLS]" and pair.tokens.count("[SEP]") == 2 and pair.type_ids[-1] == 1
    assert_same_bert_encodings(mine, transformers.AutoTokenizer.from_pretrained(str(bert_dir)), texts[:40])


def test_the_minilm_tokenizer_matches_transformers(texts):
    transformers = pytest.importorskip("transformers", reason="transformers is the reference for these ids")
    from tests.bert import minilm_dir
    directory = minilm_dir()
    mine = Tokenizer.from_dir(directory)
    assert mine.encode("Hello").tokens == ["[CLS]", "hello", "[SEP]"]   # the file's own padding to 128 is not kept
    assert_same_bert_encodings(mine, transformers.AutoTokenizer.from_pretrained(directory), texts[:40])


def test_a_saved_wordpiece_tokenizer_opens_in_transformers_and_loads_back(bert_dir, texts, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is the reference for these ids")
    Tokenizer.from_dir(str(bert_dir)).save(str(tmp_path))
    assert {p.name for p in tmp_path.iterdir()} == {"tokenizer.json", "vocab.txt", "tokenizer_config.json",
                                                    "special_tokens_map.json"}
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "BertTokenizer"
    assert_same_bert_encodings(Tokenizer.from_dir(str(tmp_path)), transformers.AutoTokenizer.from_pretrained(
        str(tmp_path)), texts[:20])


def test_a_missing_mask_token_is_named_when_a_command_needs_one(bert_dir, tmp_path):
    """Renamed [MASK] -> [HOLE]: the tokenizer loads, fill-mask's need is a one-line error; declaring [HOLE]
    as mask_token in special_tokens_map.json makes it the mask."""
    (tmp_path / "tokenizer.json").write_text((bert_dir / "tokenizer.json").read_text().replace("[MASK]", "[HOLE]"))
    tokenizer = Tokenizer.from_dir(str(tmp_path))
    assert tokenizer.mask_id is None and tokenizer.bos_id == tokenizer.token_to_id("[CLS]")
    with pytest.raises(MinRobertaError) as caught:
        tokenizer.require("mask", "fill-mask")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'tokenizer.json'}: has no mask token, which fill-mask needs")
    assert "\n" not in message
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"mask_token": {"content": "[HOLE]"}}))
    tokenizer = Tokenizer.from_dir(str(tmp_path))
    assert tokenizer.mask_id == tokenizer.token_to_id("[HOLE]") and tokenizer.mask_id in tokenizer.special_ids


def test_a_batch_of_different_lengths_needs_a_pad_token(bert_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_text((bert_dir / "tokenizer.json").read_text().replace("[PAD]", "[NOPE]"))
    tokenizer = Tokenizer.from_dir(str(tmp_path))
    assert tokenizer.encode_batch(["same", "same"])[0].shape == (2, 3)   # equal lengths need no padding
    with pytest.raises(MinRobertaError, match="has no pad token, which a batch of texts of different lengths"):
        tokenizer.encode_batch(["one", "two words here"])


@pytest.mark.parametrize("name", ["special_tokens_map.json", "tokenizer_config.json"])
def test_a_damaged_special_tokens_file_is_named(bert_dir, tmp_path, name):
    shutil.copy(bert_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / name).write_text("{not json")
    with pytest.raises(MinRobertaError, match=f"{name}: not valid JSON"):
        Tokenizer.from_dir(str(tmp_path))
