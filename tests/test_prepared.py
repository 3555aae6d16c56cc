"""Prepared data: the same samples and batches as the in-memory path, reuse and invalidation, the token type,
the input formats and their errors, and the progress line."""

import gzip
import io
import json
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minroberta import corpus, prepared
from minroberta.corpus import read_documents, train_valid_split
from minroberta.data import PretrainingData, pack_full_sentences
from minroberta.errors import MinRobertaError
from minroberta.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def documents():
    docs = []
    for document in corpus.stdlib_documents():
        docs.append(document)
        if len(docs) == 300:
            return docs


@pytest.fixture(scope="module")
def tokenizer(documents):
    return train_tokenizer(documents, vocab_size=400)


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return str(path)


def quiet(text):
    pass


# --- packing

@settings(max_examples=200, deadline=None)
@given(docs=st.lists(st.lists(st.integers(0, 30), min_size=0, max_size=6), min_size=0, max_size=12),
       block_size=st.integers(3, 20), cuts=st.lists(st.integers(0, 80), max_size=4))
def test_the_packer_gives_pack_full_sentences_samples_whatever_the_chunking(docs, block_size, cuts):
    """docs: per document, its sentences' lengths; the ids count up so that every token is told apart."""
    counter = iter(range(10, 10**6))
    tokenized = [[[next(counter) for _ in range(n)] for n in doc] for doc in docs]
    expected = list(pack_full_sentences(tokenized, block_size, bos_id=0, eos_id=2))
    ids = [s for doc in tokenized for s in doc]
    opens = [i == 0 for doc in tokenized for i in range(len(doc))]
    bounds = sorted({min(c, len(ids)) for c in cuts} | {0, len(ids)})
    packer, tokens, lengths = prepared.Packer(block_size, 0, 2), [], []
    for a, b in zip(bounds, bounds[1:]):
        t, n = packer.add(ids[a:b], opens[a:b])
        tokens.append(t), lengths.append(n)
    t, n = packer.finish()
    tokens, lengths = np.concatenate(tokens + [t]), np.concatenate(lengths + [n]).astype(int)
    got = np.split(tokens, np.cumsum(lengths)[:-1]) if len(lengths) else []
    assert [list(s) for s in got] == [list(s) for s in expected]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab ", min_size=1, max_size=6).map(str.strip).filter(bool), max_size=12))
def test_the_split_puts_each_document_on_its_side_and_leaves_neither_empty(docs):
    """The rule written out here, apart from split_stream (which train_valid_split collects): each document on
    its is_validation side in corpus order; from two documents on, an empty side takes the other's last."""
    train = [d for d in docs if not corpus.is_validation(d)]
    valid = [d for d in docs if corpus.is_validation(d)]
    if len(docs) >= 2 and not valid:
        valid.append(train.pop())
    elif len(docs) >= 2 and not train:
        train.append(valid.pop())
    sides = list(corpus.split_stream(docs))
    assert [d for s, d in sides if s == "train"] == train
    assert [d for s, d in sides if s == "valid"] == valid
    assert train_valid_split(docs) == (train, valid)


# --- the same batches as in memory

