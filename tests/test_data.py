"""Pretraining data: FULL-SENTENCES packing and dynamic masking as properties over drawn inputs, and batches
that are pure functions of (seed, epoch, index)."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minroberta.corpus import split_sentences, stdlib_documents, train_valid_split
from minroberta.data import (IGNORE_INDEX, PretrainingData, build_pretraining_data, mask_tokens, pack_full_sentences,
                             tokenize_documents)
from minroberta.errors import MinRobertaError
from minroberta.tokenizer import train_tokenizer

BOS, PAD, EOS, MASK, VOCAB = 0, 1, 2, 99, 100
SPECIALS = (0, 1, 2, 3, MASK)

# --- packing

sentences = st.lists(st.integers(5, 50), max_size=12)                     # token ids, none of them special
documents = st.lists(st.lists(sentences, max_size=5), max_size=8)


def label_tokens(docs):
    """(document, sentence) of every token of the stream, in order."""
    return [(d, s) for d, doc in enumerate(docs) for s, sentence in enumerate(doc) for _ in sentence]


@settings(max_examples=300, deadline=None)
@given(docs=documents, block_size=st.integers(3, 24))
def test_packing_properties(docs, block_size):
    samples = list(pack_full_sentences(docs, block_size, BOS, EOS))
    room = block_size - 2
    stream = [t for doc in docs for sentence in doc for t in sentence]
    owner = label_tokens(docs)
    if not stream:
        assert samples == []
        return
    position, home = 0, []                    # home: the sample each stream token went to
    for index, sample in enumerate(samples):
        assert sample.ndim == 1 and 3 <= len(sample) <= block_size
        assert sample[0] == BOS and sample[-1] == EOS and BOS not in sample[1:]
        # the body is the next stretch of the stream, with one </s> exactly where a document ends inside it
        count = int(np.sum(sample[1:-1] != EOS))
        expected = []
        for p in range(position, position + count):
            if p > position and owner[p][0] != owner[p - 1][0]:
                expected.append(EOS)
            expected.append(stream[p])
        assert list(sample[1:-1]) == expected
        home += [index] * count
        position += count
    assert position == len(stream)           # the samples hold the whole stream, in order
    # a sentence that fits in a sample is never split; a longer one fills ceil(len / room) samples
    for key, group in itertools.groupby(range(len(stream)), key=lambda p: owner[p]):
        spanned = {home[p] for p in group}
        length = len(docs[key[0]][key[1]])
        assert len(spanned) == (1 if length <= room else math.ceil(length / room)), (key, length, room)


@settings(max_examples=200, deadline=None)
@given(docs=documents, block_size=st.integers(3, 24))
def test_packing_is_greedy(docs, block_size):
    """A sample ends only when the next sentence (piece), with its separator, would not fit."""
    samples = list(pack_full_sentences(docs, block_size, BOS, EOS))
    room, owner = block_size - 2, label_tokens(docs)
    position = 0
    for sample in samples[:-1]:
        body = [t for t in sample[1:-1] if t != EOS]
        position += len(body)
        last, first = owner[position - 1], owner[position]
        same = 0     # the rest of the sentence the next sample starts with; its piece is at most `room`
        while position + same < len(owner) and owner[position + same] == first:
            same += 1
        first_piece = min(same, room)
        separator = 1 if first[0] != last[0] else 0
        assert len(sample) - 2 + separator + first_piece > room


def test_packing_examples():
    docs = [[[10, 11], [12]], [], [[20, 21, 22]], [[30] * 7]]
    assert [list(s) for s in pack_full_sentences(docs, 10, BOS, EOS)] == [
        [BOS, 10, 11, 12, EOS, 20, 21, 22, EOS],    # one separator, the empty document changes nothing
        [BOS, *[30] * 7, EOS]]                      # the next sentence would not fit: a new sample
    assert [list(s) for s in pack_full_sentences(docs, 8, BOS, EOS)] == [
        [BOS, 10, 11, 12, EOS], [BOS, 20, 21, 22, EOS],
        [BOS, *[30] * 6, EOS], [BOS, 30, EOS]]      # a sentence longer than the block is cut


def test_packing_streams_and_rejects_a_block_with_no_room():
    endless = ([[t % 40 + 5 for t in range(n, n + 3)]] for n in itertools.count())
    assert len(list(itertools.islice(pack_full_sentences(endless, 16, BOS, EOS), 5))) == 5
    with pytest.raises(MinRobertaError, match="block_size 2"):
        list(pack_full_sentences([[[5]]], 2, BOS, EOS))


# --- masking

def masking_batch(rows=200, length=128, seed=0):
    """Ordinary tokens with specials sprinkled in, <s> ... </s>, then padding of random length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, MASK, size=(rows, length))
    ids[rng.random((rows, length)) < 0.05] = EOS
    ids[rng.random((rows, length)) < 0.02] = MASK
    ids[:, 0] = BOS
    attention_mask = np.ones((rows, length), dtype=np.int64)
    for row, real in enumerate(rng.integers(2, length + 1, size=rows)):
        ids[row, real - 1] = EOS
        ids[row, real:] = PAD
        attention_mask[row, real:] = 0
    return ids, attention_mask


