"""Pretraining data: FULL-SENTENCES packing, dynamic masking, and batches that are pure functions of
(seed, epoch, index), so a resumed run reads exactly what the uninterrupted one would have read.
"""

import numpy as np

from .corpus import split_sentences

IGNORE_INDEX = -100
VALID_EPOCH = 2**31 - 1   # the fixed "epoch" of the validation masks: the same masks at every evaluation


def pack_full_sentences(documents, block_size, bos_id, eos_id):
    """documents: iterable of documents, each a list of sentences, each a list of token ids.
    Yields samples `<s> s1 s2 ... </s>` (1-D int32 arrays of at most block_size tokens) of whole sentences
    taken contiguously, crossing document boundaries with an extra `</s>` between documents, as in the
    RoBERTa paper's FULL-SENTENCES. A sentence longer than a block is cut into block-sized pieces."""
    capacity = block_size - 2
    if capacity < 1:
        raise ValueError(f"block_size {block_size} leaves no room between <s> and </s>")
    current = []

    def emit():
        body = current[:-1] if current and current[-1] == eos_id else current   # no separator at the very end
        return np.array([bos_id, *body, eos_id], dtype=np.int32)

    for document in documents:
        for sentence in document:
            for start in range(0, len(sentence), capacity):
                piece = sentence[start:start + capacity]
                if current and len(current) + len(piece) > capacity:
                    yield emit()
                    current = []
                current.extend(piece)
        if current:   # end of document: a separator, or a new block when it would not fit
            if len(current) + 1 > capacity:
                yield emit()
                current = []
            else:
                current.append(eos_id)
    if current:
        yield emit()


def mask_tokens(ids, attention_mask, *, special_ids, mask_id, vocab_size, seed, epoch, indices, mask_prob=0.15):
    """Dynamic masking, fresh for every (seed, epoch, sample index): of each row's real non-special tokens,
    round(0.15 n) chosen without replacement (the rounding drawn at random, as fairseq: int(0.15 n + u));
    of those 80% become <mask>, 10% a random non-special token, 10% stay. -> (input_ids, labels), labels
    holding the original id where chosen and -100 elsewhere. ids, attention_mask: (B, T); indices: (B,)."""
    inputs = ids.astype(np.int64, copy=True)
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    ordinary = np.setdiff1d(np.arange(vocab_size), np.asarray(special_ids))   # the random replacements
    maskable = ~np.isin(ids, special_ids)
    if attention_mask is not None:
        maskable &= attention_mask.astype(bool)
    for row, index in enumerate(indices):
        rng = np.random.default_rng([seed, epoch, int(index)])
        candidates = np.flatnonzero(maskable[row])
        count = int(mask_prob * len(candidates) + rng.random())
        chosen = rng.choice(candidates, size=count, replace=False)
        labels[row, chosen] = ids[row, chosen]
        action = rng.random(count)
        inputs[row, chosen[action < 0.8]] = mask_id
        randomised = chosen[(action >= 0.8) & (action < 0.9)]
        inputs[row, randomised] = ordinary[rng.integers(0, len(ordinary), size=len(randomised))]
    return inputs, labels


class PretrainingData:
    """Packed training and validation samples (host memory, int32) and the masked batches made from them."""

    def __init__(self, train_samples, valid_samples, *, pad_id, mask_id, special_ids, vocab_size, seed):
        self.train_samples, self.valid_samples = train_samples, valid_samples
        self.pad_id, self.mask_id, self.special_ids, self.vocab_size = pad_id, mask_id, special_ids, vocab_size
        self.seed = seed
        self._permutation = (None, None)   # (epoch, order) of the last epoch asked for

    @classmethod
    def build(cls, tokenizer, train_documents, valid_documents, block_size, seed):
        def pack(documents):
            sentences = [split_sentences(d) for d in documents]
            flat = tokenizer.encode_plain(s for doc in sentences for s in doc)
            tokenized, start = [], 0
            for doc in sentences:
                tokenized.append(flat[start:start + len(doc)])
                start += len(doc)
            return list(pack_full_sentences(tokenized, block_size, tokenizer.bos_id, tokenizer.eos_id))
        return cls(pack(train_documents), pack(valid_documents), pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id,
                   special_ids=tokenizer.special_ids, vocab_size=tokenizer.vocab_size, seed=seed)

    @property
    def num_train(self):
        return len(self.train_samples)

    @property
    def num_valid(self):
        return len(self.valid_samples)

    def batches_per_epoch(self, batch_size):
        """Full batches only: the remainder of an epoch's shuffled order is left for the next shuffle."""
        return max(1, self.num_train // batch_size)

    def _collate(self, samples, indices, epoch):
        longest = max(len(s) for s in samples)
        ids = np.full((len(samples), longest), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(samples), longest), dtype=np.int64)
        for row, sample in enumerate(samples):
            ids[row, :len(sample)] = sample
            attention_mask[row, :len(sample)] = 1
        input_ids, labels = mask_tokens(ids, attention_mask, special_ids=self.special_ids, mask_id=self.mask_id,
                                        vocab_size=self.vocab_size, seed=self.seed, epoch=epoch, indices=indices)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def train_batch(self, epoch, batch_index, batch_size):
        """Batch `batch_index` of `epoch`'s shuffled order, freshly masked for that epoch."""
        if self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_train))
        order = self._permutation[1]
        picked = order[(batch_index * batch_size) % self.num_train:][:batch_size]
        if len(picked) < batch_size:                        # fewer samples than a batch: wrap around
            picked = np.resize(order, batch_size) if self.num_train < batch_size else picked
        return self._collate([self.train_samples[i] for i in picked], picked, epoch)

    def valid_batches(self, batch_size):
        """The validation split in order, with the same masks every time."""
        for start in range(0, self.num_valid, batch_size):
            indices = np.arange(start, min(start + batch_size, self.num_valid))
            yield self._collate([self.valid_samples[i] for i in indices], indices, VALID_EPOCH)
