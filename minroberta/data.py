"""Pretraining data: FULL-SENTENCES packing, dynamic masking, and batches that are pure functions of
(seed, epoch, index), so a resumed run reads exactly what the uninterrupted one would have read.
"""

import numpy as np

from .corpus import split_sentences, train_valid_split
from .errors import MinRobertaError
from .ops.cross_entropy import IGNORE_INDEX   # noqa: F401  (scripts and the tests take it from here too)
VALID_EPOCH = 2**31 - 1   # the fixed "epoch" of the validation masks (the seed must be >= 0): same every time
VALID_MASK_PROB = 0.15    # validation is masked at RoBERTa's rate whatever the training rate, so runs compare


def rank_share(indices, rank, size):
    """Rank `rank`'s contiguous share of a global batch's sample indices: the shares of all ranks are
    disjoint and together are exactly the batch (sizes differ by at most one)."""
    count = len(indices)
    return indices[rank * count // size:(rank + 1) * count // size]


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


def sentence_texts(document):
    """A document's sentences (split_sentences) as the tokenizer encodes them: each after the first with the
    space that separated it, so the concatenated pieces are the tokens of the document's running text, as in
    RoBERTa, whose BPE ran over whole lines (a byte-level BPE marks a word's leading space: "ĠThe" != "The")."""
    return [s if i == 0 else " " + s for i, s in enumerate(split_sentences(document))]


def tokenize_documents(tokenizer, documents):
    """-> per document, the token ids of each of its sentences, encoded as sentence_texts gives them. All
    sentences go through the tokenizer in one batch."""
    sentences = [sentence_texts(document) for document in documents]
    flat = tokenizer.encode_plain_batch([s for doc in sentences for s in doc])
    tokenized, start = [], 0
    for doc in sentences:
        tokenized.append(flat[start:start + len(doc)])
        start += len(doc)
    return tokenized


# --- dynamic masking

def _uniform(seed, epoch, indices, width, stream):
    """Uniform [0, 1) floats (B, width), a pure function of (seed, epoch, row index, position, stream): a
    splitmix64 hash of the five, so a whole batch is drawn at once and a row's draws do not depend on the
    other rows of its batch (MPI shards, accumulation and resume see the same masks)."""
    with np.errstate(over="ignore"):   # the hash wraps around 2**64 on purpose
        row = np.asarray(indices, dtype=np.uint64)[:, None]                               # (B, 1)
        position = np.arange(width, dtype=np.uint64)[None, :]                             # (1, W)
        z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(epoch) * np.uint64(0xD1B54A32D192ED03)
        z = z + row * np.uint64(0x8CB92BA72F3D8DD7) + position * np.uint64(0xA24BAED4963EE407)
        z = z + np.uint64(stream) * np.uint64(0xBF58476D1CE4E5B9)                         # (B, W)
        for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            z = (z ^ (z >> np.uint64(shift))) * np.uint64(multiplier)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53                            # 53 random bits


def mask_tokens(ids, attention_mask, *, special_ids, mask_id, vocab_size, seed, epoch, indices, mask_prob=0.15,
                mask_fraction=0.8, random_fraction=0.1):
    """Dynamic masking, fresh for every (seed, epoch, sample index) and a pure function of them (_uniform).

    Of a row's n real (attention_mask 1) non-special tokens, int(mask_prob * n + u), u ~ U[0, 1), are chosen
    without replacement (fairseq's randomised rounding: mask_prob * n on average, exactly, even for short
    rows): the ones with the smallest random keys. Each chosen token independently becomes <mask> with
    probability mask_fraction (80%), a random non-special token with probability random_fraction (10%), and
    stays as it is otherwise (10%).
    ids, attention_mask (or None: all real): (B, T); indices: (B,).
    -> (input_ids, labels), both (B, T) int64; labels hold the original id where chosen, IGNORE_INDEX elsewhere."""
    if not 0.0 <= mask_prob <= 1.0 or not 0.0 <= mask_fraction + random_fraction <= 1.0:
        raise MinRobertaError(f"mask_prob {mask_prob} and fractions {mask_fraction} + {random_fraction} "
                              "must be probabilities")
    ids = np.asarray(ids)
    batch, width = ids.shape
    ordinary = np.setdiff1d(np.arange(vocab_size), np.asarray(special_ids))   # the random replacements
    maskable = ~np.isin(ids, special_ids)                                     # (B, T)
    if attention_mask is not None:
        maskable &= np.asarray(attention_mask).astype(bool)
    count = (mask_prob * maskable.sum(axis=1) + _uniform(seed, epoch, indices, 1, 0)[:, 0]).astype(np.int64)  # (B,)
    keys = np.where(maskable, _uniform(seed, epoch, indices, width, 1), 2.0)  # (B, T); never-chosen sort last
    rank = np.empty((batch, width), dtype=np.int64)
    np.put_along_axis(rank, np.argsort(keys, axis=1), np.arange(width)[None, :], axis=1)
    chosen = rank < count[:, None]                                            # (B, T)
    action = _uniform(seed, epoch, indices, width, 2)                         # (B, T)
    masked = chosen & (action < mask_fraction)
    randomised = chosen & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
    replacement = ordinary[(_uniform(seed, epoch, indices, width, 3) * len(ordinary)).astype(np.int64)]
    inputs = np.where(masked, mask_id, np.where(randomised, replacement, ids)).astype(np.int64)   # (B, T)
    labels = np.where(chosen, ids, IGNORE_INDEX).astype(np.int64)                                 # (B, T)
    return inputs, labels


# --- batches

def pad_samples(samples, pad_id):
    """Samples (1-D id arrays) -> ids padded to the longest with `pad_id`, and the attention mask, both (B, T)."""
    longest = max(len(s) for s in samples)
    ids = np.full((len(samples), longest), pad_id, dtype=np.int64)                # (B, T)
    attention_mask = np.zeros((len(samples), longest), dtype=np.int64)            # (B, T)
    for row, sample in enumerate(samples):
        ids[row, :len(sample)] = sample
        attention_mask[row, :len(sample)] = 1
    return ids, attention_mask


class PretrainingData:
    """Packed training and validation samples (host memory, 1-D int32 arrays) and the masked batches made
    from them. Every batch is a pure function of (seed, epoch, batch index): nothing to save to resume."""

    def __init__(self, train_samples, valid_samples, *, pad_id, mask_id, special_ids, vocab_size, seed,
                 mask_prob=0.15):
        if not train_samples:
            raise MinRobertaError("the training corpus gives no sequences to train on")
        if seed < 0:
            raise MinRobertaError(f"seed must be >= 0, got {seed}")
        self.train_samples, self.valid_samples = train_samples, valid_samples
        self.pad_id, self.mask_id, self.special_ids, self.vocab_size = pad_id, mask_id, special_ids, vocab_size
        self.seed, self.mask_prob = seed, mask_prob
        self._permutation = (None, None)   # (epoch, order) of the last epoch asked for: computed once per epoch

    @classmethod
    def build(cls, tokenizer, train_documents, valid_documents, block_size, seed, mask_prob=0.15):
        """Split into sentences, tokenize and pack both sides (already split by document)."""
        def pack(documents):
            return list(pack_full_sentences(tokenize_documents(tokenizer, documents), block_size,
                                            tokenizer.bos_id, tokenizer.eos_id))
        return cls(pack(train_documents), pack(valid_documents), pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id,
                   special_ids=tokenizer.special_ids, vocab_size=tokenizer.vocab_size, seed=seed, mask_prob=mask_prob)

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

    def _collate(self, samples, indices, epoch, mask_prob):
        """Pad to the longest sample (<pad>, attention 0, label IGNORE_INDEX) and mask for `epoch`."""
        ids, attention_mask = pad_samples(samples, self.pad_id)
        input_ids, labels = mask_tokens(ids, attention_mask, special_ids=self.special_ids, mask_id=self.mask_id,
                                        vocab_size=self.vocab_size, seed=self.seed, epoch=epoch, indices=indices,
                                        mask_prob=mask_prob)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def train_batch(self, epoch, batch_index, batch_size, shard=(0, 1)):
        """Batch `batch_index` (0 <= it < batches_per_epoch) of `epoch`'s order, a permutation drawn from
        default_rng([seed, epoch]), freshly masked for that epoch; with shard = (rank, ranks), only that
        rank's share of it (rank_share). -> dict of (B, T) int64 input_ids, attention_mask, labels."""
        if not 0 <= batch_index < self.batches_per_epoch(batch_size):
            raise IndexError(f"batch {batch_index} of an epoch of {self.batches_per_epoch(batch_size)}")
        if self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_train))
        order = self._permutation[1]
        if self.num_train < batch_size:   # a tiny corpus: the one batch repeats samples
            picked = np.resize(order, batch_size)
        else:
            picked = order[batch_index * batch_size:(batch_index + 1) * batch_size]
        picked = rank_share(picked, *shard)
        return self._collate([self.train_samples[i] for i in picked], picked, epoch, self.mask_prob)

    def valid_batches(self, batch_size):
        """The validation samples in order, with the same masks on every call."""
        for start in range(0, self.num_valid, batch_size):
            indices = np.arange(start, min(start + batch_size, self.num_valid))
            yield self._collate([self.valid_samples[i] for i in indices], indices, VALID_EPOCH, VALID_MASK_PROB)


def build_pretraining_data(tokenizer, documents, block_size, seed):
    """PretrainingData of `documents`, split into train and validation by corpus.train_valid_split."""
    train_documents, valid_documents = train_valid_split(documents)
    return PretrainingData.build(tokenizer, train_documents, valid_documents, block_size, seed)