def mask(ids, attention_mask, epoch=0, indices=None, **kwargs):
    indices = np.arange(len(ids)) if indices is None else indices
    return mask_tokens(ids, attention_mask, special_ids=SPECIALS, mask_id=MASK, vocab_size=VOCAB, seed=7,
                       epoch=epoch, indices=indices, **kwargs)


def check_masking_invariants(ids, attention_mask, inputs, labels):
    chosen = labels != IGNORE_INDEX
    maskable = ~np.isin(ids, SPECIALS) & (attention_mask.astype(bool) if attention_mask is not None else True)
    assert inputs.dtype == labels.dtype == np.int64 and inputs.shape == labels.shape == ids.shape
    assert not (chosen & ~maskable).any()                     # specials and padding are never chosen
    assert (labels[chosen] == ids[chosen]).all()              # labels: the original token, -100 elsewhere
    assert (inputs[~chosen] == ids[~chosen]).all()            # only chosen tokens change
    replaced = chosen & (inputs != MASK)
    assert not np.isin(inputs[replaced], SPECIALS).any()      # random replacements are never special
    assert ((inputs >= 0) & (inputs < VOCAB)).all()


def test_masking_rate_and_80_10_10_split():
    ids, attention_mask = masking_batch()
    inputs, labels = mask(ids, attention_mask)
    check_masking_invariants(ids, attention_mask, inputs, labels)
    chosen = labels != IGNORE_INDEX
    n, k = int((~np.isin(ids, SPECIALS) & (attention_mask == 1)).sum()), int(chosen.sum())
    assert abs(k / n - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)           # within binomial bounds (and tighter)
    for row in range(len(ids)):                                          # fairseq: int(0.15 n + u) per row
        real = int((~np.isin(ids[row], SPECIALS) & (attention_mask[row] == 1)).sum())
        assert int(chosen[row].sum()) in (int(0.15 * real), int(0.15 * real) + 1)
    masked = (inputs[chosen] == MASK).mean()
    kept = (inputs[chosen] == ids[chosen]).mean()       # left alone, or replaced by chance with itself
    randomised = 1 - masked - kept
    bound = 4 * math.sqrt(0.1 * 0.9 / k)
    assert abs(masked - 0.8) < 4 * math.sqrt(0.8 * 0.2 / k)
    assert abs(randomised - 0.1 * (1 - 1 / (VOCAB - 5))) < bound and abs(kept - 0.1) < bound + 0.1 / (VOCAB - 5)


