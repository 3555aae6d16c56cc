"""What BERT-family checkpoints do differently from RoBERTa, in one place. model.py asks here when
config.model_type is "bert"; the encoder's math is otherwise the same.

- Positions count 0..T-1 from the first token; RoBERTa's start after the padding index and skip pads.
- Two token types (sentence A and B) instead of one, so the token-type table has two rows: nothing here, the
  config's type_vocab_size says it.
- A pooler (dense + tanh over token 0) that BERT's classifier runs on (heads.py); RoBERTa has none.
- The masked-LM head's modules have other names.
"""

from . import backend

# dense, layer norm and output bias of the masked-LM head, as BertForMaskedLM names them
LM_HEAD_NAMES = ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias")


def position_ids(input_ids):
    """0..T-1 in every row, padding or not. (B, T) -> (B, T)."""
    xp = backend.xp()
    batch, seq = input_ids.shape
    return xp.broadcast_to(xp.arange(seq, dtype=xp.int64)[None, :], (batch, seq))


def pooler_shapes(config, prefix):
    """The pooler's parameters: loaded and saved with BERT checkpoints; only BERT's classifier runs it."""
    C = config.hidden_size
    return {f"{prefix}pooler.dense.weight": (C, C), f"{prefix}pooler.dense.bias": (C,)}
