"""Pretraining data: FULL-SENTENCES packing, dynamic masking, and batches that are pure functions of
(seed, epoch, index), so a resumed run reads exactly what the uninterrupted one would have read.
"""

import numpy as np

from . import distributed
from .corpus import split_sentences, train_valid_split
from .errors import MinRobertaError

IGNORE_INDEX = -100
VALID_EPOCH = 2**31 - 1   # the fixed "epoch" of the validation masks (the seed must be >= 0): same every time


# --- FULL-SENTENCES packing

def pack_full_sentences(documents, block_size, bos_id, eos_id):
    """documents: iterable of documents, each a list of sentences, each a list of token ids (no specials).
    Yields samples `<s> s1 s2 ... </s>`, 1-D int32 arrays of at most block_size tokens, of whole sentences
    taken contiguously: a sample may cross into the next document, with an extra `</s>` between the two
    (RoBERTa's FULL-SENTENCES). A sentence longer than block_size - 2 is cut into pieces of that length.
    Streams: holds one sample's tokens at a time."""
    room = block_size - 2   # tokens between <s> and </s>
    if room < 1:
        raise MinRobertaError(f"block_size {block_size} leaves no room between <s> and </s>")
    body = []   # the tokens of the sample being filled
    for document in documents:
        new_document = True   # its first piece, after another document's tokens, needs a </s> before it
        for sentence in document:
            for start in range(0, len(sentence), room):
                piece = sentence[start:start + room]
                separator = [eos_id] if new_document and body else []
                if len(body) + len(separator) + len(piece) > room:
                    yield np.array([bos_id, *body, eos_id], dtype=np.int32)
                    body, separator = [], []   # the sample boundary separates the documents already
                body.extend(separator)
                body.extend(piece)
                new_document = False
    if body:
        yield np.array([bos_id, *body, eos_id], dtype=np.int32)


def tokenize_documents(tokenizer, documents):
    """-> per document, the token ids of each of its sentences (split_sentences). Sentences after a
    document's first are encoded with the space that separated them, so the concatenated pieces are the
    tokens of the document's running text, as in RoBERTa, whose BPE ran over whole lines (a byte-level BPE
    marks a word's leading space: "ĠThe" != "The"). All sentences go through the tokenizer in one batch."""
    sentences = [split_sentences(document) for document in documents]
    flat = tokenizer.encode_plain_batch([s if i == 0 else " " + s for doc in sentences for i, s in enumerate(doc)])
    tokenized, start = [], 0
    for doc in sentences:
        tokenized.append(flat[start:start + len(doc)])
        start += len(doc)
    return tokenized


# --- dynamic masking

def mask_tokens(ids, attention_mask, *, special_ids, mask_id, vocab_size, seed, epoch, indices, mask_prob=0.15,
                mask_fraction=0.8, random_fraction=0.1):
    """Dynamic masking, fresh for every (seed, epoch, sample index) and a pure function of them: row b uses
    only np.random.default_rng([seed, epoch, indices[b]]).

    Of a row's n real (attention_mask 1) non-special tokens, int(mask_prob * n + u), u ~ U[0, 1), are chosen
    without replacement (fairseq's randomised rounding: mask_prob * n on average, exactly, even for short
    rows). Each chosen token independently becomes <mask> with probability mask_fraction (80%), a random
    non-special token with probability random_fraction (10%), and stays as it is otherwise (10%).
    ids, attention_mask (or None: all real): (B, T); indices: (B,).
    -> (input_ids, labels), both (B, T) int64; labels hold the original id where chosen, -100 elsewhere."""
    if not 0.0 <= mask_prob <= 1.0 or not 0.0 <= mask_fraction + random_fraction <= 1.0:
        raise MinRobertaError(f"mask_prob {mask_prob} and fractions {mask_fraction} + {random_fraction} "
                              "must be probabilities")
    ids = np.asarray(ids)
    inputs = ids.astype(np.int64, copy=True)                                  # (B, T)
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)                 # (B, T)
    ordinary = np.setdiff1d(np.arange(vocab_size), np.asarray(special_ids))   # the random replacements
    maskable = ~np.isin(ids, special_ids)                                     # (B, T)
    if attention_mask is not None:
        maskable &= np.asarray(attention_mask).astype(bool)
    for row, index in enumerate(indices):
        rng = np.random.default_rng([seed, epoch, int(index)])
        candidates = np.flatnonzero(maskable[row])
        count = int(mask_prob * len(candidates) + rng.random())
        chosen = rng.choice(candidates, size=count, replace=False)
        labels[row, chosen] = ids[row, chosen]
        action = rng.random(count)
        inputs[row, chosen[action < mask_fraction]] = mask_id
        randomised = chosen[(action >= mask_fraction) & (action < mask_fraction + random_fraction)]
        inputs[row, randomised] = ordinary[rng.integers(0, len(ordinary), size=len(randomised))]
    return inputs, labels