def test_short_rows_are_masked_at_the_full_rate_on_average():
    """10 tokens at 15% is 1.5: fairseq's randomised rounding chooses 1 or 2, half the time each."""
    ids = np.tile([BOS, *range(10, 20), EOS], (2000, 1))
    counts = (mask(ids, None)[1] != IGNORE_INDEX).sum(axis=1)
    assert set(counts) == {1, 2} and abs(counts.mean() - 1.5) < 4 * 0.5 / math.sqrt(2000)


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 4), length=st.integers(1, 20), seed=st.integers(0, 2**32 - 1),
       mask_prob=st.sampled_from([0.0, 0.15, 0.5, 1.0]), padded=st.booleans())
def test_masking_invariants_on_drawn_batches(rows, length, seed, mask_prob, padded):
    rng = np.random.default_rng(seed)
    ids = rng.choice([*SPECIALS, *range(4, 12)], size=(rows, length))
    attention_mask = (rng.random((rows, length)) < 0.8).astype(np.int64) if padded else None
    inputs, labels = mask(ids, attention_mask, mask_prob=mask_prob)
    check_masking_invariants(ids, attention_mask, inputs, labels)
    if mask_prob == 1.0:    # everything that may be chosen is
        maskable = ~np.isin(ids, SPECIALS) & (attention_mask.astype(bool) if padded else True)
        assert ((labels != IGNORE_INDEX) == maskable).all()


def test_masks_are_a_pure_function_of_seed_epoch_and_index():
    ids, attention_mask = masking_batch(rows=16)
    inputs, labels = mask(ids, attention_mask, epoch=3, indices=np.arange(100, 116))
    again = mask(ids, attention_mask, epoch=3, indices=np.arange(100, 116))
    assert np.array_equal(inputs, again[0]) and np.array_equal(labels, again[1])
    # a row's mask does not depend on which other rows share its batch, nor where it sits
    order = np.arange(16)[::-1]
    alone = mask(ids[order][:5], attention_mask[order][:5], epoch=3, indices=np.arange(100, 116)[order][:5])
    assert np.array_equal(alone[1], labels[order][:5]) and np.array_equal(alone[0], inputs[order][:5])
    # another epoch, another mask
    other_epoch = mask(ids, attention_mask, epoch=4, indices=np.arange(100, 116))[1]
    long_rows = attention_mask.sum(axis=1) > 20
    assert all(not np.array_equal(labels[r], other_epoch[r]) for r in np.flatnonzero(long_rows))


def test_bad_mask_probability_is_an_error():
    ids, attention_mask = masking_batch(rows=2)
    with pytest.raises(MinRobertaError, match="mask_prob 1.5"):
        mask(ids, attention_mask, mask_prob=1.5)


# --- batches

def synthetic_data(num_train=50, num_valid=7, seed=3):
    """Sample i holds token 4 + i (so a batch shows which samples it holds) in a body of varying length."""
    def sample(i):
        return np.array([BOS, *[4 + i] * (3 + i % 9), EOS], dtype=np.int32)
    return PretrainingData([sample(i) for i in range(num_train)], [sample(i) for i in range(num_valid)],
                           pad_id=PAD, mask_id=MASK, special_ids=SPECIALS, vocab_size=VOCAB, seed=seed)


def originals(batch):
    """The unmasked ids of a batch: labels where a token was chosen, the input elsewhere."""
    return np.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])


def sample_ids(batch):
    return [int(row[1]) - 4 for row in originals(batch)]


def test_train_batches_pad_mask_and_cover_an_epoch_once():
    data = synthetic_data()
    assert (data.num_train, data.num_valid, data.batches_per_epoch(8)) == (50, 7, 6)
    seen = []
    for batch_index in range(data.batches_per_epoch(8)):
        batch = data.train_batch(epoch=0, batch_index=batch_index, batch_size=8)
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        assert all(v.dtype == np.int64 and v.shape == batch["input_ids"].shape for v in batch.values())
        lengths = batch["attention_mask"].sum(axis=1)
        assert batch["input_ids"].shape == (8, lengths.max())
        padding = batch["attention_mask"] == 0
        assert (batch["input_ids"][padding] == PAD).all() and (batch["labels"][padding] == IGNORE_INDEX).all()
        assert (batch["labels"] != IGNORE_INDEX).any()
        seen += sample_ids(batch)
        for row, i in enumerate(sample_ids(batch)):
            assert list(originals(batch)[row, :lengths[row]]) == list(data.train_samples[i])
    assert len(seen) == len(set(seen)) == 48           # full batches; the other 2 wait for a later shuffle
    assert seen != sorted(seen)                         # shuffled
    with pytest.raises(IndexError):
        data.train_batch(epoch=0, batch_index=6, batch_size=8)