def prepared_dir(tmp_path, documents, tokenizer, seq_len, monkeypatch, chunk=4000, piece=3000):
    """The documents written to a file and prepared, in small chunks and reading pieces so that every carry-over
    is exercised."""
    monkeypatch.setattr(prepared, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(corpus, "READ_BYTES", piece)
    path = write(tmp_path / "corpus.txt", "\n\n".join(documents) + "\n")
    return path, prepared.prepare([path], str(tmp_path / "prep"), seq_len, tokenizer, say=quiet)


@pytest.mark.parametrize("seq_len", [16, 48])
def test_prepared_batches_are_those_of_the_in_memory_path(tmp_path, monkeypatch, documents, tokenizer, seq_len):
    path, ready = prepared_dir(tmp_path, documents, tokenizer, seq_len, monkeypatch)
    train_docs, valid_docs = train_valid_split(list(read_documents(path)))   # a docstring may hold blank lines
    memory = PretrainingData.build(tokenizer, train_docs, valid_docs, block_size=seq_len, seed=3, mask_prob=0.3)
    disk = prepared.pretraining_data(ready, seed=3, mask_prob=0.3)
    assert (disk.num_train, disk.num_valid) == (memory.num_train, memory.num_valid)
    tokens, index = ready.train.memmaps()
    assert tokens.dtype == np.uint16 and index[-1] == len(tokens)
    for i in range(memory.num_train):
        assert np.array_equal(disk.train_samples[i], memory.train_samples[i]), i
    per_epoch = memory.batches_per_epoch(8)
    for epoch, index in [(0, 0), (0, per_epoch - 1), (1, 2), (5, 1)]:
        a, b = memory.train_batch(epoch, index, 8), disk.train_batch(epoch, index, 8, shard=(0, 1))
        for key in a:
            assert np.array_equal(a[key], b[key]), (epoch, index, key)
    for a, b in zip(memory.valid_batches(8), disk.valid_batches(8)):
        for key in a:
            assert np.array_equal(a[key], b[key]), key
    assert ready.probe_documents() == valid_docs   # all of them: far below PROBE_TEXT_BYTES


def test_a_vocabulary_past_uint16_is_stored_as_uint32(tmp_path, monkeypatch, documents, tokenizer):
    big = Tokenizer.from_json(tokenizer.to_json())
    big.raw.add_tokens([f"zzword{i}" for i in range(66_000)])
    assert big.vocab_size > 65536
    assert prepared.token_dtype(65536) == "uint16" and prepared.token_dtype(65537) == "uint32"
    docs = documents[:60] + ["zzword65999 is the largest id here."]
    path, ready = prepared_dir(tmp_path, docs, big, 32, monkeypatch)
    assert ready.manifest["dtype"] == "uint32"
    tokens, _ = ready.train.memmaps()
    train_docs, valid_docs = train_valid_split(list(read_documents(path)))
    assert "zzword65999 is the largest id here." in train_docs
    assert tokens.dtype == np.uint32 and tokens.max() == big.token_to_id("zzword65999")
    memory = PretrainingData.build(big, train_docs, valid_docs, block_size=32, seed=0)
    assert all(np.array_equal(ready.train[i], memory.train_samples[i]) for i in range(memory.num_train))


# --- reuse

def test_reuse_and_invalidation(tmp_path, documents):
    path = write(tmp_path / "corpus.txt", "\n\n".join(documents[:80]))
    where, said = str(tmp_path / "prep"), []
    first = prepared.ready([path], where, 32, vocab_size=300, say=said.append)
    assert any("training a byte-level BPE" in line for line in said)
    said.clear()
    again = prepared.ready([path], where, 32, vocab_size=300, say=said.append)
    assert said == [f"using the data prepared in {where}"]
    assert np.array_equal(again.train[3], first.train[3])
    # the checkpoint's tokenizer (saved and loaded again) is the prepared one
    first.tokenizer.save(tmp_path / "tok")
    said.clear()
    prepared.ready([path], where, 32, tokenizer=Tokenizer.from_dir(tmp_path / "tok"), say=said.append)
    assert said == [f"using the data prepared in {where}"]

    for change, reason in [(lambda: prepared.ready([path], where, 64, vocab_size=300, say=said.append),
                            "prepared for --seq-len 32, not 64"),
                           (lambda: prepared.ready([path], where, 64, vocab_size=280, say=said.append),
                            "its tokenizer has a vocabulary of 300, not 280")]:
        said.clear()
        change()
        assert said[0] == f"{where}: {reason}; preparing again", said
    stat = os.stat(path)
    with open(path, "a") as handle:
        handle.write("\n\nOne more document.")
    said.clear()
    changed = prepared.ready([path], where, 64, vocab_size=280, say=said.append)
    assert said[0] == f"{where}: {os.path.abspath(path)} changed (size or modification time); preparing again"
    assert sum(changed.manifest["documents"].values()) == len(list(read_documents(path)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))   # touched, not changed: prepared again too
    said.clear()
    prepared.ready([path], where, 64, vocab_size=280, say=said.append)
    assert "changed" in said[0]


def test_a_directory_of_something_else_is_never_replaced(tmp_path, documents):
    path = write(tmp_path / "corpus.txt", "\n\n".join(documents[:80]))
    write(tmp_path / "mine" / "notes.txt", "my own files")
    with pytest.raises(MinRobertaError, match="mine: not prepared data, and not empty"):
        prepared.ready([path], str(tmp_path / "mine"), 32, vocab_size=300, say=quiet)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "my own files"


def test_too_little_text_leaves_nothing_behind(tmp_path):
    path = write(tmp_path / "one.txt", "A single document.")
    with pytest.raises(MinRobertaError, match="too little text"):
        prepared.ready([path], str(tmp_path / "out" / "prepared"), 32, vocab_size=300, say=quiet)
    assert not (tmp_path / "out").exists()


def test_the_tokenizer_sample_is_bounded_and_spread():
    docs = [f"document number {i} " * 10 for i in range(1000)]   # about 200 bytes each
    sample, count = prepared.tokenizer_sample(iter(docs), total_bytes=200_000, budget=20_000)
    assert count is None and 18_000 <= sum(map(len, sample)) <= 21_000
    numbers = [int(d.split()[2]) for d in sample]
    assert numbers[0] == 0 and numbers[-1] > 900   # every 10th: from the start to near the end
    whole, count = prepared.tokenizer_sample(iter(docs), total_bytes=200_000, budget=10**6)
    assert whole == train_valid_split(docs)[0] and sum(count.values()) == 1000


# --- inputs

def test_reading_in_pieces_gives_the_documents_of_the_whole_file(tmp_path, monkeypatch):
    text = "Doc one.\nLine two.\n\n\n \nDoc\r\ntwo.\r\n\r\n" + "x " * 40 + "\n\t\nend\n \n\n" + "last\n"
    path = write(tmp_path / "a.txt", text)
    whole = list(read_documents(path))
    for size in (1, 2, 3, 5, 8, 13, 1000):
        monkeypatch.setattr(corpus, "READ_BYTES", size)
        assert list(read_documents(path)) == whole, size
    assert whole == [b.strip() for b in re.split(r"\n[ \t\f\v]*\n", text.replace("\r\n", "\n")) if b.strip()]


def test_json_lines_and_gzip(tmp_path):
    records = [{"text": "First document.\n\nStill the first."}, {"text": "  "}, {"text": "Second.", "id": 2}]
    lines = "\n".join(json.dumps(r) for r in records) + "\n\n"
    plain = write(tmp_path / "c.jsonl", lines)
    packed = write(tmp_path / "d" / "c.jsonl.gz", gzip.compress(lines.encode()))
    write(tmp_path / "d" / "t.txt.gz", gzip.compress(b"Third.\n\nFourth."))
    expected = ["First document.\n\nStill the first.", "Second."]
    assert list(read_documents(plain)) == expected
    assert list(read_documents(packed)) == expected
    assert list(read_documents(str(tmp_path / "d"))) == expected + ["Third.", "Fourth."]


@pytest.mark.parametrize("name, data, fragments", [
    ("a.jsonl", b'{"text": "fine"}\n{"text": \n', ["a.jsonl: line 2 is not JSON"]),
    ("a.jsonl", b'{"text": "fine"}\n\n["text"]\n', ['a.jsonl: line 3 has no "text" string']),
    ("a.jsonl", b'{"text": "fine"}\n{"body": "x"}\n', ['line 2 has no "text" string']),
    ("a.txt", b"fine\nfine\n\xff broken\n", ["a.txt: invalid UTF-8 at byte 10, line 3"]),
    ("a.txt.gz", gzip.compress(b"fine text\n" * 1000)[:-30], ["a.txt.gz: damaged gzip data"]),
    ("a.txt.gz", b"\x1f\x8bnot gzip at all", ["a.txt.gz: damaged gzip data"]),
    ("a.jsonl.gz", gzip.compress(b'{"text": "ok"}\n{"text": 3}\n'), ['a.jsonl.gz: line 2 has no "text"']),
])
def test_bad_input_is_one_line_naming_the_file_and_line(tmp_path, name, data, fragments):
    path = write(tmp_path / name, data)
    with pytest.raises(MinRobertaError) as caught:
        list(read_documents(path))
    message = str(caught.value)
    assert "\n" not in message and all(f in message for f in fragments), message


# --- progress

class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_updates_one_line_on_a_terminal_and_is_quiet_otherwise():
    log = io.StringIO()
    progress = prepared.PrepareProgress("preparing", 4_000_000, log, every=0)
    progress.add(1_000_000, 10)
    progress.close()
    assert log.getvalue() == ""
    screen = Terminal()
    progress = prepared.PrepareProgress("preparing", 4_000_000, screen, every=0)
    progress.add(1_000_000, 10)
    progress.add(1_000_000, 5)
    progress.close()
    shown = screen.getvalue()
    assert shown.count("\r") == 3 and shown.endswith("\n") and shown.count("\n") == 1
    last = shown.split("\r")[-1]
    assert "2.0 MB of 4.0 (50%)" in last and "MB/s" in last and "ETA" in last and "15 documents" in last


# --- the commands

def test_prepare_once_then_pretrain_on_it_alone(tmp_path, capsys, documents):
    from minroberta.cli import main
    path = write(tmp_path / "corpus.jsonl.gz",
                 gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in documents[:200]).encode()))
    where = str(tmp_path / "prep")
    assert main(["prepare", "--corpus", path, "--out", where, "--preset", "micro", "--seq-len", "64"]) == 0
    assert f"--prepared {where}" in capsys.readouterr().out
    run = ["pretrain", "--preset", "micro", "--seq-len", "64", "--batch-size", "8", "--steps", "2", "--eval-batches",
           "1", "--prepared", where]
    assert main(run + ["--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert f"using the data prepared in {where}" in err and "training a byte-level BPE" not in err
    assert not (tmp_path / "a" / "prepared").exists()
    assert main(run + ["--seq-len", "32", "--out", str(tmp_path / "b")]) == 0   # another length: prepared again
    assert f"{where}: prepared for --seq-len 64, not 32; preparing again" in capsys.readouterr().err