# --- batches

class PretrainingData:
    """Packed training and validation samples (host memory, 1-D int32 arrays) and the masked batches made
    from them. Every batch is a pure function of (seed, epoch, batch index): nothing to save to resume."""

    def __init__(self, train_samples, valid_samples, *, pad_id, mask_id, special_ids, vocab_size, seed):
        if not train_samples:
            raise MinRobertaError("the training corpus gives no sequences to train on")
        if seed < 0:
            raise MinRobertaError(f"seed must be >= 0, got {seed}")
        self.train_samples, self.valid_samples = train_samples, valid_samples
        self.pad_id, self.mask_id, self.special_ids, self.vocab_size = pad_id, mask_id, special_ids, vocab_size
        self.seed = seed
        self._permutation = (None, None)   # (epoch, order) of the last epoch asked for: computed once per epoch

    @classmethod
    def build(cls, tokenizer, train_documents, valid_documents, block_size, seed):
        """Split into sentences, tokenize and pack both sides (already split by document)."""
        def pack(documents):
            return list(pack_full_sentences(tokenize_documents(tokenizer, documents), block_size,
                                            tokenizer.bos_id, tokenizer.eos_id))
        return cls(pack(train_documents), pack(valid_documents), pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id,
                   special_ids=tokenizer.special_ids, vocab_size=tokenizer.vocab_size, seed=seed)

    @property
    def num_train(self):
        return len(self.train_samples)

    @property
    def num_valid(self):
        return len(self.valid_samples)

    def batches_per_epoch(self, batch_size):
        """Full batches only: the remainder of an epoch's shuffled order is left for the next shuffle (one
        batch, with samples repeated, when there are fewer samples than a batch)."""
        return max(1, self.num_train // batch_size)

    def _collate(self, samples, indices, epoch):
        """Pad to the longest sample (<pad>, attention 0, label -100) and mask for `epoch`."""
        longest = max(len(s) for s in samples)
        ids = np.full((len(samples), longest), self.pad_id, dtype=np.int64)           # (B, T)
        attention_mask = np.zeros((len(samples), longest), dtype=np.int64)            # (B, T)
        for row, sample in enumerate(samples):
            ids[row, :len(sample)] = sample
            attention_mask[row, :len(sample)] = 1
        input_ids, labels = mask_tokens(ids, attention_mask, special_ids=self.special_ids, mask_id=self.mask_id,
                                        vocab_size=self.vocab_size, seed=self.seed, epoch=epoch, indices=indices)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def train_batch(self, epoch, batch_index, batch_size, shard=(0, 1)):
        """Batch `batch_index` (0 <= it < batches_per_epoch) of `epoch`'s order, a permutation drawn from
        default_rng([seed, epoch]), freshly masked for that epoch; with shard = (rank, ranks), only that
        rank's share of it (distributed.shard). -> dict of (B, T) int64 input_ids, attention_mask, labels."""
        if not 0 <= batch_index < self.batches_per_epoch(batch_size):
            raise IndexError(f"batch {batch_index} of an epoch of {self.batches_per_epoch(batch_size)}")
        if self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_train))
        order = self._permutation[1]
        if self.num_train < batch_size:   # a tiny corpus: the one batch repeats samples
            picked = np.resize(order, batch_size)
        else:
            picked = order[batch_index * batch_size:(batch_index + 1) * batch_size]
        picked = distributed.shard(picked, *shard)
        return self._collate([self.train_samples[i] for i in picked], picked, epoch)

    def valid_batches(self, batch_size):
        """The validation samples in order, with the same masks on every call."""
        for start in range(0, self.num_valid, batch_size):
            indices = np.arange(start, min(start + batch_size, self.num_valid))
            yield self._collate([self.valid_samples[i] for i in indices], indices, VALID_EPOCH)


def build_pretraining_data(tokenizer, documents, block_size, seed):
    """PretrainingData of `documents`, split into train and validation by corpus.train_valid_split."""
    train_documents, valid_documents = train_valid_split(documents)
    return PretrainingData.build(tokenizer, train_documents, valid_documents, block_size, seed)