def test_batches_are_a_pure_function_of_seed_epoch_and_index():
    """What a resumed run relies on: a fresh object, asked in any order, gives the same batches."""
    first, fresh = synthetic_data(), synthetic_data()
    asked = [(2, 3), (0, 1), (2, 0), (0, 1)]
    for epoch, batch_index in asked:
        a = first.train_batch(epoch, batch_index, 8)
        b = fresh.train_batch(epoch, batch_index, 8)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    order = [sample_ids(first.train_batch(epoch, 0, 8)) for epoch in range(3)]
    assert order[0] != order[1] != order[2]             # each epoch its own shuffle
    reseeded = synthetic_data(seed=4).train_batch(0, 0, 8)
    assert sample_ids(reseeded) != order[0]


def test_shards_of_a_batch_make_up_the_batch():
    data = synthetic_data()
    whole = data.train_batch(1, 2, 8)
    shards = [data.train_batch(1, 2, 8, shard=(rank, 3)) for rank in range(3)]
    assert [i for s in shards for i in sample_ids(s)] == sample_ids(whole)
    for shard in shards:    # the same masks as in the whole batch: masks follow the sample, not the rank
        for row, i in enumerate(sample_ids(shard)):
            full_row = sample_ids(whole).index(i)
            length = int(shard["attention_mask"][row].sum())
            assert np.array_equal(shard["labels"][row, :length], whole["labels"][full_row, :length])


def test_fewer_samples_than_a_batch_repeat_in_one_batch():
    data = synthetic_data(num_train=3)
    assert data.batches_per_epoch(8) == 1
    assert sorted(set(sample_ids(data.train_batch(0, 0, 8)))) == [0, 1, 2]


def test_validation_batches_are_fixed_and_cover_the_split_in_order():
    data = synthetic_data()
    first, second = list(data.valid_batches(3)), list(data.valid_batches(3))
    assert [len(b["input_ids"]) for b in first] == [3, 3, 1]
    assert [i for b in first for i in sample_ids(b)] == list(range(7))
    for a, b in zip(first, second):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_no_training_samples_is_an_error():
    with pytest.raises(MinRobertaError, match="no sequences"):
        PretrainingData([], [], pad_id=PAD, mask_id=MASK, special_ids=SPECIALS, vocab_size=VOCAB, seed=0)


# --- from text

@pytest.fixture(scope="module")
def real():
    documents = list(itertools.islice(stdlib_documents(), 200))
    return train_tokenizer(documents, vocab_size=600), documents


def test_sentence_tokens_are_those_of_the_running_text(real):
    tokenizer, documents = real
    for document, tokenized in zip(documents, tokenize_documents(tokenizer, documents)):
        sentences = split_sentences(document)
        assert len(tokenized) == len(sentences)
        assert [t for s in tokenized for t in s] == tokenizer.encode_plain(" ".join(sentences))


def test_build_packs_real_text_into_blocks(real):
    tokenizer, documents = real
    data = build_pretraining_data(tokenizer, documents, block_size=64, seed=0)
    assert data.num_train > 10 and data.num_valid >= 1
    assert all(len(s) <= 64 and s[0] == tokenizer.bos_id and s[-1] == tokenizer.eos_id for s in data.train_samples)
    first_document = train_valid_split(documents)[0][0]
    assert tokenizer.decode(data.train_samples[0])[:20] == " ".join(first_document.split())[:20]
    batch = data.train_batch(0, 0, 4)
    assert batch["input_ids"].shape[0] == 4 and (batch["input_ids"] == tokenizer.mask_id).any()
